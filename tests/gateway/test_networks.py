"""``Networks``: is a client address in ``[relay] networks``? The answers are kept per
address, within a bound, and are the answers ``ipaddress`` gives."""

from securemail.gateway.inbound import networks
from securemail.gateway.inbound.networks import Networks


def test_members_and_strangers() -> None:
    ours = Networks(["127.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"])
    for _ in range(2):  # worked out, then kept: the same answers
        assert "127.0.0.1" in ours and "2001:db8::25" in ours and "192.0.2.7" in ours
        assert "192.0.2.8" not in ours and "2001:db9::1" not in ours
        assert "unix:/run/socket" not in ours and "" not in ours  # not an address: never ours
    assert "127.0.0.1" not in Networks()


def test_the_answers_kept_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(networks, "KEPT", 8)
    ours = Networks(["10.0.0.0/8"])
    for i in range(20):
        assert f"10.0.0.{i}" in ours and f"11.0.0.{i}" not in ours
        assert len(ours._known) <= 8

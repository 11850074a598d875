"""Pregreet is paid once per client (postscreen_greet_ttl), never by our own networks."""

from securemail.gateway.inbound.capacity import Pregreet


def test_a_client_that_waited_is_greeted_at_once_until_the_ttl():
    now = [1000.0]
    p = Pregreet(0.3, ["10.0.0.0/8"], ttl=60, clock=lambda: now[0])
    assert p.pause_for("192.0.2.1") == 0.3
    p.passed("192.0.2.1")
    assert p.pause_for("192.0.2.1") == 0.0
    assert p.pause_for("192.0.2.2") == 0.3  # per client
    now[0] += 61
    assert p.pause_for("192.0.2.1") == 0.3  # remembered for the ttl only


def test_relay_networks_and_zero_pause_are_never_made_to_wait():
    assert Pregreet(0.3, ["10.0.0.0/8"]).pause_for("10.1.2.3") == 0.0
    assert Pregreet(0.0).pause_for("192.0.2.1") == 0.0


def test_memory_is_bounded():
    p = Pregreet(0.3, limit=3)
    for i in range(10):
        p.passed(f"192.0.2.{i}")
    assert p.pause_for("192.0.2.0") == 0.3 and p.pause_for("192.0.2.9") == 0.0

"""gateway/inbound/limits.py: the AUTH limiter's counting, bounds, unlocks and state files,
with a clock the test moves. The live-listener attacks are tests/security/test_submission.py.
"""

import json

import pytest

from securemail.gateway.events import Lifecycle, MemorySink
from securemail.gateway.inbound.limits import (
    AuthLimiter,
    AuthLimits,
    LockoutFiles,
    Unlock,
    client_key,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _fail(limiter: AuthLimiter, ip: str, login: str, times: int) -> None:
    for _ in range(times):
        ticket = limiter.reserve(ip, login)
        assert ticket is not None
        limiter.failed(ticket)


def test_slots_are_taken_before_verification():
    limiter = AuthLimiter(AuthLimits(per_login=3), clock=Clock())
    tickets = [limiter.reserve("192.0.2.1", "alice") for _ in range(5)]
    assert [t is not None for t in tickets] == [True, True, True, False, False]


def test_success_gives_the_slot_back_and_clears_that_logins_failures():
    limiter = AuthLimiter(AuthLimits(per_login=3, per_client=4), clock=Clock())
    _fail(limiter, "192.0.2.1", "alice", 2)
    ticket = limiter.reserve("192.0.2.1", "alice")
    assert ticket is not None
    limiter.succeeded(ticket)
    _fail(limiter, "192.0.2.1", "alice", 2)  # the login's count started again...
    # ... the client's did not: 4 failures there now
    assert limiter.reserve("192.0.2.1", "bob") is None


def test_a_try_with_no_verdict_gives_its_slot_back_and_keeps_the_failures():
    limiter = AuthLimiter(AuthLimits(per_login=3), clock=Clock())
    _fail(limiter, "192.0.2.1", "alice", 2)
    for _ in range(10):  # e.g. clients that hang up during verification
        ticket = limiter.reserve("192.0.2.1", "alice")
        assert ticket is not None
        limiter.release(ticket)
    _fail(limiter, "192.0.2.1", "alice", 1)
    assert limiter.reserve("192.0.2.1", "alice") is None


def test_one_login_locked_leaves_other_logins_on_the_same_client():
    limiter = AuthLimiter(clock=Clock())
    _fail(limiter, "192.0.2.1", "alice", 5)
    assert limiter.reserve("192.0.2.1", "alice") is None
    assert limiter.reserve("192.0.2.1", "bob") is not None
    assert limiter.reserve("192.0.2.2", "alice") is not None


def test_per_client_limit_across_logins():
    limiter = AuthLimiter(clock=Clock())
    for i in range(30):
        _fail(limiter, "192.0.2.1", f"u{i}", 1)
    assert limiter.reserve("192.0.2.1", "someone-else") is None
    assert limiter.reserve("192.0.2.9", "someone-else") is not None


def test_the_window_passes():
    clock = Clock()
    limiter = AuthLimiter(AuthLimits(window=300), clock=clock)
    _fail(limiter, "192.0.2.1", "alice", 5)
    clock.now += 299
    assert limiter.reserve("192.0.2.1", "alice") is None
    clock.now += 2
    assert limiter.reserve("192.0.2.1", "alice") is not None


def test_ipv6_clients_are_counted_by_their_64():
    assert client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    limiter = AuthLimiter(clock=Clock())
    for i in range(5):
        _fail(limiter, f"2001:db8:1:2::{i + 1}", "alice", 1)
    assert limiter.reserve("2001:db8:1:2:ffff::9", "alice") is None
    assert limiter.reserve("2001:db8:1:3::1", "alice") is not None


def test_memory_is_bounded():
    limiter = AuthLimiter(AuthLimits(max_keys=100), clock=Clock())
    for i in range(1000):
        _fail(limiter, f"10.{i // 250}.{i % 250}.1", f"u{i}", 1)
    assert len(limiter._logins) <= 100 and len(limiter._clients) <= 100


def test_refused_tries_count_nothing_and_make_no_keys():
    limiter = AuthLimiter(AuthLimits(per_client=2), clock=Clock())
    _fail(limiter, "192.0.2.1", "a", 2)
    for i in range(50):
        assert limiter.reserve("192.0.2.1", f"spray{i}") is None
    assert len(limiter._logins) == 1


def test_unlock_by_login_by_client_and_only_what_came_before():
    clock = Clock()
    limiter = AuthLimiter(AuthLimits(per_login=2, per_client=3), clock=clock)
    _fail(limiter, "192.0.2.1", "alice", 2)
    _fail(limiter, "192.0.2.2", "alice", 2)
    _fail(limiter, "192.0.2.3", "bob", 2)
    _fail(limiter, "192.0.2.3", "carol", 1)  # 192.0.2.3 is now locked as a whole
    clock.now += 1
    limiter.unlock([Unlock("alice", None, clock.now)])
    assert limiter.reserve("192.0.2.1", "alice") is not None
    assert limiter.reserve("192.0.2.2", "alice") is not None
    assert limiter.reserve("192.0.2.3", "dave") is None
    limiter.unlock([Unlock(None, "192.0.2.3", clock.now)])
    assert limiter.reserve("192.0.2.3", "dave") is not None
    assert limiter.reserve("192.0.2.3", "bob") is not None
    # Failures after the unlock count again, whatever the unlock said.
    clock.now += 1
    _fail(limiter, "192.0.2.9", "erin", 2)
    limiter.unlock([Unlock("erin", None, clock.now - 1)])
    assert limiter.reserve("192.0.2.9", "erin") is None


async def test_lockouts_are_published_restored_and_unlocked_through_the_files(tmp_path):
    clock = Clock()
    files = LockoutFiles(tmp_path / "users.toml")
    limiter = AuthLimiter(clock=clock, files=files)
    _fail(limiter, "192.0.2.1", "alice", 5)
    await limiter.publish()
    (lock,) = files.read_lockouts(clock.now)
    assert (lock.client, lock.login, lock.failures) == ("192.0.2.1", "alice", 5)
    assert lock.until == clock.now + 300
    # A restarted gateway keeps the lockout...
    again = AuthLimiter(clock=clock, files=LockoutFiles(tmp_path / "users.toml"))
    assert again.reserve("192.0.2.1", "alice") is None
    # ... until the operator's unlock, seen at the next try (the file changed).
    clock.now += 1
    files.add_unlock(Unlock("alice", None, clock.now), window=300)
    assert again.reserve("192.0.2.1", "alice") is not None
    await again.publish()
    assert files.read_lockouts(clock.now) == []


def test_unlocks_file_keeps_only_what_still_matters(tmp_path):
    files = LockoutFiles(tmp_path / "users.toml")
    for i in range(150):
        files.add_unlock(Unlock(f"u{i}", None, 1000.0 + i), window=100)
    kept = files.read_unlocks()
    assert kept[0].login == "u50" and len(kept) == 100
    files.add_unlock(Unlock("late", None, 5000.0), window=100)
    assert [u.login for u in files.read_unlocks()] == ["late"]


@pytest.mark.parametrize("content", ["{not json", '{"unlocks": 3}', '{"unlocks": [{"x": 1}]}'])
def test_a_damaged_unlocks_file_is_reported_not_fatal(tmp_path, content):
    events = MemorySink()
    files = LockoutFiles(tmp_path / "users.toml")
    files.unlocks.write_text(content)
    limiter = AuthLimiter(clock=Clock(), files=files, events=events)
    assert limiter.reserve("192.0.2.1", "alice") is not None
    (warning,) = events.of(Lifecycle)
    assert "unlocks not applied" in warning.message and warning.warning
    files.add_unlock(Unlock("alice", None, 1.0), window=300)  # replaces the damaged file
    assert json.loads(files.unlocks.read_text())["unlocks"][0]["login"] == "alice"

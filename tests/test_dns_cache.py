"""securemail.dns.cache on its own, with a clock we move: bounds, LRU order, TTL caps."""

import dns.rdata
import pytest

from securemail.dns.cache import MAX_NEGATIVE_TTL, MAX_TTL, Answer, AnswerCache

RECORD = Answer((dns.rdata.from_text("IN", "A", "192.0.2.1"),))
NODATA = Answer(None)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def key(n):
    return (b"\x01n" + bytes([n]) + b"\x00", 1)


def test_entries_expire_after_their_ttl():
    clock = Clock()
    cache = AnswerCache(10, clock)
    cache.put(key(1), RECORD, 30)
    clock.now += 29.9
    assert cache.get(key(1)) is RECORD
    clock.now += 0.2
    assert cache.get(key(1)) is None
    assert len(cache) == 0  # dropped when found expired


def test_zero_ttl_is_not_cached():
    cache = AnswerCache(10, Clock())
    cache.put(key(1), RECORD, 0)
    assert len(cache) == 0


@pytest.mark.parametrize(("answer", "cap"), [(RECORD, MAX_TTL), (NODATA, MAX_NEGATIVE_TTL)])
def test_ttls_are_capped(answer, cap):
    clock = Clock()
    cache = AnswerCache(10, clock)
    cache.put(key(1), answer, 2**31)
    clock.now += cap - 1
    assert cache.get(key(1)) is answer
    clock.now += 2
    assert cache.get(key(1)) is None


def test_least_recently_used_goes_first():
    cache = AnswerCache(3, Clock())
    for n in (1, 2, 3):
        cache.put(key(n), RECORD, 60)
    assert cache.get(key(1)) is RECORD  # 1 is now the most recent
    cache.put(key(4), RECORD, 60)
    assert len(cache) == 3
    assert cache.get(key(2)) is None
    assert all(cache.get(key(n)) is RECORD for n in (1, 3, 4))


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        AnswerCache(0)

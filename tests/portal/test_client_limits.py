"""``ClientLimiter``: the one per-client-address limit (the web applies it)."""

from __future__ import annotations

import pytest
from harness.portal_pages import Clock

from securemail.portal import ClientLimiter


def test_a_sliding_window_per_client():
    clock = Clock(0.0)
    limiter = ClientLimiter(2, 60, clock=clock)
    assert [limiter.allow("192.0.2.1") for _ in range(3)] == [0.0, 0.0, 60.0]
    assert limiter.allow("192.0.2.2") == 0.0
    clock.now = 30.0
    assert limiter.allow("192.0.2.1") == 30.0  # refused tries are not counted
    clock.now = 60.0
    assert limiter.allow("192.0.2.1") == 0.0


def test_it_forgets_the_oldest_clients_first():
    clock = Clock(0.0)
    limiter = ClientLimiter(1, 60, clock=clock, max_clients=2)
    assert [limiter.allow(c) for c in ("a", "b", "a", "c")] == [0.0, 0.0, 60.0, 0.0]
    assert limiter.allow("b") == 0.0  # forgotten: "a" was seen since, "b" was the oldest
    assert limiter.allow("a") == 0.0  # forgotten when "b" came back


@pytest.mark.parametrize(("limit", "window"), [(0, 60), (1, 0)])
def test_bounds_are_checked(limit, window):
    with pytest.raises(ValueError, match="limit"):
        ClientLimiter(limit, window)

"""Rate limiter: SampleToInsertRatio semantics, no deadlock, clean shutdown."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distdrq.replay.ratelimit import RateLimiter, RateLimiterClosed


def test_inserts_free_below_min_size_and_sampling_waits_for_it():
    rl = RateLimiter(samples_per_insert=4, min_size_to_sample=10, error_buffer=8)
    assert not rl.can_sample()
    for _ in range(9):
        assert rl.insert(1, timeout=0)
    assert not rl.can_sample()
    assert rl.insert(1, timeout=0)
    assert rl.can_sample()


def test_ratio_is_enforced_within_the_error_window():
    spi, min_size, buf = 8.0, 10, 16.0
    rl = RateLimiter(spi, min_size, buf)
    for _ in range(min_size):
        rl.insert(1)
    # diff = 80; max_diff = 96: two more inserts are allowed (checked before each), then blocked
    assert rl.insert(1, timeout=0) and rl.insert(1, timeout=0) and rl.insert(1, timeout=0)
    assert not rl.insert(1, timeout=0)
    # sampling brings diff down; min_diff = 64
    while rl.sample(4, timeout=0):
        pass
    diff = rl.stats().inserts * spi - rl.stats().samples
    assert rl.min_diff - 4 <= diff < rl.min_diff  # checked before each sample
    assert rl.can_insert()


def test_blocked_sampler_wakes_on_insert_and_blocked_time_is_counted():
    rl = RateLimiter(samples_per_insert=1, min_size_to_sample=5, error_buffer=1)
    got = []
    t = threading.Thread(target=lambda: got.append(rl.sample(1, timeout=5)))
    t.start()
    time.sleep(0.2)
    assert not got
    rl.insert(5)
    t.join(5)
    assert got == [True]
    assert rl.stats().sample_blocked_seconds >= 0.15


def test_close_wakes_waiters_and_later_calls_raise():
    rl = RateLimiter(samples_per_insert=1, min_size_to_sample=100)
    errors = []

    def waiter():
        try:
            rl.sample(1)
        except RateLimiterClosed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    rl.close()
    for t in threads:
        t.join(2)
        assert not t.is_alive()
    assert len(errors) == 3
    with pytest.raises(RateLimiterClosed):
        rl.insert(1)


@settings(max_examples=200, deadline=None)
@given(
    spi=st.floats(0.1, 300),
    min_size=st.integers(1, 500),
    buf_factor=st.floats(0.01, 5),
    chunk=st.integers(1, 64),
    batch=st.integers(1, 1024),
    ops=st.lists(st.booleans(), min_size=1, max_size=300),
)
def test_never_both_blocked(spi, min_size, buf_factor, chunk, batch, ops):
    rl = RateLimiter(spi, min_size, error_buffer=buf_factor * spi)
    for want_insert in ops:
        ins, smp = rl.can_insert(), rl.can_sample()
        assert ins or smp, "deadlock: neither side may proceed"
        if (want_insert and ins) or not smp:
            rl.insert(chunk, timeout=0)
        else:
            rl.sample(batch, timeout=0)


def test_measured_ratio_tracks_configured_ratio():
    rl = RateLimiter(samples_per_insert=128, min_size_to_sample=100)
    inserted = 0
    for _ in range(20_000):
        if rl.can_sample():
            rl.sample(256, timeout=0)
        else:
            rl.insert(1, timeout=0)
            inserted += 1
    assert rl.stats().measured_samples_per_insert == pytest.approx(128, rel=0.05)


def test_state_round_trip():
    rl = RateLimiter(2, 3)
    rl.insert(10)
    rl.sample(4)
    other = RateLimiter(2, 3)
    other.load_state_dict(rl.state_dict())
    assert other.stats().inserts == 10 and other.stats().samples == 4

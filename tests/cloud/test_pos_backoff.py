"""The polling schedule: first after ~1 s, growing to ~5 s, jittered, seeded."""

from __future__ import annotations

import itertools
import random

import pytest

from cloud.backoff import POLL, RETRY, Backoff


def test_poll_schedule_without_jitter() -> None:
    plain = Backoff(jitter=0)
    first = list(itertools.islice(plain.delays(random.Random(0)), 7))
    assert first == pytest.approx([1.0, 1.6, 2.56, 4.096, 5.0, 5.0, 5.0])


def test_default_poll_is_jittered_within_ten_percent() -> None:
    rng = random.Random(1234)
    for attempt, delay in zip(range(200), POLL.delays(rng), strict=False):
        base = POLL.base(attempt)
        assert base * 0.9 <= delay <= base * 1.1
    assert POLL.base(0) == 1.0
    assert POLL.base(50) == 5.0


def test_seeded_rng_gives_the_same_schedule() -> None:
    a = list(itertools.islice(POLL.delays(random.Random(7)), 10))
    b = list(itertools.islice(POLL.delays(random.Random(7)), 10))
    c = list(itertools.islice(POLL.delays(random.Random(8)), 10))
    assert a == b
    assert a != c


def test_jitter_spreads_clients() -> None:
    delays = {round(POLL.delay(4, random.Random(seed)), 6) for seed in range(50)}
    assert len(delays) > 40


def test_huge_attempt_does_not_overflow() -> None:
    assert Backoff(factor=10).base(10_000) == 5.0
    assert RETRY.base(100) == 4.0


@pytest.mark.parametrize(
    "kwargs",
    [{"first": 0}, {"first": 6, "cap": 5}, {"factor": 0.5}, {"jitter": 1.0}, {"jitter": -0.1}],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is not part of the contract
        Backoff(**kwargs)


def test_negative_attempt_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        POLL.base(-1)

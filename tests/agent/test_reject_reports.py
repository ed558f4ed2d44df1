"""``agent.reject_reports``: a burst, then one report per interval, counts carried."""

from __future__ import annotations

from agent.reject_reports import RejectReports, Report


def test_burst_then_counted_then_carried() -> None:
    r = RejectReports(burst=3, interval=2.0)
    assert [r.offer("malformed", 0.0) for _ in range(3)] == [Report("malformed", 0)] * 3
    assert r.offer("bad_signature", 0.1) is None
    assert r.offer("bad_signature", 0.2) is None
    assert r.suppressed == 2
    assert r.offer("malformed", 1.0) is None  # half a token back
    report = r.offer("malformed", 2.1)
    assert report == Report("malformed", 3)
    assert report.text == "malformed (+3 more rejected since the last report)"
    assert r.suppressed == 0


def test_flush_when_the_token_is_back() -> None:
    r = RejectReports(burst=1, interval=2.0)
    assert r.offer("a", 0.0) == Report("a", 0)
    assert r.due(0.0) is None
    for t in (0.1, 0.2, 0.3):
        assert r.offer("b", t) is None
    assert r.due(0.5) == 1.5
    assert r.flush(1.0) is None  # not yet
    flushed = r.flush(2.0)
    assert flushed == Report("b", 2)  # the last stands for itself, two more counted
    assert r.flush(10.0) is None
    assert r.due(10.0) is None


def test_drain_reports_what_is_held_without_a_token() -> None:
    r = RejectReports(burst=1, interval=60.0)
    assert r.offer("a", 0.0) == Report("a", 0)
    assert r.drain() is None  # nothing held
    assert r.offer("b", 0.1) is None
    assert r.offer("c", 0.2) is None
    assert r.flush(0.3) is None  # no token for a minute
    assert r.drain() == Report("c", 1)  # stopping: reported all the same
    assert r.suppressed == 0
    assert r.drain() is None

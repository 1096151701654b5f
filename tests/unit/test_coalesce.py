"""Tests for reloadd.coalesce: the debounce / max_delay / min_interval / hold rules.

The coalescer is pure: every call takes the time, so a fake clock drives it and nothing
sleeps. ``Driver`` plays the part of the service task (fire when due, one reload at a
time: it asks ``due_at`` only between reloads).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reloadd.coalesce import PATH_COUNT_CAP, PATH_SAMPLE_CAP, Batch, Coalescer

DEBOUNCE, MAX_DELAY = 0.3, 2.0


def make(**kw: float) -> Coalescer:
    return Coalescer(
        debounce=kw.pop("debounce", DEBOUNCE), max_delay=kw.pop("max_delay", MAX_DELAY), **kw
    )


@dataclass
class Driver:
    """A fake clock plus the service's loop: fires due batches as time advances.

    A reload takes ``reload_time`` seconds (changes may arrive meanwhile); ``fired`` keeps
    (fire time, batch) in order.
    """

    c: Coalescer
    now: float = 0.0
    reload_time: float = 0.0
    fired: list[tuple[float, Batch]] = field(default_factory=list)
    _reload_ends: float | None = None

    def run_until(self, t: float) -> None:
        while True:
            if self._reload_ends is not None:
                if self._reload_ends > t:
                    break  # busy: the service task is inside the reload
                self.now = self._reload_ends
                self._reload_ends = None
            due = self.c.due_at()
            if due is None or due > t:
                break
            self.now = max(self.now, due)
            self.fired.append((self.now, self.c.take(self.now)))
            if self.reload_time > 0:
                self._reload_ends = self.now + self.reload_time
        self.now = max(self.now, t)

    def change(self, t: float, *paths: str) -> None:
        self.run_until(t)
        self.c.add(t, paths)

    def times(self) -> list[float]:
        return [round(t, 6) for t, _ in self.fired]


# --------------------------------------------------------------------------- debounce


def test_nothing_pending_is_never_due() -> None:
    c = make()
    assert not c.pending
    assert c.due_at() is None


def test_one_change_fires_a_debounce_later() -> None:
    d = Driver(make())
    d.change(1.0, "a")
    assert d.c.due_at() == pytest.approx(1.3)
    d.run_until(1.29)
    assert d.fired == []
    d.run_until(10)
    assert d.times() == [1.3]
    [(_, batch)] = d.fired
    assert batch == Batch(paths=("a",), count=1, count_exact=True, first=1.0, last=1.0)


def test_trailing_edge_waits_for_the_last_change() -> None:
    """Changes 0.2 s apart with a 0.3 s debounce: one batch, 0.3 s after the last."""
    d = Driver(make())
    for i in range(5):
        d.change(i * 0.2, f"f{i}")
    d.run_until(10)
    assert d.times() == [pytest.approx(0.8 + 0.3)]
    assert d.fired[0][1].count == 5


def test_a_pause_longer_than_the_debounce_splits_batches() -> None:
    d = Driver(make())
    d.change(0.0, "a")
    d.change(0.5, "b")
    d.run_until(10)
    assert d.times() == [0.3, 0.8]


def test_max_delay_caps_a_busy_tree() -> None:
    """A change every 0.1 s for 5 s: batches fire every max_delay, none is lost."""
    d = Driver(make())
    for i in range(50):
        d.change(i * 0.1, f"f{i}")
    d.run_until(100)
    # the change at 2.0 comes after the first batch fired: it starts the second one
    assert d.times() == [2.0, pytest.approx(4.0), pytest.approx(4.9 + 0.3)]
    assert sum(b.count for _, b in d.fired) == 50


def test_empty_change_still_counts() -> None:
    """An overflow or a vanished root reports no path but is still a change."""
    d = Driver(make())
    d.change(0.0)
    d.run_until(10)
    [(_, batch)] = d.fired
    assert batch.count == 0
    assert batch.paths == ()


# --------------------------------------------------------------------------- min_interval


def test_min_interval_spaces_reloads() -> None:
    d = Driver(make(debounce=0.02, min_interval=1.0))
    d.change(0.0, "a")
    d.change(0.1, "b")
    d.change(0.5, "c")
    d.run_until(10)
    assert d.times() == [0.02, pytest.approx(1.02)]
    assert d.fired[1][1].paths == ("b", "c")


def test_min_interval_wins_over_max_delay() -> None:
    d = Driver(make(debounce=0.1, max_delay=0.5, min_interval=5.0))
    d.change(0.0, "a")
    d.run_until(1)
    d.change(1.0, "b")
    assert d.c.due_at() == pytest.approx(0.1 + 5.0)


# --------------------------------------------------------------------------- holding


def test_holding_waits_for_max_delay() -> None:
    """A file still open (or a VCS lock): only max_delay fires the batch."""
    d = Driver(make())
    d.c.holding = True
    d.change(0.0, "upload.bin")
    d.run_until(1.9)
    assert d.fired == []
    d.run_until(10)
    assert d.times() == [2.0]


def test_hold_released_fires_after_the_debounce() -> None:
    d = Driver(make())
    d.c.holding = True
    d.change(0.0, "upload.bin")
    d.change(1.0, "upload.bin")  # the close: a change, and then the hold is re-evaluated
    d.c.holding = False
    d.run_until(10)
    assert d.times() == [1.3]
    assert d.fired[0][1].count == 1


# --------------------------------------------------------------------------- during a reload


def test_changes_during_a_reload_earn_exactly_one_more() -> None:
    """A reload that takes 1 s; three changes arrive meanwhile: one more reload, after it."""
    d = Driver(make(), reload_time=1.0)
    d.change(0.0, "a")
    d.run_until(0.3)
    assert d.times() == [0.3]
    for t in (0.4, 0.5, 0.6):
        d.change(t, f"during{t}")
    assert d.c.pending  # kept for the next batch
    d.run_until(1.29)
    assert d.times() == [0.3]  # settled at 0.9, but nothing fires while the reload runs
    d.run_until(10)
    assert d.times() == [0.3, pytest.approx(1.3)]
    assert d.fired[1][1].count == 3


def test_a_change_during_a_reload_is_never_dropped_even_when_settled() -> None:
    """The next batch is due immediately once the reload ends if it settled meanwhile."""
    d = Driver(make(), reload_time=5.0)
    d.change(0.0, "a")
    d.change(1.0, "b")  # in flight: settles at 1.3, the reload ends at 5.3
    d.run_until(100)
    assert d.times() == [0.3, pytest.approx(5.3)]


def test_take_hands_over_and_resets() -> None:
    c = make()
    c.add(0.0, ["a", "b", "a"])
    c.add(0.1, ["c"])
    batch = c.take(0.4)
    assert batch == Batch(paths=("a", "b", "c"), count=3, count_exact=True, first=0.0, last=0.1)
    assert not c.pending
    assert c.last_start == 0.4
    assert c.due_at() is None


def test_manual_take_with_nothing_pending() -> None:
    """``reloadctl reload`` with no change: an empty batch stamped now."""
    c = make()
    batch = c.take(7.0)
    assert batch == Batch(paths=(), count=0, count_exact=True, first=7.0, last=7.0)


# --------------------------------------------------------------------------- caps


def test_sample_and_count_caps() -> None:
    c = make()
    paths = [f"f{i}" for i in range(PATH_COUNT_CAP + 10)]
    c.add(0.0, paths)
    c.add(0.1, paths[:5])  # duplicates do not count again
    batch = c.take(1.0)
    assert batch.paths == tuple(paths[:PATH_SAMPLE_CAP])
    assert batch.count == PATH_COUNT_CAP + 10
    assert batch.count_exact is False


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
    debounce=st.sampled_from([0.02, 0.1, 0.3]),
    max_delay=st.sampled_from([0.5, 2.0]),
    min_interval=st.sampled_from([0.0, 0.7]),
    reload_time=st.sampled_from([0.0, 0.4]),
)
def test_every_change_lands_in_exactly_one_timely_batch(
    gaps: list[float], debounce: float, max_delay: float, min_interval: float, reload_time: float
) -> None:
    """For any change times: no change is lost or counted twice; no batch fires before
    its debounce unless capped; none fires later than the caps allow."""
    d = Driver(
        make(debounce=debounce, max_delay=max_delay, min_interval=min_interval),
        reload_time=reload_time,
    )
    t = 0.0
    for i, gap in enumerate(gaps):
        t += gap
        d.change(t, f"p{i}")
    d.run_until(t + 100)
    assert sum(b.count for _, b in d.fired) == len(gaps)
    seen = [p for _, b in d.fired for p in b.paths]
    assert len(seen) == len(set(seen))
    starts = [at for at, _ in d.fired]
    for k, (at, batch) in enumerate(d.fired):
        assert at >= batch.last  # never before the batch's own last change
        settled = at >= batch.last + debounce - 1e-9
        capped = at >= batch.first + max_delay - 1e-9
        assert settled or capped
        if k:
            assert at >= starts[k - 1] + min_interval - 1e-9
            assert at >= starts[k - 1] + reload_time - 1e-9  # one reload at a time
            # late only because of the rate limit or the reload before it
            bound = max(
                batch.first + max_delay,
                starts[k - 1] + min_interval,
                starts[k - 1] + reload_time,
            )
            assert at <= bound + 1e-9
        else:
            assert at <= batch.first + max_delay + 1e-9

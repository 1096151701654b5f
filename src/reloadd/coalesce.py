"""Turn a stream of changes into one trigger per settled batch. Pure: the caller passes
the time (CLOCK_MONOTONIC seconds), so the rules are tested without sleeping.

The rules (DESIGN.md):

- trailing-edge ``debounce``: a batch fires ``debounce`` after its *last* change;
- bounded by ``max_delay``: ...but never later than ``max_delay`` after its *first*
  change, however busy the tree stays;
- rate-limited by ``min_interval``: never sooner than ``min_interval`` after the previous
  reload started (this cap wins over ``max_delay``);
- held while the change set is visibly incomplete (a file modified but not closed, a VCS
  lock present): then only ``max_delay`` fires it;
- a change that arrives while a reload is under way is kept for the next batch: it earns
  one more reload, never none. (``take`` starts a new batch at once; the caller runs one
  reload at a time and asks ``due_at`` only between reloads.)

Changed paths are kept up to ``PATH_SAMPLE_CAP`` for display and de-duplicated up to
``PATH_COUNT_CAP`` for an exact count; past that the count is a lower bound
(``count_exact`` is False), so a storm cannot grow memory without bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

PATH_SAMPLE_CAP = 20
PATH_COUNT_CAP = 100_000


@dataclass(frozen=True)
class Batch:
    """One settled change set, handed to the reload."""

    paths: tuple[str, ...]  # the first PATH_SAMPLE_CAP changed paths, in arrival order
    count: int  # distinct changed paths (a lower bound when not count_exact)
    count_exact: bool
    first: float  # monotonic time of the first and last change in the batch
    last: float


@dataclass
class Coalescer:
    """Debounce / max_delay / min_interval / hold, for one service."""

    debounce: float
    max_delay: float
    min_interval: float = 0.0
    holding: bool = False
    last_start: float | None = None
    _first: float | None = None
    _last: float = 0.0
    _seen: set[str] = field(default_factory=set)
    _sample: list[str] = field(default_factory=list)
    _overflowed: int = 0

    @property
    def pending(self) -> bool:
        return self._first is not None

    def add(self, now: float, paths: Iterable[str]) -> None:
        """Record changes seen at ``now`` (an empty ``paths`` still counts as a change)."""
        if self._first is None:
            self._first = now
        self._last = max(self._last, now)
        for path in paths:
            if path in self._seen:
                continue
            if len(self._seen) >= PATH_COUNT_CAP:
                self._overflowed += 1
                continue
            self._seen.add(path)
            if len(self._sample) < PATH_SAMPLE_CAP:
                self._sample.append(path)

    def due_at(self) -> float | None:
        """When the pending batch should fire, or None (nothing pending)."""
        if self._first is None:
            return None
        cap = self._first + self.max_delay
        at = cap if self.holding else min(self._last + self.debounce, cap)
        if self.last_start is not None:
            at = max(at, self.last_start + self.min_interval)
        return at

    def take(self, now: float) -> Batch:
        """Hand over the pending batch (empty for a manual reload) as a reload starts."""
        batch = Batch(
            paths=tuple(self._sample),
            count=len(self._seen) + self._overflowed,
            count_exact=self._overflowed == 0,
            first=self._first if self._first is not None else now,
            last=self._last if self._first is not None else now,
        )
        self._first, self._last = None, 0.0
        self._seen, self._sample, self._overflowed = set(), [], 0
        self.last_start = now
        return batch

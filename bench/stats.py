"""Small statistics: nearest-rank percentiles, so p99 of 100 samples is the 99th smallest."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max (and min, mean) of a non-empty sample."""
    if not values:
        return {}
    return {
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None

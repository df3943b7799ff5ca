"""Timing statistics: the schema's ``timing`` object from a list of repeats (seconds)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def timing_stats(times_s: Sequence[float]) -> dict:
    """Median and spread of ``times_s``: {median_s, min_s, max_s, p25_s, p75_s, repeats}.

    >>> timing_stats([3.0, 1.0, 2.0])["median_s"]
    2.0
    """
    if len(times_s) == 0:
        raise ValueError("timing_stats needs at least one time")
    a = np.asarray(times_s, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"times must be finite and non-negative, got {list(times_s)}")
    p25, med, p75 = np.percentile(a, [25, 50, 75])
    return {"median_s": float(med), "min_s": float(a.min()), "max_s": float(a.max()),
            "p25_s": float(p25), "p75_s": float(p75), "repeats": int(a.size)}

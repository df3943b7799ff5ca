"""Compute time per layer kind, TP shard degree and phase, fitted from the model-profile's timings.

    time = fixed_s + per_token_s * tokens + per_token_seq_s * tokens * seq_len,   tokens = samples on the rank * seq_len

fitted by non-negative least squares (``scipy.optimize.nnls``) on relative residuals (each row divided by its
measured time), so a 10 ms point weighs as much as a 1 s one. The ``per_token_seq_s`` term (attention's quadratic
part) is fitted only when the profile has several sequence lengths; otherwise it is 0 and the fit holds for the
profiled length only. A TP degree t the profile lacks is derived from the nearest profiled degree t0 by the FLOPs a
shard does: per-token terms scaled by t0/t, the fixed overhead kept, and flagged ``extrapolated``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from .comm import quality

PHASES = ("forward", "backward", "backward_recompute")


@dataclass(frozen=True)
class ComputeFit:
    fixed_s: float
    per_token_s: float
    per_token_seq_s: float
    quality: dict | None = None
    extrapolated: bool = False
    note: str = ""

    def time(self, samples: float, seq_len: int) -> float:
        tokens = samples * seq_len
        return self.fixed_s + self.per_token_s * tokens + self.per_token_seq_s * tokens * seq_len

    def lin(self, seq_len: int, dp: int) -> tuple[float, float]:
        """(fixed_s, per_sample_s) per micro-batch of b samples split over dp ranks."""
        return self.fixed_s, (self.per_token_s * seq_len + self.per_token_seq_s * seq_len * seq_len) / dp

    def scaled(self, factor: float, note: str) -> ComputeFit:
        return ComputeFit(self.fixed_s, self.per_token_s * factor, self.per_token_seq_s * factor, None, True, note)


def fit_compute(seq_lens, micro_batch_sizes, times, with_seq_term: bool | None = None) -> ComputeFit:
    """NNLS fit of time = fixed + a * tokens (+ c * tokens * seq) over the measured points.

    >>> f = fit_compute([8, 8, 8], [1, 2, 4], [0.011, 0.019, 0.035])
    >>> round(f.fixed_s, 4), round(f.per_token_s * 1e3, 4)
    (0.003, 1.0)
    """
    s = np.asarray(seq_lens, float)
    tokens = np.asarray(micro_batch_sizes, float) * s
    t = np.maximum(np.asarray(times, float), 1e-12)
    if with_seq_term is None:
        with_seq_term = np.unique(s).size > 1
    cols = [np.ones_like(t), tokens] + ([tokens * s] if with_seq_term else [])
    X = np.stack(cols, axis=1)
    if np.unique(tokens).size < 2 and not with_seq_term:     # one point (or one size): no overhead can be told
        X = X[:, 1:]
        coef = np.concatenate([[0.0], nnls(X / t[:, None], np.ones_like(t))[0]])
    else:
        coef, _ = nnls(X / t[:, None], np.ones_like(t))
    full = np.zeros(3)
    full[: coef.size] = coef
    pred = full[0] + full[1] * tokens + full[2] * tokens * s
    return ComputeFit(float(full[0]), float(full[1]), float(full[2]), quality(pred, t))


def _points(layer_entry: dict, phase: str):
    rows = layer_entry["timings"]
    return ([r["seq_len"] for r in rows], [r["micro_batch_size"] for r in rows],
            [r[phase]["median_s"] for r in rows])


def identified(fit: ComputeFit, layer_entry: dict) -> bool:
    """Whether the measurements showed time growing with tokens (a positive per-token or sequence term)."""
    seq, mbs, _ = _points(layer_entry, "forward")
    several = len({b * s for b, s in zip(mbs, seq, strict=True)}) > 1
    return not several or fit.per_token_s > 0 or fit.per_token_seq_s > 0


def refit_with_slope(layer_entry: dict, phase: str, per_token_s: float, per_token_seq_s: float,
                     note: str) -> ComputeFit:
    """Keep the given per-token terms, fit only the fixed overhead (median of what they leave, >= 0)."""
    seq, mbs, t = (np.asarray(x, float) for x in _points(layer_entry, phase))
    tokens = mbs * seq
    slope = per_token_s * tokens + per_token_seq_s * tokens * seq
    fixed = max(float(np.median(t - slope)), 0.0)
    return ComputeFit(fixed, per_token_s, per_token_seq_s, quality(fixed + slope, t), False, note)


def proportional(layer_entry: dict, phase: str, note: str) -> ComputeFit:
    """time = per_token * tokens through the origin (relative least squares): the FLOPs-proportional fallback."""
    seq, mbs, t = (np.asarray(x, float) for x in _points(layer_entry, phase))
    tokens = mbs * seq
    per_token = float(np.mean(t / tokens))
    return ComputeFit(0.0, per_token, 0.0, quality(per_token * tokens, t), False, note)


def fit_layer_phases(layer_entry: dict) -> dict[str, ComputeFit]:
    """{phase: fit} for one model-profile layer entry."""
    return {ph: fit_compute(*_points(layer_entry, ph)) for ph in PHASES}


def fill_unidentified(entries: dict[int, dict], fits: dict[int, dict[str, ComputeFit]], layer: str) -> list[str]:
    """Fits whose times did not grow with tokens (noise swamped the slope) borrow the per-token terms of the
    nearest TP degree of the same layer and phase that did, scaled by FLOPs (t0/t), and refit the overhead;
    with none, time is taken proportional to tokens. Returns one note per replaced fit."""
    notes = []
    for ph in PHASES:
        good = {t: f[ph] for t, f in fits.items() if identified(f[ph], entries[t])}
        for t, f in fits.items():
            if t in good:
                continue
            if good:
                t0 = min(good, key=lambda x: (abs(np.log2(x) - np.log2(t)), -x))
                note = (f"{layer} tp={t} {ph}: times did not grow with tokens; per-token terms from tp={t0} "
                        f"x {t0}/{t}, overhead refitted")
                f[ph] = refit_with_slope(entries[t], ph, good[t0].per_token_s * t0 / t,
                                         good[t0].per_token_seq_s * t0 / t, note)
            else:
                note = f"{layer} tp={t} {ph}: times did not grow with tokens; fitted proportional to tokens"
                f[ph] = proportional(entries[t], ph, note)
            notes.append(note)
    return notes


def derive_tp(fits_by_tp: dict[int, dict[str, ComputeFit]], tp: int) -> dict[str, ComputeFit]:
    """Fits for an unprofiled TP degree from the nearest profiled one, per-token terms scaled by FLOPs (t0/t)."""
    t0 = min(fits_by_tp, key=lambda t: (abs(np.log2(t) - np.log2(tp)), -t))
    note = f"derived from tp={t0}: per-token terms x {t0}/{tp} (FLOPs per shard), fixed overhead kept"
    return {ph: f.scaled(t0 / tp, note) for ph, f in fits_by_tp[t0].items()}

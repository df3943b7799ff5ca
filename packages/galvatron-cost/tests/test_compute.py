"""Compute fits: NNLS recovers known coefficients; unprofiled TP degrees scale by FLOPs; lin folding."""
import numpy as np
import pytest

from galvatron_cost.compute import ComputeFit, derive_tp, fit_compute


def test_fit_recovers_fixed_and_per_token_with_noise():
    rng = np.random.default_rng(0)
    seq = [64] * 12
    mbs = [1, 2, 4, 8] * 3
    t = [(2e-3 + 5e-6 * b * s) * np.exp(rng.normal(0, 0.03)) for b, s in zip(mbs, seq, strict=True)]
    f = fit_compute(seq, mbs, t)
    assert f.fixed_s == pytest.approx(2e-3, rel=0.15)
    assert f.per_token_s == pytest.approx(5e-6, rel=0.05)
    assert f.per_token_seq_s == 0.0                  # one sequence length: no attention term
    assert f.quality["r2"] > 0.98 and f.quality["points"] == 12


def test_fit_separates_the_sequence_term_when_several_lengths():
    seq = [32, 32, 64, 64, 128, 128]
    mbs = [1, 4, 1, 4, 1, 4]
    t = [1e-3 + 2e-6 * b * s + 3e-8 * b * s * s for b, s in zip(mbs, seq, strict=True)]
    f = fit_compute(seq, mbs, t)
    assert (f.fixed_s, f.per_token_s, f.per_token_seq_s) == pytest.approx((1e-3, 2e-6, 3e-8), rel=1e-6)
    assert f.time(4, 128) == pytest.approx(t[-1], rel=1e-9)


def test_fit_never_goes_negative():
    # times that fall with size would want a negative slope: NNLS clamps it at 0
    f = fit_compute([16, 16, 16], [1, 2, 4], [3e-3, 2e-3, 1e-3])
    assert f.fixed_s >= 0 and f.per_token_s >= 0 and f.per_token_seq_s >= 0


def test_lin_folds_sequence_and_dp():
    f = ComputeFit(1e-3, 2e-6, 1e-8)
    fixed, per_sample = f.lin(seq_len=100, dp=4)
    # b samples over dp=4: each rank runs b/4 samples of 100 tokens
    assert fixed == 1e-3
    assert per_sample == pytest.approx((2e-6 * 100 + 1e-8 * 100 * 100) / 4)
    assert fixed + per_sample * 8 == pytest.approx(f.time(2, 100))


def test_unprofiled_tp_scales_per_token_by_flops():
    base = {"forward": ComputeFit(1e-3, 4e-6, 1e-8), "backward": ComputeFit(2e-3, 8e-6, 2e-8),
            "backward_recompute": ComputeFit(3e-3, 12e-6, 3e-8)}
    two = {ph: ComputeFit(f.fixed_s, f.per_token_s / 2, f.per_token_seq_s / 2) for ph, f in base.items()}
    got = derive_tp({1: base, 2: two}, 8)             # nearest profiled: tp=2, factor 2/8
    assert got["forward"].per_token_s == pytest.approx(2e-6 * 2 / 8)
    assert got["backward"].per_token_seq_s == pytest.approx(0.25 * 1e-8)
    assert got["forward"].fixed_s == 1e-3
    assert all(f.extrapolated for f in got.values()) and "tp=2" in got["forward"].note


def test_unidentified_slope_borrows_from_another_tp_degree():
    import synthetic

    from galvatron_contracts.models import PRESETS
    from galvatron_cost.compute import fill_unidentified, fit_layer_phases

    mp = synthetic.model_profile(PRESETS["tiny-gpt"], tp_degrees=(1, 2), mbs=(1, 2, 4))
    entries = {e["tp"]: e for e in mp["layers"] if e["layer"] == "decoder"}
    for row in entries[1]["timings"]:                 # tp=1 backward: noise made it shrink with the batch
        row["backward"]["median_s"] = 0.01 / row["micro_batch_size"]
    fits = {t: fit_layer_phases(e) for t, e in entries.items()}
    assert fits[1]["backward"].per_token_s == 0
    notes = fill_unidentified(entries, fits, "decoder")
    assert notes == ["decoder tp=1 backward: times did not grow with tokens; per-token terms from tp=2 x 2/1, "
                     "overhead refitted"]
    assert fits[1]["backward"].per_token_s == pytest.approx(2 * fits[2]["backward"].per_token_s)
    assert fits[1]["forward"].per_token_s == pytest.approx(4e-7, rel=1e-6)      # identified fits untouched

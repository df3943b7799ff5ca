"""Fit speed and document size for growing clusters; exits 1 when a target is missed.

    cd packages/galvatron-cost && PYTHONPATH=src python benchmarks/bench_fit.py

Inputs are synthetic 2-node x 8 profiles (tests/synthetic.py) of llama2-7b (TP 1..8 profiled), extrapolated to the
target cluster. Targets: 128 x 8 (all pipeline degrees up to the model's 32 layers) fitted in under 10 s with a
document under 8 MB.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import synthetic  # noqa: E402

from galvatron_contracts.documents import dumps  # noqa: E402
from galvatron_contracts.models import PRESETS  # noqa: E402
from galvatron_cost import fit  # noqa: E402

TARGET_S, TARGET_MB = 10.0, 8.0


def main() -> int:
    hw = synthetic.hardware_profile(2, 8, noise=0.05, seed=1)
    mp = synthetic.model_profile(PRESETS["llama2-7b"], tp_degrees=(1, 2, 4, 8), seq_lens=(2048,), mbs=(1, 2, 4),
                                 dtype="bf16", noise=0.03, seed=1)
    rows, ok = [], True
    for nodes in (1, 2, 16, 128):
        start = time.perf_counter()
        doc = fit(hw, mp, nodes=nodes, gpus_per_node=8)
        took = time.perf_counter() - start
        mb = len(dumps(doc)) / 1e6
        n = sum(len(p["strategies"]) for p in doc["pipelines"])
        extrap = sum(c["extrapolated"] for c in doc["fits"]["collectives"])
        miss = nodes == 128 and (took > TARGET_S or mb > TARGET_MB)
        ok &= not miss
        rows.append((f"{nodes} x 8", len(doc["pipelines"]), n, extrap, f"{took:.2f}", f"{mb:.2f}",
                     "MISSED" if miss else "ok"))
    head = ("cluster", "pp degrees", "strategies", "extrapolated fits", "fit s", "doc MB", "target")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

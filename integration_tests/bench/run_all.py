"""Every benchmark, in order, each printing its tables: what `tox -e bench` runs.

    tox -e bench                                   # the four packages installed together
    python integration_tests/bench/run_all.py      # the same with the packages on the path
    python integration_tests/bench/run_all.py --out DIR    # keep every document, report and log under DIR

1. search_bench.py: galvatron-search's speed on the reference A100 inputs;
2. accuracy.py: predicted vs measured iteration time and peak memory of many plans on this machine, and the
   searched plan's measured throughput against the baselines that fit, with 2 ranks (as many as the cores, one
   thread each) on two models: mini-gpt (overhead-dominated) and models/llama-512 (hidden 512, compute-dominated,
   closer to a GPU workload); then mini-gpt on 4 ranks, reported as oversubscribed (no target judged: a waiting
   rank lends its core to another, which no model of independent devices predicts);
3. overhead.py: galvatron-run's pure data-parallel plan against a plain DDP loop of the same model.

Each runs as its own process (a crash in one does not hide the others); exits 1 when any target is missed,
listing which benchmark missed which target.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="Keep each benchmark's documents and logs under this directory.")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    llama = str(HERE / "models" / "llama-512")
    benches = [("search_bench", []), ("accuracy", []), ("accuracy", ["--model", llama]),
               ("accuracy", ["--nproc", "4", "--report-only", "--no-quality"]), ("overhead", [])]
    missed = []
    t0 = time.perf_counter()
    for name, extra in benches:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
        if args.out:
            tag = "-".join([name] + [Path(x).name for x in extra if not x.startswith("--")])
            cmd += ["--keep" if name == "search_bench" else "--out", str(Path(args.out) / tag)]
        print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        # stdout (the tables) is printed when the benchmark ends; stderr (progress) passes through as it comes
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.PIPE, text=True)
            err = []
            for line in proc.stderr:
                sys.stderr.write(line)
                err.append(line)
            rc = proc.wait()
            out.seek(0)
            text = out.read()
        sys.stdout.write(text)
        print(f"===== {name}: exit {rc} in {time.perf_counter() - t:.0f} s", flush=True)
        if rc != 0:
            lines = [ln.split("MISSED:", 1)[1].strip() for ln in text.splitlines() + err if "MISSED:" in ln]
            missed.append(f"{name}: " + ("; ".join(lines) if lines else f"exit code {rc}"))
    print(f"\nall benchmarks in {time.perf_counter() - t0:.0f} s")
    if missed:
        print("MISSED targets:\n" + "\n".join(f"- {m}" for m in missed))
        return 1
    print("every target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())

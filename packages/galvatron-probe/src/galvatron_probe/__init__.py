"""galvatron-probe: measure a cluster's collectives and a model's per-layer time and exact memory.

    galvatron-probe bandwidth --nproc 4 -o hw.json
    galvatron-probe compute --model tiny-gpt -o model.json

or from Python: ``probe_bandwidth(nproc=4)``, ``probe_compute("tiny-gpt")`` (the same documents, as dicts).
"""
__version__ = "0.1.0"

from .api import probe_bandwidth, probe_compute  # noqa: E402

__all__ = ["__version__", "probe_bandwidth", "probe_compute"]

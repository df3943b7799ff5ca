"""galvatron-probe: Measure a cluster's collectives and a model's per-layer time and memory."""
__version__ = "0.1.0"

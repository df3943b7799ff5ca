"""galvatron-cost: Fit time and memory models of every candidate layer strategy."""
__version__ = "0.1.0"

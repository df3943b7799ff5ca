"""galvatron-search: Find the fastest hybrid-parallel plan under a memory budget."""
__version__ = "0.1.0"

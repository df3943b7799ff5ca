"""galvatron-search: find the fastest hybrid-parallel plan under a memory budget.

    galvatron-search --memory 36 cost_model.json --global-batch 64 --explain -o plan.json
    galvatron-search evaluate plan.json cost_model.json
"""
__version__ = "0.1.0"

from .api import evaluate, search  # noqa: E402

__all__ = ["search", "evaluate", "__version__"]

"""The errors this package raises, built on the shared contracts (exit codes 2, 3, 4)."""
from galvatron_contracts.documents import DocumentError, GalvatronError, InfeasibleError, UsageError

__all__ = ["DocumentError", "GalvatronError", "InfeasibleError", "UsageError"]

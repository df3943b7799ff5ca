"""The errors this package raises, built on the shared contracts (exit codes 2, 3, 4)."""
from galvatron_contracts.documents import DocumentError, GalvatronError, InfeasibleError, UsageError

__all__ = ["DocumentError", "GalvatronError", "InfeasibleError", "UsageError", "cost_model_error"]


def cost_model_error(message: str, source: str = "cost model") -> DocumentError:
    """A cost model that is schema-valid but inconsistent (exit 3)."""
    return DocumentError(source, message)

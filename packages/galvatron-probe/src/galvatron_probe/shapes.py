"""Which tensor-parallel shards of a model exist (pure, no torch: requests are checked before torch loads)."""
from __future__ import annotations

LAYER_KINDS = ("decoder", "embedding", "head")


def tp_problems(spec: dict, layer: str, t: int) -> list[str]:
    """Why a degree-t shard of ``layer`` cannot exist (empty when it can)."""
    if t < 1:
        return [f"tp {t}: expected a positive degree"]
    if layer == "decoder":
        checks = [("heads", spec["heads"]), ("kv_heads", spec["kv_heads"]), ("ffn_hidden", spec["ffn_hidden"])]
    else:
        checks = [("vocab_size", spec["vocab_size"])]
    return [f"tp {t} does not divide {name} ({value}) of {spec['name']}" for name, value in checks if value % t]


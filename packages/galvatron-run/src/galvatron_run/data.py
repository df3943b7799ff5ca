"""Training data: the same global batch at the same step for every plan.

Every source answers ``batch(step) -> (inputs, targets)``, both int64 tensors of shape [global_batch, seq_len]
on the CPU, identical on every rank and for every plan (a pure function of the seed and the step); the runtime
slices the rows a rank needs. ``state()`` / ``load_state()`` carry what a checkpoint must keep.

    src = make_data_source(None, vocab_size=256, seq_len=64, global_batch=8, seed=1234)
    x, y = src.batch(0)
"""
from __future__ import annotations

import torch


class RandomTokens:
    """Uniform random token ids, seeded by (seed, step): the default when no --data is given."""

    kind = "random"
    path = None

    def __init__(self, vocab_size: int, seq_len: int, global_batch: int, seed: int):
        self.vocab_size, self.seq_len, self.global_batch, self.seed = vocab_size, seq_len, global_batch, seed

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        tokens = torch.randint(0, self.vocab_size, (self.global_batch, self.seq_len + 1), generator=g)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def state(self) -> dict:
        return {"kind": self.kind, "seed": self.seed}

    def load_state(self, state: dict) -> None:
        self.seed = state["seed"]


def make_data_source(path: str | None, *, vocab_size: int, seq_len: int, global_batch: int, seed: int, **options):
    """The data source for ``--data PATH`` (None: random tokens)."""
    if path is None:
        return RandomTokens(vocab_size, seq_len, global_batch, seed)
    raise NotImplementedError("--data is not implemented yet")

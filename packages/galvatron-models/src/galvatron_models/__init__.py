"""galvatron-models: the one torch definition of the GPT-2-style and LLaMA-style decoder block, embedding and
head that galvatron-probe times and galvatron-run trains.

    from galvatron_models import Decoder, init_parameters
    model = Decoder(spec, range(spec["layers"]), first=True, last=True, tie=spec["tied_embeddings"])
    init_parameters(model, seed=1234)

``galvatron_models.hf`` maps these parameters to and from Hugging Face GPT-2 / LLaMA checkpoints (names, fused
and transposed layouts, config.json); galvatron-run reads and writes the files.
"""
from . import hf
from .decoder import (
    MLP,
    Attention,
    Block,
    Decoder,
    Embedding,
    Head,
    RMSNorm,
    ce_loss_sum,
    init_parameters,
    initial_value,
)
from .loss import vocab_parallel_ce_sum
from .sharding import sp_partial_params, tp_plan

__all__ = ["MLP", "Attention", "Block", "Decoder", "Embedding", "Head", "RMSNorm", "ce_loss_sum", "hf",
           "init_parameters", "initial_value", "sp_partial_params", "tp_plan", "vocab_parallel_ce_sum"]
__version__ = "0.1.0"

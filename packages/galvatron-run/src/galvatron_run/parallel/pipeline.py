"""Pipeline parallelism with torch.distributed.pipelining: this rank's stage of a GPipe or 1F1B schedule over the
pipeline group of its local index (rank j of every stage), with the loss on the last stage."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from ..plan import Layout, vocab_shard
from .mesh import Env


class _PipeModule(nn.Module):
    """A plain wrapper, so that the pipelining stage does not drive FSDP's per-micro-batch gradient sync."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def make_schedule(stage: nn.Module, env: Env, plan: dict, seq_len: int, act_dtype: torch.dtype,
                  in_layout: Layout | None, out_layout: Layout, loss_fn: Callable):
    """The schedule driving ``stage``: its input is token ids (first stage) or the previous stage's activation in
    ``in_layout``; its output the next stage's input in ``out_layout`` or, on the last stage, this rank's logits."""
    b, h = plan["micro_batch_size"], plan["model"]["hidden"]
    first, last = env.stage == 0, env.stage == env.pp - 1

    def activation(lay: Layout):
        return torch.empty(b // lay.dp, seq_len // lay.tp if lay.sp else seq_len, h, dtype=act_dtype,
                           device=env.device, requires_grad=True)

    inp = torch.empty(b, seq_len, dtype=torch.long, device=env.device) if first else activation(in_layout)
    if last:
        vocab = vocab_shard(plan["model"]["vocab_size"], out_layout.tp, out_layout.coords(env.j)[0])[1]
        out = torch.empty(b // out_layout.dp, seq_len, vocab, dtype=act_dtype, device=env.device, requires_grad=True)
    else:
        out = activation(out_layout)
    pp_group = env.group([k * env.size + env.j for k in range(env.pp)])
    pipe = PipelineStage(_PipeModule(stage), env.stage, env.pp, env.device, input_args=(inp,), output_args=(out,),
                         group=pp_group)
    cls = Schedule1F1B if plan["schedule"] == "1f1b" else ScheduleGPipe
    return cls(pipe, n_microbatches=plan["micro_batches"], loss_fn=loss_fn, scale_grads=False)

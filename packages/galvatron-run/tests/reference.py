"""The single-process reference: the same model, data, optimizer and schedule with no parallelism at all
(the tied embedding really tied). Uses only galvatron_models's modules and initialisation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from galvatron_models import Decoder, init_parameters
from galvatron_run.data import make_data_source


def lr_at(step, opt, steps):
    lr, min_lr, warm = opt["lr"], opt["min_lr"], opt["warmup_steps"]
    if step < warm:
        return lr * (step + 1) / (warm + 1)
    ratio = (step - warm) / max(1, steps - warm)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


def reference_run(plan, steps, total_steps=None, data=None, dtype="fp32"):
    """(losses per step, {FQN: parameter} after ``steps`` steps, gradient norms per step) on the global batch."""
    spec = plan["model"]
    seq = plan["training"]["seq_len"]
    torch.manual_seed(0)
    model = Decoder(spec, range(spec["layers"]), first=True, last=True, tie=spec["tied_embeddings"])
    init_parameters(model, plan["training"]["seed"])
    opt = plan["training"]["optimizer"]
    params = list(model.parameters())
    optim = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": opt["weight_decay"]},
                               {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                              lr=opt["lr"], betas=(0.9, 0.95), eps=1e-8, foreach=False)
    data = data or make_data_source(None, vocab_size=spec["vocab_size"], seq_len=seq,
                                    global_batch=plan["global_batch"], seed=plan["training"]["seed"])
    losses, norms = [], []
    for step in range(steps):
        for g in optim.param_groups:
            g["lr"] = lr_at(step, opt, total_steps or steps)
        x, y = data.batch(step)
        optim.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), opt["grad_clip"])))
        optim.step()
        losses.append(loss.item())
    named = {n: p.detach().clone() for n, p in model.named_parameters()}
    if spec["tied_embeddings"]:
        named["head.out.weight"] = named["embedding.tok.weight"]
    return losses, named, norms

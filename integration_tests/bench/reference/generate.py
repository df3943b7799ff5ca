"""Reference A100 inputs for the search benchmark, built from a published Galvatron profile.

    python integration_tests/bench/reference/generate.py          # writes the three documents next to this file

Writes (documents() returns them; tools/make_examples.py makes the first two the schemas' realistic examples):
- a100-2x8-reference.hardware-profile.json: 2 nodes x 8 A100 (NVLink inside a node, 2 nodes over the network)
- llama2-7b-reference.model-profile.json:   LLaMA-2-7B, bf16, seq 2048
- llama2-70b-like-reference.model-profile.json: an 80-layer LLaMA-2-70B-like model derived from the 7B figures

Published figures used (Galvatron's A100 profile, as quoted in the search issue):
- all-reduce bus bandwidth, 1 node: 8 GPUs 154.2 GB/s; 4 GPUs 159.1 (consecutive) / 155.8 (strided);
  2 GPUs 138.2 / 151.3; 2 nodes: 16 GPUs 44.7, 8 GPUs strided across both nodes 20.8, 2 GPUs strided 8.13
- p2p between pipeline neighbours, 1 node: 163.7 / 138.6 / 109.5 GB/s at pipeline degree 2 / 4 / 8
- compute/communication overlap slowdown 1.126
- LLaMA-2-7B, bf16, seq 2048: forward 3.937 ms per sample per layer; embedding + head 2.959 ms per sample;
  778.2 MB fp32 parameters per layer; activations per sample per layer 514.6 / 273.3 / 136.9 / 68.3 MB at
  tp 1 / 2 / 4 / 8, 32.0 MB with full recompute.

Assumptions (not published; stated in every document's producer note):
- Latency: time = alpha + wire_bytes / bus_bandwidth, alpha = 12 us inside a node and 30 us across nodes;
  message sizes 1 MiB .. 1 GiB (x4). all_gather and reduce_scatter run at the all-reduce bus bandwidth of the
  same group; no all_to_all is listed (no strategy uses it). Spread: min = 0.98 x, max = 1.05 x the median.
- p2p between the two nodes runs at 8.13 GB/s (the 2-GPU cross-node all-reduce bus bandwidth: the same link).
  In the 16-rank world a pipeline of degree d pairs rank r with r + 16/d: degrees 4 / 8 / 16 have the published
  one-node distances (4 / 2 / 1 ranks) inside a node; degree 2 crosses nodes.
- "MB" in the published memory figures is MiB (the 32.0 MB kept under recompute is the fp32 layer input,
  2048 x 4096 x 4 bytes = 32 MiB exactly). Of the saved bytes, 32 MiB (the layer input) is held whole by every
  tensor-parallel rank; the rest is what the tp degree divides.
- Backward = 2.0 x forward; backward under recompute = 3.0 x forward (the recomputed forward included).
- A tensor-parallel shard of degree t runs in (time at tp 1) / t x 1.05^log2(t) (5% GEMM efficiency lost per
  halving of the matrices); it is measured with micro-batch sizes 1, 2, 4, 8 and a fixed 20 us launch cost.
- Embedding + head: 2.959 ms per sample split 4% embedding (lookup, gather) / 96% head (final norm, LM
  head, loss). Head saves its input (bf16) and the fp32 logits; the embedding saves the token ids.
- Parameters: the exact counts of the architecture (the contracts' presets); the published 778.2 MB per layer
  is 3% above the exact 202.4 M x 4 B = 772.0 MiB, which we take as framework padding and ignore.

The 70B-like model (llama2-70b preset: 80 layers, hidden 8192, 64 heads, 8 kv heads, ffn 28672): every
per-layer time is the 7B time x the ratio of per-token FLOPs (matmul MACs h(2h + 2 kv_dim) + 3 h ffn plus
attention 2 s h: 889.2 M / 219.2 M = 4.056); embedding and head times x the vocabulary-projection FLOPs ratio
(V h: 2.0); saved activations: the layer input x hidden ratio (2.0), the rest x (h + ffn) ratio
(36864 / 15104 = 2.441); parameter counts exact.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB = 2 ** 20
SEQ = 2048
PRODUCER = {"name": "galvatron-reference", "version": "1.0"}
DEVICE = {"type": "cuda", "name": "NVIDIA A100-SXM4-80GB", "memory_bytes": 85899345920, "peak_tflops": 312.0}
ALPHA_INTRA, ALPHA_INTER = 12e-6, 30e-6
SIZES = [2 ** k for k in range(20, 31, 2)]          # 1 MiB .. 1 GiB


def timing(t: float, repeats: int = 20) -> dict:
    return {"median_s": t, "min_s": t * 0.98, "max_s": t * 1.05, "p25_s": t * 0.99, "p75_s": t * 1.01,
            "repeats": repeats}


def wire(op: str, n: int, size: int) -> float:
    return size * (2 * (n - 1) / n if op == "all_reduce" else (n - 1) / n)


# (group size, layout, stride, crosses nodes, bus GB/s) in a 16-rank world of 2 nodes x 8
ALLREDUCE = [
    (2, "consecutive", 1, False, 138.2),
    (2, "strided", 4, False, 151.3),       # one-node 2-GPU strided (ranks 4 apart inside a node)
    (2, "strided", 8, True, 8.13),
    (4, "consecutive", 1, False, 159.1),
    (4, "strided", 2, False, 155.8),       # one-node 4-GPU strided
    (8, "consecutive", 1, False, 154.2),
    (8, "strided", 2, True, 20.8),
    (16, "consecutive", 1, True, 44.7),
]
P2P = [(2, True, 8.13), (4, False, 163.7), (8, False, 138.6), (16, False, 109.5)]
OVERLAP = 1.126


def hardware_profile() -> dict:
    collectives = []
    for n, layout, stride, cross, bw in ALLREDUCE:
        alpha = ALPHA_INTER if cross else ALPHA_INTRA
        for op in ("all_reduce", "all_gather", "reduce_scatter"):
            points = [{"message_bytes": s, "time": timing(alpha + wire(op, n, s) / (bw * 1e9))} for s in SIZES]
            collectives.append({"op": op, "group_size": n, "layout": layout, "stride": stride, "crosses_nodes": cross,
                                "concurrent_groups": 16 // n, "points": points})
    p2p = []
    for pp, cross, bw in P2P:
        alpha = ALPHA_INTER if cross else ALPHA_INTRA
        p2p.append({"pp_degree": pp, "crosses_nodes": cross, "concurrent_pairs": 16 // pp * (pp // 2) if pp > 1 else 1,
                    "points": [{"message_bytes": s, "time": timing(alpha + s / (bw * 1e9))} for s in SIZES]})
    return {
        "kind": "hardware-profile", "schema_version": "1.0",
        "producer": dict(PRODUCER, note="reference: Galvatron's published A100 bandwidths (issue 5); message-size "
                                        "points synthesised with alpha 12 us intra-node / 30 us inter-node; see "
                                        "integration_tests/bench/reference/generate.py"),
        "cluster": {"nodes": 2, "gpus_per_node": 8, "world_size": 16, "device": DEVICE, "backend": "nccl"},
        "settings": {"dtype": "bf16", "warmup": 5, "repeats": 20, "quick": False},
        "collectives": collectives, "p2p": p2p,
        "overlap": {"compute_slowdown": OVERLAP, "comm_slowdown": OVERLAP,
                    "method": "published Galvatron A100 overlap coefficient (1.126), applied to both sides"},
    }


LLAMA7 = {"name": "llama2-7b", "family": "llama", "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 32,
          "ffn_hidden": 11008, "vocab_size": 32000, "max_seq_len": 4096, "tied_embeddings": False, "norm_eps": 1e-5,
          "rope_theta": 10000.0, "source": "preset"}
LLAMA70 = dict(LLAMA7, name="llama2-70b", layers=80, hidden=8192, heads=64, kv_heads=8, ffn_hidden=28672)


def macs_per_token(spec: dict) -> float:
    """Multiply-accumulates of one token through one decoder block: the matmuls plus attention (2 s h)."""
    h, f = spec["hidden"], spec["ffn_hidden"]
    kv = spec["kv_heads"] * h // spec["heads"]
    if spec["family"] == "gpt2":
        return 4 * h * h + 2 * h * f + 2 * SEQ * h
    return h * (2 * h + 2 * kv) + 3 * h * f + 2 * SEQ * h


def param_counts(spec: dict, tp: int) -> dict:
    """(per-shard params, replicated params) per layer kind, as the reference architecture holds them (a tied
    head owns only its final norm: the table is the embedding's)."""
    h, f, v = spec["hidden"], spec["ffn_hidden"], spec["vocab_size"]
    kv = spec["kv_heads"] * h // spec["heads"]
    vt = -(-v // tp) * h
    if spec["family"] == "gpt2":
        dec = 4 * h * h + 2 * h * f + 3 * h + f        # qkv, proj, fc1, fc2 weights; qkv and fc1 biases
        positions = spec["max_seq_len"] * h
        head = (0 if spec["tied_embeddings"] else vt) + 2 * h
        return {"decoder": (dec // tp + 6 * h, 6 * h), "embedding": (vt + positions, positions), "head": (head, 2 * h)}
    dec = 2 * h * h + 2 * h * kv + 3 * h * f
    return {"decoder": (dec // tp + 2 * h, 2 * h), "embedding": (v * h // tp, 0), "head": (v * h // tp + h, h)}


def model_profile(spec: dict, time_scale: float, end_scale: float, act_in_scale: float, act_rest_scale: float,
                  note: str) -> dict:
    fwd_layer = 3.937e-3 * time_scale              # per sample, tp 1
    fwd_emb = 2.959e-3 * 0.04 * end_scale
    fwd_head = 2.959e-3 * 0.96 * end_scale
    act = {1: 514.6, 2: 273.3, 4: 136.9, 8: 68.3}
    h, v = spec["hidden"], spec["vocab_size"]
    layers = []
    for tp in (1, 2, 4, 8):
        eff = 1.05 ** math.log2(tp) / tp
        counts = param_counts(spec, tp)
        saved_in = int(32 * MIB * act_in_scale)
        saved_rest = int((act[tp] - 32) * MIB * act_rest_scale)
        mem = {
            "decoder": ({"tp_divided": saved_rest, "tp_replicated": saved_in},
                        {"tp_divided": 0, "tp_replicated": saved_in}),
            "embedding": ({"tp_divided": 0, "tp_replicated": SEQ * 8}, {"tp_divided": 0, "tp_replicated": SEQ * 8}),
            "head": ({"tp_divided": SEQ * v * 4 // tp, "tp_replicated": SEQ * h * 2},
                     {"tp_divided": SEQ * v * 4 // tp, "tp_replicated": SEQ * h * 2}),
        }
        for kind, per_sample in (("embedding", fwd_emb), ("decoder", fwd_layer), ("head", fwd_head)):
            f1 = per_sample * eff
            timings = []
            for b in (1, 2, 4, 8):
                f = 20e-6 + f1 * b
                timings.append({"seq_len": SEQ, "micro_batch_size": b, "forward": timing(f, 10),
                                "backward": timing(2.0 * f, 10), "backward_recompute": timing(3.0 * f, 10)})
            saved, rc = mem[kind]
            layers.append({"layer": kind, "tp": tp, "param_count": counts[kind][0],
                           "param_count_tp_replicated": counts[kind][1],
                           "memory": [{"seq_len": SEQ, "saved_bytes_per_sample": saved,
                                       "recompute_saved_bytes_per_sample": rc}],
                           "timings": timings})
    return {
        "kind": "model-profile", "schema_version": "1.0",
        "producer": dict(PRODUCER, note=note),
        "model": spec,
        "settings": {"dtype": "bf16", "seq_lens": [SEQ], "micro_batch_sizes": [1, 2, 4, 8], "tp_degrees": [1, 2, 4, 8],
                     "concurrent_ranks": 8, "threads_per_rank": 1, "device": DEVICE, "warmup": 3, "repeats": 10,
                     "quick": False},
        "layers": layers,
    }


# Megatron-LM's weak-scaling table (Narayanan et al., "Efficient Large-Scale Language Model Training on GPU
# Clusters", 2021, Table 1): GPT models, seq 2048, vocabulary 51,200, A100 80 GB, 8 GPUs per node.
# (name, layers, hidden, heads, GPUs, global batch)
WEAK_SCALING = [
    ("gpt-1.7b", 24, 2304, 24, 32, 512),
    ("gpt-3.6b", 30, 3072, 32, 64, 512),
    ("gpt-7.5b", 36, 4096, 32, 128, 512),
    ("gpt-18.4b", 40, 6144, 48, 256, 1024),
    ("gpt-39.1b", 48, 8192, 64, 512, 1536),
    ("gpt-76.1b", 60, 10240, 80, 1024, 1792),
    ("gpt-145.6b", 80, 12288, 96, 1536, 2304),
    ("gpt-310.1b", 96, 16384, 128, 1920, 2160),
    ("gpt-529.6b", 105, 20480, 128, 2520, 2520),
    ("gpt-1t", 128, 25600, 160, 3072, 3072),
]


def gpt_spec(name: str, layers: int, hidden: int, heads: int) -> dict:
    """A Megatron GPT of the table: GPT-2 architecture, ffn 4h, tied embeddings, learned positions up to seq."""
    return {"name": name, "family": "gpt2", "layers": layers, "hidden": hidden, "heads": heads, "kv_heads": heads,
            "ffn_hidden": 4 * hidden, "vocab_size": 51200, "max_seq_len": SEQ, "tied_embeddings": True,
            "norm_eps": 1e-5, "source": "preset"}


def derived_profile(spec: dict, note: str) -> dict:
    """A model profile scaled from the published LLaMA-2-7B figures (as the 70B-like one): per-layer times by
    per-token MACs, embedding and head times by the vocabulary projection (V h), saved activations of the layer
    input by h and the rest by h + ffn."""
    return model_profile(
        spec, macs_per_token(spec) / macs_per_token(LLAMA7),
        spec["vocab_size"] * spec["hidden"] / (LLAMA7["vocab_size"] * LLAMA7["hidden"]),
        spec["hidden"] / LLAMA7["hidden"],
        (spec["hidden"] + spec["ffn_hidden"]) / (LLAMA7["hidden"] + LLAMA7["ffn_hidden"]), note)


def weak_scaling_profiles() -> list[tuple[dict, int, int]]:
    """(model profile, GPUs, global batch) for every row of WEAK_SCALING; generated at benchmark time (10 x 40
    kB, so not stored)."""
    out = []
    for name, layers, hidden, heads, gpus, batch in WEAK_SCALING:
        note = (f"reference: Megatron-LM weak-scaling GPT {name} (Narayanan et al. 2021, Table 1), derived from the "
                f"published LLaMA-2-7B A100 figures; see integration_tests/bench/reference/generate.py")
        out.append((derived_profile(gpt_spec(name, layers, hidden, heads), note), gpus, batch))
    return out


def documents() -> dict[str, dict]:
    """The three documents by file name."""
    return {
        "a100-2x8-reference.hardware-profile.json": hardware_profile(),
        "llama2-7b-reference.model-profile.json": model_profile(
            LLAMA7, 1.0, 1.0, 1.0, 1.0,
            "reference: Galvatron's published LLaMA-2-7B A100 figures (issue 5); backward assumed 2x forward, "
            "recompute 3x; tp shards 1/t x 1.05^log2 t; see integration_tests/bench/reference/generate.py"),
        "llama2-70b-like-reference.model-profile.json": model_profile(
            LLAMA70, macs_per_token(LLAMA70) / macs_per_token(LLAMA7), LLAMA70["hidden"] / LLAMA7["hidden"],
            LLAMA70["hidden"] / LLAMA7["hidden"],
            (LLAMA70["hidden"] + LLAMA70["ffn_hidden"]) / (LLAMA7["hidden"] + LLAMA7["ffn_hidden"]),
            "reference: LLaMA-2-70B-like, derived from the published LLaMA-2-7B A100 figures by per-token FLOPs "
            "(times) and tensor sizes (activations); see integration_tests/bench/reference/generate.py"),
    }


def main() -> None:
    docs = documents()
    for name, doc in docs.items():
        (HERE / name).write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(str(HERE / n) for n in docs))


if __name__ == "__main__":
    main()

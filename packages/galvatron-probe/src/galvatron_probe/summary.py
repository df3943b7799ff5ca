"""Human-readable tables of probe documents (``galvatron-probe summary hw.json model.json``)."""
from __future__ import annotations


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}"


def _size(m: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if m >= div and m % div == 0:
            return f"{m // div} {unit}"
    return f"{m} B"


def hardware_summary(doc: dict) -> str:
    c, s = doc["cluster"], doc["settings"]
    lines = [f"hardware-profile: {c['world_size']} ranks ({c['nodes']} node(s) x {c['gpus_per_node']}), "
             f"{c['device']['name']}, {c['backend']}, {s['dtype']}, {s['repeats']} repeats"
             + (f", probe took {s['elapsed_s']:.1f} s" if "elapsed_s" in s else "")]
    header = (f"{'collective':<15}{'n':>3} {'layout':<12}{'cross':>6}{'smallest':>10}{'ms':>9}{'largest':>10}"
              f"{'ms':>10}{'GB/s':>8}{'spread':>8}")
    lines += ["", header, "-" * len(header)]
    rows = [(e["op"], e["group_size"], e["layout"], e["crosses_nodes"], e["points"]) for e in doc["collectives"]]
    rows += [("p2p", f"pp{e['pp_degree']}", f"{e['concurrent_pairs']} pairs", e["crosses_nodes"], e["points"])
             for e in doc["p2p"]]
    for op, n, layout, cross, points in rows:
        lo, hi = points[0], points[-1]
        t = hi["time"]
        spread = (t.get("p75_s", t["max_s"]) - t.get("p25_s", t["min_s"])) / t["median_s"] if t["median_s"] else 0.0
        lines.append(f"{op:<15}{n!s:>3} {layout:<12}{'yes' if cross else 'no':>6}{_size(lo['message_bytes']):>10}"
                     f"{_ms(lo['time']['median_s']):>9}{_size(hi['message_bytes']):>10}{_ms(t['median_s']):>10}"
                     f"{hi['message_bytes'] / t['median_s'] / 1e9:>8.2f}{spread:>7.0%} ")
    o = doc["overlap"]
    lines.append("")
    lines.append("overlap: not measured" if o is None else
                 f"overlap: compute x{o['compute_slowdown']:.2f}, communication x{o['comm_slowdown']:.2f} "
                 f"when run together ({o['method']})")
    lines.append("(GB/s: message bytes / median time of the largest message; spread: interquartile range / median)")
    return "\n".join(lines)


def model_summary(doc: dict) -> str:
    m, s = doc["model"], doc["settings"]
    lines = [f"model-profile: {m['name']} ({m['family']}, h {m['hidden']}, {m['heads']} heads, {m['kv_heads']} kv), "
             f"{s['dtype']}, {s['concurrent_ranks']} rank(s) at once, {s['threads_per_rank']} thread(s) each, "
             f"{s['device']['name']}" + (f", probe took {s['elapsed_s']:.1f} s" if "elapsed_s" in s else "")]
    header = f"{'layer':<12}{'tp':>3}{'params':>11}{'repl.':>8}{'seq':>6}{'saved B/sample div+repl':>25}" \
             f"{'recompute':>11}{'b':>4}{'fwd ms':>9}{'bwd ms':>9}{'bwd+rc ms':>11}"
    lines += ["", header, "-" * len(header)]
    rows = [(e, e["layer"], t) for e in doc["layers"] for t in e["timings"]]
    rows += [(e, e["layer"] + "+sp", t) for e in doc["layers"] for t in e.get("sequence_parallel_timings", [])]
    for e, label, t in rows:
        if t["micro_batch_size"] != max(s["micro_batch_sizes"]):
            continue
        row = {x["seq_len"]: x for x in e["memory"]}.get(t["seq_len"])   # lengths may be timed, bytes not
        if row is None:
            saved, recompute = f"{'-':>13} {'':<11}", f"{'-':>11}"
        else:
            sb, rb = row["saved_bytes_per_sample"], row["recompute_saved_bytes_per_sample"]
            saved = f"{sb['tp_divided']:>13}+{sb['tp_replicated']:<11}"
            recompute = f"{rb['tp_divided'] + rb['tp_replicated']:>11}"
        lines.append(f"{label:<12}{e['tp']:>3}{e['param_count']:>11}{e['param_count_tp_replicated']:>8}"
                     f"{t['seq_len']:>6}{saved}{recompute}{t['micro_batch_size']:>4}"
                     f"{_ms(t['forward']['median_s']):>9}{_ms(t['backward']['median_s']):>9}"
                     f"{_ms(t['backward_recompute']['median_s']):>11}")
    lines.append("(times: median of the slowest rank at the largest micro-batch size; tp > 1 timed as the runtime "
                 "runs it, in DTensors; +sp: with sequence parallelism, beside the plain shard's bytes)")
    lines += optimizer_lines(doc.get("optimizer_step"))
    return "\n".join(lines)


def optimizer_lines(o: dict | None) -> list[str]:
    """The optimizer step's fits, one line per holding (none for a profile without them)."""
    if o is None:
        return []
    fits = [("plain", o)] + ([("DTensor", o["dtensor"])] if "dtensor" in o else [])
    return [f"optimizer step ({o['optimizer']}), {name} tensors: {_ms(f['fixed_s'])} ms + "
            f"{f.get('per_tensor_s', 0.0) * 1e6:.1f} us/tensor + {f['per_param_s'] * 1e9:.2f} ns/parameter"
            for name, f in fits]


def summarize(doc: dict) -> str:
    return hardware_summary(doc) if doc["kind"] == "hardware-profile" else model_summary(doc)

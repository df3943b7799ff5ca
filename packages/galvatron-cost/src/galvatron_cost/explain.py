"""A readable summary of a cost-model document: the fits and a few strategies' costs (for --explain, on stderr)."""
from __future__ import annotations


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _r2(entry: dict) -> str:
    q = entry.get("quality")
    return f"{q['r2']:.4f}" if q else "-"


def _lin(lin: dict, b: int) -> float:
    return lin["fixed_s"] + lin["per_sample_s"] * b


def explain(doc: dict, max_collectives: int = 40) -> str:
    cl, tr = doc["cluster"], doc["training"]
    out = [f"cost model: {doc['model']['name']} on {cl['nodes']} x {cl['gpus_per_node']} {cl['device']['name']} "
           f"({cl['backend']}), seq {tr['seq_len']}, {tr['dtype']}, {tr['optimizer']}; overlap compute x"
           f"{doc['overlap']['compute_slowdown']:.3f} comm x{doc['overlap']['comm_slowdown']:.3f}"
           f"{'' if doc['overlap']['measured'] else ' (not measured)'}", ""]
    colls = doc["fits"]["collectives"]
    rows = [[c["op"], str(c["group_size"]), c["layout"], str(c.get("stride", "-")),
             f"{c.get('nodes_spanned', 2 if c['crosses_nodes'] else 1)}x{c.get('ranks_per_node', '-')}",
             f"{c['alpha_s'] * 1e6:.1f}", f"{c['bandwidth_gbps']:.2f}", _r2(c),
             f"{c['quality']['max_rel_residual']:.3f}" if c.get("quality") else "-",
             "extrapolated" if c["extrapolated"] else "probed"] for c in colls]
    shown = rows[:max_collectives]
    out.append("collectives: time = alpha + wire bytes / bandwidth")
    out.append(_table(["op", "n", "layout", "stride", "nodes x per-node", "alpha us", "bw GB/s", "R2", "max rel",
                       "source"], shown))
    if len(rows) > len(shown):
        out.append(f"... and {len(rows) - len(shown)} more (see fits.collectives)")
    out.append("")
    if doc["fits"]["p2p"]:
        out.append("p2p between stages: time = alpha + bytes / bandwidth")
        out.append(_table(["pp", "crosses", "alpha us", "bw GB/s", "R2", "source"],
                          [[str(p["pp_degree"]), str(p["crosses_nodes"]).lower(), f"{p['alpha_s'] * 1e6:.1f}",
                            f"{p['bandwidth_gbps']:.2f}", _r2(p), "extrapolated" if p["extrapolated"] else "probed"]
                           for p in doc["fits"]["p2p"]]))
        out.append("")
    out.append("compute: time = fixed + per_token * tokens + per_token_seq * tokens * seq")
    out.append(_table(["layer", "tp", "phase", "fixed ms", "per-token us", "per-tok-seq ns", "R2", "source"],
                      [[c["layer"], str(c["tp"]), c["phase"], f"{c['fixed_s'] * 1e3:.3f}",
                        f"{c['per_token_s'] * 1e6:.4f}", f"{c['per_token_seq_s'] * 1e9:.4f}", _r2(c),
                        "extrapolated" if c.get("extrapolated") else "profiled"] for c in doc["fits"]["compute"]]))
    out.append("")
    pipe = doc["pipelines"][0]
    b = max(lay["dp"] for lay in pipe["layouts"])
    out.append(f"decoder strategies, pp={pipe['pp']} ({pipe['stage_ranks']} ranks per stage), micro-batch b={b}:")
    rows = []
    for s in pipe["strategies"]:
        if s["layer"] != "decoder":
            continue
        t, m = s["time"], s["memory"]
        compute = _lin(t["forward"], b) + _lin(t["backward"], b)
        comm = _lin(t["forward_comm"], b) + _lin(t["backward_comm"], b)
        dp = t["param_gather_forward_s"] + t["param_gather_backward_s"] + t["grad_reduce_per_microbatch_s"]
        states = m["param_bytes"] + m["grad_bytes"] + m["optimizer_bytes"]
        act = m["activation"]["fixed_bytes"] + m["activation"]["per_sample_bytes"] * b
        rows.append([s["id"], f"{compute * 1e3:.3f}", f"{comm * 1e3:.3f}", f"{dp * 1e3:.3f}",
                     f"{t['grad_sync_s'] * 1e3:.3f}", f"{states / 2**20:.2f}", f"{act / 2**20:.2f}",
                     "extrapolated" if s.get("extrapolated") else "probed"])
    out.append(_table(["strategy", "fwd+bwd ms", "tp comm ms", "dp/mb ms", "sync/iter ms", "states MiB",
                       "act MiB", "comm fits"], rows))
    extrapolated = [f"pp={p['pp']}: {sum(bool(s.get('extrapolated')) for s in p['strategies'])} of "
                    f"{len(p['strategies'])} strategies{', p2p' if p.get('extrapolated_p2p') else ''}"
                    for p in doc["pipelines"]]
    out.append("communication resting on extrapolated fits: " + "; ".join(extrapolated))
    for note in doc.get("notes", []):
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"

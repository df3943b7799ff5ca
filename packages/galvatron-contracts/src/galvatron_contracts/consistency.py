"""What a schema cannot say about a profile or a cost model: its numbers agree with each other.

documents.semantic_errors runs these on every document read or written (after the schema, the count bounds and
the model spec's arithmetic), so a tool refuses an inconsistent input at once, naming the field at fault (exit
3), instead of failing later on it or on its own output. A plan's checks are plan.py's ``plan_errors``.

  hardware-profile: world_size = nodes * gpus_per_node (checked first: the rest is measured against it);
    every probed group (group_size ranks, stride apart) tiles the world; every p2p pipeline degree divides it.
  model-profile: no sequence length above the model's max_seq_len; one entry per (layer, tp); every entry's tp
    one the model allows (a decoder's divides heads, kv_heads and ffn_hidden; an embedding's or head's leaves
    every tp rank a part of the vocabulary).
  cost-model: world_size = nodes * gpus_per_node (first, as above); seq_len <= max_seq_len; one entry per
    pipeline degree, each dividing the world, with stage_ranks = world_size / pp; per pipeline, unique layout ids
    with tp * dp = stage_ranks and sequence parallelism only where a plan may use it (tp > 1 dividing seq_len);
    transitions between listed layouts; unique strategy ids on listed layouts, every layer kind priced, each at
    a tp the model allows (as above).
"""
from __future__ import annotations

from .plan import tp_errors


def cluster_errors(cluster: dict) -> list[str]:
    product = cluster["nodes"] * cluster["gpus_per_node"]
    if cluster["world_size"] != product:
        return [f"$.cluster.world_size: expected nodes * gpus_per_node = {product}, got {cluster['world_size']}"]
    return []


def hardware_profile_errors(doc: dict) -> list[str]:
    errors = cluster_errors(doc["cluster"])
    if errors:  # what follows is measured against the world size
        return errors
    world = doc["cluster"]["world_size"]
    for i, entry in enumerate(doc["collectives"]):
        n, stride = entry["group_size"], entry["stride"]
        if world % (n * stride):
            errors.append(f"$.collectives[{i}]: a group of {n} ranks {stride} apart spans {n * stride} ranks, "
                          f"which do not tile world_size {world}")
    for i, entry in enumerate(doc["p2p"]):
        if world % entry["pp_degree"]:
            errors.append(f"$.p2p[{i}].pp_degree: expected a divisor of world_size {world}, "
                          f"got {entry['pp_degree']}")
    return errors


def model_profile_errors(doc: dict) -> list[str]:
    spec = doc["model"]
    longest = spec["max_seq_len"]

    def too_long(path, seq_len):
        return [f"{path}: expected at most the model's max_seq_len {longest}, got {seq_len}"] if seq_len > longest \
            else []

    errors = [e for i, s in enumerate(doc["settings"]["seq_lens"]) for e in too_long(f"$.settings.seq_lens[{i}]", s)]
    seen: dict[tuple[str, int], int] = {}
    for i, entry in enumerate(doc["layers"]):
        at, key = f"$.layers[{i}]", (entry["layer"], entry["tp"])
        if key in seen:
            errors.append(f"{at}: a second {key[0]} entry at tp {key[1]} (the first is $.layers[{seen[key]}])")
        seen.setdefault(key, i)
        errors += tp_errors(f"{at}.tp", entry["layer"], entry["tp"], spec)
        for part in ("memory", "timings"):
            errors += [e for j, r in enumerate(entry[part])
                       for e in too_long(f"{at}.{part}[{j}].seq_len", r["seq_len"])]
    return errors


def cost_model_errors(doc: dict) -> list[str]:
    spec, seq, world = doc["model"], doc["training"]["seq_len"], doc["cluster"]["world_size"]
    errors = cluster_errors(doc["cluster"])
    if errors:  # what follows is measured against the world size
        return errors
    if seq > spec["max_seq_len"]:
        errors.append(f"$.training.seq_len: expected at most the model's max_seq_len {spec['max_seq_len']}, "
                      f"got {seq}")
    seen: dict[int, int] = {}
    for i, entry in enumerate(doc["pipelines"]):
        at, pp = f"$.pipelines[{i}]", entry["pp"]
        if pp in seen:
            errors.append(f"{at}.pp: a second entry for pipeline degree {pp} (the first is $.pipelines[{seen[pp]}])")
        elif world % pp:
            errors.append(f"{at}.pp: expected a divisor of world_size {world}, got {pp}")
        elif entry["stage_ranks"] != world // pp:
            errors.append(f"{at}.stage_ranks: expected world_size / pp = {world // pp}, got {entry['stage_ranks']}")
        else:
            errors += _pipeline_errors(at, entry, spec, seq)
        seen.setdefault(pp, i)
    return errors


def _pipeline_errors(at: str, entry: dict, spec: dict, seq: int) -> list[str]:
    size, errors = entry["stage_ranks"], []
    layouts: dict[str, dict] = {}
    for i, lay in enumerate(entry["layouts"]):
        where, tp = f"{at}.layouts[{i}]", lay["tp"]
        if lay["id"] in layouts:
            errors.append(f"{where}.id: a second layout {lay['id']!r}")
        elif tp * lay["dp"] != size:
            errors.append(f"{where}: expected tp * dp = stage_ranks {size}, got {tp} * {lay['dp']}")
        elif lay["sp"] and (tp == 1 or seq % tp):
            errors.append(f"{where}.sp: sequence parallelism needs tp > 1 dividing seq_len {seq}, got tp {tp}")
        layouts.setdefault(lay["id"], lay)
    for i, tr in enumerate(entry["transitions"]):
        errors += [f"{at}.transitions[{i}].{end}: unknown layout id {tr[end]!r}"
                   for end in ("from", "to") if tr[end] not in layouts]
    ids: set[str] = set()
    for i, s in enumerate(entry["strategies"]):
        where = f"{at}.strategies[{i}]"
        if s["id"] in ids:
            errors.append(f"{where}.id: a second strategy {s['id']!r}")
        ids.add(s["id"])
        if s["layout"] not in layouts:
            errors.append(f"{where}.layout: unknown layout id {s['layout']!r}")
        else:
            errors += tp_errors(f"{where}.layout", s["layer"], layouts[s["layout"]]["tp"], spec)
    priced = {s["layer"] for s in entry["strategies"]}
    errors += [f"{at}.strategies: no {kind} strategy" for kind in ("embedding", "decoder", "head")
               if kind not in priced]
    return errors

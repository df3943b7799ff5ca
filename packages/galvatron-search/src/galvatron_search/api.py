"""Python API: the same documents as the command line.

    import json, galvatron_search
    cm = json.load(open("cost_model.json"))
    plan = galvatron_search.search(cm, memory_gib=36, global_batch=64)
    plan["predictions"]["samples_per_s"], plan["search"]["baselines"]
    galvatron_search.evaluate(plan, cm)           # the predictions section, for any plan
    galvatron_search.api.robustness(plan, cm)     # what the plan rests on that the profile did not measure
"""
from __future__ import annotations

import time

from galvatron_contracts.documents import validate
from galvatron_contracts.limits import MAX_MEMORY_GIB

from .costs import CostTables
from .document import baselines, plan_document
from .evaluate import evaluate as _evaluate
from .evaluate import plan_spec
from .explain import FACTORS, Robustness
from .explain import robustness as _robustness
from .planner import DEFAULT_MEMORY_MARGIN, Options, require, run_search


def search(cost_model: dict, memory_gib: float, *, with_baselines: bool = True, check_input: bool = True,
           **options) -> dict:
    """The best plan for a cost-model document under `memory_gib` GiB per GPU (options: see planner.Options;
    memory_margin defaults to DEFAULT_MEMORY_MARGIN, as on the command line).

    Raises InfeasibleError (exit 4) naming the smallest budget at which a plan exists. `check_input=False` skips
    the schema validation of a cost model already validated (the plan's search.time_s never includes it)."""
    from .errors import UsageError

    if not 0 < memory_gib <= MAX_MEMORY_GIB:  # also refuses nan
        raise UsageError(f"memory_gib: expected a finite number above 0 and at most {MAX_MEMORY_GIB}, got {memory_gib}")
    if check_input:
        validate(cost_model, "cost model", "cost-model")
    t0 = time.perf_counter()
    tables = CostTables(cost_model)
    options.setdefault("memory_margin", DEFAULT_MEMORY_MARGIN)
    opts = Options(memory_bytes=float(memory_gib) * 2 ** 30, **options)
    result, _ = run_search(tables, opts)
    require(result, tables, opts)
    base = baselines(tables, opts) if with_baselines else None
    seconds = time.perf_counter() - t0
    return plan_document(tables, result.spec, opts, seconds, result.candidates, base)


def evaluate(plan: dict, cost_model: dict, source: str = "plan") -> dict:
    """Predictions (the plan schema's `predictions` section) of any plan under a cost model."""
    validate(plan, source, "plan")
    validate(cost_model, "cost model", "cost-model")
    return _evaluate(plan, CostTables(cost_model), source)


def robustness(plan: dict, cost_model: dict, factors=FACTORS, search_again: bool = True) -> Robustness:
    """Which of `plan`'s strategies and p2p rest on extrapolated fits of `cost_model`, the plan's throughput at
    each factor x their bandwidth and, with `search_again`, the plan the search finds there under the options the
    plan records (its `search.options`; a plan without a search record is evaluated only). See explain.py."""
    validate(plan, "plan", "plan")
    validate(cost_model, "cost model", "cost-model")
    tables = CostTables(cost_model)
    record = plan.get("search", {}).get("options") if search_again else None
    opts = Options(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}) if record else None
    return _robustness(tables, plan_spec(plan, tables), opts, factors)

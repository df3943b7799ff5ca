"""The measured time breakdown of one training step: where each rank's wall time went, by component, by plan entry
(embedding, layers[i], head) and by collective, beside the cost model's predicted breakdown.

    times = StepTimes(state)
    with times.recording():            # around one train_step (train.py: the run's middle step)
        train_step(state, data)
    times.result()                     # {"rank", "stage", "step_s", "components", "layers", "collectives"}

How it measures. The step is cut into spans on one clock (``time.perf_counter_ns``; on CUDA after a device
synchronisation, so each span holds the device work it launched):

- phases, from the marks train_step sets (``mark``): the micro-batches, the gradient sync, the optimizer step with
  clipping, the closing loss all-reduce and barrier (step_sync);
- the forward of every plan entry and of every layout transition (Stage.forward calls them through ``timed``), the
  loss counted with the head;
- the backward of every entry: a hook on the entry's output opens its segment when the gradient reaches it, and an
  identity on the entry's input closes it when the gradient leaves it (FSDP's pre-backward gather for the entry
  before, a hook on that gradient, runs after the identity: in the entry it serves); the engine's end-of-backward
  callback closes the last one;
- recompute: the forward a checkpointed block re-runs inside its backward;
- every collective's issue and wait: the process-group methods torch.distributed calls (all_reduce, all_gather,
  reduce_scatter, send, recv, barrier, ...), ``Work.wait``, the functional collectives DTensor issues and their
  ``wait_tensor``; each is told apart by op, group (tp, dp, pp, tied, world, stage) and buffer bytes.

Each instant of the step belongs to the innermost span covering it (a collective's span wins over the compute
around it), so the times are exclusive and the components partition the step: they sum to ``step_s`` exactly.
A collective's time goes by where it runs and what it is: in the gradient-sync, optimizer and step-sync phases to
those; pipeline sends and receives to pipeline_p2p_s, of which ``settle`` (with every rank's record) moves the
waiting for the peer to pipeline_idle_s (as it moves the last stage's wait in the tied table's gradient sum for
the first stage's last backwards); in a layout transition to it; ddp's all_reduce over dp (launched from
the last backward) to grad_sync_s; the rest over tp to tp_communication_s, over dp (FSDP) to zero_communication_s.

Why not the torch profiler: on this project's CPU models the step is per-op framework overhead, and the profiler's
per-op events slowed a step of mini-gpt 1.4x (tp2) to 2.4x (ddp) here; these spans cost a few Python calls per plan
entry and micro-batch, so the timed step is a normal one (it stays in the throughput statistics).
"""
from __future__ import annotations

import contextlib
import inspect
import socket
import time
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist

COMPONENTS = ("forward_compute_s", "backward_compute_s", "recompute_s", "tp_communication_s",
              "zero_communication_s", "layout_transitions_s", "pipeline_p2p_s", "pipeline_idle_s", "grad_sync_s",
              "optimizer_step_s", "step_sync_s", "other_s")
TRANSITION = "transition"              # the pseudo entry of a layout change between two layers
PHASE_COMPONENT = {"grad_sync": "grad_sync_s", "optimizer": "optimizer_step_s", "step_sync": "step_sync_s"}
# Each key of the plan's predictions.breakdown and the measured components it corresponds to. The cost model's
# backward of a recompute strategy includes the recomputed forward; the bubble is the time a stage waits; the step
# overhead is the runtime's per-step synchronisation (the closing loss all-reduce and barrier).
PREDICTED = {
    "forward_compute_s": ("forward_compute_s",),
    "backward_compute_s": ("backward_compute_s", "recompute_s"),
    "tp_communication_s": ("tp_communication_s",),
    "zero_communication_exposed_s": ("zero_communication_s",),
    "layout_transitions_s": ("layout_transitions_s",),
    "pipeline_p2p_s": ("pipeline_p2p_s",),
    "pipeline_bubble_s": ("pipeline_idle_s",),
    "grad_sync_exposed_s": ("grad_sync_s",),
    "optimizer_step_s": ("optimizer_step_s",),
    "step_overhead_s": ("step_sync_s",),
}
UNPREDICTED = ("other_s",)                   # measured only: framework and Python overhead

METHOD = ("perf_counter spans over one training step on every rank (not the memory-profiled one): "
          "forward of each plan entry, backward between autograd hooks on its output and input, recompute inside "
          "backward, each collective's issue and wait (process-group methods, Work.wait, functional collectives); "
          "each instant counted once, in the innermost span, so the components sum to step_s")
CUDA_METHOD = METHOD + "; on CUDA the device is synchronised at every span boundary (no compute/communication overlap)"


# --- the pure core: spans -> exclusive times ----------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    """One interval of the step: a plan entry's forward / backward / recompute, or a collective's issue / wait."""

    begin_ns: int
    end_ns: int
    kind: str                  # "forward" | "backward" | "recompute" | "issue" | "wait"
    unit: str | None = None    # the plan entry ("embedding", "layers[3]", "head") or TRANSITION
    cid: int | None = None     # the collective (index into the collectives) of an issue or wait
    order: int = 0             # when it was opened: of two spans covering one instant the later opened is inside


@dataclass(frozen=True)
class Collective:
    op: str                    # all_reduce, all_gather, reduce_scatter, all_to_all, broadcast, send, recv, barrier
    group: str                 # tp, dp, pp, tied, world, stage or other
    group_size: int
    bytes: int                 # the full buffer per rank (the hardware-profile's message_bytes)
    issued_ns: int = 0
    peer: int | None = None    # a send's or receive's other rank (global)


def attribute(marks: list[tuple[str, int]], spans: list[Span], collectives: list[Collective]):
    """Exclusive nanoseconds of the window from the first mark to the last: (per component, per plan entry
    {unit: {forward, backward, recompute, communication}}, per collective). ``marks``: (phase, time) in order.

    Every instant goes to one component: a collective's span if one covers it (the outermost), else the innermost
    forward / backward / recompute span, else the phase's own component (other_s in the micro-batch phase)."""
    t0, t1 = marks[0][1], marks[-1][1]
    events = [(t, 2, k) for k, (_, t) in enumerate(marks)]
    for i, s in enumerate(spans):
        b, e = max(s.begin_ns, t0), min(s.end_ns, t1)
        if e > b:
            events += [(b, 1, i), (e, 0, i)]
    events.sort()
    components = dict.fromkeys(COMPONENTS, 0)
    units: dict[str, dict[str, int]] = {}
    comm = [0] * len(collectives)
    active: dict[int, Span] = {}
    phase, prev = marks[0][0], t0
    for t, what, i in events:
        if t > prev:
            _charge(t - prev, phase, active.values(), collectives, components, units, comm)
            prev = t
        if what == 2:
            phase = marks[i][0]
        elif what == 1:
            active[i] = spans[i]
        else:
            del active[i]
    return components, units, comm


def _charge(dt, phase, active, collectives, components, units, comm) -> None:
    ctx = max((s for s in active if s.cid is None), key=lambda s: s.order, default=None)
    net = min((s for s in active if s.cid is not None), key=lambda s: s.order, default=None)
    in_unit = ctx is not None and ctx.unit != TRANSITION
    if net is not None:
        comm[net.cid] += dt
        components[_comm_component(phase, ctx, net, collectives[net.cid])] += dt
        if in_unit:
            _unit(units, ctx.unit)["communication"] += dt
        return
    if ctx is None:
        components[PHASE_COMPONENT.get(phase, "other_s")] += dt
    elif ctx.unit == TRANSITION:
        components["layout_transitions_s"] += dt
    else:
        components[f"{ctx.kind}_compute_s" if ctx.kind != "recompute" else "recompute_s"] += dt
        _unit(units, ctx.unit)[ctx.kind] += dt


def _comm_component(phase: str, ctx: Span | None, span: Span, c: Collective) -> str:
    if c.op in ("send", "recv"):       # the part of a wait before the peer posted its side: settle() moves it
        return "pipeline_p2p_s"
    if phase in PHASE_COMPONENT:
        return PHASE_COMPONENT[phase]
    if ctx is not None and ctx.unit == TRANSITION:
        return "layout_transitions_s"
    if c.group == "dp" and c.op == "all_reduce":      # ddp's gradient buckets, launched from the last backward
        return "grad_sync_s"
    return {"tp": "tp_communication_s", "dp": "zero_communication_s"}.get(c.group, "other_s")


def _unit(units: dict, name: str) -> dict[str, int]:
    return units.setdefault(name, {"forward": 0, "backward": 0, "recompute": 0, "communication": 0})


def collective_rows(collectives: list[Collective], comm_ns: list[int], window: tuple[int, int]) -> list[dict]:
    """The collectives by (op, group, group_size): calls and bytes of those issued in the window, seconds spent in
    them there (issue and wait, exclusive)."""
    rows: dict[tuple, dict] = {}
    for c, ns in zip(collectives, comm_ns, strict=True):
        issued = window[0] <= c.issued_ns < window[1]
        if not issued and ns == 0:
            continue
        row = rows.setdefault((c.op, c.group, c.group_size), {"op": c.op, "group": c.group,
                                                             "group_size": c.group_size, "calls": 0, "bytes": 0,
                                                             "time_ns": 0})
        row["calls"] += issued
        row["bytes"] += c.bytes if issued else 0
        row["time_ns"] += ns
    ordered = sorted(rows.values(), key=lambda r: -r["time_ns"])
    return [{**{k: v for k, v in r.items() if k != "time_ns"}, "time_s": r["time_ns"] / 1e9} for r in ordered]


def critical_rank(ranks: list[dict]) -> dict:
    """The rank the step waited for: the busiest, the one with the most time outside collectives (every rank's
    step ends at one barrier; what a rank waits for in its collectives, p2p and that barrier is the others' work)."""
    return max(ranks, key=lambda r: (r["step_s"] - sum(c["time_s"] for c in r["collectives"]), -r["rank"]))


def compare(predicted: dict, measured: dict) -> dict[str, tuple[float, float]]:
    """{predicted key: (predicted s, measured s)} for every key of PREDICTED, then the measured-only component
    (predicted 0). A predicted key this runtime does not know is left out: nothing measured stands beside it."""
    out = {key: (float(predicted.get(key, 0.0)), sum(measured[m] for m in parts))
           for key, parts in PREDICTED.items()}
    out.update({key: (0.0, measured[key]) for key in UNPREDICTED})
    return out


# what settle() matches: a send with the peer's receive, a tied table's sum with the other end's; and the component
# each one's waiting for the peer is moved out of (the tied sum runs in the gradient-sync phase)
_PEER_SIDE = {"send": "recv", "recv": "send", "tied": "tied"}
_WAITED_IN = {"send": "pipeline_p2p_s", "recv": "pipeline_p2p_s", "tied": "grad_sync_s"}


def settle(ranks: list[dict]) -> list[dict]:
    """The ranks' breakdowns as the run-report carries them: the waits that pair a rank with one on another stage
    split into the time before the peer posted its side (pipeline_idle_s: the other stage was still computing)
    and the transfer after it. Pairs: a pipeline send and the peer's receive (gloo's and NCCL's p2p both wait for
    the other side; the rest stays pipeline_p2p_s), and the all-reduce that sums a tied table's gradient between
    the first and the last stage (the last stage enters it while the first still runs its last backwards: that
    wait is the pipeline's drain; the rest stays grad_sync_s). The i-th send from a to b matches the i-th receive
    on b from a, the i-th tied sum the other end's i-th. Clocks: the ranks of one host share perf_counter's;
    across hosts the step's opening barrier aligns them (an error of that barrier's skew)."""
    posted = {}
    for r in ranks:
        for e in r.get("_p2p", []):
            posted[(r["rank"], e["op"], e["peer"], e["nth"])] = (e["posted_ns"], r["_clock"])
    out = []
    for r in ranks:
        idle = dict.fromkeys(set(_WAITED_IN.values()), 0)
        for e in r.get("_p2p", []):
            match = posted.get((e["peer"], _PEER_SIDE[e["op"]], r["rank"], e["nth"]))
            if match is None:
                continue
            peer_posted = _on_clock(match[0], match[1], r["_clock"])
            idle[_WAITED_IN[e["op"]]] += sum(min(max(peer_posted - b, 0), end - b) for b, end in e["waits"])
        comps = dict(r["components"])
        for component, ns in idle.items():
            moved = min(ns / 1e9, comps[component])
            comps[component] -= moved
            comps["pipeline_idle_s"] += moved
        out.append({**{k: v for k, v in r.items() if not k.startswith("_")}, "components": comps})
    return out


def trace_events(rank: int, marks: list[tuple[str, int]], spans: list[Span], collectives: list[Collective],
                 origin_ns: int) -> list[dict]:
    """The step as Chrome trace events (the Trace Event Format's complete events, "ph": "X", microseconds from the
    step's start): one process per rank, its phases on thread 0, each plan entry's forward / backward / recompute
    on thread 1 and each collective's issue and wait on thread 2, nested as they ran."""
    def event(name, tid, begin, end, **args):
        return {"name": name, "ph": "X", "pid": rank, "tid": tid, "ts": (begin - origin_ns) / 1e3,
                "dur": max(end - begin, 0) / 1e3, **({"args": args} if args else {})}

    out = [{"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}}]
    out += [{"name": "thread_name", "ph": "M", "pid": rank, "tid": t, "args": {"name": n}}
            for t, n in enumerate(("phases", "compute", "communication"))]
    out += [event(name, 0, begin, end) for (name, begin), (_, end) in zip(marks, marks[1:])]
    for sp in spans:
        if sp.cid is None:
            out.append(event(f"{sp.unit} {sp.kind}", 1, sp.begin_ns, sp.end_ns))
        else:
            c = collectives[sp.cid]
            out.append(event(f"{c.op} {c.group}", 2, sp.begin_ns, sp.end_ns, kind=sp.kind,
                             group_size=c.group_size, bytes=c.bytes))
    return out


def chrome_trace(ranks: list[dict]) -> dict:
    """The ranks' trace events (``_trace`` of each breakdown) as one Chrome / Perfetto trace document."""
    return {"traceEvents": [e for r in ranks if r for e in r.get("_trace", [])], "displayTimeUnit": "ms"}


def _on_clock(t_ns: int, theirs: dict, mine: dict) -> int:
    if theirs["host"] == mine["host"]:
        return t_ns
    return t_ns - theirs["origin_ns"] + mine["origin_ns"]


# --- the edge: recording one step ----------------------------------------------------------------------------------

_ACTIVE: StepTimes | None = None


def timed(unit: str, fn, *args):
    """``fn(*args)``, the forward of plan entry ``unit`` (or TRANSITION); recorded while a step is timed."""
    rec = _ACTIVE
    return fn(*args) if rec is None else rec.forward(unit, fn, args)


def mark(phase: str) -> None:
    """The timed step enters ``phase`` (train_step: micro_batches, grad_sync, optimizer, step_sync, end)."""
    if _ACTIVE is not None:
        _ACTIVE.mark(phase)


_PG_METHODS = ("allreduce", "allreduce_coalesced", "allgather", "allgather_coalesced",
               "allgather_into_tensor_coalesced", "_allgather_base", "all_gather_single",
               "all_gather_single_coalesced", "reduce_scatter", "_reduce_scatter_base", "reduce_scatter_single",
               "reduce_scatter_single_coalesced", "reduce_scatter_tensor_coalesced", "alltoall", "alltoall_base",
               "all_to_all_single", "broadcast", "reduce", "gather", "scatter", "send", "recv", "recv_anysource",
               "barrier")
_FUNCOL = ("all_reduce", "all_reduce_coalesced", "all_gather_tensor", "all_gather_single",
           "all_gather_into_tensor_coalesced", "all_gather_single_coalesced", "reduce_scatter_tensor",
           "reduce_scatter_single", "reduce_scatter_tensor_coalesced", "reduce_scatter_single_coalesced",
           "all_to_all_single", "broadcast")


def op_name(method: str) -> str:
    """The collective a process-group method or functional collective performs."""
    m = method.lstrip("_").replace("allreduce", "all_reduce").replace("allgather", "all_gather")
    m = m.replace("alltoall", "all_to_all")
    for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "recv"):
        if m.startswith(op):
            return op
    return m


def buffer_bytes(args) -> int:
    """The collective's full buffer per rank: the largest of its tensor arguments (all_gather's output,
    reduce_scatter's input, the tensor of the others)."""
    def total(a):
        if isinstance(a, torch.Tensor):
            return a.numel() * a.element_size()
        if isinstance(a, (list, tuple)):
            return sum(total(x) for x in a)
        return 0
    return max((total(a) for a in args), default=0)


def _storage(t: torch.Tensor) -> int:
    t = getattr(t, "elem", t)          # an AsyncCollectiveTensor waits on its inner tensor
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, AttributeError):
        return 0


class StepTimes:
    """Records the spans of one training step on this rank; ``recording()`` installs the hooks and wrappers for the
    step and removes them after; ``result()`` is this rank's entry of the run-report's breakdown."""

    def __init__(self, state):
        env = state.env
        self._state = state
        self._cuda = env.device.type == "cuda"
        self._world = tuple(range(env.world))
        self._roles = group_roles(state)
        self._unit_groups = {u.name: (_ranks(env.tp_group(u.layout)), _ranks(env.dp_group(u.layout)))
                             for u in state.units}
        self.marks: list[tuple[str, int]] = []
        self.spans: list[Span] = []
        self.collectives: list[Collective] = []
        self._context: list[str] = []           # the units of the open forward / recompute spans
        self._segment: tuple | None = None      # the open backward segment: (unit, begin, order)
        self._task = None                       # the autograd graph task whose end closes the segment
        self._order = 0
        self._in_comm = False
        self._phase = ""
        self._works: dict[int, tuple] = {}      # id(Work) -> (Work, cid) until waited
        self._tensors: dict[int, int] = {}      # storage of a functional collective's output -> cid
        self._producer: dict[int, tuple] = {}   # id(output) -> (weak reference, unit): whose output an input is
        self._unmatched: int | None = None

    # -- the clock and the spans

    def _now(self) -> int:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter_ns()

    def _next(self) -> int:
        self._order += 1
        return self._order

    @contextlib.contextmanager
    def _span(self, kind: str, unit: str):
        order, begin = self._next(), self._now()
        self._context.append(unit)
        try:
            yield
        finally:
            self._context.pop()
            self.spans.append(Span(begin, self._now(), kind, unit, None, order))

    def mark(self, phase: str) -> None:
        self._phase = phase
        self.marks.append((phase, self._now()))

    # -- forward, backward, recompute

    def forward(self, unit: str, fn, args):
        with self._span("forward", unit):
            grad = torch.is_grad_enabled()
            x = args[0] if args else None
            if grad and isinstance(x, torch.Tensor) and x.requires_grad:
                ref = self._producer.get(id(x))
                before = ref[1] if ref is not None and ref[0]() is x else None
                args = (_EndOfBackward.apply(x, self, unit, before), *args[1:])
            out = fn(*args)
            if grad and isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(self._gradient_reaches(unit))
                self._producer[id(out)] = (weakref.ref(out), unit)
        return out

    def _gradient_reaches(self, unit: str):
        def hook(_grad):
            if self._segment is None or self._segment[0] != unit:
                self._open_segment(unit, self._now())
        return hook

    def _gradient_leaves(self, unit: str, before: str | None) -> None:
        now = self._now()
        self._close_segment(now)
        if before is not None:
            self._open_segment(before, now)

    def _open_segment(self, unit: str, now: int) -> None:
        self._close_segment(now)
        self._segment = (unit, now, self._next())
        task = torch._C._current_graph_task_id()
        if task != self._task:          # the first segment of this backward pass: close the last one at its end
            self._task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)

    def _close_segment(self, now: int) -> None:
        if self._segment is not None:
            unit, begin, order = self._segment
            self.spans.append(Span(begin, now, "backward", unit, None, order))
            self._segment = None

    def _backward_done(self) -> None:
        self._close_segment(self._now())
        self._task = None

    def _recomputing(self, unit: str, inner):
        def forward(*args, **kwargs):
            if torch._C._current_graph_task_id() == -1:     # the first forward, not its rerun in backward
                return inner(*args, **kwargs)
            with self._span("recompute", unit):
                return inner(*args, **kwargs)
        return forward

    # -- collectives

    def _role(self, ranks: tuple, op: str) -> str:
        """What the group is to this collective: pp for a pipeline send/recv, the tp or dp group of the plan entry
        it runs in, world for the clipping and loss reductions, else the group's first role (group_roles)."""
        roles = self._roles.get(ranks, [])
        if op in ("send", "recv") and "pp" in roles:
            return "pp"
        unit = self._context[-1] if self._context else (self._segment[0] if self._segment else None)
        tp, dp = self._unit_groups.get(unit, ((), ()))
        if ranks in (tp, dp):
            return "tp" if ranks == tp else "dp"
        if self._phase in ("optimizer", "step_sync") and ranks == self._world:
            return "world"
        return next((r for r in roles if r != "pp"), "world" if ranks == self._world else "other")

    def collective(self, op: str, group: tuple[int, ...], nbytes: int, call, peer: int | None = None):
        """Issue a collective of ``nbytes`` over the ranks ``group`` through ``call`` (``peer``: of a send or
        receive)."""
        if self._in_comm:
            return call()
        cid = len(self.collectives)
        order, begin = self._next(), self._now()
        self.collectives.append(Collective(op, self._role(group, op), max(1, len(group)), nbytes, begin, peer))
        self._in_comm = True
        try:
            out = call()
        finally:
            self._in_comm = False
            self.spans.append(Span(begin, self._now(), "issue", None, cid, order))
        if isinstance(out, dist.Work):
            self._works[id(out)] = (out, cid)
        else:
            for t in out if isinstance(out, (list, tuple)) else [out]:
                if isinstance(t, torch.Tensor):
                    self._tensors[_storage(t)] = cid
        return out

    def wait(self, cid: int | None, call):
        if self._in_comm:
            return call()
        if cid is None:
            if self._unmatched is None:
                self._unmatched = len(self.collectives)
                self.collectives.append(Collective("unmatched_wait", "other", 1, 0, -1))
            cid = self._unmatched
        order, begin = self._next(), self._now()
        self._in_comm = True
        try:
            return call()
        finally:
            self._in_comm = False
            self.spans.append(Span(begin, self._now(), "wait", None, cid, order))

    def _work_done(self, work) -> int | None:
        entry = self._works.pop(id(work), None)
        return entry[1] if entry is not None and entry[0] is work else None

    # -- installing and removing

    @contextlib.contextmanager
    def recording(self):
        """Hooks and wrappers in place for one step (the collectives' wrappers are process-wide: one recording at
        a time)."""
        global _ACTIVE
        with contextlib.ExitStack() as undo:
            undo.callback(self._release)
            for restore in (_wrap_process_group(self), _wrap_work(self), _wrap_funcol(self),
                            self._label_recompute(), self._label_loss()):
                undo.callback(restore)
            _ACTIVE = self
            undo.callback(_deactivate)
            yield self

    def _release(self) -> None:
        self._close_segment(self._now())
        self._works.clear()
        self._tensors.clear()
        self._producer.clear()

    def _label_recompute(self):
        blocks = [u for u in self._state.units if u.kind == "decoder" and u.strategy.get("recompute")
                  and hasattr(u.module, "_forward")]
        for u in blocks:        # an instance attribute: torch.utils.checkpoint reruns what Block.forward passed it
            u.module._forward = self._recomputing(u.name, u.module._forward)

        def restore():
            for u in blocks:
                del u.module._forward
        return restore

    def _label_loss(self):
        """The loss as part of the head's forward (and its backward), on the stage that computes it."""
        state = self._state
        inner = state.loss_fn
        if inner is None:
            return lambda: None
        schedule = state.schedule
        in_schedule = schedule is not None and getattr(schedule, "_loss_fn", None) is inner

        def loss_fn(logits, targets):
            return self.forward("head", inner, (logits, targets))
        state.loss_fn = loss_fn
        if in_schedule:
            schedule._loss_fn = loss_fn

        def restore():
            state.loss_fn = inner
            if in_schedule:
                schedule._loss_fn = inner
        return restore

    # -- the result

    def result(self) -> dict | None:
        """This rank's breakdown (seconds), or None when the step set no marks."""
        if len(self.marks) < 2:
            return None
        comp_ns, unit_ns, comm_ns = attribute(self.marks, self.spans, self.collectives)
        window = (self.marks[0][1], self.marks[-1][1])
        step_ns = window[1] - window[0]
        components = {k: v / 1e9 for k, v in comp_ns.items() if k != "other_s"}
        components["other_s"] = max(0.0, step_ns / 1e9 - sum(components.values()))
        plan, env = self._state.plan, self._state.env
        layers = []
        for u in self._state.units:
            ns = unit_ns.get(u.name, {"forward": 0, "backward": 0, "recompute": 0, "communication": 0})
            layers.append({"unit": u.name, "kind": u.kind,
                           "strategy": {k: u.strategy[k] for k in ("tp", "tp_layout", "sp", "dp", "dp_sharding",
                                                                   "recompute") if k in u.strategy},
                           "micro_batches": plan["micro_batches"], "micro_batch_size": plan["micro_batch_size"],
                           "forward_s": ns["forward"] / 1e9, "backward_s": ns["backward"] / 1e9,
                           "recompute_s": ns["recompute"] / 1e9, "communication_s": ns["communication"] / 1e9})
        return {"rank": env.rank, "stage": env.stage, "step_s": step_ns / 1e9,
                "components": {k: components[k] for k in COMPONENTS}, "layers": layers,
                "collectives": collective_rows(self.collectives, comm_ns, window),
                "_p2p": self._p2p(window), "_clock": {"host": socket.gethostname(), "origin_ns": window[0]},
                "_trace": trace_events(env.rank, self.marks, self.spans, self.collectives, window[0])}

    def _p2p(self, window: tuple[int, int]) -> list[dict]:
        """Each send and receive of the step with a known peer, and each tied-table sum ("tied", the peer being the
        other end): its order among this rank's of that kind to that peer, when it was posted, the windows it was
        waited for (what settle() needs)."""
        waits: dict[int, list] = {}
        for s in self.spans:
            if s.kind == "wait" and s.cid is not None:
                b, e = max(s.begin_ns, window[0]), min(s.end_ns, window[1])
                if e > b:
                    waits.setdefault(s.cid, []).append([b, e])
        seen: dict[tuple, int] = {}
        out = []
        for cid, c in enumerate(self.collectives):
            op, peer = (c.op, c.peer) if c.op in ("send", "recv") else ("tied", self._tied_peer(c))
            if peer is None:
                continue
            nth = seen.get((op, peer), 0)
            seen[(op, peer)] = nth + 1
            if window[0] <= c.issued_ns < window[1]:
                out.append({"op": op, "peer": peer, "nth": nth, "posted_ns": c.issued_ns, "waits": waits.get(cid, [])})
        return out

    def _tied_peer(self, c: Collective) -> int | None:
        """The other end's global rank of a tied table's gradient sum (None for any other collective)."""
        if c.group != "tied" or c.op != "all_reduce":
            return None
        env = self._state.env
        pair = {env.j, (env.pp - 1) * env.size + env.j}
        return next((r for r in pair if r != env.rank), None)


def _deactivate() -> None:
    global _ACTIVE
    _ACTIVE = None


class _EndOfBackward(torch.autograd.Function):
    """Identity on a plan entry's input. Its backward runs when the entry's backward has produced the input's
    gradient: it closes the entry's segment and opens the one of the entry whose output the input is."""

    @staticmethod
    def forward(ctx, x, rec, unit, before):
        ctx.marks = (rec, unit, before)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        rec, unit, before = ctx.marks
        rec._gradient_leaves(unit, before)
        return grad, None, None, None


def _ranks(group) -> tuple[int, ...]:
    return tuple(dist.get_process_group_ranks(group))


def group_roles(state) -> dict[tuple[int, ...], list[str]]:
    """{ranks: roles} of every group this rank communicates over, in the order they are told apart where groups
    coincide (two ranks in two stages are both the pipeline and the tied pair): pp (one rank of every stage),
    tied (the two ends of a tied embedding), tp and dp of each entry's layout, the stage."""
    env, plan = state.env, state.plan
    found: list[tuple[tuple[int, ...], str]] = []
    if env.pp > 1:
        found.append((tuple(k * env.size + env.j for k in range(env.pp)), "pp"))
        if plan["model"]["tied_embeddings"]:
            found.append((tuple(sorted({env.j, (env.pp - 1) * env.size + env.j})), "tied"))
    for role, group_of in (("tp", env.tp_group), ("dp", env.dp_group)):
        found += [(_ranks(group_of(u.layout)), role) for u in state.units]
    found.append((tuple(range(env.base, env.base + env.size)), "stage"))
    roles: dict[tuple[int, ...], list[str]] = {}
    for ranks, role in found:
        if role not in roles.setdefault(ranks, []):
            roles[ranks].append(role)
    return roles


def _swap(owner, names, make):
    """Replace each attribute ``names`` of ``owner`` that exists by ``make(name, original)``; returns the undo."""
    saved = []
    for name in names:
        original = getattr(owner, name, None)
        if original is None:
            continue
        replacement = make(name, original)
        if replacement is original:
            continue
        saved.append((name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, replacement)

    def restore():
        for name, value in reversed(saved):
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
    return restore


_MISSING = object()


def _wrap_process_group(rec: StepTimes):
    def make(name, original):
        op = op_name(name)
        p2p = name in ("send", "recv")           # (tensors, the peer's rank in the group, tag)

        def method(pg, *args, **kwargs):
            ranks = _ranks(pg)
            peer = ranks[args[1]] if p2p and len(args) > 1 and isinstance(args[1], int) else None
            return rec.collective(op, ranks, buffer_bytes(args), lambda: original(pg, *args, **kwargs), peer)
        return method
    return _swap(dist.ProcessGroup, _PG_METHODS, make)


def _wrap_work(rec: StepTimes):
    def make(_name, original):
        def wait(work, *args, **kwargs):
            return rec.wait(rec._work_done(work), lambda: original(work, *args, **kwargs))
        return wait
    return _swap(dist.Work, ("wait",), make)


def _wrap_funcol(rec: StepTimes):
    from torch.distributed import _functional_collectives as funcol

    def ranks_of(group):
        try:
            g = funcol._resolve_group(group)
            if isinstance(g, str):
                g = dist.distributed_c10d._resolve_process_group(g)
            return _ranks(g)
        except Exception:  # noqa: BLE001 - a group form this torch resolves otherwise: counted as "other"
            return ()

    def make(name, original):
        if name == "wait_tensor":
            def wait_tensor(tensor):
                return rec.wait(rec._tensors.pop(_storage(tensor), None), lambda: original(tensor))
            return wait_tensor
        op = op_name(name)
        params = list(inspect.signature(original).parameters)
        if "group" not in params:            # not the form this wrapper knows: left alone (its time: compute)
            return original
        at = params.index("group")

        def collective(*args, **kwargs):
            group = ranks_of(kwargs["group"] if "group" in kwargs else args[at] if len(args) > at else None)
            nbytes = buffer_bytes(args[:1]) * (len(group) if op == "all_gather" else 1)   # the gathered output
            return rec.collective(op, group, nbytes, lambda: original(*args, **kwargs))
        return collective
    return _swap(funcol, (*_FUNCOL, "wait_tensor"), make)

"""Checkpoints that survive a crash and a change of plan: sharded torch.distributed.checkpoint (DCP) directories.

Layout of ``--checkpoint-dir D`` (README-data-checkpoints.md explains recovery):

    D/step-200/              one complete checkpoint
        .metadata            DCP's index: every key, its global shape and where its shards lie
        __0_0.distcp ...     the shards each rank wrote (model, optimizer, per-rank RNG states)
        train_state.json     step, LR scheduler, data position (the data source's state), extra fields
        COMPLETE             written last: step, world size, plan digest, model FQN digest, every file's size and
                             CRC-32; a directory without it is an interrupted save and is never resumed
    D/step-300.tmp/          a save in progress (renamed to step-300 when every rank has written)

Keys are plan-independent: ``model.<fqn>``, ``optim.state.<fqn>.<name>``, ``optim.param_groups.<fqn>.<name>``
(DCP's flattened optimizer state dict) and ``rng.rank<r>.{cpu,cuda}``. A model part's FQNs must be the global ones
(``embedding.*``, ``layers.<global index>.*``, ``head.*``), never stage-local, so DCP reshards on load: another
tp/dp/pp or sharding reads the same files. A pipeline stage saves and loads only its own FQNs; the union over the
stages is the whole model.

    from galvatron_run import checkpoint as ckpt
    ckpt.save_checkpoint("ckpt", step, [model], [optimizer], scheduler, data_source, keep=3, plan_digest=d)
    info = ckpt.resume("ckpt", [model], [optimizer], scheduler, data_source)  # newest good one, or None
    info = ckpt.load_checkpoint("ckpt/step-200", [model], [optimizer], scheduler, data_source)  # {"step": 200, ...}
    ckpt.export_model("ckpt/step-200", "model.pt")         # offline, one process: a plain {fqn: tensor} file
    ckpt.import_model("model.pt", [model])                 # start from such a file (collective)

Every function here is collective over ``group`` (default: the world) when torch.distributed is initialised and
works in a single process without it. A damaged or incomplete checkpoint asked for by name raises
CheckpointError (exit 3) naming the file and what is wrong.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import warnings
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from galvatron_contracts.documents import DocumentError, GalvatronError, UsageError, atomic_write_text

FORMAT = "galvatron-run checkpoint"
FORMAT_VERSION = 1
MARKER = "COMPLETE"
LOCK = "LOCK"
TRAIN_STATE = "train_state.json"
_OPTIM = StateDictOptions(flatten_optimizer_state_dict=True)


class CheckpointError(DocumentError):
    """A checkpoint that is incomplete, damaged or does not match the model (exit 3)."""


# --- process-group helpers (a single process without torch.distributed is a world of one) ----------------------

def _dist(group) -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank_world(group) -> tuple[int, int]:
    if not _dist(group):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather(obj, group) -> list:
    if not _dist(group):
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _from_rank0(obj, group):
    if not _dist(group):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return box[0]


def _agree(problem: str | None, source: str, group) -> None:
    """Raise the same CheckpointError on every rank if any rank found a problem."""
    problems = [p for p in _all_gather(problem, group) if p]
    if problems:
        raise CheckpointError(source, sorted(set(problems)))


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it 'assumes a single process' every time it runs without a process group: we mean it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        yield


def _dcp_save(state, path, group) -> None:
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(path), process_group=group, no_dist=not _dist(group))


def _dcp_load(state, path, group) -> None:
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path), process_group=group, no_dist=not _dist(group))


def _on_rank0(fn, what: str, group):
    """Run ``fn`` on rank 0 only; if it fails, every rank raises the same GalvatronError (no rank left waiting)."""
    rank, _ = _rank_world(group)
    problem = None
    if rank == 0:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - disk full, permissions, an unserialisable scheduler: all fatal here
            problem = f"{what}: {type(e).__name__}: {e}"
    problems = [p for p in _all_gather(problem, group) if p]
    if problems:
        raise GalvatronError(problems[0])


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _parts(model_parts, optimizers) -> tuple[list[nn.Module], list]:
    parts, optims = _as_list(model_parts), _as_list(optimizers)
    if not parts:
        raise ValueError("no model parts given")
    if optims and len(optims) != len(parts):
        raise ValueError(f"one optimizer per model part: got {len(optims)} optimizers for {len(parts)} parts")
    return parts, optims


def _fqn_digest(fqns: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(fqns)).encode()).hexdigest()


# --- state dicts -------------------------------------------------------------------------------------------------

def _model_state(parts) -> list[dict]:
    return [get_model_state_dict(p) for p in parts]


def _optim_state(parts, optims) -> list[dict]:
    return [get_optimizer_state_dict(p, o, options=_OPTIM) for p, o in zip(parts, optims, strict=True)]


def _with_tied_names(part: nn.Module, optim_sd: dict) -> dict:
    """``optim_sd`` with the state of a weight the part holds under several names (a tied embedding in one stage,
    which DCP keys by one of them) under each name, so the files hold the same keys under every plan: a plan that
    keeps the last stage's copy of the weight (pp > 1) finds that copy's state."""
    names: dict[int, list[str]] = {}
    for name, p in part.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    out = dict(optim_sd)
    for fqns in (ns for ns in names.values() if len(ns) > 1):
        have = next((f for f in fqns if any(k.startswith(f"state.{f}.") for k in optim_sd)), None)
        if have is None:
            continue
        for key, value in optim_sd.items():
            kind, _, rest = key.partition(".")
            if kind in ("state", "param_groups") and rest.startswith(have + "."):
                out.update({f"{kind}.{f}{rest[len(have):]}": value for f in fqns if f != have})
    return out


def _rng_state(rank: int) -> dict[str, torch.Tensor]:
    out = {f"rank{rank}.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out[f"rank{rank}.cuda"] = torch.cuda.get_rng_state()
    return out


def _merge(dicts: list[dict], what: str) -> dict:
    merged: dict = {}
    for d in dicts:
        clash = merged.keys() & d.keys()
        if clash:
            raise ValueError(f"{what}: model parts share the keys {sorted(clash)[:3]}: FQNs must be global and unique")
        merged.update(d)
    return merged


def _file_crc(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _checksums(directory: Path, names: list[str], rank: int, world: int, group) -> dict[str, dict]:
    """{name: {bytes, crc32}} of the files, each rank hashing every world-th one."""
    mine = {n: {"bytes": (directory / n).stat().st_size, "crc32": _file_crc(directory / n)}
            for i, n in enumerate(names) if i % world == rank}
    out: dict[str, dict] = {}
    for part in _all_gather(mine, group):
        out.update(part)
    return out


# --- listing and verification --------------------------------------------------------------------------------------

def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step-") or name.endswith(".tmp"):
        return None
    try:
        return int(name[len("step-"):])
    except ValueError:
        return None


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every ``step-<N>`` directory under ``root`` (complete or not), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(_step_of(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None)


def read_marker(path: str | os.PathLike) -> dict:
    """The COMPLETE marker of a checkpoint directory; CheckpointError if it is absent or damaged."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(str(path), "no such checkpoint directory")
    marker = path / MARKER
    if not marker.is_file():
        raise CheckpointError(str(path), f"incomplete: no {MARKER} marker (the save was interrupted or is "
                                         "still running)")
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(str(marker), f"damaged marker ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
        raise CheckpointError(str(marker), f"not a {FORMAT} marker")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(str(marker), f"format_version {doc['format_version']} is newer than this reader "
                                           f"({FORMAT_VERSION}); upgrade galvatron-run")
    return doc


def check_files(path: str | os.PathLike, marker: dict, deep: bool = False, rank: int = 0, world: int = 1) -> list[str]:
    """Problems with the files the marker lists: missing, wrong size, and (``deep``) wrong CRC-32.

    With ``rank``/``world`` only every world-th file is hashed, so ranks share a deep check."""
    path, problems = Path(path), []
    for i, (name, want) in enumerate(sorted(marker["files"].items())):
        f = path / name
        if not f.is_file():
            problems.append(f"{name}: missing")
            continue
        size = f.stat().st_size
        if size != want["bytes"]:
            problems.append(f"{name}: {size} bytes, expected {want['bytes']} (truncated or damaged)")
        elif deep and i % world == rank and _file_crc(f) != want["crc32"]:
            problems.append(f"{name}: CRC-32 mismatch (the file is damaged)")
    return problems


def verify_checkpoint(path: str | os.PathLike, deep: bool = True, group=None) -> dict:
    """The marker of a complete, undamaged checkpoint; CheckpointError (exit 3) naming every problem otherwise.

    Collective when torch.distributed is initialised: ranks share the CRC work and agree on the verdict."""
    rank, world = _rank_world(group)
    try:
        marker, problem = read_marker(path), None
    except CheckpointError as e:
        marker, problem = None, str(e)
    if marker is not None:
        found = check_files(path, marker, deep, rank, world)
        problem = "; ".join(found) if found else None
    _agree(problem and (problem if marker is None else f"{Path(path)}: damaged: {problem}"), str(path), group)
    return marker


def newest_complete(root: str | os.PathLike, deep: bool = False, group=None) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``root`` whose marker and files check out (None if none), and a line for each
    newer one that does not ('step-4: damaged: ...').

    Checks sizes (``deep``: also every CRC-32; ranks share the work). Every rank gets the same answer; collective
    when torch.distributed is initialised."""
    rank, world = _rank_world(group)
    candidates = [str(p) for _, p in reversed(list_checkpoints(root))] if rank == 0 else None
    skipped = []
    for path in _from_rank0(candidates, group):
        try:
            marker, problems = read_marker(path), None
        except CheckpointError as e:
            marker, problems = None, [str(e).split(": ", 1)[-1]]
        if marker is not None:
            problems = check_files(path, marker, deep, rank, world) if (deep or rank == 0) else []
        problems = sorted({p for ps in _all_gather(problems, group) for p in ps})
        if not problems:
            return Path(path), skipped
        skipped.append(f"{Path(path).name}: {'; '.join(problems)}")
    return None, skipped


def latest_complete(root: str | os.PathLike, deep: bool = False, group=None, quiet: bool = False) -> Path | None:
    """``newest_complete``'s checkpoint; the ones skipped are named in a warning on stderr (rank 0)."""
    path, skipped = newest_complete(root, deep, group)
    if _rank_world(group)[0] == 0 and not quiet:
        for line in skipped:
            print(f"warning: skipping checkpoint {Path(root) / line}", file=sys.stderr)
    return path


def nothing_to_resume(root: str | os.PathLike, skipped: list[str]) -> CheckpointError:
    """The error (exit 3) of --resume when ``root`` holds no usable checkpoint: what is wrong with each one."""
    root = Path(root)
    why = ("every checkpoint in it is incomplete or damaged" if skipped else
           "it holds no checkpoint" if root.is_dir() else "no such directory")
    return CheckpointError(str(root), [f"nothing to resume: {why} (--resume-or-start starts from step 0 instead)",
                                       *skipped])


def check_resumable(root: str | os.PathLike) -> None:
    """One process, before any rank starts: CheckpointError (exit 3) unless ``root`` holds a checkpoint whose marker
    and file sizes check out (the ranks check every CRC-32 when they load it)."""
    path, skipped = newest_complete(root)
    if path is None:
        raise nothing_to_resume(root, skipped)


# --- one run per directory -----------------------------------------------------------------------------------------

def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0))
        return f"pid {who['pid']} on host {who['host']}, started {who['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not say who it is"


def _try_lock(root: Path, wait_s: float) -> tuple[int | None, str | None]:
    """(fd, None) when this process now holds ``root/LOCK``; (None, holder) when another one holds it. Waits up to
    ``wait_s`` for a holder that only checks (``lock_holder``) to let go."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, None
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _holder(fd)
                os.close(fd)
                return None, holder
            time.sleep(0.05)


def _in_use(root, holder: str) -> UsageError:
    return UsageError(f"--checkpoint-dir {root}: in use by another run ({holder}; lock {Path(root) / LOCK}): two runs "
                      "would write the same step-N checkpoints; wait for it to end, or give another directory")


def check_unlocked(root: str | os.PathLike) -> None:
    """One process, before any rank starts: UsageError (exit 2) naming the run that holds ``root``'s lock."""
    root = Path(root)
    if not (root / LOCK).is_file():
        return
    try:
        fd, holder = _try_lock(root, wait_s=0.25)
    except OSError:
        return  # an unreadable lock file: the run's own lock names the problem
    if fd is not None:
        os.close(fd)
    if holder:
        raise _in_use(root, holder)


class DirectoryLock:
    """``root/LOCK``, held (fcntl.flock) by rank 0 from the start of a run to its end, with the holder's host, pid
    and start time written in it. The kernel drops a flock with the process that holds it, so a crashed run leaves
    no lock behind (the file stays, and is taken over)."""

    def __init__(self, root: str | os.PathLike, group=None):
        self.root, self.fd = Path(root), None
        problem = None
        if _rank_world(group)[0] == 0:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                self.fd, holder = _try_lock(self.root, wait_s=0.5)
            except OSError as e:
                holder, problem = None, f"--checkpoint-dir {root}: cannot lock {self.root / LOCK} ({e.strerror or e})"
            if holder:
                problem = str(_in_use(root, holder))
            elif self.fd is not None:
                me = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, (json.dumps(me) + "\n").encode(), 0)
        problems = [p for p in _all_gather(problem, group) if p]
        if problems:
            self.release()
            raise UsageError(problems[0])

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # and with it the lock
            self.fd = None


def lock_directory(root: str | os.PathLike, group=None) -> DirectoryLock:
    """Collective: rank 0 takes ``root``'s lock for the run; UsageError (exit 2) on every rank, naming the holder,
    when another run has it. ``release()`` at the end."""
    return DirectoryLock(root, group)


# --- save ----------------------------------------------------------------------------------------------------------

def save_checkpoint(root: str | os.PathLike, step: int, model_parts, optimizers=(), scheduler=None, data_source=None,
                    *, keep: int | None = None, plan_digest: str | None = None, extra: dict | None = None,
                    group=None) -> Path:
    """Save a sharded checkpoint of this step, crash-safely; collective. Returns ``root/step-<step>``.

    ``model_parts``: this rank's modules (a pipeline stage's, one or several); ``optimizers``: one per part (or
    none); ``scheduler``: an LR scheduler (or a list of identical ones: the first is saved); ``data_source``: its
    ``state()`` is kept; ``extra``: JSON fields kept in train_state.json. ``keep``: afterwards delete all but the
    newest ``keep`` complete checkpoints (and leftovers of interrupted saves).

    A save that fails (a full disk, permissions) raises the same GalvatronError on every rank (exit 1): one line
    naming the checkpoint and, when the device is full, the space it needs; what it wrote is removed."""
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1, got {keep}")
    parts, optims = _parts(model_parts, optimizers)
    rank, world = _rank_world(group)
    root = Path(root)
    final, tmp = root / f"step-{step}", root / f"step-{step}.tmp"

    def make_tmp():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    model = _merge(_model_state(parts), "model")
    state: dict[str, Any] = {"model": model, "rng": _rng_state(rank)}
    if optims:
        state["optim"] = _merge([_with_tied_names(p, sd) for p, sd in zip(parts, _optim_state(parts, optims))],
                                "optimizer")
    needed, free = _space(state, root, group)
    fqns = set().union(*_all_gather(sorted(model), group))
    scheds = _as_list(scheduler)

    def write_train_state():
        train_state = {"step": step, "scheduler": scheds[0].state_dict() if scheds else None,
                       "data": data_source.state() if data_source is not None else None, "extra": extra or {}}
        atomic_write_text(tmp / TRAIN_STATE, json.dumps(train_state, indent=1, allow_nan=False) + "\n")

    def complete():
        marker = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "world_size": world,
            "plan_digest": plan_digest, "model_fqns": len(fqns), "model_fqn_digest": _fqn_digest(fqns),
            "has_optimizer": bool(optims), "torch": torch.__version__,
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }
        if final.exists():
            shutil.rmtree(final)  # an interrupted or superseded save of the same step
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write_text(final / MARKER, json.dumps(marker, indent=1) + "\n")
        _fsync_dir(final)
        if keep is not None:
            prune(root, keep)

    try:
        _on_rank0(make_tmp, f"cannot create {tmp}", group)
        _dcp_save(state, tmp, group)
        _on_rank0(write_train_state, f"cannot write {tmp / TRAIN_STATE}", group)
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        files = _checksums(tmp, names, rank, world, group)
        _on_rank0(complete, f"cannot complete {final}", group)
    except (dcp.CheckpointException, GalvatronError, OSError) as e:
        if rank == 0:  # nothing complete-looking stays, and the space is given back
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / MARKER).is_file():
                shutil.rmtree(final, ignore_errors=True)
        raise GalvatronError(_save_failure(final, e, needed, free)) from None
    return final


def _tensor_bytes(state: dict, prefix: str = "") -> dict[str, int]:
    """{key: bytes of the whole value} of every tensor in a nested state dict (a DTensor counts its global shape)."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_tensor_bytes(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value.numel() * value.element_size()
    return out


def _space(state: dict, root: Path, group) -> tuple[int, int]:
    """(bytes the checkpoint's tensors take, each key once over the ranks; bytes free where it goes, on rank 0):
    the same on every rank, so that a failed save is described alike everywhere."""
    free = None
    if _rank_world(group)[0] == 0:
        existing = next((p for p in [root, *root.parents] if p.exists()), Path("."))
        free = shutil.disk_usage(existing).free
    sizes: dict[str, int] = {}
    gathered = _all_gather((_tensor_bytes(state), free), group)
    for part, _ in gathered:
        sizes.update(part)
    return sum(sizes.values()), gathered[0][1]


def _save_failure(final: Path, err: BaseException, needed: int, free: int) -> str:
    """One line for a failed save: 'no space left ... needs more than X' when it is that, else the first error."""
    errors = [exc for _, (exc, _) in sorted(err.failures.items())] if isinstance(err, dcp.CheckpointException) \
        else [err]
    full = free < needed or any((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
                                or "No space left on device" in str(e) for e in errors)
    if full:
        return (f"cannot save checkpoint {final}: no space left on the device: it needs more than "
                f"{needed / 2**20:.1f} MiB (its tensors alone), and {free / 2**20:.1f} MiB were free when the save "
                "began (free some space, or give another --checkpoint-dir)")
    first = errors[0]
    text = (str(first).strip().splitlines() or [""])[0]
    return f"cannot save checkpoint {final}: " + (text if isinstance(first, GalvatronError) else
                                                  f"{type(first).__name__}: {text}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prune(root: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, every incomplete one and leftover ``*.tmp``
    directories. Not collective: call it on one rank while no save is running. Returns what it removed."""
    if keep < 1:
        raise ValueError(f"--keep must be at least 1, got {keep}")
    root, removed = Path(root), []
    complete = [p for _, p in list_checkpoints(root) if (p / MARKER).is_file()]
    kept = set(complete[-keep:])
    for _, p in list_checkpoints(root):
        if p not in kept:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in sorted(root.glob("step-*.tmp")):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# --- load ----------------------------------------------------------------------------------------------------------

def _metadata(path: Path):
    try:
        return dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 - DCP raises many kinds; all mean the index is unreadable
        raise CheckpointError(str(path / ".metadata"), f"unreadable DCP index ({type(e).__name__}: {e})") from None


def _check_keys(path: Path, meta, requested: dict, prefix: str, what: str, group) -> None:
    """Every rank's keys exist with the same global shape, and together they cover the checkpoint's."""
    saved = meta.state_dict_metadata
    problems = []
    for key, value in requested.items():
        full = f"{prefix}.{key}"
        if full not in saved:
            problems.append(f"{what} has no {key!r}")
        elif isinstance(value, torch.Tensor) and hasattr(saved[full], "size"):
            have, want = tuple(saved[full].size), tuple(value.shape)
            if have != want:
                problems.append(f"{key}: shape {have} in the checkpoint, {want} in the model")
    _agree("; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
           if problems else None, str(path), group)
    if prefix == "model":
        union = set().union(*_all_gather(sorted(requested), group))
        names = (k[len(prefix) + 1:] for k in saved if k.startswith(prefix + "."))
        extra = sorted(n for n in names if n not in union)
        if extra:
            _agree(f"the checkpoint holds parameters no rank's model has: {', '.join(extra[:5])}"
                   + (f" and {len(extra) - 5} more" if len(extra) > 5 else "") + " (a different model?)",
                   str(path), group)


def load_checkpoint(path: str | os.PathLike, model_parts, optimizers=(), scheduler=None, data_source=None, *,
                    plan_digest: str | None = None, verify: bool = True, group=None) -> dict:
    """Load a checkpoint into this rank's parts (resharding as needed); collective.

    Without ``optimizers`` only the model is loaded (to start a new run from trained weights). The scheduler and
    data source get their saved state; RNG states are restored when the world size and plan are the same.
    Returns ``{"step", "extra", "same_plan", "rng_restored", "path", "world_size"}``, ``step`` as it was given to
    save_checkpoint (the runtime saves the number of steps completed, which is the next step to run)."""
    path = Path(path)
    parts, optims = _parts(model_parts, optimizers)
    rank, world = _rank_world(group)
    marker = verify_checkpoint(path, deep=verify, group=group)
    meta = _metadata(path)
    if optims and not marker.get("has_optimizer", True):
        raise CheckpointError(str(path), "holds no optimizer state (a model-only checkpoint): load the model alone")

    model_sds = _model_state(parts)
    model = _merge(model_sds, "model")
    _check_keys(path, meta, model, "model", "the checkpoint", group)
    state: dict[str, Any] = {"model": model}
    if optims:
        optim_sds = _optim_state(parts, optims)
        optim = _merge([_with_tied_names(p, sd) for p, sd in zip(parts, optim_sds)], "optimizer")
        # A hyperparameter this optimizer has and the checkpoint lacks (a newer torch adds one, a scheduler sets
        # 'initial_lr') keeps its current value; missing state tensors are errors.
        saved = meta.state_dict_metadata
        kept = sorted(k for k in optim if k.startswith("param_groups.") and f"optim.{k}" not in saved)
        if kept and rank == 0:
            names = sorted({k.rsplit(".", 1)[-1] for k in kept})
            print(f"warning: {path}: no saved value for optimizer setting(s) {', '.join(names)}; keeping the "
                  "current ones", file=sys.stderr)
        optim = {k: v for k, v in optim.items() if k not in set(kept)}
        _check_keys(path, meta, optim, "optim", "the checkpoint's optimizer state", group)
        state["optim"] = optim
    same_plan = marker.get("world_size") == world and marker.get("plan_digest") == plan_digest
    rng = {k: v.clone() for k, v in _rng_state(rank).items()}
    rng_restored = same_plan and all(f"rng.{k}" in meta.state_dict_metadata for k in rng)
    if rng_restored:
        state["rng"] = rng
    _dcp_load(state, path, group)

    for part, sd in zip(parts, model_sds, strict=True):
        set_model_state_dict(part, {k: state["model"][k] for k in sd})
    if optims:
        for part, opt, sd in zip(parts, optims, optim_sds, strict=True):
            set_optimizer_state_dict(part, opt, {k: state["optim"].get(k, v) for k, v in sd.items()}, options=_OPTIM)
    if rng_restored:
        torch.set_rng_state(state["rng"][f"rank{rank}.cpu"])
        if f"rank{rank}.cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"][f"rank{rank}.cuda"])

    train_state = read_train_state(path)
    if optims:
        for sched in _as_list(scheduler):
            _load_scheduler(sched, train_state.get("scheduler"), path)
    if data_source is not None and train_state.get("data"):
        data_source.load_state(train_state["data"])
    return {"step": int(train_state["step"]), "extra": train_state.get("extra", {}), "same_plan": same_plan,
            "rng_restored": rng_restored, "path": str(path), "world_size": marker.get("world_size")}


def resume(root: str | os.PathLike, model_parts, optimizers=(), scheduler=None, data_source=None, *,
           plan_digest: str | None = None, required: bool = False, group=None) -> dict | None:
    """Load the newest complete, undamaged checkpoint under ``root`` (every file's CRC checked, the work shared by
    the ranks; damaged ones are skipped with a warning). None when there is none: start from scratch; with
    ``required`` (--resume) that is ``nothing_to_resume`` instead (exit 3, naming what is wrong with each)."""
    path, skipped = newest_complete(root, deep=True, group=group)
    if path is None and required:
        raise nothing_to_resume(root, skipped)
    if _rank_world(group)[0] == 0:
        for line in skipped:
            print(f"warning: skipping checkpoint {Path(root) / line}", file=sys.stderr)
        if path is None and skipped:
            print(f"warning: {root}: no usable checkpoint: starting from step 0", file=sys.stderr)
    if path is None:
        return None
    return load_checkpoint(path, model_parts, optimizers, scheduler, data_source, plan_digest=plan_digest,
                           verify=False, group=group)


def read_train_state(path: str | os.PathLike) -> dict:
    """The checkpoint's train_state.json: {step, scheduler, data, extra}."""
    f = Path(path) / TRAIN_STATE
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(str(f), f"unreadable ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("step"), int):
        raise CheckpointError(str(f), "$.step: expected an integer")
    return doc


def _load_scheduler(sched, saved: dict | None, path: Path) -> None:
    """Restore the schedule's position, keeping this optimizer's own groups (their count may differ per plan)."""
    if saved is None:
        raise CheckpointError(str(path / TRAIN_STATE), "$.scheduler: the checkpoint has no LR scheduler state")
    own = sched.state_dict()
    merged = {**saved, "base_lrs": own.get("base_lrs", saved.get("base_lrs")),
              "_last_lr": [g["lr"] for g in sched.optimizer.param_groups]}
    if "lr_lambdas" in own:
        merged["lr_lambdas"] = own["lr_lambdas"]
    sched.load_state_dict(merged)


# --- export and import of a plain full state dict ----------------------------------------------------------------

def export_model(checkpoint: str | os.PathLike, out_file: str | os.PathLike, verify: bool = True) -> dict:
    """Write the model of a DCP checkpoint as one ``torch.save`` file of ``{fqn: tensor}``, merging all stages and
    shards; one process, no process group (``python -m galvatron_run.checkpoint export CKPT OUT``). Returns
    {"tensors", "bytes"}."""
    model = model_tensors(checkpoint, verify)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    torch.save(model, tmp)
    os.replace(tmp, out_file)
    return {"tensors": len(model), "bytes": out_file.stat().st_size}


def model_tensors(checkpoint: str | os.PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """{fqn: full tensor} of a DCP checkpoint's model, every stage and shard merged, in one process."""
    checkpoint = Path(checkpoint)
    if verify:
        problems = check_files(checkpoint, read_marker(checkpoint), deep=True)
        if problems:
            raise CheckpointError(str(checkpoint), "damaged: " + "; ".join(problems))
    meta = _metadata(checkpoint)
    state = {}
    for key, item in meta.state_dict_metadata.items():
        if key.startswith("model.") and hasattr(item, "size"):
            state[key] = torch.empty(tuple(item.size), dtype=item.properties.dtype)
    if not state:
        raise CheckpointError(str(checkpoint), "holds no model tensors")
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    return {k[len("model."):]: v for k, v in sorted(state.items())}


def export_full(out_file: str | os.PathLike, model_parts, group=None) -> Path:
    """Collective: write the running model as one plain ``{fqn: tensor}`` file (rank 0 writes it).

    Goes through a model-only sharded save next to ``out_file``, so any plan (pp stages, tp, FSDP) exports."""
    out_file = Path(out_file)
    scratch = out_file.with_name(f".{out_file.name}.parts")
    save_checkpoint(scratch, 0, model_parts, group=group)

    def convert():
        export_model(scratch / "step-0", out_file, verify=False)
        shutil.rmtree(scratch, ignore_errors=True)

    _on_rank0(convert, f"cannot export to {out_file}", group)
    return out_file


def import_model(in_file: str | os.PathLike, model_parts, group=None, strict: bool = True) -> dict:
    """Collective: load a plain ``{fqn: tensor}`` file (an export, or any torch.save of a state dict with the same
    FQNs) into this rank's parts, sharding it as the parts are sharded. Raises CheckpointError (exit 3) for a file
    that is not such a dict or does not match the model."""
    in_file = Path(in_file)
    parts, _ = _parts(model_parts, ())
    problem, full = None, None
    if not in_file.is_file():
        problem = "no such file"
    else:
        try:
            full = torch.load(in_file, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle means a damaged or foreign file
            problem = f"not a readable torch.save state dict ({type(e).__name__}: {e})"
        plain = isinstance(full, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in full.items())
        if full is not None and not plain:
            problem = "expected a dict of parameter name -> tensor"
    _agree(problem, str(in_file), group)

    sds = _model_state(parts)
    mine = _merge(sds, "model")
    problems = [f"no {k!r}" for k in mine if k not in full]
    problems += [f"{k}: shape {tuple(full[k].shape)} in the file, {tuple(v.shape)} in the model"
                 for k, v in mine.items() if k in full and tuple(full[k].shape) != tuple(v.shape)]
    _agree("; ".join(problems[:8]) if problems else None, str(in_file), group)
    union = set().union(*_all_gather(sorted(mine), group))
    unused = sorted(set(full) - union)
    if strict and unused:
        _agree(f"holds tensors no rank's model has: {', '.join(unused[:5])}"
               + (f" and {len(unused) - 5} more" if len(unused) > 5 else "") + " (a different model?)",
               str(in_file), group)
    full_opts = StateDictOptions(full_state_dict=True)
    for part, sd in zip(parts, sds, strict=True):
        set_model_state_dict(part, {k: full[k] for k in sd}, options=full_opts)
    return {"tensors": len(union), "unused": unused}


# --- command line: inspect, verify, export ---------------------------------------------------------------------

def _main(argv: Sequence[str] | None = None) -> int:
    """python -m galvatron_run.checkpoint {list DIR | verify CKPT | export CKPT OUT.pt}"""
    import click

    from galvatron_contracts.documents import exits_cleanly

    @click.group()
    def cli():
        """Inspect, verify and export galvatron-run checkpoints (no process group needed)."""

    @cli.command("list")
    @click.argument("root", type=click.Path())
    @exits_cleanly
    def list_cmd(root):
        """Every checkpoint under ROOT with its state; the one --resume would take is marked '*'."""
        latest = latest_complete(root, quiet=True)
        for step, path in list_checkpoints(root):
            try:
                m = read_marker(path)
                problems = check_files(path, m)
                status = "damaged: " + "; ".join(problems) if problems else f"complete, world {m['world_size']}"
            except CheckpointError as e:
                status = str(e).split(": ", 1)[-1]
            print(f"{'*' if latest == path else ' '} step {step:>8}  {path}  {status}")

    @cli.command()
    @click.argument("checkpoint", type=click.Path())
    @exits_cleanly
    def verify(checkpoint):
        """Check every file's size and CRC-32 against the COMPLETE marker (exit 3 when damaged)."""
        m = verify_checkpoint(checkpoint, deep=True)
        print(f"{checkpoint}: complete and undamaged (step {m['step']}, {len(m['files'])} files)")

    @cli.command()
    @click.argument("checkpoint", type=click.Path())
    @click.argument("out", type=click.Path())
    @exits_cleanly
    def export(checkpoint, out):
        """Write CHECKPOINT's model as one torch.save file of {fqn: tensor} at OUT."""
        r = export_model(checkpoint, out)
        print(f"{out}: {r['tensors']} tensors, {r['bytes']} bytes", file=sys.stderr)

    @cli.command("export-hf")
    @click.argument("checkpoint", type=click.Path())
    @click.argument("out", type=click.Path(file_okay=False))
    @click.option("--model", "model", required=True,
                  help="The checkpoint's model: a preset or a Hugging Face config.json (or its directory), whose "
                       "other keys the exported config.json keeps.")
    @exits_cleanly
    def export_hf_cmd(checkpoint, out, model):
        """Write CHECKPOINT's model (a checkpoint, or a --checkpoint-dir: its latest complete one) as a Hugging Face
        checkpoint in OUT that transformers loads.

        \b
            python -m galvatron_run.checkpoint export-hf ckpt --model ./llama-checkpoint ./tuned
        """
        from galvatron_contracts.models import load_model_spec

        from .hf_io import save_hf
        path = checkpoint if (Path(checkpoint) / MARKER).is_file() else latest_complete(checkpoint, quiet=True)
        if path is None:
            raise CheckpointError(str(checkpoint), "holds no complete checkpoint")
        config_file = Path(model) / "config.json" if Path(model).is_dir() else Path(model)
        base = json.loads(config_file.read_text()) if config_file.is_file() else None   # else a preset
        files = save_hf(load_model_spec(model), model_tensors(path), out, base_config=base)
        print(f"{out}: {', '.join(files)} (from {path})", file=sys.stderr)

    cli.main(args=list(argv) if argv is not None else None, prog_name="python -m galvatron_run.checkpoint")
    return 0


if __name__ == "__main__":
    _main()

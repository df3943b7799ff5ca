"""Hugging Face checkpoints in and out of a running plan (``--init-from-hf DIR``, ``--export-hf DIR``).

    ckpt = HFCheckpoint.open("gpt2-dir")             # config.json + model.safetensors | model.safetensors.index.json
    ckpt.check(plan["model"], "plan.json")           # DocumentError (exit 3) naming the field, file or tensor
    state = build_state(plan, device, init=ckpt.load_into)      # each rank reads only the slices it holds
    export_hf(state, "out-dir", base_config=ckpt.config)        # collective; rank 0 writes
    save_hf(spec, {fqn: full tensor}, "out-dir")                # one process, e.g. from a --export file

Reading: every parameter's local shard is a set of global indices per dimension, found by asking DTensor itself
(``distribute_tensor`` of a small index probe with the parameter's mesh and placements, no communication), so the
layout is the one the runtime's seeded initialisation uses. Each maximal run of consecutive indices is one sliced
read (``safe_open(...).get_slice(name)[rows, cols]``): Replicate, Shard and FSDP2's _StridedShard (TP + zero over a
2-D mesh) are all read as slices, never as whole tensors; a fused or transposed HF tensor (GPT-2's c_attn, Conv1D)
is sliced through ``galvatron_models.hf.Piece``.

Writing: stage by stage, one parameter at a time: the stage's ranks gather it (``full_tensor``), the stage's first
rank sends it to rank 0, which assembles the HF tensors and writes a shard file whenever ``max_shard_bytes`` are
pending. Rank 0 holds at most one shard plus the pieces of one fused tensor; files are written under temporary names
and renamed at the end, so a failed export leaves the directory as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from galvatron_contracts.documents import DocumentError, GalvatronError, UsageError, atomic_write_text, read_json
from galvatron_contracts.launch import check_output_dir
from galvatron_contracts.models import from_hf_config, spec_differences
from galvatron_models import Decoder, hf

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30            # what transformers' save_pretrained has used by default
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


# --- reading ---------------------------------------------------------------------------------------------------

@dataclass
class HFCheckpoint:
    """A checkpoint directory's config, the model spec it implies and where each tensor is (headers only read)."""

    directory: Path
    config: dict                                  # as in config.json, rope_theta lifted to the top level
    spec: dict
    weights: str                                  # the index or model.safetensors (for messages)
    where: dict[str, tuple[Path, str]] = field(default_factory=dict)   # canonical name -> (file, stored name)
    header: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)   # canonical -> (shape, dtype)
    read_bytes: int = 0                           # bytes this process read by load_into

    @classmethod
    def open(cls, directory: str | os.PathLike, option: str = "--init-from-hf") -> HFCheckpoint:
        """Read config.json and the safetensors headers; DocumentError (exit 3) naming the file for anything
        missing, unreadable or a config the decoder does not compute."""
        root = Path(directory)
        if not root.is_dir():
            raise DocumentError(str(root), f"not a directory (given as {option})")
        config_path = root / CONFIG
        if not config_path.is_file():
            raise DocumentError(str(root), f"no {CONFIG} (a Hugging Face checkpoint directory has one)")
        raw = read_json(config_path)
        if not isinstance(raw, dict):
            raise DocumentError(str(config_path), "$: expected a JSON object")
        config = hf.normalized_config(raw)
        spec = from_hf_config(config, root.name or "hf", str(config_path))
        problems = hf.config_problems(config, spec["family"])
        if problems:
            raise DocumentError(str(config_path), problems)
        ckpt = cls(root, config, spec, "")
        ckpt._read_headers()
        return ckpt

    def _read_headers(self) -> None:
        single, index = self.directory / SINGLE, self.directory / INDEX
        if single.is_file():
            self.weights = str(single)
            for stored, info in _header(single).items():
                self._add(stored, single, info)
            return
        if not index.is_file():
            raise DocumentError(str(self.directory), f"no {SINGLE} and no {INDEX}")
        self.weights = str(index)
        doc = read_json(index)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise DocumentError(str(index), "$.weight_map: expected an object of tensor name -> file name")
        headers: dict[str, dict] = {}
        for stored, file in weight_map.items():
            if Path(file).name != file or file in ("", ".", ".."):
                raise DocumentError(str(index), f"$.weight_map[{stored!r}]: {file!r} is not a file of this directory")
            path = self.directory / file
            if file not in headers:
                if not path.is_file():
                    raise DocumentError(str(index), f"$.weight_map[{stored!r}]: no file {file!r} in {self.directory}")
                headers[file] = _header(path)
            if stored not in headers[file]:
                raise DocumentError(str(path), f"no tensor {stored!r} (the index says it is here)")
            self._add(stored, path, headers[file][stored])

    def _add(self, stored: str, path: Path, info: tuple) -> None:
        name = hf.canonical_name(self.spec["family"], stored)
        if name in self.where:
            raise DocumentError(str(path), f"tensor {stored!r} given twice (also in {self.where[name][0].name})")
        self.where[name] = (path, stored)
        self.header[name] = info

    def check(self, model_spec: dict, source: str) -> None:
        """DocumentError (exit 3) unless this checkpoint is exactly ``model_spec``'s model (``source``: where that
        spec is from): every differing field named by its config.json key, then every missing, surplus, misshapen
        or non-float tensor named with its file."""
        family = self.spec["family"]
        diffs = [d for d in spec_differences(self.spec, model_spec, f"{source}'s model")
                 if d.split(" ", 1)[0] != "name"]
        if diffs:
            key = {"family": "model_type"}
            raise DocumentError(str(self.directory / CONFIG), [
                f"$.{key.get(d.split(' ', 1)[0]) or hf.config_field(family, d.split(' ', 1)[0])}: {d}"
                for d in diffs])
        expected = hf.hf_shapes(self.spec)
        problems = [(self.weights, f"no tensor {name!r} (shape {list(shape)})")
                    for name, shape in expected.items() if name not in self.where]
        for name, (path, stored) in self.where.items():
            shape, dtype = self.header[name]
            if name not in expected:
                if not hf.ignorable(self.spec, name):
                    problems.append((str(path), f"tensor {stored!r} is no parameter of this {family} model"))
            elif shape != expected[name]:
                problems.append((str(path), f"tensor {stored!r}: shape {list(shape)}, expected "
                                            f"{list(expected[name])} for this config"))
            elif dtype not in _FLOAT_DTYPES:
                problems.append((str(path), f"tensor {stored!r}: dtype {dtype}, expected a float (F16, BF16, F32)"))
        if problems:
            first = problems[0][0]
            raise DocumentError(first, [msg if src == first else f"{src}: {msg}" for src, msg in problems[:8]]
                                + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else []))

    def notes(self) -> list[str]:
        """Settings of the config that are accepted but not applied (dropout)."""
        return hf.config_notes(self.config, self.spec["family"])

    @torch.no_grad()
    def load_into(self, model: nn.Module) -> None:
        """Copy into every parameter of ``model`` (a stage, parallelised and materialised) the part of its HF
        tensor this rank holds, reading only those slices. Call ``check`` first."""
        table = hf.pieces(self.spec)
        with contextlib.ExitStack() as files:
            handles: dict[Path, object] = {}

            def read(name: str, box: tuple[slice, ...]) -> torch.Tensor:
                path, stored = self.where[name]
                if path not in handles:
                    handles[path] = files.enter_context(safe_open(str(path), framework="pt"))
                block = handles[path].get_slice(stored)[box]
                self.read_bytes += block.numel() * block.element_size()
                return block

            for fqn, p in model.named_parameters():
                piece = table[fqn]
                target = _local(p)
                target.copy_(_read_held(piece, held_indices(p), read).to(target.dtype))


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{stored name: (shape, dtype)} of a safetensors file, reading its header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise DocumentError(str(path), f"not a readable safetensors file ({e})") from None


def _local(p: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor
    return p.to_local() if isinstance(p, DTensor) else p


def held_indices(p: torch.Tensor) -> list[torch.Tensor]:
    """Per dimension, the global indices this rank's local shard of ``p`` holds, in local order.

    DTensor decides: a probe whose entries along dimension d are their own index is distributed with ``p``'s mesh
    and placements (``src_data_rank=None``: every rank cuts its own part, no communication). Along the other
    dimensions the probe is only as long as the mesh dimensions that split them, so it stays small."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    if not isinstance(p, DTensor):
        return [torch.arange(n) for n in p.shape]
    mesh, placements = p.device_mesh, p.placements
    out = []
    for d, n in enumerate(p.shape):
        shape = [1] * p.ndim
        for m, pl in enumerate(placements):
            dim = getattr(pl, "dim", None)                # Shard and _StridedShard split a dimension
            if dim is not None and dim % p.ndim != d:
                shape[dim % p.ndim] *= mesh.size(m)
        shape[d] = n
        along = [1] * p.ndim
        along[d] = n
        probe = torch.arange(n, device=p.device).view(along).expand(shape).contiguous()
        local = distribute_tensor(probe, mesh, placements, src_data_rank=None).to_local()
        line = local.movedim(d, 0).reshape(local.shape[d], -1)
        out.append(line[:, 0].cpu() if line.shape[1] else torch.zeros(local.shape[d], dtype=torch.long))
    return out


def runs(index: torch.Tensor) -> list[slice]:
    """Maximal runs of consecutive values of ``index`` as slices, in order: [0,1,2,6,7] -> [0:3, 6:8]."""
    values = index.tolist()
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            out.append(slice(values[start], values[i - 1] + 1))
            start = i
    return out


def _read_held(piece: hf.Piece, held: list[torch.Tensor], read) -> torch.Tensor:
    """This rank's block of ``piece``'s parameter: one sliced read per combination of index runs, concatenated
    back in local order."""
    if any(len(ix) == 0 for ix in held):
        return torch.empty([len(ix) for ix in held])

    def block(prefix: tuple[slice, ...], rest: list[torch.Tensor]) -> torch.Tensor:
        if not rest:
            return piece.from_hf(read(piece.hf, piece.hf_box(prefix)))
        parts = [block((*prefix, r), rest[1:]) for r in runs(rest[0])]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=len(prefix))

    return block((), held)


# --- writing ---------------------------------------------------------------------------------------------------

def check_export_dir(path: str | os.PathLike, force: bool, option: str = "--export-hf") -> None:
    """UsageError (exit 2) unless ``path`` can become the export: a directory that can be created or written, and
    empty unless ``force`` (then its weights and config.json are replaced, other files kept)."""
    check_output_dir(path, option)
    root = Path(path)
    held = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise UsageError(f"{option} {root}: not empty (holds {shown}); give --force to replace its weights and "
                         f"{CONFIG}")


def check_exportable(spec: dict, source: str) -> None:
    """DocumentError (exit 3) for a model Hugging Face's classes cannot express, before any training."""
    try:
        hf.hf_config(spec)
    except ValueError as e:
        raise DocumentError(source, f"$.model: cannot export to Hugging Face: {e}") from None


class _ShardWriter:
    """Rank 0's side of an export: HF tensors assembled from full parameters, written in shards of bounded size."""

    def __init__(self, root: Path, spec: dict, max_shard_bytes: int):
        self.root, self.spec, self.max = root, spec, max_shard_bytes
        self.groups = hf.hf_groups(spec)
        self.group_of = {p.fqn: name for name, ps in self.groups.items() for p in ps}
        self.waiting: dict[str, dict[str, torch.Tensor]] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []       # (temporary file, its tensors)
        self.total_bytes = 0

    def add(self, fqn: str, tensor: torch.Tensor) -> None:
        name = self.group_of[fqn]
        parts = self.waiting.setdefault(name, {})
        parts[fqn] = tensor
        if len(parts) == len(self.groups[name]):
            whole = hf.assemble(self.groups[name], self.waiting.pop(name))
            size = whole.numel() * whole.element_size()
            if self.pending and self.pending_bytes + size > self.max:
                self._flush()
            self.pending[name] = whole
            self.pending_bytes += size
            self.total_bytes += size

    def _flush(self) -> None:
        tmp = self.root / f".model-part-{len(self.files):05d}.safetensors.tmp"
        save_file(self.pending, str(tmp), metadata={"format": "pt"})
        self.files.append((tmp, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self, config: dict) -> list[str]:
        """Write the last shard, replace any earlier weights, rename into place, then the index and config.json."""
        if self.waiting:
            raise RuntimeError(f"export incomplete: parts of {sorted(self.waiting)} never arrived")
        if self.pending or not self.files:
            self._flush()
        for old in self.root.iterdir():
            if old.name in (SINGLE, INDEX) or SHARD_NAME.match(old.name):
                old.unlink()
        n = len(self.files)
        names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for (tmp, _), final in zip(self.files, names, strict=True):
            os.replace(tmp, self.root / final)
        if n > 1:
            weight_map = {t: final for (_, tensors), final in zip(self.files, names, strict=True) for t in tensors}
            atomic_write_text(self.root / INDEX, json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))},
                indent=2) + "\n")
        atomic_write_text(self.root / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return names + ([INDEX] if n > 1 else []) + [CONFIG]

    def discard(self) -> None:
        for tmp, _ in self.files:
            tmp.unlink(missing_ok=True)


def save_hf(spec: dict, tensors: dict[str, torch.Tensor], out_dir: str | os.PathLike, *,
            base_config: dict | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """One process: write full parameters ``tensors`` ({FQN: tensor}, e.g. a ``--export`` file or
    ``checkpoint.export_model``'s) as a Hugging Face checkpoint; returns the files written."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(root, spec, max_shard_bytes)
    try:
        for fqn in writer.group_of:
            writer.add(fqn, tensors[fqn].detach().float().cpu())
        return writer.finish(hf.hf_config(spec, base_config))
    except BaseException:
        writer.discard()
        raise


def stage_parameters(spec: dict, stage: dict, first: bool, last: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(FQN, full shape) of the parameters a stage exports, in one order every rank computes alike: its modules'
    order, the head's copy of a tied embedding left out."""
    exported = {p.fqn for ps in hf.hf_groups(spec).values() for p in ps}
    with torch.device("meta"):
        part = Decoder(spec, range(stage["layer_start"], stage["layer_end"]), first, last,
                          tie=spec["tied_embeddings"])
    return [(n, tuple(p.shape)) for n, p in part.named_parameters() if n in exported]


@torch.no_grad()
def export_hf(state, out_dir: str | os.PathLike, *, base_config: dict | None = None,
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str] | None:
    """Collective: write the running model (``state``: train.TrainState) to ``out_dir`` as a Hugging Face
    checkpoint; returns the files written on rank 0 (None elsewhere). Raises GalvatronError on every rank if rank
    0 could not write (disk full, permissions), after every tensor has been passed on, so no rank is left waiting."""
    from torch.distributed.tensor import DTensor
    plan, env = state.plan, state.env
    spec = plan["model"]
    root = Path(out_dir)
    rank = dist.get_rank()
    writer, problem = None, None
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            writer = _ShardWriter(root, spec, max_shard_bytes)
        except OSError as e:
            problem = f"{type(e).__name__}: {e}"
    for k, stage in enumerate(plan["stages"]):
        leader = k * env.size
        for fqn, shape in stage_parameters(spec, stage, k == 0, k == env.pp - 1):
            full = None
            if env.stage == k:
                p = state.model.get_parameter(fqn)
                full = (p.full_tensor() if isinstance(p, DTensor) else p.detach()).float().contiguous()
                if rank == leader and leader != 0:
                    dist.send(full, dst=0)
            if rank == 0:
                if leader != 0:
                    full = torch.empty(shape, dtype=torch.float32, device=env.device)
                    dist.recv(full, src=leader)
                if problem is None:
                    try:
                        writer.add(fqn, full.detach().float().cpu())
                    except Exception as e:  # noqa: BLE001 - disk full, permissions: reported by every rank below
                        problem = f"{type(e).__name__}: {e}"
    written = None
    if rank == 0:
        try:
            if problem is None:
                written = writer.finish(hf.hf_config(spec, base_config))
        except Exception as e:  # noqa: BLE001
            problem = f"{type(e).__name__}: {e}"
        if problem is not None and writer is not None:
            writer.discard()
    box = [problem]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise GalvatronError(f"cannot export to {root}: {box[0]}")
    return written

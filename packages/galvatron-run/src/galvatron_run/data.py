"""Training data: the same global batch at the same step for every plan.

Every source answers ``batch(step) -> (inputs, targets)``, both int64 tensors of shape [global_batch, seq_len]
on the CPU, identical on every rank and for every plan (a pure function of the seed and the step); the runtime
slices the rows a rank needs. A resumed run therefore continues the very same sequence of batches: the data
position is the step. ``validation_batch(i)`` serves the held-out split (same on every rank, independent of the
seed), and ``state()`` / ``load_state()`` carry what a checkpoint must keep.

    src = make_data_source(None, vocab_size=256, seq_len=64, global_batch=8, seed=1234)      # random tokens
    src = make_data_source("corpus.txt", vocab_size=256, seq_len=64, global_batch=8, seed=1)  # UTF-8 bytes
    src = make_data_source("train.bin", vocab_size=50304, seq_len=1024, global_batch=8, seed=1,
                           dtype="uint16")                                                    # token file
    src = make_data_source("data/train", vocab_size=50304, seq_len=1024, global_batch=8, seed=1)  # .bin + .idx
    x, y = src.batch(0); vx, vy = src.validation_batch(0)

Formats (README-data-checkpoints.md has the commands that make them):
  * token file: a flat array of uint16 or uint32 token ids with no header, memory-mapped (what nanoGPT-style
    preprocessing writes with ``np.array(ids, dtype=np.uint16).tofile(path)``). Its dtype comes from a sidecar
    ``<file>.json`` ``{"dtype": "uint16", "vocab_size": 50257}`` or from ``dtype=`` (``--data-dtype``).
  * ``.npy``: a one-dimensional unsigned integer array saved by ``np.save`` (dtype read from its header).
  * Megatron-LM's indexed dataset, ``PREFIX.bin`` + ``PREFIX.idx`` (indexed.py; what ``galvatron-run
    prepare-data`` writes), named as PREFIX, PREFIX.bin or PREFIX.idx: its documents' ids, concatenated in
    order, are the token stream (a .bin without an .idx beside it is a raw token file).
  * text (``.txt``, ``.text``, ``.md``): UTF-8, tokenised byte by byte (vocabulary 256, no external tokenizer).
  * a directory holding ``train.<ext>`` (or the pair ``train.bin`` + ``train.idx``) and optionally ``val.<ext>``
    in one of the formats above; without a ``val`` file the validation split is the tail ``val_fraction`` of the
    training file.

Training samples are windows of seq_len + 1 consecutive tokens starting at offsets drawn uniformly from the
training split by a generator seeded with (seed, step) (windows cross document boundaries, as Megatron's
GPTDataset samples do; ``prepare-data --append-eos`` marks them); validation batch i takes the non-overlapping windows
i*B .. i*B + B - 1 of the validation split (wrapping around), so a full pass needs ``num_validation_batches``.
Bad data raises DocumentError (exit 3) naming the file and the reason.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from galvatron_contracts.documents import DocumentError, UsageError

from . import indexed

CORPUS = Path(__file__).parent / "corpus" / "english.txt"  # shipped byte-level corpus (public domain, see NOTICE)
TEXT_SUFFIXES = (".txt", ".text", ".md")
TOKEN_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
DATA_FORMATS = ("tokens", "text", "npy", "megatron")
DEFAULT_VAL_FRACTION = 0.1
_SCAN_CHUNK = 1 << 24  # elements per chunk when scanning a memory-mapped file once for its largest id


def _seed(*parts) -> int:
    """A 63-bit generator seed mixed from ``parts``, stable across runs, platforms and versions."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class RandomTokens:
    """Uniform random token ids, seeded by (seed, step): the default when no --data is given."""

    kind = "random"
    path = None

    def __init__(self, vocab_size: int, seq_len: int, global_batch: int, seed: int):
        self.vocab_size, self.seq_len, self.global_batch, self.seed = vocab_size, seq_len, global_batch, seed
        self.num_validation_batches = 1

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        tokens = torch.randint(0, self.vocab_size, (self.global_batch, self.seq_len + 1), generator=g)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def validation_batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(_seed("validation", i))
        tokens = torch.randint(0, self.vocab_size, (self.global_batch, self.seq_len + 1), generator=g)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}

    def state(self) -> dict:
        return {"kind": self.kind, "seed": self.seed}

    def load_state(self, state: dict) -> None:
        self.seed = state["seed"]


# --- opening files -------------------------------------------------------------------------------------------

def _sidecar(path: Path) -> dict | None:
    """The ``<file>.json`` next to a token file, checked; None when there is none."""
    side = path.with_name(path.name + ".json")
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DocumentError(str(side), f"unreadable sidecar ({e})") from None
    if not isinstance(meta, dict):
        raise DocumentError(str(side), "$: expected an object {\"dtype\": \"uint16\", \"vocab_size\": N}")
    if meta.get("dtype") not in TOKEN_DTYPES:
        raise DocumentError(str(side), f"$.dtype: expected one of {', '.join(TOKEN_DTYPES)}, got {meta.get('dtype')!r}")
    vocab = meta.get("vocab_size")
    if vocab is not None and (not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1):
        raise DocumentError(str(side), f"$.vocab_size: expected a positive integer, got {vocab!r}")
    return meta


def _check_utf8(path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise DocumentError(str(path), f"not UTF-8 text: invalid byte at offset {offset + e.start} "
                                               "(a token file needs a sidecar <file>.json or --data-dtype)") from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DocumentError(str(path), "not UTF-8 text: truncated character at the end of the file") from None


class TokenArray:
    """One memory-mapped file of token ids, checked: ``tokens`` (1-D numpy), ``fmt``, ``declared_vocab``.

    ``path`` is the file the ids are read from (the .bin of an indexed dataset)."""

    def __init__(self, path: str | Path, fmt: str | None = None, dtype: str | None = None):
        if fmt not in (None, *DATA_FORMATS):
            raise UsageError(f"--data-format: expected one of {', '.join(DATA_FORMATS)}, got {fmt!r}")
        if fmt == "megatron" or (fmt is None and indexed.prefix_of(path) is not None):
            self._open_indexed(indexed.strip_suffix(path), dtype)     # Megatron's PREFIX.bin + PREFIX.idx
            return
        self.path = path = Path(path)
        if not path.exists():
            raise DocumentError(str(path), "no such file")
        if not path.is_file():
            raise DocumentError(str(path), "not a regular file")
        size = path.stat().st_size
        if size == 0:
            raise DocumentError(str(path), "empty file: no tokens")
        if dtype is not None and dtype not in TOKEN_DTYPES:
            raise UsageError(f"--data-dtype: expected one of {', '.join(TOKEN_DTYPES)}, got {dtype!r}")
        meta = _sidecar(path) if fmt in (None, "tokens") else None
        suffix = path.suffix.lower()
        if fmt is None:
            if meta is not None or dtype is not None:
                fmt = "tokens"
            elif suffix == ".npy":
                fmt = "npy"
            elif suffix in TEXT_SUFFIXES:
                fmt = "text"
            else:
                raise DocumentError(str(path), "cannot tell the format: name UTF-8 text *.txt, or give a token "
                                               f"file a sidecar {path.name}.json {{\"dtype\": \"uint16\", "
                                               "\"vocab_size\": N}} or --data-dtype")
        self.fmt, self.declared_vocab = fmt, None
        if fmt == "text":
            _check_utf8(path)
            self.tokens, self.declared_vocab = np.memmap(path, dtype=np.uint8, mode="r"), 256
        elif fmt == "npy":
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise DocumentError(str(path), f"not a readable .npy array ({e})") from None
            if arr.ndim != 1 or arr.dtype.kind not in "ui":
                raise DocumentError(str(path), f"expected a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
            if arr.size == 0:
                raise DocumentError(str(path), "empty array: no tokens")
            self.tokens = arr
        else:
            name = dtype or (meta or {}).get("dtype")
            if name is None:
                raise DocumentError(str(path), f"token file without a dtype: add {path.name}.json "
                                               "{\"dtype\": \"uint16\", \"vocab_size\": N} or pass --data-dtype")
            if meta is not None and dtype is not None and meta["dtype"] != dtype:
                raise DocumentError(str(path), f"--data-dtype {dtype} contradicts the sidecar's {meta['dtype']}")
            itemsize = np.dtype(TOKEN_DTYPES[name]).itemsize
            if size % itemsize:
                raise DocumentError(str(path), f"size {size} B is not a multiple of {itemsize} B ({name}): "
                                               "wrong dtype or a truncated file")
            self.tokens = np.memmap(path, dtype=TOKEN_DTYPES[name], mode="r")
            self.declared_vocab = (meta or {}).get("vocab_size")

    def _open_indexed(self, prefix: Path, dtype: str | None) -> None:
        if dtype is not None:
            raise UsageError(f"--data-dtype does not apply to {prefix}.bin: its .idx names the dtype")
        self.dataset = indexed.IndexedDataset(prefix)
        self.path, self.fmt, self.declared_vocab = self.dataset.bin_path, "megatron", None
        self.tokens = self.dataset.tokens

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def id_range(self) -> tuple[int, int]:
        """(smallest, largest) token id, scanning the memory map once in chunks."""
        lo, hi = None, None
        for start in range(0, len(self), _SCAN_CHUNK):
            chunk = self.tokens[start:start + _SCAN_CHUNK]
            a, b = int(chunk.min()), int(chunk.max())
            lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
        return lo, hi

    def check_vocab(self, vocab_size: int) -> None:
        """DocumentError unless every id is a valid index into a vocabulary of ``vocab_size``."""
        where = str(self.path)
        if self.fmt != "text" and self.declared_vocab is not None and self.declared_vocab > vocab_size:
            raise DocumentError(where, f"the data's vocabulary ({self.declared_vocab}, from its sidecar) is larger "
                                       f"than the model's ({vocab_size})")
        lo, hi = self.id_range()
        if lo < 0:
            raise DocumentError(where, f"negative token id {lo}")
        if hi >= vocab_size:
            what = "byte value" if self.fmt == "text" else "token id"
            raise DocumentError(where, f"{what} {hi} at {self._place(self.first_offset(hi))} is outside the model's "
                                       f"vocabulary (ids must be < {vocab_size})")
        if self.declared_vocab is not None and hi >= self.declared_vocab:
            raise DocumentError(where, f"token id {hi} is outside the vocabulary its sidecar declares "
                                       f"({self.declared_vocab})")

    def _place(self, offset: int) -> str:
        """'offset N', with the document an indexed dataset holds it in."""
        if self.fmt != "megatron":
            return f"offset {offset}"
        return f"offset {offset} (document {self.dataset.document_at(offset)})"

    def first_offset(self, value: int) -> int:
        for start in range(0, len(self), _SCAN_CHUNK):
            hits = np.flatnonzero(self.tokens[start:start + _SCAN_CHUNK] == value)
            if hits.size:
                return start + int(hits[0])
        return -1

    def fingerprint(self) -> str:
        """Cheap identity of the file: its size and checksums of its first and last MiB."""
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(1 << 20)
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
        return f"{size}:{zlib.crc32(head):08x}:{zlib.crc32(tail):08x}"


# --- the file-backed source ----------------------------------------------------------------------------------

class TokenFileData:
    """Windows of a token array (token file, .npy or byte-level text), with a held-out validation split."""

    def __init__(self, train: TokenArray, val: TokenArray | None, *, vocab_size: int, seq_len: int,
                 global_batch: int, seed: int, val_fraction: float = DEFAULT_VAL_FRACTION):
        if not 0.0 <= val_fraction < 1.0:
            raise UsageError(f"--val-fraction: expected a fraction in [0, 1), got {val_fraction}")
        if seq_len < 1 or global_batch < 1:
            raise UsageError(f"seq_len and global_batch must be positive, got {seq_len} and {global_batch}")
        self.vocab_size, self.seq_len, self.global_batch, self.seed = vocab_size, seq_len, global_batch, seed
        self.files = [train] + ([val] if val is not None else [])
        self.kind = "text" if train.fmt == "text" else "tokens"     # the run-report's kinds: npy and megatron are ids
        self.path = str(train.path)
        for f in self.files:
            f.check_vocab(vocab_size)
        need = seq_len + 1
        if val is not None:
            self.train, self.val, self.val_fraction = train.tokens, val.tokens, None
            if len(val) < need:
                raise DocumentError(str(val.path), f"the validation file holds {len(val)} tokens, fewer than one "
                                                   f"sequence needs (seq_len + 1 = {need})")
        else:
            n_val = int(math.floor(len(train) * val_fraction))
            self.train, self.val, self.val_fraction = train.tokens[: len(train) - n_val], None, val_fraction
            if n_val:
                self.val = train.tokens[len(train) - n_val:]
                if n_val < need:
                    raise DocumentError(str(train.path), f"the validation split (last {val_fraction:g} = {n_val} "
                                                         f"tokens) is shorter than one sequence (seq_len + 1 = "
                                                         f"{need}); raise --val-fraction or use more data")
        if len(self.train) < need:
            held = len(train) - len(self.train)
            split = f" (after holding out {held} for validation)" if held else ""
            raise DocumentError(str(train.path), f"{len(self.train)} training tokens{split}, fewer than one "
                                                 f"sequence needs (seq_len + 1 = {need})")
        self.num_windows = len(self.train) - seq_len             # valid start offsets: 0 .. num_windows - 1
        self.num_val_windows = 0 if self.val is None else (len(self.val) - 1) // seq_len
        self.num_validation_batches = math.ceil(self.num_val_windows / global_batch) if self.val is not None else 0
        self._span = np.arange(need, dtype=np.int64)

    def _rows(self, array, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(np.asarray(array[starts[:, None] + self._span], dtype=np.int64))
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(_seed(self.seed, "train", step))
        starts = torch.randint(0, self.num_windows, (self.global_batch,), generator=g).numpy()
        return self._rows(self.train, starts)

    def validation_batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.val is None:
            raise UsageError("no validation split: --val-fraction is 0 and there is no val file")
        windows = (np.arange(self.global_batch, dtype=np.int64) + i * self.global_batch) % self.num_val_windows
        return self._rows(self.val, windows * self.seq_len)

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "train_tokens": len(self.train),
                "validation_tokens": 0 if self.val is None else len(self.val)}

    def state(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "path": self.path,
                "fingerprints": [f.fingerprint() for f in self.files], "val_fraction": self.val_fraction}

    def load_state(self, state: dict) -> None:
        self.seed = state["seed"]
        saved = state.get("fingerprints")
        if saved is not None and saved != [f.fingerprint() for f in self.files]:
            print(f"warning: data {self.path} differs from the data the checkpoint was trained on "
                  f"({state.get('path')}); the batches will not continue the original sequence", file=sys.stderr)
        if state.get("val_fraction") != self.val_fraction:
            print(f"warning: validation split changed ({state.get('val_fraction')} -> {self.val_fraction}): the "
                  "training windows differ from the checkpointed run's", file=sys.stderr)


def _directory_files(path: Path) -> tuple[Path, Path | None]:
    def pick(stem):
        found = sorted(p for p in path.iterdir() if p.stem == stem and p.suffix != ".json" and p.is_file()
                       and not (p.suffix == ".idx" and (path / f"{stem}.bin").is_file()))  # the pair is one
        if len(found) > 1:
            raise DocumentError(str(path), f"several {stem} files ({', '.join(p.name for p in found)}); keep one")
        return found[0] if found else None

    train = pick("train")
    if train is None:
        raise DocumentError(str(path), "a data directory needs a train file (train.bin, train.npy, train.txt, or "
                                       "train.bin + train.idx)")
    return train, pick("val")


def make_data_source(path: str | None, *, vocab_size: int, seq_len: int, global_batch: int, seed: int,
                     dtype: str | None = None, data_format: str | None = None,
                     val_fraction: float = DEFAULT_VAL_FRACTION, val_path: str | None = None, **options):
    """The data source for ``--data PATH`` (None: random tokens).

    ``dtype`` (``--data-dtype``) names a token file's dtype when it has no sidecar; ``data_format``
    (``--data-format``: tokens, text, npy, megatron) overrides detection by .idx partner, sidecar and suffix;
    ``val_fraction`` (``--val-fraction``) is the tail held out for validation unless ``val_path`` or a
    directory's val file gives one. Raises DocumentError (exit 3) for bad data and UsageError (exit 2) for bad
    options."""
    if options:
        raise UsageError(f"unknown data option(s): {', '.join(sorted(options))}")
    if path is None:
        return RandomTokens(vocab_size, seq_len, global_batch, seed)
    p = Path(path)
    if p.is_dir():
        train_path, found_val = _directory_files(p)
        val_path = val_path or found_val
    else:
        train_path = p
    train = TokenArray(train_path, data_format, dtype)
    val = TokenArray(val_path, data_format, dtype) if val_path is not None else None
    return TokenFileData(train, val, vocab_size=vocab_size, seq_len=seq_len, global_batch=global_batch,
                         seed=seed, val_fraction=val_fraction)

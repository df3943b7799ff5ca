"""Megatron-LM's indexed dataset format, read and written: ``PREFIX.bin`` (token ids) + ``PREFIX.idx`` (the index).

This is the format Megatron-LM's ``tools/preprocess_data.py`` writes, so data users already prepared for Megatron
trains here unchanged, and what ``galvatron-run prepare-data`` writes trains under Megatron's tooling too. The
layout (learned from ``megatron/core/datasets/indexed_dataset.py``; all integers little-endian):

    PREFIX.idx
      offset  0  9 bytes   magic b"MMIDIDX\\x00\\x00"
              9  u64       format version, 1
             17  u8        dtype code of the ids in the .bin (DTYPE_CODES)
             18  u64       S, the number of sequences
             26  u64       D, the number of entries of the document index (documents + 1)
             34  i32[S]    length of each sequence, in tokens
                 i64[S]    byte offset of each sequence in the .bin
                 i64[D]    document index: the sequence each document starts at, from 0, ending with S
    PREFIX.bin   the ids of every sequence, in order, back to back

A document is one or more sequences (Megatron's ``--split-sentences`` makes a sequence per sentence); the writer
here makes one sequence per document. A multimodal index appends i8[S] sequence modes: not text, refused.

    ds = IndexedDataset("data/train")          # checks the pair; DocumentError (exit 3) naming the bad file
    ds.tokens                                  # every id, memory-mapped, as one flat array
    with IndexedWriter("data/train", vocab_size=50257) as w:
        w.add_document([464, 3290, 50256])
"""
from __future__ import annotations

import bisect
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from galvatron_contracts.documents import DocumentError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")            # magic, version, dtype code, sequences, document index entries
DTYPE_CODES = {1: np.dtype("u1"), 2: np.dtype("i1"), 3: np.dtype("<i2"), 4: np.dtype("<i4"), 5: np.dtype("<i8"),
               6: np.dtype("<f8"), 7: np.dtype("<f4"), 8: np.dtype("<u2")}
LENGTH, POINTER, DOC_INDEX = np.dtype("<i4"), np.dtype("<i8"), np.dtype("<i8")
_CHUNK = 1 << 22                              # index entries checked at a time: memory stays bounded


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def idx_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def strip_suffix(path: str | os.PathLike) -> Path:
    """``data/train.bin`` or ``data/train.idx`` -> ``data/train``; any other path is already a prefix."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".bin", ".idx") else p


def prefix_of(path: str | os.PathLike) -> Path | None:
    """The prefix when ``path`` names an indexed dataset (PREFIX, PREFIX.bin or PREFIX.idx with its partner
    present, or a PREFIX that is no file itself beside one of the two), else None: a ``.bin`` with no ``.idx``
    beside it is a raw token file (nanoGPT's), not this format."""
    p = Path(path)
    if p.suffix == ".idx" and p.is_file():
        return strip_suffix(p)
    if p.suffix == ".bin" and idx_path(strip_suffix(p)).is_file():
        return strip_suffix(p)
    if not p.exists() and (bin_path(p).is_file() or idx_path(p).is_file()):
        return p
    return None


def token_dtype(vocab_size: int) -> np.dtype:
    """The dtype of a vocabulary's ids in the .bin: uint16 while every id fits, else int32 (as Megatron picks)."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<i4")


def _code_of(dtype: np.dtype) -> int:
    return next(code for code, d in DTYPE_CODES.items() if d == dtype)


# --- reading -------------------------------------------------------------------------------------------------

class IndexedDataset:
    """A checked ``PREFIX.bin`` + ``PREFIX.idx`` pair; ``tokens`` is the .bin memory-mapped as one flat array.

    Opening reads the 34-byte header and scans the index once in chunks (bounded memory): the magic, version and
    dtype; the .idx length against what S and D need; lengths not negative and sequences stored back to back from
    byte 0 (so the .bin is one flat stream of ids); the document index rising from 0 to S; the .bin length
    against the tokens the index lists. Every failure is a DocumentError naming the file at fault."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        self.bin_path, self.idx_path = bin_path(prefix), idx_path(prefix)
        for path in (self.idx_path, self.bin_path):
            if not path.is_file():
                raise DocumentError(str(path), "no such file (an indexed dataset is the pair PREFIX.bin + "
                                               "PREFIX.idx)")
        self.dtype, self.num_sequences, index_entries = self._read_header()
        lengths_at = HEADER.size
        pointers_at = lengths_at + self.num_sequences * LENGTH.itemsize
        documents_at = pointers_at + self.num_sequences * POINTER.itemsize
        self._check_idx_size(documents_at + index_entries * DOC_INDEX.itemsize)
        if self.num_sequences == 0:
            raise DocumentError(str(self.idx_path), "no sequences: the dataset holds no tokens")
        if index_entries == 0:
            raise DocumentError(str(self.idx_path), "empty document index (it starts with 0 even for no documents)")
        self.sequence_lengths = np.memmap(self.idx_path, LENGTH, "r", lengths_at, (self.num_sequences,))
        self.sequence_pointers = np.memmap(self.idx_path, POINTER, "r", pointers_at, (self.num_sequences,))
        self.document_index = np.memmap(self.idx_path, DOC_INDEX, "r", documents_at, (index_entries,))
        self.num_documents = index_entries - 1
        self.num_tokens = self._check_sequences()
        self._check_document_index()
        self._check_bin_size()
        self.tokens = np.memmap(self.bin_path, self.dtype, "r", 0, (self.num_tokens,))

    def _fail(self, why: str):
        raise DocumentError(str(self.idx_path), why)

    def _read_header(self) -> tuple[np.dtype, int, int]:
        with open(self.idx_path, "rb") as f:
            head = f.read(HEADER.size)
        if not head.startswith(MAGIC) and not MAGIC.startswith(head):
            self._fail(f"not a Megatron index: starts with {head[:len(MAGIC)]!r}, expected {MAGIC!r}")
        if len(head) < HEADER.size:
            self._fail(f"truncated header: {len(head)} bytes, the header alone is {HEADER.size}")
        _, version, code, sequences, entries = HEADER.unpack(head)
        if version != VERSION:
            self._fail(f"unsupported index version {version} (expected {VERSION})")
        if code not in DTYPE_CODES:
            self._fail(f"unknown dtype code {code} (expected one of {sorted(DTYPE_CODES)})")
        dtype = DTYPE_CODES[code]
        if dtype.kind == "f":
            self._fail(f"dtype code {code} is {dtype.name}: token ids need an integer dtype")
        return dtype, sequences, entries

    def _check_idx_size(self, expected: int) -> None:
        size = self.idx_path.stat().st_size
        if size < expected:
            self._fail(f"truncated: {size} bytes, but its header's {self.num_sequences} sequences need {expected}")
        if size == expected + self.num_sequences:
            self._fail("a multimodal index (sequence modes after the document index): not text tokens")
        if size > expected:
            self._fail(f"{size} bytes, {size - expected} more than its header's counts account for ({expected})")

    def _check_sequences(self) -> int:
        """Lengths >= 0 and each sequence starting where the previous one ends; returns the total tokens."""
        tokens = 0
        for start in range(0, self.num_sequences, _CHUNK):
            lengths = np.asarray(self.sequence_lengths[start:start + _CHUNK], dtype=np.int64)
            if lengths.min() < 0:
                at = start + int(np.argmin(lengths))
                self._fail(f"sequence {at} has a negative length ({int(lengths.min())})")
            starts = tokens + np.concatenate(([0], np.cumsum(lengths[:-1])))
            pointers = np.asarray(self.sequence_pointers[start:start + _CHUNK])
            wrong = np.flatnonzero(pointers != starts * self.dtype.itemsize)
            if wrong.size:
                i = int(wrong[0])
                self._fail(f"sequence {start + i} starts at byte {int(pointers[i])} of the .bin, expected "
                           f"{int(starts[i]) * self.dtype.itemsize}: sequences must lie back to back")
            tokens += int(lengths.sum())
        return tokens

    def _check_document_index(self) -> None:
        first, last = int(self.document_index[0]), int(self.document_index[-1])
        if first != 0 or last != self.num_sequences:
            self._fail(f"the document index runs from {first} to {last}, expected 0 to {self.num_sequences} "
                       "(the number of sequences)")
        for start in range(0, self.num_documents, _CHUNK):
            steps = np.diff(np.asarray(self.document_index[start:start + _CHUNK + 1]))
            if steps.size and steps.min() < 0:
                self._fail(f"the document index falls at entry {start + int(np.argmin(steps)) + 1}")

    def _check_bin_size(self) -> None:
        size, needed = self.bin_path.stat().st_size, self.num_tokens * self.dtype.itemsize
        if size < needed:
            raise DocumentError(str(self.bin_path), f"truncated: {size} bytes, but {self.idx_path.name} lists "
                                                    f"{self.num_tokens} tokens of {self.dtype.name} ({needed} B)")
        if size > needed:
            raise DocumentError(str(self.bin_path), f"{size} bytes, but {self.idx_path.name} accounts for {needed} "
                                                    f"({self.num_tokens} tokens of {self.dtype.name}): not the "
                                                    "index of this file?")

    def document(self, k: int) -> np.ndarray:
        """The ids of document ``k`` (all its sequences)."""
        return self.tokens[self._token_offset(int(self.document_index[k])):
                           self._token_offset(int(self.document_index[k + 1]))]

    def document_at(self, offset: int) -> int:
        """The document holding token ``offset`` (a binary search over the index: no array of all starts)."""
        starts = range(self.num_documents)
        return bisect.bisect_right(starts, offset, key=lambda k: self._token_offset(int(self.document_index[k]))) - 1

    def _token_offset(self, sequence: int) -> int:
        """Where ``sequence`` starts in ``tokens`` (``num_tokens`` for the end, S)."""
        if sequence == self.num_sequences:
            return self.num_tokens
        return int(self.sequence_pointers[sequence]) // self.dtype.itemsize


# --- writing -------------------------------------------------------------------------------------------------

class IndexedWriter:
    """Writes ``PREFIX.bin`` + ``PREFIX.idx`` one document at a time (one sequence per document), in bounded
    memory: the ids go straight to the .bin, the lengths to a temporary file, and ``close()`` streams the index
    out from it. Both files are written under temporary names and renamed at the end (.bin first, .idx last), so
    an interrupted run leaves no pair that looks complete; missing parent directories are created. Use as a
    context manager: an exception discards both."""

    def __init__(self, prefix: str | os.PathLike, vocab_size: int):
        self.prefix, self.dtype = Path(prefix), token_dtype(vocab_size)
        self.num_documents = self.num_tokens = 0
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(f"{bin_path(prefix)}.tmp", "wb")
        self._lengths = tempfile.TemporaryFile(dir=self.prefix.parent)

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def add_document(self, ids) -> None:
        """Append one document's ids (a sequence of ints that fit the dtype)."""
        array = np.asarray(ids, dtype=self.dtype)
        self._bin.write(array.tobytes())
        self._lengths.write(np.array([array.size], dtype=LENGTH).tobytes())
        self.num_documents += 1
        self.num_tokens += int(array.size)

    def close(self) -> None:
        """Write the index and put both files in place (a failure, a full disk say, discards both)."""
        try:
            self._bin.close()
            with open(f"{idx_path(self.prefix)}.tmp", "wb") as out:
                self._write_index(out)
        except BaseException:
            self.discard()
            raise
        self._lengths.close()
        os.replace(f"{bin_path(self.prefix)}.tmp", bin_path(self.prefix))
        os.replace(f"{idx_path(self.prefix)}.tmp", idx_path(self.prefix))

    def discard(self) -> None:
        """Close and delete the temporary files: nothing of this write is left."""
        self._bin.close()
        self._lengths.close()
        for tmp in (Path(f"{bin_path(self.prefix)}.tmp"), Path(f"{idx_path(self.prefix)}.tmp")):
            tmp.unlink(missing_ok=True)

    def _length_chunks(self):
        self._lengths.flush()
        self._lengths.seek(0)
        while chunk := self._lengths.read(_CHUNK * LENGTH.itemsize):
            yield np.frombuffer(chunk, dtype=LENGTH)

    def _write_index(self, out) -> None:
        n = self.num_documents
        out.write(HEADER.pack(MAGIC, VERSION, _code_of(self.dtype), n, n + 1))
        for lengths in self._length_chunks():
            out.write(lengths.tobytes())
        offset = 0
        for lengths in self._length_chunks():
            ends = offset + np.cumsum(lengths, dtype=np.int64)
            out.write((np.concatenate(([offset], ends[:-1])) * self.dtype.itemsize).astype(POINTER).tobytes())
            offset = int(ends[-1])
        for start in range(0, n + 1, _CHUNK):                # one sequence per document: 0, 1, ..., n
            out.write(np.arange(start, min(start + _CHUNK, n + 1), dtype=DOC_INDEX).tobytes())

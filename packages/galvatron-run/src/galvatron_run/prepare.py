"""``galvatron-run prepare-data``: text or JSONL in, a tokenized indexed dataset out, for ``--data PREFIX``.

    galvatron-run prepare-data corpus/*.jsonl --tokenizer tokenizer.json -o data/train --append-eos

Tokenizes with a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library, offline; the optional extra
``galvatron-run[data]``) and writes Megatron-LM's ``PREFIX.bin`` + ``PREFIX.idx`` (see indexed.py): one format
for galvatron-run to read, whether the data came from here or from Megatron's own preprocessing, and files that
Megatron's tooling reads back. Inputs, by suffix (``.gz`` compressed too):

  * ``.jsonl``: one document per line, its text under ``--text-key`` (default ``text``); blank lines are skipped.
  * ``.txt`` (``.text``, ``.md``): one document per block of lines separated by blank lines (a paragraph, an
    article of a dump). Blocks keep memory bounded however large the file is; for any other split, write JSONL.

Each document is encoded with the tokenizer's own post-processor (a LLaMA tokenizer adds its BOS); ``--append-eos``
appends the end-of-document token (``--eos-token``, else the ``eos_token`` of a ``tokenizer_config.json`` beside
the tokenizer, else a well-known name the vocabulary holds). Documents that encode to no tokens are skipped.
Streaming: documents are encoded in batches (``encode_batch``, the library's threads) and written as they come.
Bad input exits 3 naming ``file:line`` (a line that is not JSON, not an object, without the key or whose value is
not a string; text that is not UTF-8); unusable options exit 2.
"""
from __future__ import annotations

import gzip
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from galvatron_contracts.documents import DocumentError, UsageError, exits_cleanly
from galvatron_contracts.launch import check_output_file

from .indexed import IndexedWriter, bin_path, idx_path, strip_suffix, token_dtype

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md")
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")   # GPT-2, LLaMA-2, LLaMA-3, Gemma
DATA_EXTRA = "pip install 'galvatron-run[data]'"
BATCH_DOCUMENTS, BATCH_CHARS = 1024, 1 << 22    # an encode_batch call: at most this many documents / characters
PROGRESS_EVERY_S = 10.0


@dataclass
class Summary:
    """What prepare() wrote."""

    prefix: Path
    documents: int
    tokens: int
    skipped: int            # documents that encoded to no tokens
    vocab_size: int
    dtype: str
    eos_id: int | None
    seconds: float

    def line(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        eos = f", end-of-document id {self.eos_id}" if self.eos_id is not None else ""
        skipped = f" ({self.skipped} empty skipped)" if self.skipped else ""
        return (f"{bin_path(self.prefix)} + .idx: {self.documents} documents{skipped}, {self.tokens} tokens "
                f"({self.dtype}, vocabulary {self.vocab_size}{eos}) in {self.seconds:.1f} s ({rate:,.0f} tokens/s)")


# --- reading documents ---------------------------------------------------------------------------------------

def _kind(path: Path) -> str:
    suffix = path.with_suffix("").suffix if path.suffix == ".gz" else path.suffix
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise DocumentError(str(path), f"cannot tell the format: expected {', '.join(JSONL_SUFFIXES)} (one JSON "
                                   f"object per line) or {', '.join(TEXT_SUFFIXES)} (text), optionally .gz")


def _check_input(path: Path) -> None:
    if not path.exists():
        raise DocumentError(str(path), "no such file")
    if not path.is_file():
        raise DocumentError(str(path), "not a regular file (give a directory's files, e.g. dir/*.jsonl)")
    _kind(path)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 file, gzip-compressed or not; DocumentError naming the first bad line.
    Lines are decoded one at a time, so the line an error names is the line at fault."""
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                yield lineno, raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DocumentError(f"{path}:{lineno}", f"not UTF-8 (byte {e.start + 1} of the line: {e.reason})") from None
    except (OSError, EOFError) as e:   # a damaged .gz
        raise DocumentError(f"{path}:{lineno + 1}", f"unreadable ({e})") from None


def jsonl_documents(path: Path, text_key: str) -> Iterator[str]:
    """The ``text_key`` string of each non-blank line."""
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DocumentError(where, f"not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DocumentError(where, f"expected a JSON object with a {text_key!r} field, got "
                                       f"{type(record).__name__}")
        if text_key not in record:
            keys = ", ".join(map(repr, list(record)[:8])) or "none"
            raise DocumentError(where, f"no {text_key!r} field (its keys: {keys}; choose one with --text-key)")
        text = record[text_key]
        if not isinstance(text, str):
            raise DocumentError(where, f"$.{text_key}: expected a string, got {type(text).__name__}")
        yield text


def text_documents(path: Path) -> Iterator[str]:
    """Each block of non-blank lines, its inner line breaks kept."""
    block: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            block.append(line)
        elif block:
            yield "".join(block).rstrip("\r\n")
            block = []
    if block:
        yield "".join(block).rstrip("\r\n")


def documents(paths: Iterable[Path], text_key: str) -> Iterator[str]:
    """Every document of every input, in order."""
    for path in paths:
        yield from (jsonl_documents(path, text_key) if _kind(path) == "jsonl" else text_documents(path))


def batches(texts: Iterable[str], max_documents: int = BATCH_DOCUMENTS,
            max_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    """Consecutive runs of ``texts``, each at most ``max_documents`` long or, past one, ``max_chars`` in total."""
    batch, chars = [], 0
    for text in texts:
        if batch and (len(batch) == max_documents or chars + len(text) > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(text)
        chars += len(text)
    if batch:
        yield batch


# --- the tokenizer -------------------------------------------------------------------------------------------

def load_tokenizer(path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` from a tokenizer.json: UsageError (exit 2) without the library, DocumentError
    (exit 3) for a file it cannot read."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError(f"prepare-data needs the tokenizers library, which is not installed: {DATA_EXTRA}") from None
    if not Path(path).is_file():
        raise DocumentError(str(path), "no such file (given as --tokenizer)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception for every parse error
        raise DocumentError(str(path), f"not a Hugging Face tokenizer.json ({e})") from None


def vocab_bound(tokenizer) -> int:
    """One more than the largest id the tokenizer can emit (added tokens included)."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def _configured_eos(tokenizer_path: Path) -> str | None:
    config = tokenizer_path.with_name("tokenizer_config.json")
    try:
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(eos, dict):                       # an AddedToken written out: {"content": "</s>", ...}
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def eos_id(tokenizer, tokenizer_path: str | os.PathLike, eos_token: str | None) -> int:
    """The id --append-eos appends: ``eos_token``, else the tokenizer_config.json's, else a well-known name."""
    if eos_token is not None:
        found = tokenizer.token_to_id(eos_token)
        if found is None:
            raise UsageError(f"--eos-token {eos_token!r}: not a token of {tokenizer_path}")
        return found
    for name in (_configured_eos(Path(tokenizer_path)), *EOS_NAMES):
        if name is not None and (found := tokenizer.token_to_id(name)) is not None:
            return found
    raise UsageError(f"--append-eos: {tokenizer_path} holds none of {', '.join(EOS_NAMES)} and no "
                     "tokenizer_config.json beside it names its eos_token; give --eos-token")


# --- the command's core --------------------------------------------------------------------------------------

def prepare(inputs: Iterable[str | os.PathLike], tokenizer_path: str | os.PathLike, prefix: str | os.PathLike, *,
            text_key: str = "text", append_eos: bool = False, eos_token: str | None = None,
            log=None) -> Summary:
    """Tokenize every document of ``inputs`` into ``prefix``.bin/.idx; returns what was written.

    Every input and the output are checked before the first document is read; bad data found midway raises
    DocumentError and leaves no output pair behind. ``log``: called with a progress line every
    PROGRESS_EVERY_S seconds."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UsageError("prepare-data needs at least one INPUT file")
    for path in paths:
        _check_input(path)
    prefix = strip_suffix(prefix)
    for out in (bin_path(prefix), idx_path(prefix)):
        check_output_file(out, "-o")
    tokenizer = load_tokenizer(tokenizer_path)
    eos = eos_id(tokenizer, tokenizer_path, eos_token) if append_eos else None
    vocab = vocab_bound(tokenizer)
    start = last_log = time.monotonic()
    skipped = 0
    with IndexedWriter(prefix, vocab) as writer:
        for batch in batches(documents(paths, text_key)):
            for encoding in tokenizer.encode_batch(batch, add_special_tokens=True):
                ids = encoding.ids + ([eos] if eos is not None else [])
                if not ids:
                    skipped += 1
                    continue
                writer.add_document(ids)
            if log is not None and time.monotonic() - last_log >= PROGRESS_EVERY_S:
                last_log = time.monotonic()
                log(f"{writer.num_documents} documents, {writer.num_tokens} tokens, {last_log - start:.0f} s")
        if writer.num_documents == 0:
            raise DocumentError(", ".join(map(str, paths)), "no text: every document is empty")
    return Summary(prefix, writer.num_documents, writer.num_tokens, skipped, vocab, token_dtype(vocab).name, eos,
                   time.monotonic() - start)


# --- the command line (reached as `galvatron-run prepare-data`, see cli.py) --------------------------------------

def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@click.command("prepare-data", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=click.Path())
@click.option("--tokenizer", "tokenizer_path", required=True, type=click.Path(), metavar="TOKENIZER_JSON",
              help="A Hugging Face tokenizer.json (read offline).")
@click.option("-o", "--output", "prefix", required=True, type=click.Path(), metavar="PREFIX",
              help="Write PREFIX.bin and PREFIX.idx (Megatron-LM's indexed format); train with --data PREFIX.")
@click.option("--text-key", default="text", show_default=True, help="The field of a JSONL line holding its text.")
@click.option("--append-eos", is_flag=True, help="End every document with the end-of-document token.")
@click.option("--eos-token", help="The token --append-eos appends (default: the tokenizer_config.json's "
              "eos_token, else <|endoftext|>, </s>, <|end_of_text|> or <eos>, whichever the vocabulary holds).")
@exits_cleanly
def command(inputs, tokenizer_path, prefix, text_key, append_eos, eos_token):
    """Tokenize INPUT files (.jsonl: a document per line; .txt: a document per blank-line-separated block;
    .gz too) into PREFIX.bin + PREFIX.idx for `galvatron-run --data PREFIX`.

    \b
    Example:
        galvatron-run prepare-data corpus/*.jsonl --tokenizer gpt2/tokenizer.json \\
            -o data/train --append-eos
        galvatron-run --model gpt2-small --global-batch 8 --nproc 2 --data data/train
    """
    if eos_token is not None and not append_eos:
        raise UsageError("--eos-token only applies with --append-eos")
    summary = prepare(inputs, tokenizer_path, prefix, text_key=text_key, append_eos=append_eos,
                      eos_token=eos_token, log=_log)
    _log(summary.line())

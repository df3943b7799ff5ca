"""prepare-data and Megatron-LM's indexed dataset: a tokenizer.json trained here, JSONL tokenized into .bin/.idx
and checked against the tokenizer itself and against a reader written here from the published layout; training on
the result (one process) and resuming it on 2 ranks under tp 2; a pair written here byte by byte trains; every
bad-data case exits 3 naming the file (and the line of a JSONL input)."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from galvatron_run import checkpoint as ck
from galvatron_run.cli import main
from galvatron_run.data import CORPUS, make_data_source
from galvatron_run.indexed import IndexedDataset, IndexedWriter

tokenizers = pytest.importorskip("tokenizers")

SRC = Path(__file__).parent.parent / "src"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
VOCAB = 200             # the tokenizer's; tiny-gpt's 256 covers it
EOS = "<|endoftext|>"
SEQ = 16

# --- the published layout, independently: header fields by numpy.frombuffer, the rest as documented --------------

MAGIC = b"MMIDIDX\x00\x00"
CODES = {1: "u1", 2: "i1", 3: "<i2", 4: "<i4", 5: "<i8", 6: "<f8", 7: "<f4", 8: "<u2"}


def read_pair(prefix) -> dict:
    """Every field of PREFIX.idx, and each document's ids from PREFIX.bin by following the sequence pointers."""
    idx, data = Path(f"{prefix}.idx").read_bytes(), Path(f"{prefix}.bin").read_bytes()
    version, = np.frombuffer(idx, "<u8", 1, 9)
    code, = np.frombuffer(idx, "u1", 1, 17)
    n_seq, n_doc = (int(v) for v in np.frombuffer(idx, "<u8", 2, 18))
    lengths = np.frombuffer(idx, "<i4", n_seq, 34)
    pointers = np.frombuffer(idx, "<i8", n_seq, 34 + 4 * n_seq)
    doc_index = np.frombuffer(idx, "<i8", n_doc, 34 + 12 * n_seq)
    assert len(idx) == 34 + 12 * n_seq + 8 * n_doc
    sequences = [np.frombuffer(data, CODES[int(code)], int(n), int(p)) for n, p in zip(lengths, pointers)]
    docs = [[int(t) for s in sequences[a:b] for t in s] for a, b in zip(doc_index[:-1], doc_index[1:])]
    return {"magic": idx[:9], "version": int(version), "code": int(code), "documents": docs,
            "lengths": lengths.tolist(), "pointers": pointers.tolist(), "doc_index": doc_index.tolist()}


def write_pair(prefix, documents, *, code=4, version=1, magic=MAGIC) -> Path:
    """PREFIX.bin/.idx byte by byte from the layout; a document is a list of sequences (sentences)."""
    lengths, pointers, doc_index, blob = [], [], [0], b""
    for doc in documents:
        for seq in doc:
            pointers.append(len(blob))
            lengths.append(len(seq))
            blob += np.asarray(seq, CODES[code]).tobytes()
        doc_index.append(len(lengths))
    header = magic + struct.pack("<Q", version) + struct.pack("<B", code) + struct.pack("<QQ", len(lengths),
                                                                                          len(doc_index))
    body = b"".join(struct.pack(f"<{len(v)}{f}", *v) for v, f in ((lengths, "i"), (pointers, "q"), (doc_index, "q")))
    Path(f"{prefix}.idx").write_bytes(header + body)
    Path(f"{prefix}.bin").write_bytes(blob)
    return Path(prefix)


def sentences_pair(prefix, n_docs=40, high=VOCAB, seed=0, **kw) -> tuple[Path, list[list[int]]]:
    """Documents of 1-3 sentences each, as Megatron's --split-sentences writes them; returns the flat docs too."""
    rng = np.random.default_rng(seed)
    docs = [[rng.integers(0, high, rng.integers(3, 30)).tolist() for _ in range(rng.integers(1, 4))]
            for _ in range(n_docs)]
    return write_pair(prefix, docs, **kw), [[t for s in d for t in s] for d in docs]


# --- fixtures: a tokenizer trained here, a JSONL corpus, prepare-data run once ------------------------------------

@pytest.fixture(scope="module")
def corpus() -> list[str]:
    paragraphs = [p.strip() for p in CORPUS.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return paragraphs[:80]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory, corpus) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainer=trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["[UNK]", EOS]))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus, tokenizer_json) -> dict:
    """prepare-data through the real command line, on a JSONL file with blank lines and extra fields."""
    work = tmp_path_factory.mktemp("prepared")
    jsonl = work / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "body": text}) + "\n" + ("\n" if i % 7 == 0 else "")
                             for i, text in enumerate(corpus)), encoding="utf-8")
    prefix = work / "out" / "train"                                          # out/ does not exist yet
    proc = subprocess.run([sys.executable, "-m", "galvatron_run", "prepare-data", str(jsonl), "--tokenizer",
                           str(tokenizer_json), "--text-key", "body", "--append-eos", "-o", str(prefix)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"prefix": prefix, "stderr": proc.stderr, "work": work}


def reference_ids(tokenizer_json, texts, eos=True) -> list[list[int]]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_json))
    end = [tok.token_to_id(EOS)] if eos else []
    return [tok.encode(t).ids + end for t in texts]


# --- what prepare-data writes -------------------------------------------------------------------------------------

def test_prepare_data_writes_the_tokenizers_ids_in_the_megatron_layout(prepared, corpus, tokenizer_json):
    got = read_pair(prepared["prefix"])
    want = reference_ids(tokenizer_json, corpus)
    assert got["magic"] == MAGIC and got["version"] == 1 and got["code"] == 8   # uint16 for a 200-token vocabulary
    assert got["documents"] == want                                           # one document per line, EOS ended
    assert got["doc_index"] == list(range(len(corpus) + 1))                    # one sequence per document
    tokens, eos = sum(map(len, want)), want[0][-1]
    assert f"{len(corpus)} documents, {tokens} tokens (uint16, vocabulary {VOCAB}, end-of-document id {eos})" \
        in prepared["stderr"]
    assert not list(prepared["prefix"].parent.glob("*.tmp"))


@pytest.mark.parametrize("vocab, code", [(300, 8), (70_000, 4)])
def test_writer_round_trips_through_the_independent_reader(tmp_path, vocab, code):
    rng = np.random.default_rng(vocab)
    docs = [rng.integers(0, vocab, rng.integers(0, 50)).tolist() for _ in range(30)] + [[vocab - 1]]
    with IndexedWriter(tmp_path / "d", vocab) as w:
        for d in docs:
            w.add_document(d)
    got = read_pair(tmp_path / "d")
    assert got["code"] == code and got["documents"] == docs and got["lengths"] == [len(d) for d in docs]
    itemsize = 2 if code == 8 else 4
    assert got["pointers"] == [itemsize * sum(map(len, docs[:i])) for i in range(len(docs))]
    ours = IndexedDataset(tmp_path / "d")
    assert ours.tokens.tolist() == [t for d in docs for t in d]
    assert [ours.document(k).tolist() for k in range(len(docs))] == docs


def test_writer_leaves_nothing_behind_when_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt), IndexedWriter(tmp_path / "d", 100) as w:
        w.add_document([1, 2, 3])
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_gzipped_inputs_read_like_plain_ones(tmp_path, prepared, corpus, tokenizer_json):
    import gzip
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": t}) + "\n" for t in corpus)
    r = invoke(["prepare-data", str(tmp_path / "docs.jsonl.gz"), "--tokenizer", str(tokenizer_json), "--text-key",
                "body", "--append-eos", "-o", str(tmp_path / "z")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "z.bin").read_bytes() == Path(f"{prepared['prefix']}.bin").read_bytes()
    assert (tmp_path / "z.idx").read_bytes() == Path(f"{prepared['prefix']}.idx").read_bytes()


def test_end_of_document_token_choice(tmp_path, tokenizer_json):
    (tmp_path / "in.jsonl").write_text('{"text": "the end"}\n', encoding="utf-8")
    shutil.copy(tokenizer_json, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "[UNK]"}}))
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_json))
    plain = tok.encode("the end").ids
    for extra, last in ([], tok.token_to_id("[UNK]")), (["--eos-token", EOS], tok.token_to_id(EOS)):
        r = invoke(["prepare-data", str(tmp_path / "in.jsonl"), "--tokenizer", str(tmp_path / "tokenizer.json"),
                    "--append-eos", *extra, "-o", str(tmp_path / "o")])
        assert r.exit_code == 0, r.output
        assert read_pair(tmp_path / "o")["documents"] == [plain + [last]]     # the config's [UNK], or EOS


def test_text_files_are_documents_per_blank_line_block(tmp_path, tokenizer_json, corpus):
    blocks = [corpus[0], corpus[1].replace(". ", ".\n", 1), corpus[2]]         # a block may span lines
    (tmp_path / "a.txt").write_text("\n\n" + blocks[0] + "\n\n\n" + blocks[1] + "\n \n" + blocks[2], encoding="utf-8")
    r = invoke(["prepare-data", str(tmp_path / "a.txt"), "--tokenizer", str(tokenizer_json),
                "-o", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert read_pair(tmp_path / "t")["documents"] == reference_ids(tokenizer_json, blocks, eos=False)


# --- reading: the same batches as any token file, a pure function of (seed, step) -------------------------------

def test_batches_are_windows_of_the_documents_stream(prepared, corpus, tokenizer_json, tmp_path):
    stream = torch.tensor([t for d in reference_ids(tokenizer_json, corpus) for t in d])
    n_val = int(len(stream) * 0.1)
    prefix = prepared["prefix"]
    for name in (str(prefix), f"{prefix}.bin", f"{prefix}.idx"):
        src = make_data_source(name, vocab_size=256, seq_len=SEQ, global_batch=4, seed=3, val_fraction=0.1)
        assert src.kind == "tokens" and src.path == str(prefix) + ".bin"
        assert len(src.train) == len(stream) - n_val and len(src.val) == n_val
        windows = np.lib.stride_tricks.sliding_window_view(stream[:len(stream) - n_val].numpy(), SEQ + 1)
        for step in (0, 7):
            x, y = src.batch(step)
            assert torch.equal(x[:, 1:], y[:, :-1])
            for row in torch.cat([x[:, :1], y], dim=1).numpy():               # inputs + the last target
                assert (windows == row).all(axis=1).any()                       # a window of the training split
        vx, _ = src.validation_batch(0)
        assert torch.equal(vx[0], stream[len(stream) - n_val:][:SEQ])
    shutil.copy(f"{prefix}.bin", tmp_path / "train.bin")                      # a directory holding the pair
    shutil.copy(f"{prefix}.idx", tmp_path / "train.idx")
    d = make_data_source(str(tmp_path), vocab_size=256, seq_len=SEQ, global_batch=4, seed=3, val_fraction=0.1)
    assert torch.equal(d.batch(7)[0], src.batch(7)[0])


def test_a_restored_source_continues_with_the_next_batch(prepared):
    """The checkpoint stores the step and the source's state (seed, path, fingerprints): batch(k) is a pure function
    of (seed, k) and the data, so a fresh source restored from the state serves the batch the run would have."""
    kw = dict(vocab_size=256, seq_len=SEQ, global_batch=4, val_fraction=0.1)
    running = make_data_source(str(prepared["prefix"]), seed=5, **kw)
    served = [running.batch(k)[0] for k in range(4)]
    restored = make_data_source(str(prepared["prefix"]), seed=0, **kw)
    restored.load_state(json.loads(json.dumps(running.state())))
    assert torch.equal(restored.batch(4)[0], running.batch(4)[0])
    assert not torch.equal(restored.batch(4)[0], served[3])


# --- training end to end ------------------------------------------------------------------------------------------

def cli(*args, nproc=None, timeout=300):
    cmd = [sys.executable, "-m", "galvatron_run", "--model", "tiny-gpt", "--global-batch", "4", "--seq-len", str(SEQ),
           "--warmup-steps", "0", "--timeout", "120", *args] + (["--nproc", str(nproc)] if nproc else [])
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def losses(report: Path) -> dict[int, float]:
    doc = json.loads(report.read_text())
    return {s["step"]: s["loss"] for s in doc["steps"]}


def test_training_on_prepared_data_and_resuming_under_tp2(prepared):
    """One process trains 4 steps, checkpointing at 2; 2 ranks under tp 2 resume from step 2 with its losses."""
    work, prefix = prepared["work"], prepared["prefix"]
    full = cli("--steps", "4", "--data", str(prefix), "--checkpoint-dir", str(work / "ck"), "--save-every", "2",
               "--report", str(work / "full.json"))
    assert full.returncode == 0, full.stderr[-3000:]
    report = json.loads((work / "full.json").read_text())
    assert report["settings"]["data"] == {"kind": "tokens", "path": f"{prefix}.bin"}
    assert [s for s, _ in ck.list_checkpoints(work / "ck")] == [2, 4]
    shutil.rmtree(work / "ck" / "step-4")                                     # resume from step 2, under tp 2
    tp = cli("--steps", "4", "--tp", "2", "--data", str(prefix), "--checkpoint-dir", str(work / "ck"), "--resume",
             "--report", str(work / "tp.json"), nproc=2)
    assert tp.returncode == 0, tp.stderr[-3000:]
    ref, got = losses(work / "full.json"), losses(work / "tp.json")
    assert sorted(got) == [2, 3] and all(got[s] == pytest.approx(ref[s], rel=1e-5) for s in got)


def test_a_megatron_pair_written_byte_by_byte_trains(tmp_path):
    prefix, docs = sentences_pair(tmp_path / "meg", code=4)                 # int32, as Megatron writes big vocabs
    ours = IndexedDataset(prefix)
    assert ours.num_documents == len(docs) and ours.num_sequences > len(docs)
    assert [ours.document(k).tolist() for k in range(len(docs))] == docs
    proc = cli("--steps", "2", "--data", f"{prefix}.idx", "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["data"]["path"] == f"{prefix}.bin"


# --- bad data: exit 3 naming the file -----------------------------------------------------------------------------

def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def train_on(path):
    return invoke(["--model", "tiny-gpt", "--global-batch", "2", "--seq-len", "8", "--data", str(path)])


def corrupt_idx(prefix, offset, value: bytes):
    idx = Path(f"{prefix}.idx")
    raw = bytearray(idx.read_bytes())
    raw[offset:offset + len(value)] = value
    idx.write_bytes(bytes(raw))


@pytest.mark.parametrize("offset, value, says", [
    (0, b"MMIDIDX\x00\x01", "not a Megatron index: starts with b'MMIDIDX\\x00\\x01', expected b'MMIDIDX\\x00\\x00'"),
    (9, struct.pack("<Q", 2), "unsupported index version 2 (expected 1)"),
    (17, bytes([7]), "dtype code 7 is float32: token ids need an integer dtype"),
    (17, bytes([9]), "unknown dtype code 9 (expected one of [1, 2, 3, 4, 5, 6, 7, 8])"),
])
def test_bad_header(tmp_path, offset, value, says):
    prefix, _ = sentences_pair(tmp_path / "d", code=4)
    corrupt_idx(prefix, offset, value)
    r = train_on(prefix)
    assert r.exit_code == 3 and r.stderr == f"error: {prefix}.idx: {says}\n"


def test_truncated_idx_and_bin(tmp_path):
    prefix, _ = sentences_pair(tmp_path / "d", code=8)
    idx, binf = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    whole_idx, whole_bin, n_seq = idx.read_bytes(), binf.read_bytes(), len(read_pair(prefix)["lengths"])
    idx.write_bytes(whole_idx[:-8])
    r = train_on(prefix)
    assert r.exit_code == 3 and f"{idx}: truncated: {len(whole_idx) - 8} bytes" in r.stderr
    idx.write_bytes(whole_idx[:20])
    r = train_on(prefix)
    assert r.exit_code == 3 and f"{idx}: truncated header: 20 bytes" in r.stderr
    idx.write_bytes(whole_idx + b"\0" * 7)
    r = train_on(prefix)
    assert r.exit_code == 3 and f"{idx}: {len(whole_idx) + 7} bytes, 7 more than its header's counts" in r.stderr
    idx.write_bytes(whole_idx + b"\0" * n_seq)                                # i8 sequence modes after the index
    r = train_on(prefix)
    assert r.exit_code == 3 and f"{idx}: a multimodal index" in r.stderr
    idx.write_bytes(whole_idx)
    binf.write_bytes(whole_bin[:-2])
    r = train_on(prefix)
    tokens = len(whole_bin) // 2
    assert r.exit_code == 3 and f"{binf}: truncated: {len(whole_bin) - 2} bytes, but d.idx lists {tokens} tokens of " \
                                "uint16" in r.stderr
    binf.write_bytes(whole_bin + b"\0\0")
    r = train_on(prefix)
    assert r.exit_code == 3 and f"{binf}: {len(whole_bin) + 2} bytes, but d.idx accounts for {len(whole_bin)}" \
        in r.stderr
    binf.unlink()
    r = train_on(prefix)
    assert r.exit_code == 3 and f"{binf}: no such file" in r.stderr


def test_inconsistent_index(tmp_path):
    prefix, _ = sentences_pair(tmp_path / "d", n_docs=3, code=4, seed=2)
    n_seq = read_pair(prefix)["doc_index"][-1]
    corrupt_idx(prefix, 34 + 4 * n_seq + 8, struct.pack("<q", 12345))       # the second sequence's pointer
    r = train_on(prefix)
    assert r.exit_code == 3 and "sequence 1 starts at byte 12345 of the .bin" in r.stderr
    prefix, _ = sentences_pair(tmp_path / "e", n_docs=3, code=4, seed=2)
    corrupt_idx(prefix, 34 + 12 * n_seq + 8 * 3, struct.pack("<q", n_seq + 1))  # the document index's last entry
    r = train_on(prefix)
    assert r.exit_code == 3 and f"the document index runs from 0 to {n_seq + 1}, expected 0 to {n_seq}" in r.stderr


def test_token_ids_beyond_the_models_vocabulary_name_the_largest(tmp_path):
    docs = [[[5, 6, 7]] * 3] * 4 + [[[8, 260, 9]]] + [[[1, 2], [3, 300, 4]]] + [[[6] * 40]] * 3
    prefix = write_pair(tmp_path / "big", docs, code=4)
    r = train_on(prefix)
    offset = 4 * 9 + 3 + 2 + 1                                                # the 300: doc 5, second sentence
    assert r.exit_code == 3, r.output
    assert (f"error: {prefix}.bin: token id 300 at offset {offset} (document 5) is outside the model's vocabulary "
            "(ids must be < 256)") in r.stderr


def test_data_dtype_does_not_apply_to_an_indexed_dataset(tmp_path):
    prefix, _ = sentences_pair(tmp_path / "d")
    r = invoke(["--model", "tiny-gpt", "--global-batch", "2", "--seq-len", "8", "--data", str(prefix),
                "--data-dtype", "uint16"])
    assert r.exit_code == 2 and "--data-dtype does not apply" in r.stderr


def prepare_jsonl(tmp_path, tokenizer_json, lines: list[str], *extra):
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return invoke(["prepare-data", str(tmp_path / "in.jsonl"), "--tokenizer", str(tokenizer_json),
                   "-o", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize("lines, match", [
    (['{"text": "a b"}', '{"text": "c"', '{"text": "d"}'], r"in\.jsonl:2: not JSON \("),
    (['{"text": "a b"}', '', '{"body": "c", "id": 3}'], r"in\.jsonl:3: no 'text' field \(its keys: 'body', 'id'"),
    (['{"text": 7}'], r"in\.jsonl:1: \$\.text: expected a string, got int"),
    (['["text"]'], r"in\.jsonl:1: expected a JSON object"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, tokenizer_json, lines, match):
    r = prepare_jsonl(tmp_path, tokenizer_json, lines)
    assert r.exit_code == 3 and re.search(match, r.stderr), r.stderr
    assert not list(tmp_path.glob("out.*"))                                  # no half-written pair


def test_bad_inputs_and_options(tmp_path, tokenizer_json):
    (tmp_path / "bad.txt").write_bytes(b"fine line\nbad \xff byte\n")
    r = invoke(["prepare-data", str(tmp_path / "bad.txt"), "--tokenizer", str(tokenizer_json), "-o",
                str(tmp_path / "o")])
    assert r.exit_code == 3 and "bad.txt:2: not UTF-8" in r.stderr
    (tmp_path / "t.csv").write_text("x")
    r = invoke(["prepare-data", str(tmp_path / "t.csv"), "--tokenizer", str(tokenizer_json), "-o",
                str(tmp_path / "o")])
    assert r.exit_code == 3 and "t.csv: cannot tell the format" in r.stderr
    (tmp_path / "tok.json").write_text("{}")
    r = prepare_jsonl(tmp_path, tmp_path / "tok.json", ['{"text": "a"}'])
    assert r.exit_code == 3 and "tok.json: not a Hugging Face tokenizer.json" in r.stderr
    r = prepare_jsonl(tmp_path, tokenizer_json, ['{"text": "a"}'], "--append-eos", "--eos-token", "<nope>")
    assert r.exit_code == 2 and "--eos-token '<nope>': not a token of" in r.stderr
    r = prepare_jsonl(tmp_path, tokenizer_json, ['{"text": ""}'])
    assert r.exit_code == 3 and "no text: every document is empty" in r.stderr


def test_bad_data_exits_3_without_a_traceback(tmp_path):
    prefix, _ = sentences_pair(tmp_path / "d", version=3)
    proc = cli("--steps", "1", "--data", str(prefix))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {prefix}.idx: unsupported index version 3 (expected 1)"

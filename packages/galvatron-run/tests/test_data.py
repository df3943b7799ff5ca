"""Data sources: formats, deterministic sampling, resume continuity, validation split, and every bad-data error."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import galvatron_run
from galvatron_contracts.documents import DocumentError, UsageError
from galvatron_run import data as data_mod
from galvatron_run.data import RandomTokens, make_data_source

SRC = str(Path(galvatron_run.__file__).resolve().parents[1])  # src/ here, site-packages under tox


def token_file(tmp_path, values, dtype="uint16", sidecar=True, vocab=None, name="train.bin"):
    path = tmp_path / name
    np.asarray(values, dtype=dtype).tofile(path)
    if sidecar:
        meta = {"dtype": dtype}
        if vocab is not None:
            meta["vocab_size"] = vocab
        (tmp_path / (name + ".json")).write_text(json.dumps(meta))
    return path


def positions(tmp_path, n, **kw):
    """A uint32 file whose token at offset i is i: every window says where it came from."""
    return token_file(tmp_path, np.arange(n), dtype="uint32", **kw)


# --- formats -----------------------------------------------------------------------------------------------------

def test_random_tokens_are_seeded_and_shaped():
    a, b = RandomTokens(100, 8, 4, seed=1), RandomTokens(100, 8, 4, seed=1)
    x, y = a.batch(3)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(x, b.batch(3)[0]) and not torch.equal(x, a.batch(4)[0])
    assert torch.equal(x[:, 1:], y[:, :-1])
    vx, _ = a.validation_batch(0)
    assert vx.shape == (4, 8) and not torch.equal(vx, x)
    assert torch.equal(vx, RandomTokens(100, 8, 4, seed=99).validation_batch(0)[0])  # independent of the seed


def test_token_file_windows_are_contiguous_slices_of_the_training_split(tmp_path):
    path = positions(tmp_path, 1000)
    src = make_data_source(str(path), vocab_size=1000, seq_len=16, global_batch=8, seed=7, val_fraction=0.1)
    assert src.kind == "tokens" and len(src.train) == 900 and len(src.val) == 100
    for step in range(20):
        x, y = src.batch(step)
        assert x.shape == (8, 16) and x.dtype == torch.int64
        starts = x[:, 0]
        assert torch.equal(x, starts[:, None] + torch.arange(16))
        assert torch.equal(y, x + 1)
        assert int(y.max()) < 900  # never reads the held-out tail


def test_sampling_reaches_every_window(tmp_path):
    path = positions(tmp_path, 40)
    src = make_data_source(str(path), vocab_size=40, seq_len=8, global_batch=4, seed=3, val_fraction=0.0)
    seen = {int(s) for step in range(200) for s in src.batch(step)[0][:, 0]}
    assert seen == set(range(40 - 8))  # every start 0 .. n - seq - 1, none beyond


def test_uint16_with_sidecar_and_uint32_with_explicit_dtype(tmp_path):
    vals = np.random.default_rng(0).integers(0, 5000, 3000)
    p16 = token_file(tmp_path, vals, "uint16", vocab=5000, name="a.bin")
    p32 = token_file(tmp_path, vals, "uint32", sidecar=False, name="b.dat")
    a = make_data_source(str(p16), vocab_size=5000, seq_len=32, global_batch=4, seed=1)
    b = make_data_source(str(p32), vocab_size=5000, seq_len=32, global_batch=4, seed=1, dtype="uint32")
    for step in (0, 5):
        assert torch.equal(a.batch(step)[0], b.batch(step)[0])
    assert int(a.batch(0)[0].max()) < 5000


def test_npy_file(tmp_path):
    vals = np.random.default_rng(1).integers(0, 300, 2000).astype(np.uint16)
    np.save(tmp_path / "t.npy", vals)
    vals.tofile(tmp_path / "t.bin")
    a = make_data_source(str(tmp_path / "t.npy"), vocab_size=300, seq_len=10, global_batch=3, seed=2)
    b = make_data_source(str(tmp_path / "t.bin"), vocab_size=300, seq_len=10, global_batch=3, seed=2, dtype="uint16")
    assert torch.equal(a.batch(4)[0], b.batch(4)[0]) and torch.equal(a.validation_batch(1)[1], b.validation_batch(1)[1])


def test_text_is_read_byte_by_byte(tmp_path):
    text = "Héllo, wörld — naïve café.\n" * 20
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    src = make_data_source(str(tmp_path / "c.txt"), vocab_size=256, seq_len=12, global_batch=2, seed=0,
                           val_fraction=0.2)
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    x, y = src.batch(0)
    for row in range(2):
        start = next(i for i in range(len(raw) - 12) if np.array_equal(raw[i:i + 12], x[row].numpy()))
        assert np.array_equal(raw[start + 1:start + 13], y[row].numpy())
    assert src.kind == "text" and len(src.train) + len(src.val) == len(raw)


def test_directory_with_train_and_val_files(tmp_path):
    token_file(tmp_path, np.arange(500) % 50, name="train.bin")
    token_file(tmp_path, 100 + np.arange(60) % 50, name="val.bin")
    src = make_data_source(str(tmp_path), vocab_size=200, seq_len=8, global_batch=4, seed=0)
    assert len(src.train) == 500 and len(src.val) == 60  # no tail held out when a val file exists
    assert int(src.validation_batch(0)[0].min()) >= 100
    assert src.num_validation_batches == 2  # (60 - 1) // 8 = 7 windows, 4 per batch


# --- determinism, resume, validation ----------------------------------------------------------------------------

def test_batches_are_a_pure_function_of_seed_and_step(tmp_path):
    path = positions(tmp_path, 5000)
    a = make_data_source(str(path), vocab_size=5000, seq_len=16, global_batch=8, seed=11)
    b = make_data_source(str(path), vocab_size=5000, seq_len=16, global_batch=8, seed=11)
    late_first = [b.batch(s)[0] for s in reversed(range(6))][::-1]  # order of calls does not matter
    for s in range(6):
        assert torch.equal(a.batch(s)[0], late_first[s])
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    c = make_data_source(str(path), vocab_size=5000, seq_len=16, global_batch=8, seed=12)
    assert not torch.equal(a.batch(0)[0], c.batch(0)[0])


def test_resumed_source_continues_the_same_sequence(tmp_path):
    path = positions(tmp_path, 5000)
    first = make_data_source(str(path), vocab_size=5000, seq_len=16, global_batch=8, seed=11)
    uninterrupted = [first.batch(s) for s in range(10)]
    state = json.loads(json.dumps(first.state()))  # survives a JSON checkpoint file
    resumed = make_data_source(str(path), vocab_size=5000, seq_len=16, global_batch=8, seed=999)
    resumed.load_state(state)
    for s in range(5, 10):
        assert torch.equal(resumed.batch(s)[0], uninterrupted[s][0])
        assert torch.equal(resumed.batch(s)[1], uninterrupted[s][1])


def test_load_state_warns_when_the_data_changed(tmp_path, capsys):
    path = positions(tmp_path, 3000)
    state = make_data_source(str(path), vocab_size=3000, seq_len=8, global_batch=2, seed=1).state()
    positions(tmp_path, 3001)
    make_data_source(str(path), vocab_size=3001, seq_len=8, global_batch=2, seed=1).load_state(state)
    assert "differs from the data the checkpoint was trained on" in capsys.readouterr().err


def test_validation_batches_walk_the_held_out_windows_in_order(tmp_path):
    path = positions(tmp_path, 1000)
    src = make_data_source(str(path), vocab_size=1000, seq_len=10, global_batch=4, seed=5, val_fraction=0.1)
    # validation split: tokens 900..999 -> (100 - 1) // 10 = 9 windows starting at 900, 910, ..., 980
    assert src.num_validation_batches == 3
    starts = [int(s) for i in range(3) for s in src.validation_batch(i)[0][:, 0]]
    assert starts == [900 + 10 * (w % 9) for w in range(12)]
    x, y = src.validation_batch(2)
    assert torch.equal(y, x + 1) and int(y.max()) <= 999


def test_no_validation_split_is_a_usage_error(tmp_path):
    src = make_data_source(str(positions(tmp_path, 100)), vocab_size=100, seq_len=8, global_batch=2, seed=0,
                           val_fraction=0.0)
    with pytest.raises(UsageError, match="no validation split"):
        src.validation_batch(0)


# --- bad data: exit 3 with the reason -----------------------------------------------------------------------------

def bad(tmp_path, match, path=None, **kw):
    args = dict(vocab_size=256, seq_len=8, global_batch=2, seed=0)
    args.update(kw)
    with pytest.raises(DocumentError) as e:
        make_data_source(str(path), **args)
    assert e.value.exit_code == 3
    assert e.match(match)
    return e.value


def test_missing_file(tmp_path):
    err = bad(tmp_path, "no such file", tmp_path / "nope.bin")
    assert str(tmp_path / "nope.bin") in str(err)


def test_empty_file(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    bad(tmp_path, "empty file", tmp_path / "e.txt")


def test_token_id_outside_the_vocabulary_names_its_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "_SCAN_CHUNK", 64)  # the offending id sits in a later chunk of the scan
    vals = np.full(1000, 5)
    vals[777] = 256
    bad(tmp_path, "token id 256 at offset 777 is outside the model's vocabulary", token_file(tmp_path, vals))


def test_sidecar_vocabulary_larger_than_the_model(tmp_path):
    bad(tmp_path, r"vocabulary \(50257, from its sidecar\) is larger than the model's \(256\)",
        token_file(tmp_path, np.arange(100), vocab=50257))


def test_id_beyond_the_sidecar_vocabulary(tmp_path):
    bad(tmp_path, "outside the vocabulary its sidecar declares", token_file(tmp_path, np.arange(100), vocab=50),
        vocab_size=300)


def test_text_byte_outside_a_small_vocabulary(tmp_path):
    (tmp_path / "t.txt").write_text("abc" * 50 + "é", encoding="utf-8")
    bad(tmp_path, "byte value 195 at offset 150", tmp_path / "t.txt", vocab_size=128)


def test_sequence_longer_than_the_data(tmp_path):
    bad(tmp_path, "fewer than one sequence needs", token_file(tmp_path, np.arange(8)), val_fraction=0.0)


def test_sequence_longer_than_the_validation_split(tmp_path):
    bad(tmp_path, r"validation split .* is shorter than one sequence", token_file(tmp_path, np.arange(50)),
        val_fraction=0.1)


def test_validation_file_too_short(tmp_path):
    token_file(tmp_path, np.arange(100), name="train.bin")
    token_file(tmp_path, np.arange(5), name="val.bin")
    bad(tmp_path, "validation file holds 5 tokens", tmp_path)


def test_size_not_a_multiple_of_the_dtype(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    bad(tmp_path, "not a multiple of 2 B", tmp_path / "odd.bin", dtype="uint16")


def test_unknown_format_and_missing_dtype(tmp_path):
    (tmp_path / "x.dat").write_bytes(b"\x01\x00" * 50)
    bad(tmp_path, "cannot tell the format", tmp_path / "x.dat")
    bad(tmp_path, "token file without a dtype", tmp_path / "x.dat", data_format="tokens")


def test_bad_sidecars(tmp_path):
    path = token_file(tmp_path, np.arange(100), sidecar=False)
    side = tmp_path / "train.bin.json"
    side.write_text("{not json")
    bad(tmp_path, "unreadable sidecar", path)
    side.write_text(json.dumps({"dtype": "int8"}))
    bad(tmp_path, r"\$.dtype: expected one of uint8, uint16, uint32", path)
    side.write_text(json.dumps({"dtype": "uint16", "vocab_size": -3}))
    bad(tmp_path, r"\$.vocab_size: expected a positive integer", path)
    side.write_text(json.dumps({"dtype": "uint16"}))
    bad(tmp_path, "contradicts the sidecar's uint16", path, dtype="uint32")


def test_invalid_utf8_and_bad_npy(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"hello \xff world" * 10)
    bad(tmp_path, "not UTF-8 text: invalid byte at offset 6", tmp_path / "b.txt")
    np.save(tmp_path / "m.npy", np.zeros((4, 4), dtype=np.uint16))
    bad(tmp_path, "expected a 1-D integer array", tmp_path / "m.npy")
    np.save(tmp_path / "n.npy", np.array([-1, 3, 4] * 10, dtype=np.int32))
    bad(tmp_path, "negative token id -1", tmp_path / "n.npy", seq_len=2)


def test_directory_without_a_train_file(tmp_path):
    (tmp_path / "val.txt").write_text("abc")
    bad(tmp_path, "needs a train file", tmp_path)


def test_bad_options_are_usage_errors(tmp_path):
    path = positions(tmp_path, 100)
    with pytest.raises(UsageError, match="--val-fraction"):
        make_data_source(str(path), vocab_size=100, seq_len=4, global_batch=2, seed=0, val_fraction=1.0)
    with pytest.raises(UsageError, match="--data-dtype"):
        make_data_source(str(path), vocab_size=100, seq_len=4, global_batch=2, seed=0, dtype="float32")
    with pytest.raises(UsageError, match="unknown data option"):
        make_data_source(str(path), vocab_size=100, seq_len=4, global_batch=2, seed=0, shuffle=True)


def test_bad_data_exits_3_without_a_traceback(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {SRC!r})
        from galvatron_contracts.documents import exits_cleanly
        from galvatron_run.data import make_data_source
        exits_cleanly(lambda: make_data_source({str(tmp_path / 'gone.txt')!r}, vocab_size=256, seq_len=8,
                                               global_batch=2, seed=0))()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "gone.txt: no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_the_shipped_corpus_trains_as_text():
    from galvatron_run.data import CORPUS
    assert CORPUS.is_file(), "corpus/english.txt is missing: is 'corpus/*.txt' in the package data?"
    raw = CORPUS.read_bytes()
    assert len(raw) > 190_000 and max(raw) < 128  # plain ASCII English, well inside a byte vocabulary
    src = make_data_source(str(CORPUS), vocab_size=256, seq_len=64, global_batch=4, seed=0)
    assert src.kind == "text" and src.num_validation_batches > 0
    text = bytes(src.batch(0)[0][0].tolist()).decode("ascii")
    assert text in raw.decode("ascii")

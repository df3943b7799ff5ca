"""The command line: documents on stdout or -o, and the documented exit codes before any work starts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from galvatron_contracts.documents import GalvatronError, UsageError, read_one
from galvatron_probe.cli import main
from galvatron_probe.launch import run_ranks

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("args,code,message", [
    (["compute", "--model", "tiny-gpt", "--tp", "3"], 2, "tp 3 does not divide heads (4)"),
    (["compute", "--model", "tiny-gpt", "--tp", "8"], 2, "tp 8 does not divide heads (4)"),
    (["compute", "--model", "tiny-llama", "--tp", "4"], 2, "tp 4 does not divide kv_heads (2)"),
    (["compute", "--model", "gpt2-small", "--tp", "2", "--layers", "head"], 2, "does not divide vocab_size (50257)"),
    (["compute", "--model", "tiny-gpt", "--seq-len", "65"], 2, "exceeds the max_seq_len 64"),
    (["compute", "--model", "tiny-gpt", "-o", "/"], 2, "is a directory"),
    (["compute", "--model", "tiny-gpt", "-o", __file__ + "/x.json"], 2, "test_cli.py is not a directory"),
    (["compute", "--model", "no-such-model"], 2, "unknown model 'no-such-model'"),
    (["compute", "--model", "tiny-gpt", "--layers", "mlp"], 2, "--layers"),
    (["compute", "--model", "tiny-gpt", "--micro-batch-sizes", "0"], 2, "positive"),
    (["bandwidth"], 2, "at least 2 ranks"),
    (["bandwidth", "--nproc", "4", "--group-sizes", "3"], 2, "3 is not a group size of a world of 4 ranks"),
    (["bandwidth", "--nproc", "4", "--gpus-per-node", "3"], 2, "3 does not divide the world size 4"),
    (["bandwidth", "--nproc", "2", "--max-bytes", "2", "--min-bytes", "4KiB"], 2, "min <= max"),
    (["bandwidth", "--nproc", "2", "--max-bytes", "lots"], 2, "byte count"),
])
def test_impossible_requests_exit_before_any_work(args, code, message):
    exit_code, output = cli(*args)
    assert exit_code == code, output
    assert message in output
    assert "Traceback" not in output


def test_a_broken_config_json_exits_3(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama", "hidden_size": 64}')
    exit_code, output = cli("compute", "--model", str(bad))
    assert exit_code == 3
    assert "num_attention_heads" in output and str(bad) in output


def test_compute_from_a_hugging_face_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 64,
                                  "n_positions": 16}))
    out = tmp_path / "mp.json"
    exit_code, output = cli("compute", "--model", str(config), "--tp", "1,2", "--micro-batch-sizes", "1",
                            "--warmup", "0", "--repeats", "1", "--no-progress", "-o", str(out))
    assert exit_code == 0, output
    doc = read_one(str(out), "model-profile")
    assert doc["model"]["hidden"] == 32 and doc["settings"]["seq_lens"] == [16]
    assert {(e["layer"], e["tp"]) for e in doc["layers"]} == {(k, t) for k in ("decoder", "embedding", "head")
                                                             for t in (1, 2)}
    exit_code, output = cli("summary", str(out))
    assert exit_code == 0, output
    assert output.count("decoder ") == 2 and f"model-profile: {tmp_path.name} (gpt2" in output
    tables = tmp_path / "tables.txt"
    assert cli("summary", str(out), "-o", str(tables)) == (0, "")
    assert tables.read_text() == output
    exit_code, output = cli("summary", str(tmp_path / "missing.json"))
    assert exit_code == 3 and "no such file" in output


@pytest.mark.parametrize("command", [[], ["bandwidth"], ["compute"], ["summary"]])
def test_every_help_shows_its_examples_line_by_line(command):
    exit_code, output = cli(*command, "--help")
    assert exit_code == 0, output
    examples = output.split("Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) >= 3
    starts = ("    galvatron-probe ", "    torchrun ", "    { galvatron-probe ")   # \b: never rewrapped
    assert all(line.startswith(starts) for line in examples), examples


def test_bandwidth_command_on_two_ranks_writes_one_document(tmp_path):
    """The real console entry (python -m), 2 local ranks: rank 0 alone writes the file; the progress goes to stderr."""
    out = tmp_path / "hw.json"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "galvatron_probe", "bandwidth", "--nproc", "2", "--quick",
                           "--max-bytes", "64KiB", "--no-overlap", "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "bandwidth [" in proc.stderr
    doc = read_one(str(out), "hardware-profile")
    assert doc["overlap"] is None
    assert doc["cluster"]["world_size"] == 2
    assert {c["op"] for c in doc["collectives"]} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
    assert [e["pp_degree"] for e in doc["p2p"]] == [2]
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def _fails_on_rank_one():
    if os.environ["RANK"] == "1":
        raise UsageError("rank one cannot do this")
    return "rank zero done"


def test_a_failure_on_one_launched_rank_reaches_the_caller_with_its_exit_code():
    with pytest.raises(GalvatronError, match="rank one cannot do this") as err:
        run_ranks(_fails_on_rank_one, 2)
    assert err.value.exit_code == 2


def _rank_one_never_joins():
    import time

    import torch

    from galvatron_probe.bandwidth import Timer
    from galvatron_probe.launch import close_distributed, init_distributed

    d = init_distributed("gloo", timeout_s=2)
    if d.rank == 1:
        time.sleep(6)  # never joins the all_reduce: rank 0 must give up after the 2 s timeout
        close_distributed()
        return None
    timer = Timer(d.device, timeout_s=2)
    with timer.named("all_reduce over ranks [0, 1] (consecutive, group size 2) with 4096 bytes"):
        import torch.distributed as dist

        dist.all_reduce(torch.ones(1024))
    return "not reached"


def test_a_collective_that_times_out_names_its_group_and_size():
    with pytest.raises(GalvatronError, match=r"all_reduce over ranks \[0, 1\].*4096 bytes.*timeout 2 s") as err:
        run_ranks(_rank_one_never_joins, 2)
    assert err.value.exit_code == 1

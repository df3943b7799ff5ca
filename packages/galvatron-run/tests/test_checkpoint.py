"""Checkpoints: sharded save under one plan, load under others (exactly), crash safety, damage, keep-N, export/import.

One 2-rank gloo launch (this file run as the worker under torchrun) trains a tiny model with FSDP2 and saves it;
the same launch reloads it under other shardings (same FSDP2 plan, a plain replicated module, tensor parallel, a
pipeline-like split of the layers across the two ranks) and exports/imports it. The tests then check the
results, and load the 2-rank checkpoints again in this single process (no process group).

    torchrun --standalone --nproc-per-node 2 tests/test_checkpoint.py --worker OUT_DIR
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

import galvatron_run
from galvatron_contracts.launch import run_as_rank
from galvatron_run import checkpoint as ck
from galvatron_run.data import RandomTokens

VOCAB, HIDDEN, SEQ, BATCH, LAYERS = 32, 16, 8, 4, 2
PKG_ROOT = str(Path(galvatron_run.__file__).resolve().parents[1])


# --- the tiny model and its training step (shared by the worker and the tests) ----------------------------------

class Block(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class Tiny(nn.Module):
    """Global FQNs: embedding.*, layers.<global index>.*, head.*; a stage holds a subset (pipeline-like split)."""

    def __init__(self, layers=range(LAYERS), embedding=True, head=True, hidden=HIDDEN):
        super().__init__()
        torch.manual_seed(1)  # identical initial weights everywhere; a stage takes its slice of the same model
        full = {"embedding": nn.Embedding(VOCAB, hidden),
                "layers": nn.ModuleDict({str(i): Block(hidden) for i in range(max(layers, default=-1) + 1)}),
                "head": nn.Linear(hidden, VOCAB)}
        self.embedding = full["embedding"] if embedding else None
        self.layers = nn.ModuleDict({str(i): full["layers"][str(i)] for i in layers})
        self.head = full["head"] if head else None

    def forward(self, x):
        h = self.embedding(x) if self.embedding is not None else x
        for layer in self.layers.values():
            h = layer(h)
        return self.head(h) if self.head is not None else h


def make_optim(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    return opt, sched


def train_step(model, opt, sched, data, step, rows=slice(None)):
    x, y = data.batch(step)
    logits = model(x[rows])
    loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y[rows].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if rows != slice(None):  # data parallel: report the global batch's loss (equal halves: the mean of the two)
        import torch.distributed as dist
        loss = loss.detach().clone()
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)
    return loss


def full_params(model):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone().cpu() for k, v in sd.items()}


def full_optim(model, opt):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True,
                                                                       flatten_optimizer_state_dict=True))
    return {k: (v.detach().clone().cpu() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()}


# --- the worker (2 ranks under torchrun) ----------------------------------------------------------------------------

def worker(out: Path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    data = RandomTokens(VOCAB, SEQ, BATCH, seed=5)
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    res: dict = {}

    def fsdp_model(reshard_layers=True):
        m = Tiny()
        if reshard_layers:
            for layer in m.layers.values():
                fully_shard(layer, mesh=mesh)
        fully_shard(m, mesh=mesh)
        return m

    # A: FSDP2 (dp 2, zero3), 3 steps, save, 2 more steps: the uninterrupted reference
    model = fsdp_model()
    opt, sched = make_optim(model)
    res["A_losses"] = [train_step(model, opt, sched, data, s, half).item() for s in range(1, 4)]
    ck.save_checkpoint(out / "ckpt", 3, [model], [opt], sched, data, plan_digest="plan-A", extra={"tokens": 96})
    res["full3"], res["optim3"] = full_params(model), full_optim(model, opt)
    res["rng_after_save"] = torch.rand(3)
    res["A_losses"] += [train_step(model, opt, sched, data, s, half).item() for s in range(4, 6)]
    res["full5"] = full_params(model)
    ck.export_full(out / "export5.pt", [model])

    # D: the same plan again: exact resume, RNG included
    torch.manual_seed(1234)
    model = fsdp_model()
    opt, sched = make_optim(model)
    info = ck.load_checkpoint(out / "ckpt" / "step-3", [model], [opt], sched, RandomTokens(VOCAB, SEQ, BATCH, 0),
                              plan_digest="plan-A")
    res["D_info"] = info
    res["D_rng"] = torch.rand(3)
    res["D_full"], res["D_optim"] = full_params(model), full_optim(model, opt)
    res["D_lr"] = [g["lr"] for g in opt.param_groups]
    res["D_losses"] = [train_step(model, opt, sched, data, s, half).item() for s in range(4, 6)]

    # B: another sharding (root-only FSDP2 unit) and B2: a plain module replicated on both ranks, full batch
    model = fsdp_model(reshard_layers=False)
    opt, sched = make_optim(model)
    res["B_info"] = ck.load_checkpoint(out / "ckpt" / "step-3", [model], [opt], sched, plan_digest="plan-B")
    res["B_full"], res["B_optim"] = full_params(model), full_optim(model, opt)
    res["B_losses"] = [train_step(model, opt, sched, data, s, half).item() for s in range(4, 6)]
    model = Tiny()
    opt, sched = make_optim(model)
    ck.load_checkpoint(out / "ckpt" / "step-3", [model], [opt], sched, plan_digest="plan-B2")
    res["B2_full"] = full_params(model)
    res["B2_losses"] = [train_step(model, opt, sched, data, s).item() for s in range(4, 6)]

    # C: tensor parallel over both ranks (Colwise fc1 / Rowwise fc2), full batch on each rank
    model = Tiny()
    plan = {f"layers.{i}.{fc}": style for i in range(LAYERS)
            for fc, style in (("fc1", ColwiseParallel()), ("fc2", RowwiseParallel()))}
    parallelize_module(model, mesh, plan)
    opt, sched = make_optim(model)
    ck.load_checkpoint(out / "ckpt" / "step-3", [model], [opt], sched, plan_digest="plan-C")
    res["C_full"], res["C_optim"] = full_params(model), full_optim(model, opt)
    res["C_losses"] = [train_step(model, opt, sched, data, s).item() for s in range(4, 6)]

    # E: pipeline-like split (rank 0: embedding + layers.0, rank 1: layers.1 + head): load, then save as such
    stage = Tiny(layers=[rank], embedding=rank == 0, head=rank == 1)
    opt, sched = make_optim(stage)
    ck.load_checkpoint(out / "ckpt" / "step-3", [stage], [opt], sched, plan_digest="plan-E")
    res["E_params"] = {k: v.detach().clone() for k, v in stage.state_dict().items()}
    ck.save_checkpoint(out / "ckpt_pp", 3, [stage], [opt], sched, data, plan_digest="plan-E")
    gathered = [None, None]
    dist.all_gather_object(gathered, res.pop("E_params"))
    res["E_params"] = {k: v for d in gathered for k, v in d.items()}

    # F: --keep 2 over five saves
    small = Tiny(layers=[0])
    for step in range(10, 15):
        ck.save_checkpoint(out / "ckpt_keep", step, [small], keep=2)

    # G: import the exported file into a fresh FSDP2 model
    model = fsdp_model()
    res["G_import"] = ck.import_model(out / "export5.pt", [model])
    res["G_full"] = full_params(model)

    if rank == 0:
        torch.save(res, out / "results.pt")
    dist.barrier()
    dist.destroy_process_group()


# --- the tests -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, "--worker", str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out, torch.load(out / "results.pt", weights_only=False)


def assert_same(a: dict, b: dict, exact=True):
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], torch.Tensor):
            if exact:
                assert torch.equal(a[k], b[k]), k
            else:
                torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert a[k] == b[k], k


def test_checkpoint_layout_and_marker(run):
    out, _ = run
    step = out / "ckpt" / "step-3"
    marker = json.loads((step / "COMPLETE").read_text())
    assert marker["step"] == 3 and marker["world_size"] == 2 and marker["plan_digest"] == "plan-A"
    assert marker["model_fqns"] == 1 + 4 * LAYERS + 2 and marker["has_optimizer"]
    names = sorted(p.name for p in step.iterdir() if p.name != "COMPLETE")
    assert sorted(marker["files"]) == names and ".metadata" in names and "train_state.json" in names
    assert any(n.endswith(".distcp") for n in names)
    state = json.loads((step / "train_state.json").read_text())
    assert state["step"] == 3 and state["data"] == {"kind": "random", "seed": 5} and state["extra"] == {"tokens": 96}
    assert state["scheduler"]["last_epoch"] == 3
    assert not list((out / "ckpt").glob("*.tmp"))


def test_same_plan_resume_is_exact(run):
    _, r = run
    assert r["D_info"]["step"] == 3 and r["D_info"]["same_plan"] and r["D_info"]["rng_restored"]
    assert_same(r["D_full"], r["full3"])
    assert_same(r["D_optim"], r["optim3"])
    assert torch.equal(r["D_rng"], r["rng_after_save"])
    assert r["D_lr"] == [r["optim3"][k] for k in r["optim3"] if k.startswith("param_groups.") and k.endswith(".lr")][:1]
    assert r["D_losses"] == r["A_losses"][3:]  # bit for bit


def test_other_shardings_load_the_same_state(run):
    _, r = run
    assert not r["B_info"]["same_plan"] and not r["B_info"]["rng_restored"]
    for full in ("B_full", "B2_full", "C_full"):
        assert_same(r[full], r["full3"])
    assert_same(r["B_optim"], r["optim3"])
    assert_same(r["C_optim"], r["optim3"])
    for losses in ("B_losses", "B2_losses", "C_losses"):
        torch.testing.assert_close(torch.tensor(r[losses]), torch.tensor(r["A_losses"][3:]), rtol=1e-5, atol=0)


def test_pipeline_stages_load_their_part_and_save_a_whole(run):
    out, r = run
    assert_same(r["E_params"], r["full3"])
    model = Tiny()
    opt, sched = make_optim(model)
    data = RandomTokens(VOCAB, SEQ, BATCH, seed=0)
    info = ck.load_checkpoint(out / "ckpt_pp" / "step-3", [model], [opt], sched, data)
    assert info["step"] == 3 and info["world_size"] == 2 and data.seed == 5
    assert_same(full_params(model), r["full3"])
    assert_same(full_optim(model, opt), r["optim3"])


def test_two_rank_checkpoint_loads_in_one_process(run):
    out, r = run
    model = Tiny()
    opt, sched = make_optim(model)
    ck.load_checkpoint(out / "ckpt" / "step-3", [model], [opt], sched)
    assert_same(full_params(model), r["full3"])
    assert_same(full_optim(model, opt), r["optim3"])
    assert sched.last_epoch == 3 and sched.get_last_lr() == [1e-2]
    losses = [train_step(model, opt, sched, RandomTokens(VOCAB, SEQ, BATCH, 5), s).item() for s in (4, 5)]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(r["A_losses"][3:]), rtol=1e-5, atol=0)


def test_optimizer_settings_missing_from_the_checkpoint_keep_their_values(run, capsys):
    out, r = run
    model = Tiny()
    opt, sched = make_optim(model)
    opt.param_groups[0]["custom_setting"] = 0.5  # e.g. a hyperparameter a newer torch adds
    ck.load_checkpoint(out / "ckpt" / "step-3", [model], [opt], sched)
    assert opt.param_groups[0]["custom_setting"] == 0.5
    assert "no saved value for optimizer setting(s) custom_setting" in capsys.readouterr().err
    assert_same(full_params(model), r["full3"])
    got = full_optim(model, opt)
    assert all(torch.equal(got[k], v) for k, v in r["optim3"].items() if isinstance(v, torch.Tensor))


def test_model_only_load_and_model_mismatch(run):
    out, r = run
    model = Tiny()
    ck.load_checkpoint(out / "ckpt" / "step-3", [model])
    assert_same(full_params(model), r["full3"])
    with pytest.raises(ck.CheckpointError, match="holds parameters no rank's model has: layers.1.fc1.bias"):
        ck.load_checkpoint(out / "ckpt" / "step-3", [Tiny(layers=[0])])
    with pytest.raises(ck.CheckpointError, match=r"embedding.weight: shape \(32, 16\) in the checkpoint, \(32, 8\)"):
        ck.load_checkpoint(out / "ckpt" / "step-3", [Tiny(hidden=8)])
    with pytest.raises(ck.CheckpointError, match="no optimizer state"):
        ck.load_checkpoint(out / "ckpt_keep" / "step-14", [Tiny(layers=[0])], [make_optim(Tiny(layers=[0]))[0]])


def test_keep_prunes_old_checkpoints(run):
    out, _ = run
    assert [s for s, _ in ck.list_checkpoints(out / "ckpt_keep")] == [13, 14]
    assert sorted(p.name for p in (out / "ckpt_keep").iterdir()) == ["step-13", "step-14"]


def test_save_errors_are_clear(tmp_path):
    from galvatron_contracts.documents import GalvatronError, UsageError
    with pytest.raises(UsageError, match="--keep must be at least 1"):
        ck.save_checkpoint(tmp_path / "c", 1, [Tiny(layers=[0])], keep=0)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(GalvatronError, match=f"cannot create {tmp_path / 'file' / 'step-1.tmp'}"):
        ck.save_checkpoint(tmp_path / "file", 1, [Tiny(layers=[0])])
    model = Tiny(layers=[0])
    opt, sched = make_optim(model)
    path = ck.save_checkpoint(tmp_path / "ok", 1, [model], [opt], sched, extra={"note": "one process"})
    assert ck.verify_checkpoint(path)["world_size"] == 1
    assert ck.read_train_state(path)["extra"] == {"note": "one process"}


def copy_ckpt(out, tmp_path):
    root = tmp_path / "ckpt"
    shutil.copytree(out / "ckpt", root)
    return root


def test_interrupted_saves_are_ignored(run, tmp_path):
    out, _ = run
    root = copy_ckpt(out, tmp_path)
    shutil.copytree(root / "step-3", root / "step-7")
    (root / "step-7" / "COMPLETE").unlink()          # crashed after the rename, before the marker
    shutil.copytree(root / "step-3", root / "step-8.tmp")  # crashed while writing
    assert ck.latest_complete(root) == root / "step-3"
    with pytest.raises(ck.CheckpointError, match="incomplete: no COMPLETE marker") as e:
        ck.load_checkpoint(root / "step-7", [Tiny()])
    assert e.value.exit_code == 3
    assert ck.prune(root, keep=1) == [root / "step-7", root / "step-8.tmp"]


def test_damaged_checkpoints_are_skipped_and_refused(run, tmp_path):
    out, _ = run
    root = copy_ckpt(out, tmp_path)
    shard = sorted((root / "step-3").glob("*.distcp"))[0]
    for step in (5, 6):
        shutil.copytree(root / "step-3", root / f"step-{step}")
    with open(root / "step-6" / shard.name, "r+b") as f:  # truncated
        f.truncate(shard.stat().st_size - 10)
    raw = bytearray((root / "step-5" / shard.name).read_bytes())  # one flipped bit, same size
    raw[len(raw) // 2] ^= 1
    (root / "step-5" / shard.name).write_bytes(bytes(raw))
    assert ck.latest_complete(root) == root / "step-5"           # sizes only
    assert ck.latest_complete(root, deep=True) == root / "step-3"
    with pytest.raises(ck.CheckpointError, match=f"{shard.name}: CRC-32 mismatch") as e:
        ck.load_checkpoint(root / "step-5", [Tiny()])
    assert e.value.exit_code == 3
    with pytest.raises(ck.CheckpointError, match=f"{shard.name}: .* bytes, expected .*truncated"):
        ck.load_checkpoint(root / "step-6", [Tiny()])
    (root / "step-3" / "COMPLETE").write_text("{oops")
    with pytest.raises(ck.CheckpointError, match="damaged marker"):
        ck.load_checkpoint(root / "step-3", [Tiny()])
    with pytest.raises(ck.CheckpointError, match="no such checkpoint directory"):
        ck.load_checkpoint(root / "step-99", [Tiny()])


def test_export_and_import_round_trip(run, tmp_path):
    out, r = run
    exported = torch.load(out / "export5.pt", weights_only=True)
    assert_same(exported, r["full5"])
    assert_same(r["G_full"], r["full5"])
    assert r["G_import"]["unused"] == [] and r["G_import"]["tensors"] == len(r["full5"])
    info = ck.export_model(out / "ckpt" / "step-3", tmp_path / "m3.pt")
    assert info["tensors"] == len(r["full3"])
    assert_same(torch.load(tmp_path / "m3.pt", weights_only=True), r["full3"])
    model = Tiny()
    ck.import_model(tmp_path / "m3.pt", [model])
    assert_same(full_params(model), r["full3"])


def test_import_refuses_foreign_files(run, tmp_path):
    out, r = run
    bad = dict(r["full3"])
    bad["head.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(ck.CheckpointError, match=r"head.weight: shape \(3, 3\) in the file, \(32, 16\)"):
        ck.import_model(tmp_path / "shape.pt", [Tiny()])
    with pytest.raises(ck.CheckpointError, match="holds tensors no rank's model has: layers.1"):
        ck.import_model(out / "export5.pt", [Tiny(layers=[0])])
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ck.CheckpointError, match="expected a dict of parameter name -> tensor"):
        ck.import_model(tmp_path / "list.pt", [Tiny()])
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ck.CheckpointError, match="not a readable torch.save state dict"):
        ck.import_model(tmp_path / "junk.pt", [Tiny()])


def test_command_line_verify_list_export(run, tmp_path, capsys):
    out, r = run

    def main(*argv):
        with pytest.raises(SystemExit) as e:
            ck._main(list(argv))
        return e.value.code, capsys.readouterr()

    root = copy_ckpt(out, tmp_path)
    code, io = main("verify", str(root / "step-3"))
    assert code == 0 and "complete and undamaged (step 3" in io.out
    (root / "step-3" / "train_state.json").write_text("{}")
    code, io = main("verify", str(root / "step-3"))
    assert code == 3 and "train_state.json" in io.err and io.err.startswith("error: ")
    code, io = main("list", str(out / "ckpt_keep"))
    rows = [line.split()[:3] for line in io.out.splitlines()]
    assert code == 0 and rows == [["step", "13", str(out / "ckpt_keep/step-13")], ["*", "step", "14"]]
    code, io = main("export", str(out / "ckpt" / "step-3"), str(tmp_path / "m.pt"))
    assert code == 0 and f"{len(r['full3'])} tensors" in io.err
    assert_same(torch.load(tmp_path / "m.pt", weights_only=True), r["full3"])


if __name__ == "__main__" and "--worker" in sys.argv:
    torch.set_num_threads(1)
    run_as_rank(lambda: worker(Path(sys.argv[sys.argv.index("--worker") + 1])))

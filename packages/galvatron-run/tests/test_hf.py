"""Hugging Face weights in and out (``--init-from-hf``, ``--export-hf``) against ``transformers`` itself.

Tiny random GPT-2 (tied, a vocabulary tp 2 does not divide) and LLaMA (grouped-query attention, untied, a rotary
base and RMS eps off their defaults) are made and saved by transformers, every parameter random (a bias or norm
left at 0 or 1 would hide a mapping error). Each is loaded into galvatron-run under tp2, pp2 and zero3 (one
torchrun launch of 2 ranks runs every plan; this file is also that launch's rank program), once from a sharded
save and once from a bare GPT2Model save without the ``transformer.`` prefix, and under one rank through the
command line. Then:

- the first step's loss equals transformers' on the same batch, and the parameters each plan loaded (gathered)
  give transformers' logits (fp32, 1e-5);
- each rank read exactly the bytes of the shards it holds (fewer than the checkpoint's under tp and zero3);
- after one training step the export loads in transformers and gives the logits of galvatron's full parameters
  after that step (1e-5), which differ from the loaded ones.

The exit codes of bad input are checked in process: a config that is not the plan's model, a missing or surplus
tensor, a config the decoder does not compute (3), a non-empty export directory without --force (2).
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner
from plans import S, make_plan
from safetensors.torch import load_file, save_file

from galvatron_contracts.launch import run_as_rank
from galvatron_models import Decoder
from galvatron_run.cli import main
from galvatron_run.data import make_data_source
from galvatron_run.hf_io import HFCheckpoint, export_hf, save_hf
from galvatron_run.plan import checked_plan
from galvatron_run.train import build_state, full_parameters, train

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
SEQ = 16
ATOL = RTOL = 1e-5


# --- the rank program (run by torchrun: python test_hf.py CASES.json OUT) --------------------------------------

def _worker(cases_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    out = Path(out_dir)
    for case in json.loads(Path(cases_path).read_text()):
        plan, name = case["plan"], case["name"]
        checked_plan(plan, dist.get_world_size(), name)
        ckpt = HFCheckpoint.open(case["hf"])
        ckpt.check(plan["model"], name)
        state = build_state(plan, torch.device("cpu"), steps=1, timeout_s=60, init=ckpt.load_into)
        held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in state.model.parameters())
        loaded = full_parameters(state)
        data = make_data_source(None, vocab_size=plan["model"]["vocab_size"], seq_len=SEQ,
                                global_batch=plan["global_batch"], seed=plan["training"]["seed"])
        result = train(state, data, 1, measure_memory=False)
        after = full_parameters(state)
        export_hf(state, out / f"{name}.export", base_config=ckpt.config, max_shard_bytes=case.get("shard", 2**30))
        if state.env.j == 0:
            torch.save({"loaded": loaded, "after": after}, out / f"{name}.stage{state.env.stage}.pt")
        reads = [None] * dist.get_world_size()
        dist.all_gather_object(reads, {"read": ckpt.read_bytes, "held": held * 4})
        if dist.get_rank() == 0:
            (out / f"{name}.json").write_text(json.dumps({"loss": result["steps"][0]["loss"], "reads": reads}))
        dist.barrier()
        state.env.close()
    dist.destroy_process_group()


# --- the models ------------------------------------------------------------------------------------------------

def _randomised(model, seed: int):
    """Every parameter random (norm weights around 1), so no bias or norm can be mapped wrongly unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "ln" in name or "norm" in name else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """{name: (directory, transformers model)}; 'llama-sharded' and 'gpt2-bare' are other saves of the same two."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=32, tie_word_embeddings=True,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rope_theta=5000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1))
    models = {"gpt2": _randomised(gpt2, 1), "llama": _randomised(llama, 2)}
    out = {}
    for name, model in models.items():
        model.save_pretrained(root / name, safe_serialization=True)
        out[name] = (root / name, model)
    models["llama"].save_pretrained(root / "llama-sharded", safe_serialization=True, max_shard_size="20KB")
    out["llama-sharded"] = (root / "llama-sharded", models["llama"])
    models["gpt2"].transformer.save_pretrained(root / "gpt2-bare", safe_serialization=True)
    out["gpt2-bare"] = (root / "gpt2-bare", models["gpt2"])
    assert len(glob.glob(str(root / "llama-sharded" / "model-*.safetensors"))) > 1
    return out


def _spec(directory):
    return HFCheckpoint.open(directory).spec


def _plans(hf_models):
    tp, z3 = S(tp=2), S(sharding="zero3")
    shapes = {
        "tp2": dict(layers=[tp, tp], stages=[(0, 2)], b=2, m=2, emb=tp, head=tp),
        "pp2": dict(layers=[S(), S()], stages=[(0, 1), (1, 2)], b=2, m=2),
        "zero3": dict(layers=[z3, z3], stages=[(0, 2)], b=2, m=2, emb=z3, head=z3),
    }
    cases = []
    for model, shape, source, extra in [("gpt2", "tp2", "gpt2", {}), ("gpt2", "pp2", "gpt2", {"shard": 20_000}),
                                        ("gpt2", "zero3", "gpt2-bare", {}), ("llama", "tp2", "llama", {}),
                                        ("llama", "pp2", "llama-sharded", {}), ("llama", "zero3", "llama", {})]:
        directory = hf_models[source][0]
        spec = {k: v for k, v in _spec(directory).items() if k != "layers"}     # make_plan counts the layers
        plan = make_plan("tiny-gpt", 2, seq=SEQ, lr=1e-2, **shapes[shape], **spec)
        cases.append({"name": f"{model}_{shape}", "model": model, "plan": plan, "hf": str(directory), **extra})
    return cases


@pytest.fixture(scope="module")
def launched(hf_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_ranks")
    cases = _plans(hf_models)
    (out / "cases.json").write_text(json.dumps(cases))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           str(out / "cases.json"), str(out)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return cases, out


# --- comparisons -----------------------------------------------------------------------------------------------

def _batch(plan):
    data = make_data_source(None, vocab_size=plan["model"]["vocab_size"], seq_len=SEQ,
                            global_batch=plan["global_batch"], seed=plan["training"]["seed"])
    return data.batch(0)


def _galvatron_logits(spec, params, tokens):
    model = Decoder(spec, range(spec["layers"]), first=True, last=True, tie=spec["tied_embeddings"])
    model.load_state_dict(params)
    with torch.no_grad():
        return model(tokens)


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _hf_loss(model, x, y):
    logits = _hf_logits(model, x)
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))


def _stage_params(out, name, which):
    params = {}
    for f in sorted(glob.glob(str(out / f"{name}.stage*.pt"))):
        params.update(torch.load(f)[which])
    return params


def _case(launched, name):
    cases, out = launched
    return next(c for c in cases if c["name"] == name), out


NAMES = ["gpt2_tp2", "gpt2_pp2", "gpt2_zero3", "llama_tp2", "llama_pp2", "llama_zero3"]


@pytest.mark.parametrize("name", NAMES)
def test_loaded_model_has_the_loss_and_logits_of_transformers(launched, hf_models, name):
    case, out = _case(launched, name)
    plan, reference = case["plan"], hf_models[case["model"]][1]
    x, y = _batch(plan)
    got = json.loads((out / f"{name}.json").read_text())
    want = _hf_loss(reference, x, y)
    assert abs(got["loss"] - want) <= RTOL * abs(want), (got["loss"], want)
    loaded = _stage_params(out, name, "loaded")
    torch.testing.assert_close(_galvatron_logits(plan["model"], loaded, x), _hf_logits(reference, x),
                               atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", NAMES)
def test_each_rank_reads_only_what_it_holds(launched, hf_models, name):
    case, out = _case(launched, name)
    reads = json.loads((out / f"{name}.json").read_text())["reads"]
    assert all(r["read"] == r["held"] for r in reads), reads        # fp32 checkpoints: 4 bytes per element held
    whole = sum(p.numel() * 4 for p in hf_models[case["model"]][1].parameters())   # tied: counted once
    if "zero3" in name:
        assert sum(r["read"] for r in reads) == whole                   # every element read by exactly one rank
    if "tp2" in name:
        assert max(r["read"] for r in reads) < 0.6 * whole


@pytest.mark.parametrize("name", NAMES)
def test_export_after_a_step_loads_in_transformers(launched, name):
    transformers = pytest.importorskip("transformers")
    case, out = _case(launched, name)
    plan = case["plan"]
    export = out / f"{name}.export"
    sharded = (export / "model.safetensors.index.json").is_file()
    assert sharded == ("shard" in case) and (export / "model.safetensors").is_file() != sharded
    cls = transformers.GPT2LMHeadModel if case["model"] == "gpt2" else transformers.LlamaForCausalLM
    reloaded = cls.from_pretrained(export).eval()
    assert reloaded.dtype == torch.float32
    after, loaded = _stage_params(out, name, "after"), _stage_params(out, name, "loaded")
    assert max((after[k] - loaded[k]).abs().max().item() for k in after) > 1e-3     # the step changed the model
    x, _ = _batch(plan)
    torch.testing.assert_close(_hf_logits(reloaded, x), _galvatron_logits(plan["model"], after, x),
                               atol=ATOL, rtol=RTOL)


# --- the command line ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_one_rank_through_the_command_line(hf_models, tmp_path, model):
    """Global mode takes the model from the checkpoint; --force exports into a non-empty directory and keeps its
    other files; the first loss is transformers', the export is the model after the step."""
    transformers = pytest.importorskip("transformers")
    directory, reference = hf_models[model]
    export, full, report = tmp_path / "export", tmp_path / "model.pt", tmp_path / "run.json"
    export.mkdir()
    (export / "README.md").write_text("kept")
    (export / "model.safetensors").write_text("stale")
    ckpt, from_ckpt = tmp_path / "ckpt", tmp_path / "from-checkpoint"
    r = subprocess.run([sys.executable, "-m", "galvatron_run", "--init-from-hf", str(directory), "--global-batch",
                        "4", "--seq-len", str(SEQ), "--steps", "1", "--warmup-steps", "0", "--export", str(full),
                        "--export-hf", str(export), "--force", "-o", str(report), "--checkpoint-dir", str(ckpt),
                        "--save-every", "1"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # the checkpoint tool writes the same Hugging Face files from the saved checkpoint, in one process
    t = subprocess.run([sys.executable, "-m", "galvatron_run.checkpoint", "export-hf", str(ckpt), str(from_ckpt),
                        "--model", str(directory)], env=ENV, capture_output=True, text=True, timeout=300)
    assert t.returncode == 0, t.stderr[-3000:]
    saved, written = load_file(str(from_ckpt / "model.safetensors")), load_file(str(export / "model.safetensors"))
    assert saved.keys() == written.keys() and all(torch.equal(saved[k], written[k]) for k in saved)
    assert json.loads((from_ckpt / "config.json").read_text()) == json.loads((export / "config.json").read_text())
    doc = json.loads(report.read_text())
    plan = {"model": _spec(directory), "global_batch": 4, "training": {"seed": doc["settings"]["seed"]}}
    x, y = _batch(plan)
    want = _hf_loss(reference, x, y)
    assert abs(doc["steps"][0]["loss"] - want) <= RTOL * abs(want)
    assert (export / "README.md").read_text() == "kept"
    reloaded = getattr(transformers, type(reference).__name__).from_pretrained(export).eval()
    params = torch.load(full)
    torch.testing.assert_close(_hf_logits(reloaded, x), _galvatron_logits(plan["model"], params, x),
                               atol=ATOL, rtol=RTOL)
    offline = save_hf(plan["model"], params, tmp_path / "offline")       # the same files from the full state dict
    assert offline == ["model.safetensors", "config.json"]
    assert json.loads((tmp_path / "offline" / "config.json").read_text())["model_type"] == model
    ours, theirs = load_file(str(tmp_path / "offline" / offline[0])), load_file(str(export / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _rewritten(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint ``src`` whose model.safetensors tensors dict went through ``edit``."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    save_file(edit(dict(tensors)), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_bad_checkpoints_exit_3_naming_field_file_and_tensor(hf_models, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    gpt2 = hf_models["gpt2"][0]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan("tiny-gpt", 1, [S()] * 2, [(0, 2)], b=2, m=1, seq=SEQ)))
    r = _invoke([str(plan), "--init-from-hf", str(gpt2)])           # tiny-gpt: hidden 64, vocab 256
    assert r.exit_code == 3 and f"{gpt2 / 'config.json'}: $.n_embd: hidden 32 ({plan}'s model 64)" in r.stderr
    assert "$.vocab_size: vocab_size 97" in r.stderr

    missing = _rewritten(gpt2, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if "h.1.ln_2.bias" not in k})
    r = _invoke(["--init-from-hf", str(missing), "--global-batch", "2"])
    assert r.exit_code == 3
    assert f"{missing / 'model.safetensors'}: no tensor 'transformer.h.1.ln_2.bias' (shape [32])" in r.stderr

    extra = _rewritten(gpt2, tmp_path / "extra", lambda t: {**t, "transformer.h.2.ln_1.weight": torch.ones(32)})
    r = _invoke(["--init-from-hf", str(extra), "--global-batch", "2"])
    assert r.exit_code == 3
    assert f"{extra / 'model.safetensors'}: tensor 'transformer.h.2.ln_1.weight' is no parameter" in r.stderr

    relu = tmp_path / "relu"
    relu.mkdir()
    config = json.loads((gpt2 / "config.json").read_text())
    (relu / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    r = _invoke(["--init-from-hf", str(relu), "--global-batch", "2"])
    assert r.exit_code == 3 and "config.json: $.activation_function: 'relu' is not supported" in r.stderr

    scaled = tmp_path / "scaled"                                     # Llama 3.1's rope scaling
    scaled.mkdir()
    config = json.loads((hf_models["llama"][0] / "config.json").read_text())
    rope = {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0}
    (scaled / "config.json").write_text(json.dumps({**config, "rope_parameters": rope}))
    r = _invoke(["--init-from-hf", str(scaled), "--global-batch", "2"])
    assert r.exit_code == 3 and "config.json: $.rope_parameters: {" in r.stderr and "rope_type 'default'" in r.stderr
    assert "Traceback" not in r.stderr


def test_export_into_a_non_empty_directory_needs_force(hf_models, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = _invoke(["--model", "tiny-gpt", "--global-batch", "2", "--export-hf", str(busy)])
    assert r.exit_code == 2 and f"--export-hf {busy}: not empty (holds notes.txt); give --force" in r.stderr
    r = _invoke(["--model", "tiny-gpt", "--global-batch", "2", "--force"])
    assert r.exit_code == 2 and "--force only applies to --export-hf" in r.stderr


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_as_rank(lambda: _worker(sys.argv[1], sys.argv[2]))

"""Hugging Face GPT-2 and LLaMA checkpoints <-> this package's parameters: names, layouts and config.json.

Pure mapping, no IO and no transformers import:

    table = pieces(spec)              # {galvatron FQN: Piece}: which HF tensor holds it, and where
    shapes = hf_shapes(spec)          # {HF tensor name: shape} of a checkpoint of this model
    groups = hf_groups(spec)          # {HF tensor name: [Piece]}: what an export assembles each tensor from
    tensor = assemble(groups[name], {fqn: full tensor})
    config_problems(config, family)   # details of the config.json the decoder does not implement ("$.key: ...")
    hf_config(spec, base=None)        # a config.json that transformers loads

The layouts (HF tensor <- galvatron parameter):

- GPT-2 (``transformer.`` prefix): ``wte``/``wpe`` <- ``embedding.tok``/``pos``; ``h.<i>.ln_1``/``ln_2`` <- ``norm1``/
  ``norm2``; ``h.<i>.attn.c_attn`` holds q | k | v side by side along its output; ``attn.c_proj`` <- ``o``,
  ``mlp.c_fc`` <- ``fc``, ``mlp.c_proj`` <- ``proj``; ``ln_f`` <- ``head.norm``. GPT-2's Conv1D stores a weight as
  [in, out], the transpose of ``nn.Linear``'s [out, in]; biases are stored alike.
- LLaMA (``model.`` prefix): ``embed_tokens``, ``layers.<i>.{input_layernorm, self_attn.{q,k,v,o}_proj,
  post_attention_layernorm, mlp.{gate,up,down}_proj}``, ``norm``, in ``nn.Linear``'s layout. The decoder rotates the
  two halves of each head (``rotate_half``) with frequencies theta^(-2i/d), which is Hugging Face's convention, so
  q_proj and k_proj are taken as stored (no rotary permutation). Grouped-query attention agrees too: kv head j
  serves query heads j*r ... j*r + r - 1 in both (``repeat_interleave`` here, ``repeat_kv`` there).
- ``lm_head.weight`` <- ``head.out.weight``; with tied embeddings the head reads the token embedding's tensor and
  a checkpoint's ``lm_head.weight``, if it has one, is ignored (transformers ties it the same way).

Tensors a checkpoint may carry that are not parameters (``ignorable``): GPT-2's causal-mask buffers
``h.<i>.attn.bias`` / ``attn.masked_bias`` and LLaMA's ``rotary_emb.inv_freq`` of older saves.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from galvatron_contracts.models import HF_KEYS

from .decoder import Decoder

PREFIX = {"gpt2": "transformer.", "llama": "model."}
LM_HEAD = "lm_head.weight"

CONFIG_KEYS = HF_KEYS        # spec field -> config.json key, per family (the contracts' table)
_IGNORABLE = {"gpt2": re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$"),
              "llama": re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")}
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")      # both are the tanh approximation the gpt2 MLP computes
_DROPOUTS = {"gpt2": ("embd_pdrop", "attn_pdrop", "resid_pdrop"), "llama": ("attention_dropout",)}


@dataclass(frozen=True)
class Piece:
    """Where galvatron parameter ``fqn`` (of ``shape``) lies in Hugging Face tensor ``hf``.

    Let U be the HF tensor, transposed back when ``transposed`` (GPT-2's Conv1D stores [in, out]). The parameter is
    U[offset : offset + shape[0]] (``offset`` > 0 only for k and v inside GPT-2's fused c_attn)."""

    fqn: str
    hf: str
    shape: tuple[int, ...]
    transposed: bool = False
    offset: int = 0

    def hf_box(self, box: tuple[slice, ...]) -> tuple[slice, ...]:
        """The block of the HF tensor that holds ``box`` (one slice per dimension, unit steps) of the parameter."""
        rows = slice(box[0].start + self.offset, box[0].stop + self.offset)
        box = (rows, *box[1:])
        return box[::-1] if self.transposed else box

    def from_hf(self, block: torch.Tensor) -> torch.Tensor:
        """A block read at ``hf_box(box)`` in the parameter's own layout."""
        return block.T if self.transposed else block


def parameter_shapes(spec: dict) -> dict[str, tuple[int, ...]]:
    """{FQN: shape} of every parameter of the whole model, the head's weight included even when tied."""
    with torch.device("meta"):
        model = Decoder(spec, range(spec["layers"]), first=True, last=True, tie=False)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def pieces(spec: dict) -> dict[str, Piece]:
    """{galvatron FQN: Piece} for every parameter of the model (``head.out.weight`` included: with tied embeddings
    it reads the token embedding)."""
    shapes = parameter_shapes(spec)
    family = spec["family"]
    pre = PREFIX[family]
    out: dict[str, Piece] = {}

    def put(fqn: str, hf: str, transposed: bool = False, offset: int = 0) -> None:
        out[fqn] = Piece(fqn, hf, shapes[fqn], transposed, offset)

    tok = pre + ("wte.weight" if family == "gpt2" else "embed_tokens.weight")
    put("embedding.tok.weight", tok)
    q_width = shapes["layers.0.attn.q.weight"][0]
    kv_width = shapes["layers.0.attn.k.weight"][0]
    qkv_offsets = {"q": 0, "k": q_width, "v": q_width + kv_width}
    for i in range(spec["layers"]):
        g = f"layers.{i}."
        if family == "gpt2":
            t = f"{pre}h.{i}."
            for leaf in ("weight", "bias"):
                put(f"{g}norm1.{leaf}", f"{t}ln_1.{leaf}")
                put(f"{g}norm2.{leaf}", f"{t}ln_2.{leaf}")
                for m, at in qkv_offsets.items():
                    put(f"{g}attn.{m}.{leaf}", f"{t}attn.c_attn.{leaf}", leaf == "weight", at)
                for ours, theirs in (("attn.o", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                    put(f"{g}{ours}.{leaf}", f"{t}{theirs}.{leaf}", leaf == "weight")
        else:
            t = f"{pre}layers.{i}."
            put(f"{g}norm1.weight", f"{t}input_layernorm.weight")
            put(f"{g}norm2.weight", f"{t}post_attention_layernorm.weight")
            for m in ("q", "k", "v", "o"):
                put(f"{g}attn.{m}.weight", f"{t}self_attn.{m}_proj.weight")
            for m in ("gate", "up", "down"):
                put(f"{g}mlp.{m}.weight", f"{t}mlp.{m}_proj.weight")
    if family == "gpt2":
        put("embedding.pos.weight", pre + "wpe.weight")
        for leaf in ("weight", "bias"):
            put(f"head.norm.{leaf}", f"{pre}ln_f.{leaf}")
    else:
        put("head.norm.weight", pre + "norm.weight")
    put("head.out.weight", tok if spec["tied_embeddings"] else LM_HEAD)
    return out


def hf_groups(spec: dict) -> dict[str, list[Piece]]:
    """{HF tensor name: its pieces in offset order}: what a checkpoint of this model holds. A tied head is left
    out (the token embedding is the one tensor)."""
    groups: dict[str, list[Piece]] = {}
    for piece in pieces(spec).values():
        if piece.fqn == "head.out.weight" and spec["tied_embeddings"]:
            continue
        groups.setdefault(piece.hf, []).append(piece)
    return {name: sorted(ps, key=lambda p: p.offset) for name, ps in groups.items()}


def hf_shapes(spec: dict) -> dict[str, tuple[int, ...]]:
    """{HF tensor name: shape} of a checkpoint of this model (as stored: GPT-2's Conv1D weights [in, out])."""
    out = {}
    for name, ps in hf_groups(spec).items():
        shape = (sum(p.shape[0] for p in ps), *ps[0].shape[1:])
        out[name] = shape[::-1] if ps[0].transposed else shape
    return out


def assemble(group: list[Piece], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """One HF tensor from the full galvatron tensors of its pieces (``tensors``: {FQN: tensor})."""
    whole = torch.cat([tensors[p.fqn] for p in group], dim=0) if len(group) > 1 else tensors[group[0].fqn]
    return (whole.T if group[0].transposed else whole).contiguous()


def canonical_name(family: str, stored: str) -> str:
    """A stored tensor name as a ``*ForCausalLM`` saves it: checkpoints of the bare model (GPT2Model, LlamaModel,
    the original GPT-2 release) lack the ``transformer.`` / ``model.`` prefix."""
    pre = PREFIX[family]
    return stored if stored.startswith(pre) or stored == LM_HEAD else pre + stored


def ignorable(spec: dict, name: str) -> bool:
    """Whether a checkpoint tensor (canonical name) is no parameter of this model and may be skipped: a buffer of
    older saves, or ``lm_head.weight`` beside tied embeddings."""
    return bool(_IGNORABLE[spec["family"]].match(name)) or (name == LM_HEAD and spec["tied_embeddings"])


# --- config.json -------------------------------------------------------------------------------------------------

def normalized_config(config: dict) -> dict:
    """The config with ``rope_theta`` at the top level: transformers 5 writes it inside ``rope_parameters``."""
    out = dict(config)
    rope = config.get("rope_parameters")
    if "rope_theta" not in out and isinstance(rope, dict) and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    return out


def _rope_type(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return repr(value)
    kind = value.get("rope_type", value.get("type", "default"))
    return None if kind == "default" else repr(kind)


def config_problems(config: dict, family: str) -> list[str]:
    """One '$.key: ...' line per setting of a Hugging Face config.json that the ``family`` decoder does not compute
    (loading such a checkpoint would give other numbers than transformers does)."""
    problems = []

    def refuse(key, expected):
        problems.append(f"$.{key}: {config[key]!r} is not supported (galvatron's {family} decoder: {expected})")

    if family == "gpt2":
        if config.get("activation_function", "gelu_new") not in _GELU_TANH:
            refuse("activation_function", "the tanh-approximated GELU, 'gelu_new'")
        if config.get("scale_attn_weights", True) is not True:
            refuse("scale_attn_weights", "attention scores scaled by 1/sqrt(head_dim), true")
        if config.get("scale_attn_by_inverse_layer_idx", False):
            refuse("scale_attn_by_inverse_layer_idx", "no per-layer attention scaling, false")
        if config.get("add_cross_attention", False):
            refuse("add_cross_attention", "decoder-only, false")
        return problems
    if config.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "SwiGLU with SiLU, 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key, False):
            refuse(key, "no biases, false")
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if config.get("head_dim") is not None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0 \
            and config["head_dim"] != hidden // heads:
        refuse("head_dim", f"hidden_size / num_attention_heads = {hidden // heads}")
    for key in ("rope_scaling", "rope_parameters"):
        if _rope_type(config.get(key)) is not None:
            refuse(key, "plain rotary positions, rope_type 'default'")
    window, positions = config.get("sliding_window"), config.get("max_position_embeddings")
    if window is not None and not (isinstance(positions, int) and isinstance(window, int) and window >= positions):
        refuse("sliding_window", "full causal attention, null")
    return problems


def config_notes(config: dict, family: str) -> list[str]:
    """Settings that are accepted but not applied: the decoder trains without dropout."""
    return [f"$.{key} {config[key]} ignored: galvatron trains without dropout" for key in _DROPOUTS[family]
            if isinstance(config.get(key), (int, float)) and config[key] > 0]


def config_field(family: str, spec_field: str) -> str:
    """The config.json key of a spec field (for messages)."""
    return CONFIG_KEYS[family].get(spec_field, spec_field)


def hf_config(spec: dict, base: dict | None = None) -> dict:
    """A config.json for ``spec`` that transformers loads as GPT2LMHeadModel / LlamaForCausalLM, fp32 weights.

    ``base`` (the config a run was initialised from) keeps its other keys (token ids, ...); the spec's own fields
    win. ValueError naming the field for a spec Hugging Face's classes cannot express (gpt2 with kv_heads != heads)."""
    family = spec["family"]
    if family == "gpt2" and spec["kv_heads"] != spec["heads"]:
        raise ValueError(f"kv_heads {spec['kv_heads']} != heads {spec['heads']}: Hugging Face's GPT-2 has no "
                         f"grouped-query attention")
    own = {CONFIG_KEYS[family][k]: spec[k] for k in CONFIG_KEYS[family] if k in spec and k != "kv_heads"}
    own[CONFIG_KEYS[family]["norm_eps"]] = spec.get("norm_eps", 1e-5)
    if family == "gpt2":
        fresh = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
                 "n_ctx": spec["max_seq_len"], "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0}
    else:
        own["num_key_value_heads"] = spec["kv_heads"]
        own["rope_theta"] = spec.get("rope_theta", 10000.0)
        fresh = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                 "head_dim": spec["hidden"] // spec["heads"], "attention_bias": False, "mlp_bias": False,
                 "attention_dropout": 0.0}
    out = {**fresh, **(base or {}), **own, "torch_dtype": "float32"}
    out.pop("dtype", None)
    if isinstance(out.get("rope_parameters"), dict):
        out["rope_parameters"] = {**out["rope_parameters"], "rope_theta": own["rope_theta"]}
    return out

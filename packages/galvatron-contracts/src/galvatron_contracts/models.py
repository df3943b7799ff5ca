"""Model specs: presets, Hugging Face ``config.json`` import, exact parameter counts and FLOPs.

A spec is the ``model-spec`` schema's object.

    spec = load_model_spec("llama2-7b")            # a preset
    spec = load_model_spec("path/to/config.json")  # GPT-2 or LLaMA keys, read as plain JSON
    param_count(spec)                               # 6_738_415_616
    spec_differences(plan["model"], cost_model["model"])   # [] when both are of one model
"""
from __future__ import annotations

from pathlib import Path

from .documents import DocumentError, UsageError, load_schema, model_spec_errors, read_json, schema_errors


def _gpt2(name, layers, hidden, heads, vocab=50257, seq=1024, tied=True):
    return {"name": name, "family": "gpt2", "layers": layers, "hidden": hidden, "heads": heads, "kv_heads": heads,
            "ffn_hidden": 4 * hidden, "vocab_size": vocab, "max_seq_len": seq, "tied_embeddings": tied,
            "norm_eps": 1e-5, "source": "preset"}


def _llama(name, layers, hidden, heads, kv_heads, ffn, vocab=32000, seq=4096, theta=10000.0, eps=1e-5, tied=False):
    return {"name": name, "family": "llama", "layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads,
            "ffn_hidden": ffn, "vocab_size": vocab, "max_seq_len": seq, "tied_embeddings": tied, "norm_eps": eps,
            "rope_theta": theta, "source": "preset"}


# Published sizes (parameters) in the comments; tests check param_count against them.
PRESETS: dict[str, dict] = {s["name"]: s for s in [
    _gpt2("tiny-gpt", 4, 64, 4, vocab=256, seq=64),                       # tests: 4 layers, byte vocabulary
    _llama("tiny-llama", 4, 64, 4, 2, 176, vocab=256, seq=64),           # tests: grouped-query attention
    _gpt2("mini-gpt", 6, 128, 4, vocab=256, seq=128),                     # quickstart and CPU benchmarks
    _gpt2("gpt2-small", 12, 768, 12),                                      # 124M
    _gpt2("gpt2-medium", 24, 1024, 16),                                    # 355M
    _gpt2("gpt2-large", 36, 1280, 20),                                     # 774M
    _gpt2("gpt2-xl", 48, 1600, 25),                                        # 1.56B
    _llama("llama2-7b", 32, 4096, 32, 32, 11008),                          # 6.74B
    _llama("llama2-13b", 40, 5120, 40, 40, 13824),                         # 13.0B
    _llama("llama2-70b", 80, 8192, 64, 8, 28672),                          # 69.0B
    _llama("llama3-8b", 32, 4096, 32, 8, 14336, vocab=128256, seq=8192, theta=500000.0),  # 8.03B
]}


def check_model_spec(spec: dict, source: str = "model spec") -> dict:
    """Schema plus the arithmetic the schema cannot say (heads divide hidden, kv_heads divide heads)."""
    errors = schema_errors(spec, "model-spec", "1.0")
    errors = errors or model_spec_errors(spec)
    if errors:
        raise DocumentError(source, errors)
    return spec


def spec_differences(spec: dict, other: dict, other_name: str = "other") -> list[str]:
    """'key a (<other_name> b)' for every field in which two specs differ, the schema's defaults filled in;
    ``source`` (where a spec was read from, not what it is) is left out."""
    defaults = {k: v["default"] for k, v in load_schema("model-spec", "1.0")["properties"].items() if "default" in v}
    a, b = {**defaults, **spec}, {**defaults, **other}
    return [f"{key} {a.get(key)!r} ({other_name} {b.get(key)!r})" for key in sorted(set(a) | set(b))
            if key != "source" and a.get(key) != b.get(key)]


# spec field <- Hugging Face config.json key, per family (to name the config's key in an error; gpt2's kv_heads
# is n_head: GPT-2 has no grouped-query attention)
HF_KEYS = {
    "gpt2": {"layers": "n_layer", "hidden": "n_embd", "heads": "n_head", "kv_heads": "n_head", "ffn_hidden": "n_inner",
             "vocab_size": "vocab_size", "max_seq_len": "n_positions", "tied_embeddings": "tie_word_embeddings",
             "norm_eps": "layer_norm_epsilon"},
    "llama": {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
              "kv_heads": "num_key_value_heads", "ffn_hidden": "intermediate_size", "vocab_size": "vocab_size",
              "max_seq_len": "max_position_embeddings", "tied_embeddings": "tie_word_embeddings",
              "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta"},
}


def _rope_theta(config: dict):
    """rope_theta at the top level (transformers 4) or inside rope_parameters (transformers 5); 10000 if absent."""
    rope = config.get("rope_parameters")
    if "rope_theta" not in config and isinstance(rope, dict) and "rope_theta" in rope:
        return rope["rope_theta"]
    return config.get("rope_theta", 10000.0)


def from_hf_config(config: dict, name: str, source: str) -> dict:
    """A spec from a Hugging Face config.json's keys (GPT-2 or LLaMA), without the transformers package.

    Errors name the config's own keys: '$.n_embd (hidden): ...'."""
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise DocumentError(source, f"$.model_type: expected a string, got {model_type!r}")

    def need(key):
        if key not in config:
            raise DocumentError(source, f"$.{key}: required for a {model_type or 'model'} config.json")
        return config[key]

    if model_type == "gpt2" or (not model_type and "n_embd" in config):
        family, hidden = "gpt2", need("n_embd")
        spec = {"name": name, "family": "gpt2", "layers": need("n_layer"), "hidden": hidden, "heads": need("n_head"),
                "kv_heads": need("n_head"), "ffn_hidden": config.get("n_inner") or _times(4, hidden),
                "vocab_size": need("vocab_size"), "max_seq_len": config.get("n_positions", config.get("n_ctx", 1024)),
                "tied_embeddings": config.get("tie_word_embeddings", True),
                "norm_eps": config.get("layer_norm_epsilon", 1e-5)}
    elif model_type in ("llama", "mistral") or (not model_type and "intermediate_size" in config):
        family, heads = "llama", need("num_attention_heads")
        spec = {"name": name, "family": "llama", "layers": need("num_hidden_layers"), "hidden": need("hidden_size"),
                "heads": heads, "kv_heads": config.get("num_key_value_heads") or heads,
                "ffn_hidden": need("intermediate_size"), "vocab_size": need("vocab_size"),
                "max_seq_len": config.get("max_position_embeddings", 4096),
                "tied_embeddings": config.get("tie_word_embeddings", False),
                "norm_eps": config.get("rms_norm_eps", 1e-5), "rope_theta": _rope_theta(config)}
        if isinstance(spec["rope_theta"], int) and not isinstance(spec["rope_theta"], bool):
            spec["rope_theta"] = float(spec["rope_theta"])
    else:
        raise DocumentError(source, f"$.model_type: expected a GPT-2 or LLaMA config (model_type 'gpt2' or 'llama'), "
                                    f"got {model_type!r}")
    spec["source"] = source
    errors = schema_errors(spec, "model-spec", "1.0")
    if family == "gpt2" and not config.get("n_inner") and any(e.startswith("$.hidden:") for e in errors):
        errors = [e for e in errors if not e.startswith("$.ffn_hidden:")]  # derived from the bad n_embd
    errors = errors or model_spec_errors(spec)
    if errors:
        raise DocumentError(source, [_as_config_path(e, HF_KEYS[family]) for e in errors])
    return spec


def _times(k, value):
    return k * value if isinstance(value, int) and not isinstance(value, bool) else value


def _as_config_path(error: str, keys: dict) -> str:
    """'$.hidden: msg' -> '$.n_embd (hidden): msg' for an error about an imported config."""
    path, _, message = error.partition(": ")
    field = path[2:] if path.startswith("$.") else ""
    return f"$.{keys[field]} ({field}): {message}" if field in keys else error


def load_model_spec(name_or_path: str) -> dict:
    """A preset by name, or a Hugging Face config.json by path (or the directory holding it)."""
    if name_or_path in PRESETS:
        return dict(PRESETS[name_or_path])
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.suffix != ".json" and not path.is_file():
        raise UsageError(f"unknown model {str(name_or_path)!r}: expected a preset ({', '.join(PRESETS)}) "
                         f"or the path of a Hugging Face config.json")
    config = read_json(path)
    if not isinstance(config, dict):
        raise DocumentError(str(path), "$: expected a JSON object")
    name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    return from_hf_config(config, name, str(path))


# --- counting --------------------------------------------------------------------------------------------------

def decoder_param_count(spec: dict) -> int:
    """Parameters of one decoder block of the reference architecture."""
    h, f = spec["hidden"], spec["ffn_hidden"]
    kv = spec["kv_heads"] * (h // spec["heads"])
    if spec["family"] == "gpt2":
        attn = (h * 3 * h + 3 * h) + (h * h + h)        # fused qkv with bias, output projection with bias
        mlp = (h * f + f) + (f * h + h)
        return attn + mlp + 2 * (2 * h)                   # two LayerNorms (weight + bias)
    attn = h * h + 2 * h * kv + h * h                     # q, k, v, o without bias
    mlp = 3 * h * f                                       # gate, up, down
    return attn + mlp + 2 * h                             # two RMSNorms


def layer_param_counts(spec: dict) -> dict[str, int]:
    """{'decoder': one block, 'embedding': tokens (+ positions), 'head': final norm (+ LM head unless tied)}."""
    h, v = spec["hidden"], spec["vocab_size"]
    gpt2 = spec["family"] == "gpt2"
    embedding = v * h + (spec["max_seq_len"] * h if gpt2 else 0)
    head = (2 * h if gpt2 else h) + (0 if spec["tied_embeddings"] else v * h)
    return {"decoder": decoder_param_count(spec), "embedding": embedding, "head": head}


def param_count(spec: dict) -> int:
    counts = layer_param_counts(spec)
    return spec["layers"] * counts["decoder"] + counts["embedding"] + counts["head"]


def training_flops_per_token(spec: dict, seq_len: int) -> float:
    """Model FLOPs of one token's forward and backward: 6 x matmul parameters + 12 L h s for attention."""
    h = spec["hidden"]
    kv = spec["kv_heads"] * (h // spec["heads"])
    if spec["family"] == "gpt2":
        matmul = 4 * h * h + 2 * h * spec["ffn_hidden"]
    else:
        matmul = 2 * h * h + 2 * h * kv + 3 * h * spec["ffn_hidden"]
    matmul = spec["layers"] * matmul + h * spec["vocab_size"]
    return 6.0 * matmul + 12.0 * spec["layers"] * h * seq_len

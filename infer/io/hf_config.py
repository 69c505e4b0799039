"""Hugging Face `config.json` -> ModelConfig, refusing what the model cannot represent.

Supported architectures (model_type): llama, mistral, qwen2 (q/k/v biases), qwen3
(q/k RMSNorm, explicit head_dim). A key missing from config.json takes the
default `transformers` uses for that architecture, so the loaded model means what
`from_pretrained` would mean. Both rope layouts are read: transformers < 5
(`rope_theta` + `rope_scaling`) and transformers >= 5 (`rope_parameters`).

Every refusal is an `HFConfigError` naming the config.json field.
"""
import json
import os
from typing import Optional

from infer.config.model_config import DTYPES, ConfigError, ModelConfig, RopeScaling


class HFConfigError(ConfigError):
    """config.json describes something this stack does not support; the message names the field."""


# Defaults of transformers' config classes (checked against transformers 5.23).
_ARCH_DEFAULTS = {
    "llama": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=2048, head_dim=None,
                  sliding_window=None),
    "mistral": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=131072, head_dim=None,
                    sliding_window=4096),
    "qwen2": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=32768, head_dim=None,
                  sliding_window=4096),
    "qwen3": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=32768, head_dim=128,
                  sliding_window=4096),
}
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
}
SUPPORTED_MODEL_TYPES = tuple(_ARCH_DEFAULTS)

_HF_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
              "torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def _fail(field: str, msg: str):
    raise HFConfigError(f"config.json: {field}: {msg}")


def read_config_json(path: str) -> dict:
    """The parsed config.json of a checkpoint directory."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a checkpoint directory, .gguf file or known model name")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: missing (a Hugging Face checkpoint needs config.json)")
    with open(cfg_path) as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise HFConfigError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise HFConfigError(f"{cfg_path}: expected a JSON object")
    return d


def model_type_of(d: dict) -> str:
    """The architecture family, from model_type (checked against `architectures` when both are present)."""
    mt = d.get("model_type")
    archs = d.get("architectures") or []
    from_arch = [_ARCHITECTURES.get(a) for a in archs]
    if mt is None:
        if not archs:
            _fail("model_type", "missing (and no `architectures` either)")
        mt = from_arch[0]
        if mt is None:
            _fail("architectures", f"unknown architecture {archs[0]!r}; supported: {sorted(_ARCHITECTURES)}")
    if mt not in _ARCH_DEFAULTS:
        _fail("model_type", f"unknown architecture {mt!r}; supported: {list(SUPPORTED_MODEL_TYPES)}")
    for a, m in zip(archs, from_arch):
        if m != mt:
            _fail("architectures", f"{a!r} is not a supported {mt} causal LM; supported: {sorted(_ARCHITECTURES)}")
    return mt


def _rope(d: dict):
    """(rope_theta, RopeScaling or None) from either config layout."""
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and "full_attention" in rp and isinstance(rp["full_attention"], dict):
        _fail("rope_parameters", "per-layer-type rope parameters are not supported")
    theta = d.get("rope_theta")
    if theta is None and isinstance(rp, dict):
        theta = rp.get("rope_theta")
    theta = 10000.0 if theta is None else float(theta)
    rs = d.get("rope_scaling")
    field = "rope_scaling"
    if rs is None and isinstance(rp, dict):
        rs, field = rp, "rope_parameters"
    if not rs:
        return theta, None
    if not isinstance(rs, dict):
        _fail(field, f"expected an object, got {rs!r}")
    rtype = rs.get("rope_type", rs.get("type"))
    if rtype in (None, "default"):
        return theta, None
    if rtype == "linear":
        return theta, RopeScaling(type="linear", factor=float(rs["factor"]))
    if rtype == "llama3":
        try:
            return theta, RopeScaling(
                type="llama3", factor=float(rs["factor"]), low_freq_factor=float(rs["low_freq_factor"]),
                high_freq_factor=float(rs["high_freq_factor"]),
                original_max_position_embeddings=int(rs["original_max_position_embeddings"]))
        except KeyError as e:
            _fail(f"{field}.{e.args[0]}", "missing (required by llama3 rope scaling)")
    _fail(f"{field}.rope_type", f"unsupported rope scaling type {rtype!r}; supported: linear, llama3")


def _sliding_window(d: dict, mt: str, n_layers: int, defaults: dict) -> Optional[int]:
    """The window every layer uses, or None. Per-layer mixes are refused."""
    w = d.get("sliding_window", defaults["sliding_window"])
    if mt in ("llama",):
        if w is not None:
            _fail("sliding_window", f"{w} is not part of the llama architecture")
        return None
    if mt == "mistral":
        return None if w is None else int(w)
    # qwen2 / qwen3: the window is on only with use_sliding_window, and only for layers >= max_window_layers.
    if not d.get("use_sliding_window", False) or w is None:
        return None
    types = d.get("layer_types")
    if types is None:
        mwl = int(d.get("max_window_layers", 28))
        types = ["sliding_attention" if i >= mwl else "full_attention" for i in range(n_layers)]
    kinds = set(types)
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return int(w)
    _fail("layer_types", f"a per-layer mix of sliding and full attention is not supported ({types})")


def hf_to_model_config(d: dict, dtype: Optional[str] = None, name: str = "") -> ModelConfig:
    """Translate a parsed config.json into a ModelConfig (dtype: override of the checkpoint's dtype)."""
    mt = model_type_of(d)
    defaults = _ARCH_DEFAULTS[mt]
    for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if d.get(f) is None:
            _fail(f, "missing")
    act = d.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        _fail("hidden_act", f"{act!r} is not supported (the MLP is SwiGLU with silu)")
    if d.get("mlp_bias"):
        _fail("mlp_bias", "MLP biases are not supported")
    if mt in ("llama", "mistral", "qwen3") and d.get("attention_bias"):
        _fail("attention_bias", f"{mt} attention_bias adds an o_proj bias, which is not supported")
    if d.get("quantization_config"):
        _fail("quantization_config", "quantized checkpoints are not supported; load full-precision weights")
    if d.get("attn_logit_softcapping") is not None or d.get("final_logit_softcapping") is not None:
        _fail("attn_logit_softcapping", "logit soft-capping is not part of the supported architectures")
    rp = d.get("rope_parameters") if isinstance(d.get("rope_parameters"), dict) else {}
    if float(d.get("partial_rotary_factor", rp.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        _fail("partial_rotary_factor", "partial rotary embeddings are not supported (RoPE covers all of head_dim)")
    if int(d.get("pretraining_tp", 1) or 1) != 1:
        _fail("pretraining_tp", "only pretraining_tp=1 is supported")

    n_heads = int(d["num_attention_heads"])
    n_kv = d.get("num_key_value_heads")
    n_kv = n_heads if n_kv is None else int(n_kv)
    hidden = int(d["hidden_size"])
    head_dim = d.get("head_dim", defaults["head_dim"])
    if head_dim is None:
        if hidden % n_heads:
            _fail("head_dim", f"missing and hidden_size={hidden} is not divisible by num_attention_heads={n_heads}")
        head_dim = hidden // n_heads
    n_layers = int(d["num_hidden_layers"])
    theta, scaling = _rope(d)

    if dtype is None:
        src = d.get("dtype", d.get("torch_dtype"))
        dtype = _HF_DTYPES.get(str(src), "bfloat16") if src is not None else "bfloat16"
    if dtype not in DTYPES:
        raise HFConfigError(f"dtype: must be one of {DTYPES}, got {dtype!r}")
    eps = d.get("rms_norm_eps")
    tie = d.get("tie_word_embeddings")
    max_pos = d.get("max_position_embeddings")
    try:
        return ModelConfig(
            vocab_size=int(d["vocab_size"]), d_model=hidden, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=n_kv, head_dim=int(head_dim), d_ff=int(d["intermediate_size"]),
            rope_theta=theta, rope_scaling=scaling,
            norm_eps=float(defaults["rms_norm_eps"] if eps is None else eps),
            tie_embeddings=bool(defaults["tie_word_embeddings"] if tie is None else tie),
            max_seq_len=int(defaults["max_position_embeddings"] if max_pos is None else max_pos),
            dtype=dtype, qkv_bias=(mt == "qwen2"), qk_norm=(mt == "qwen3"),
            sliding_window=_sliding_window(d, mt, n_layers, defaults), name=name or mt)
    except HFConfigError:
        raise
    except ConfigError as e:
        raise HFConfigError(f"config.json: invalid model ({e})") from None

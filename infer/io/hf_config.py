"""Hugging Face `config.json` -> ModelConfig, refusing what the model cannot represent.

Supported architectures (model_type): llama, mistral, qwen2 (q/k/v biases), qwen3
(q/k RMSNorm, explicit head_dim), qwen3_moe (qwen3's attention, mixture-of-experts MLPs on the layers
decoder_sparse_step and mlp_only_layers name), mixtral (mistral's attention, every MLP a mixture of experts,
renormalised top-k), deepseek_v2 / deepseek_v3 (MLA attention, YaRN rope;
only checkpoints whose layers are all dense MLPs -- mixture-of-experts layers are refused). A key missing from config.json takes the
default `transformers` uses for that architecture, so the loaded model means what
`from_pretrained` would mean. Both rope layouts are read: transformers < 5
(`rope_theta` + `rope_scaling`) and transformers >= 5 (`rope_parameters`).

Every refusal is an `HFConfigError` naming the config.json field.
"""
import json
import os
from typing import Optional

from infer.config.dtypes import DTYPES, dtype_name
from infer.config.model_config import ConfigError, ModelConfig, RopeScaling


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
    "qwen3_moe": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=32768, head_dim=None,
                      sliding_window=4096, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                      norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=()),
    "mixtral": dict(rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=131072, head_dim=None,
                    sliding_window=None, num_local_experts=8, num_experts_per_tok=2),
    "deepseek_v2": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=2048, head_dim=None,
                        sliding_window=None, kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128,
                        qk_rope_head_dim=64, v_head_dim=128, first_k_dense_replace=0, n_routed_experts=64,
                        rope_interleave=True),
    "deepseek_v3": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=4096, head_dim=None,
                        sliding_window=None, kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128,
                        qk_rope_head_dim=64, v_head_dim=128, first_k_dense_replace=3, n_routed_experts=256,
                        rope_interleave=True),
}
MLA_MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
MOE_MODEL_TYPES = ("qwen3_moe", "mixtral")
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe", "MixtralForCausalLM": "mixtral",
    "DeepseekV2ForCausalLM": "deepseek_v2", "DeepseekV3ForCausalLM": "deepseek_v3",
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
    if rtype == "yarn":
        opt = lambda k: None if rs.get(k) is None else float(rs[k])
        omp = rs.get("original_max_position_embeddings")
        if omp is None:
            _fail(f"{field}.original_max_position_embeddings", "missing (required by yarn rope scaling)")
        factor = rs.get("factor")
        if factor is None:  # transformers: the ratio of the context lengths
            factor = float(d.get("max_position_embeddings")) / float(omp)
        return theta, RopeScaling(
            type="yarn", factor=float(factor), original_max_position_embeddings=int(omp),
            beta_fast=float(rs.get("beta_fast") or 32), beta_slow=float(rs.get("beta_slow") or 1),
            mscale=opt("mscale"), mscale_all_dim=opt("mscale_all_dim"), attention_factor=opt("attention_factor"),
            truncate=bool(rs.get("truncate", True)))
    if rtype == "llama3":
        try:
            return theta, RopeScaling(
                type="llama3", factor=float(rs["factor"]), low_freq_factor=float(rs["low_freq_factor"]),
                high_freq_factor=float(rs["high_freq_factor"]),
                original_max_position_embeddings=int(rs["original_max_position_embeddings"]))
        except KeyError as e:
            _fail(f"{field}.{e.args[0]}", "missing (required by llama3 rope scaling)")
    _fail(f"{field}.rope_type", f"unsupported rope scaling type {rtype!r}; supported: linear, llama3, yarn")


def _sliding_window(d: dict, mt: str, n_layers: int, defaults: dict) -> Optional[int]:
    """The window every layer uses, or None. Per-layer mixes are refused."""
    w = d.get("sliding_window", defaults["sliding_window"])
    if mt in ("llama",) + MLA_MODEL_TYPES:
        if w is not None:
            _fail("sliding_window", f"{w} is not part of the llama architecture")
        return None
    if mt in ("mistral", "mixtral"):
        return None if w is None else int(w)
    if mt == "qwen3_moe":  # transformers: the window on every layer with use_sliding_window, else none
        return int(w) if d.get("use_sliding_window", False) and w is not None else None
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


def _mla_fields(d: dict, defaults: dict, n_heads: int, n_kv: int) -> dict:
    """DeepSeek-V2/V3 attention fields; refuses what the model cannot represent (MoE layers, biases)."""
    get = lambda k: d.get(k, defaults[k]) if d.get(k, defaults[k]) is not None else defaults[k]
    if d.get("attention_bias"):
        _fail("attention_bias", "biases on the MLA projections are not supported")
    if n_kv != n_heads:
        _fail("num_key_value_heads", f"MLA expands one key per head: must equal num_attention_heads={n_heads}, "
                                     f"got {n_kv}")
    n_layers = int(d["num_hidden_layers"])
    first_dense = d.get("first_k_dense_replace", defaults["first_k_dense_replace"])
    first_dense = 0 if first_dense is None else int(first_dense)
    if get("n_routed_experts") and first_dense < n_layers:
        _fail("first_k_dense_replace", f"layers {first_dense}..{n_layers - 1} are mixture-of-experts layers "
                                       f"(n_routed_experts={get('n_routed_experts')}), which are not supported yet; "
                                       f"only checkpoints whose layers are all dense MLPs load")
    q_lora = d.get("q_lora_rank", defaults["q_lora_rank"])
    return dict(kv_lora_rank=int(get("kv_lora_rank")), q_lora_rank=None if q_lora is None else int(q_lora),
                qk_nope_head_dim=int(get("qk_nope_head_dim")), qk_rope_head_dim=int(get("qk_rope_head_dim")),
                v_head_dim=int(get("v_head_dim")))


def _moe_fields(d: dict, mt: str, defaults: dict, n_layers: int, d_ff: int) -> dict:
    """Qwen3-MoE / Mixtral mixture-of-experts fields: the experts, the router's top-k rule and which layers are
    MoE (transformers' Qwen3MoeDecoderLayer: layer i is MoE iff i is not in mlp_only_layers and
    (i + 1) % decoder_sparse_step == 0; Mixtral: every layer)."""
    get = lambda k: defaults[k] if d.get(k) is None else d[k]
    if mt == "mixtral":
        return dict(num_experts=int(get("num_local_experts")), num_experts_per_tok=int(get("num_experts_per_tok")),
                    moe_intermediate_size=d_ff, norm_topk_prob=True)
    # qwen3_moe: real checkpoints say num_experts, transformers 5 saves its alias num_local_experts
    e, e_alias = d.get("num_experts"), d.get("num_local_experts")
    if e is not None and e_alias is not None and int(e) != int(e_alias):
        _fail("num_experts", f"{e} disagrees with num_local_experts={e_alias}")
    E = int(get("num_experts") if e is None and e_alias is None else (e if e is not None else e_alias))
    if E == 0:  # transformers: every layer a dense MLP
        return {}
    step = int(get("decoder_sparse_step"))
    if step < 1:
        _fail("decoder_sparse_step", f"must be >= 1, got {step}")
    only = get("mlp_only_layers")
    if not isinstance(only, (list, tuple)) or not all(isinstance(i, int) for i in only):
        _fail("mlp_only_layers", f"must be a list of layer indices, got {only!r}")
    moe = [i for i in range(n_layers) if i not in only and (i + 1) % step == 0]
    mi = get("moe_intermediate_size")
    return dict(num_experts=E, num_experts_per_tok=int(get("num_experts_per_tok")),
                moe_intermediate_size=None if mi is None else int(mi), norm_topk_prob=bool(get("norm_topk_prob")),
                moe_layers=tuple(moe), scan_layers=len(moe) in (0, n_layers))


def rope_interleaved(d: dict) -> bool:
    """Whether the checkpoint's RoPE dimensions come in interleaved pairs (DeepSeek-V2 always; V3 unless
    rope_interleave is false): the loader then de-interleaves the RoPE rows of its projections."""
    mt = model_type_of(d)
    if mt == "deepseek_v2":
        return True
    if mt == "deepseek_v3":
        v = d.get("rope_interleave")
        return True if v is None else bool(v)
    return False


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
    if mt in ("llama", "mistral", "qwen3", "qwen3_moe") and d.get("attention_bias"):
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
    mla = _mla_fields(d, defaults, n_heads, n_kv) if mt in MLA_MODEL_TYPES else {}
    head_dim = d.get("head_dim", defaults["head_dim"]) if not mla else \
        mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
    if head_dim is None:
        if hidden % n_heads:
            _fail("head_dim", f"missing and hidden_size={hidden} is not divisible by num_attention_heads={n_heads}")
        head_dim = hidden // n_heads
    n_layers = int(d["num_hidden_layers"])
    theta, scaling = _rope(d)
    moe = _moe_fields(d, mt, defaults, n_layers, int(d["intermediate_size"])) if mt in MOE_MODEL_TYPES else {}
    if moe.get("moe_layers") == ():  # no layer is MoE: a dense model
        moe = {}

    dtype = dtype_name(dtype)
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
            dtype=dtype, qkv_bias=(mt == "qwen2"), qk_norm=(mt in ("qwen3", "qwen3_moe")),
            sliding_window=_sliding_window(d, mt, n_layers, defaults), name=name or mt, **mla, **moe)
    except HFConfigError:
        raise
    except ConfigError as e:
        raise HFConfigError(f"config.json: invalid model ({e})") from None

"""Loading a llama.cpp GGUF file into our parameter tree (dequantized), with its ModelConfig.

    cfg, params = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")            # float32
    cfg, params = load_gguf(path, dtype="bfloat16")

The file is read with the `gguf` package (`gguf.GGUFReader`, memory-mapped) and
each tensor dequantized with `gguf.quants.dequantize`, which gives the Hugging
Face [out, in] layout; the parameter plan is then the HF loader's
(`hf_loader.param_plan`) with the tensor names translated:

    token_embd.weight [V, D]           -> embed/embedding         (model.embed_tokens.weight)
    blk.i.attn_norm.weight [D]         -> layers/attn_norm/scale   (input_layernorm)
    blk.i.attn_{q,k,v}.weight [n*H, D] -> layers/attn/{q,k,v}/kernel  (q, k: rotary permutation undone)
    blk.i.attn_output.weight [D, N*H]  -> layers/attn/o/kernel
    blk.i.ffn_norm.weight [D]          -> layers/mlp_norm/scale    (post_attention_layernorm)
    blk.i.ffn_{gate,up,down}.weight    -> layers/mlp/{gate,up,down}/kernel
    output_norm.weight [D]             -> final_norm/scale
    output.weight [V, D]               -> lm_head/kernel; absent = tied embeddings

llama.cpp's converter permutes the rows of q and k so that its rotary
embedding can rotate interleaved pairs (x0, x1), (x2, x3), ...; ours (like HF)
rotates the half-split pairs (x_i, x_{i+H/2}). `unpermute_rotary` is the
inverse of convert_hf_to_gguf.py's `permute`, as in transformers' GGUF loader.

`load_gguf(path, native=True)` keeps Q8_0 / Q4_0 / Q4_1 projections in their stored format
instead (cfg.weight_format; pallas_kernels/matmul/formats.py re-lays the blocks out without decoding).

Supported: the llama architecture (Llama 1-3 without per-frequency rope
factors, SmolLM, Mistral-as-llama) with tensors of type F32, F16, BF16, Q8_0,
Q4_0, Q4_1. Anything else is a `GGUFError` naming the metadata key or tensor.
"""
import os
from typing import Dict, Optional, Tuple

import numpy as np

from infer.config.dtypes import DTYPES, dtype_name
from infer.config.model_config import ConfigError, ModelConfig, RopeScaling
from infer.io.hf_loader import CheckpointError, fill_params, param_plan

SUPPORTED_ARCHITECTURES = ("llama",)
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
DEFAULT_DTYPE = "float32"

_LAYER_NAMES = {  # HF name inside model.layers.{i}. -> GGUF name inside blk.{i}.
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_MISSING = object()


class GGUFError(CheckpointError):
    """A GGUF file cannot be loaded; the message names the file and the metadata key or tensor."""


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of a Hugging Face llama tensor name."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    _, _, i, rest = hf_name.split(".", 3)  # model.layers.{i}.{rest}
    return f"blk.{i}.{_LAYER_NAMES[rest]}"


def unpermute_rotary(w_OI: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows [n, 2, H/2] (interleaved pairs) back to [n, H/2, 2] order."""
    rows = w_OI.shape[0]
    return w_OI.reshape(n_heads, rows // n_heads // 2, 2, *w_OI.shape[1:]).swapaxes(1, 2).reshape(w_OI.shape)


def open_gguf(path: str):
    """A `gguf.GGUFReader` over `path` (memory-mapped; a clear error for a missing or non-GGUF file)."""
    import gguf
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise GGUFError(f"{path}: not a readable GGUF file ({e})") from None


def metadata_value(reader, key: str, default=_MISSING):
    """The value of metadata `key` (scalars as Python values, arrays as lists); error naming it when missing."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise GGUFError(f"{reader.data.filename}: metadata key {key!r} is missing")
        return default
    return field.contents()


def metadata_string_item(reader, key: str, i: int) -> str:
    """Item i of string-array metadata `key` (e.g. one token of tokenizer.ggml.tokens) without reading the rest."""
    field = reader.fields.get(key)
    if field is None:
        raise GGUFError(f"{reader.data.filename}: metadata key {key!r} is missing")
    return bytes(field.parts[field.data[i]]).decode("utf-8")


def gguf_to_model_config(reader, dtype: Optional[str] = None, name: str = "") -> ModelConfig:
    """Translate GGUF llama metadata into a ModelConfig (dtype default float32: the weights are dequantized)."""
    path = reader.data.filename
    arch = metadata_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: general.architecture {arch!r} is not supported; supported: "
                        f"{list(SUPPORTED_ARCHITECTURES)} (Llama-family decoders)")
    get = lambda key, default=_MISSING: metadata_value(reader, f"{arch}.{key}", default)
    if get("expert_count", 0):
        raise GGUFError(f"{path}: {arch}.expert_count={get('expert_count')}: mixture-of-experts is not supported")
    d_model = int(get("embedding_length"))
    n_heads = int(get("attention.head_count"))
    n_kv = int(get("attention.head_count_kv", n_heads))
    n_layers = int(get("block_count"))
    head_dim = int(get("attention.key_length", d_model // n_heads))
    rope_dim = int(get("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise GGUFError(f"{path}: {arch}.rope.dimension_count={rope_dim} != head dim {head_dim}: partial rotary "
                        f"embeddings are not supported")
    scaling_type = get("rope.scaling.type", "none")
    if scaling_type == "none":
        scaling = None
    elif scaling_type == "linear":
        scaling = RopeScaling(type="linear", factor=float(get("rope.scaling.factor")))
    else:
        raise GGUFError(f"{path}: {arch}.rope.scaling.type {scaling_type!r} is not supported; supported: none, "
                        f"linear")
    tensor_names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in tensor_names:
        raise GGUFError(f"{path}: tensor 'rope_freqs.weight' (per-frequency rope factors, Llama 3.1 style) is "
                        f"not supported")
    vocab = get("vocab_size", None)
    if vocab is None:
        tokens = metadata_value(reader, "tokenizer.ggml.tokens", None)
        vocab = len(tokens) if tokens is not None else _tensor(reader, "token_embd.weight").shape[1]
    dtype = DEFAULT_DTYPE if dtype is None else dtype_name(dtype)
    if dtype not in DTYPES:
        raise GGUFError(f"dtype: must be one of {DTYPES}, got {dtype!r}")
    try:
        return ModelConfig(
            vocab_size=int(vocab), d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
            head_dim=head_dim, d_ff=int(get("feed_forward_length")),
            rope_theta=float(get("rope.freq_base", 10000.0)), rope_scaling=scaling,
            norm_eps=float(get("attention.layer_norm_rms_epsilon")),
            tie_embeddings="output.weight" not in tensor_names,
            max_seq_len=int(get("context_length")), dtype=dtype,
            name=name or os.path.splitext(os.path.basename(path))[0])
    except ConfigError as e:
        raise GGUFError(f"{path}: invalid model ({e})") from None


def _tensor(reader, name: str):
    for t in reader.tensors:
        if t.name == name:
            return t
    raise GGUFError(f"{reader.data.filename}: missing tensor {name!r}")


def dequantize_tensor(t) -> np.ndarray:
    """Tensor t as float32 in [out, in] (row-major, ggml's dims reversed)."""
    from gguf.quants import dequantize
    return np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(tuple(int(n) for n in t.shape[::-1]))


def load_gguf(path: str, dtype: Optional[str] = None, device=None, native: bool = False) -> Tuple[ModelConfig, dict]:
    """(ModelConfig, params) from a GGUF file, every tensor dequantized to `dtype` (default float32).

    native=True keeps the projection weights in the file's own format (Q8_0, Q4_0 or Q4_1, one type
    for all of them): cfg.weight_format names it and the blocks are re-laid out, never decoded
    (pallas_kernels/matmul/formats.py), so the model takes the file's bytes; the rest is dequantized as usual.
    Like the HF loader, every tensor's name, type and shape is checked before any data is read, and
    one stacked parameter at a time is filled on the host and moved to `device` (default: JAX's).
    """
    reader = open_gguf(path)
    path = reader.data.filename
    cfg = gguf_to_model_config(reader, dtype=dtype)
    tensors: Dict[str, object] = {t.name: t for t in reader.tensors}
    plan = param_plan(cfg)

    wanted = {gguf_name(hf): shape for srcs in plan.values() for hf, shape, *_ in srcs}
    missing = sorted(set(wanted) - set(tensors))
    if missing:
        raise GGUFError(f"{path}: missing tensor {missing[0]!r}" +
                        (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(tensors) - set(wanted))
    if extra:
        raise GGUFError(f"{path}: unexpected tensor {extra[0]!r} for a llama model of this config (loading would "
                        f"silently drop it)" + (f"; {len(extra) - 1} more" if len(extra) > 1 else ""))
    for name, shape in wanted.items():
        t = tensors[name]
        if t.tensor_type.name not in SUPPORTED_TENSOR_TYPES:
            raise GGUFError(f"{path}: tensor {name!r} has type {t.tensor_type.name}, which is not supported; "
                            f"supported: {list(SUPPORTED_TENSOR_TYPES)}")
        got = tuple(int(n) for n in t.shape[::-1])
        if got != tuple(shape):
            raise GGUFError(f"{path}: tensor {name!r}: shape mismatch: file has {list(got)} ([out, in]), "
                            f"metadata implies {list(shape)}")

    heads = {"attn_q.weight": cfg.n_heads, "attn_k.weight": cfg.n_kv_heads}

    def read(hf: str):
        """The HF-layout weight of an HF tensor name: dequantized, q/k rows un-permuted."""
        name = gguf_name(hf)
        w = dequantize_tensor(tensors[name])
        n = heads.get(name.split(".", 2)[-1])
        return w if n is None else unpermute_rotary(w, n)

    if not native:
        return cfg, fill_params(cfg, plan, read, device)
    cfg, prefilled = _native_projections(path, cfg, plan, tensors, heads)
    return cfg, fill_params(cfg, {k: v for k, v in plan.items() if k not in _projection_leaves(plan)}, read, device,
                            prefilled=prefilled)


def _projection_leaves(plan) -> set:
    return {leaf for leaf in plan if leaf[0] == "layers" and leaf[-1] == "kernel"}


def _native_projections(path, cfg: ModelConfig, plan, tensors, heads):
    """(cfg with weight_format, {leaf path: stacked array}) of the projections in the file's stored format."""
    from pallas_kernels.matmul.formats import GGUF_FORMATS, from_gguf
    leaves = sorted(_projection_leaves(plan))
    types = {tensors[gguf_name(hf)].tensor_type.name for leaf in leaves for hf, *_ in plan[leaf]}
    if len(types) != 1 or next(iter(types)) not in GGUF_FORMATS:
        raise GGUFError(f"{path}: native loading keeps one stored format for every projection; this file's "
                        f"projections are {sorted(types)} (natively supported: {sorted(GGUF_FORMATS)}); "
                        f"load it dequantized (the default) or quantize it after loading")
    gtype = next(iter(types))
    cfg = cfg.replace(weight_format=GGUF_FORMATS[gtype].name)
    prefilled = {}
    for leaf in leaves:
        per_layer = []
        for hf, shape_OI, _, _ in plan[leaf]:
            name = gguf_name(hf)
            raw = np.asarray(tensors[name].data, np.uint8).reshape(shape_OI[0], -1)  # block bytes per output row
            n = heads.get(name.split(".", 2)[-1])
            if n is not None:
                raw = unpermute_rotary(raw, n)  # a permutation of output rows: whole rows of blocks move
            per_layer.append(from_gguf(raw, gtype, shape_OI))
        for part in per_layer[0]:
            prefilled[leaf[:-1] + (part,)] = np.stack([q[part] for q in per_layer])
    return cfg, prefilled

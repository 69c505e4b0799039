"""Loading a Hugging Face safetensors checkpoint into our parameter tree.

    cfg, params = load_hf_checkpoint("path/to/Llama-3-8B", dtype="bfloat16")

Name mapping (HF Linear weights are [out, in]; ours are [in..., out...]):

    model.embed_tokens.weight [V, D]                    -> embed/embedding [V, D]
    model.layers.i.input_layernorm.weight [D]           -> layers/attn_norm/scale[i]
    model.layers.i.self_attn.{q,k,v}_proj.weight [n*H, D] -> layers/attn/{q,k,v}/kernel[i] [D, n, H]
    model.layers.i.self_attn.{q,k,v}_proj.bias [n*H]    -> layers/attn/{q,k,v}/bias[i] [n, H]   (qwen2)
    model.layers.i.self_attn.{q,k}_norm.weight [H]      -> layers/attn/{q,k}_norm/scale[i]      (qwen3)
    model.layers.i.self_attn.o_proj.weight [D, N*H]     -> layers/attn/o/kernel[i] [N, H, D]
    model.layers.i.post_attention_layernorm.weight [D]  -> layers/mlp_norm/scale[i]
    model.layers.i.mlp.{gate,up}_proj.weight [F, D]     -> layers/mlp/{gate,up}/kernel[i] [D, F]
    model.layers.i.mlp.down_proj.weight [D, F]          -> layers/mlp/down/kernel[i] [F, D]
    model.norm.weight [D]                               -> final_norm/scale
    MoE layers (Qwen3-MoE; Mixtral's block_sparse_moe, experts' w1 | w3 | w2 = gate | up | down):
    model.layers.i.mlp.gate.weight [E, D]               -> layers/moe/router[i] [D, E]
    model.layers.i.mlp.experts.j.{gate,up}_proj.weight [F, D] -> layers/moe/{gate,up}[i, j] [D, F]
    model.layers.i.mlp.experts.j.down_proj.weight [D, F] -> layers/moe/down[i, j] [F, D]
    lm_head.weight [V, D]                               -> lm_head/kernel [D, V] (not read when tied)

RoPE uses the same half-split (rotate_half) layout as HF, so q/k need no
permutation. Streaming: one target array at a time is allocated in the target
dtype on the host, filled tensor by tensor (each read, transposed and cast on
its own), moved to the device and released, so host memory peaks at about one
stacked parameter (the largest [L, D, F], or [L, E, D, F] for experts) plus one HF tensor, never the model.
A model mixing dense and MoE layers has no stacked layout: its plan names one subtree per layer ("layers_{i}").
"""
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

import jax
import numpy as np

from infer.config.model_config import ModelConfig
from infer.io.hf_config import hf_to_model_config, model_type_of, read_config_json, rope_interleaved
from infer.model.params import init_params
from infer.io.safetensors_io import SafetensorsFile

INDEX_FILE = "model.safetensors.index.json"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; recomputed here


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message names the file or tensor (and both shapes)."""


def _open_files(path: str) -> Dict[str, SafetensorsFile]:
    """Map every tensor name to the file that holds it (sharded via the index, or every *.safetensors)."""
    index_path = os.path.join(path, INDEX_FILE)
    files: Dict[str, SafetensorsFile] = {}
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no weight_map")
        by_file = {}
        for fname in sorted(set(weight_map.values())):
            fpath = os.path.join(path, fname)
            if not os.path.exists(fpath):
                raise CheckpointError(f"{fpath}: shard listed in {INDEX_FILE} is missing")
            by_file[fname] = SafetensorsFile(fpath)
        out = {}
        for name, fname in weight_map.items():
            if name not in by_file[fname].keys():
                raise CheckpointError(f"tensor {name!r}: {INDEX_FILE} places it in {fname}, which does not hold it")
            out[name] = by_file[fname]
        return out
    names = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not names:
        raise CheckpointError(f"{path}: no *.safetensors files (and no {INDEX_FILE})")
    for fname in names:
        sf = SafetensorsFile(os.path.join(path, fname))
        for name in sf.keys():
            if name in files:
                raise CheckpointError(f"tensor {name!r}: in both {files[name].path} and {sf.path}")
            files[name] = sf
    return files


MOE_NAMES = {  # (the MoE module, the experts' gate | up | down) as each checkpoint family names them
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
}


def _mla_attention_plan(cfg: ModelConfig, per_layer, rope_interleaved: bool) -> None:
    """DeepSeek-V2/V3 attention tensors. Interleaved RoPE rows (pairs (x0, x1), (x2, x3), ...) are reordered to
    the half-split layout [x0, x2, ..., x1, x3, ...] in q and in kv_a's RoPE key: q.k is unchanged (both sides
    get the same permutation) and the model's rotary code stays the Llama one."""
    D, N, h, E, C, u = (cfg.d_model, cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank,
                        cfg.v_head_dim)
    W = h + E
    rope_perm = np.concatenate([np.arange(0, E, 2), np.arange(1, E, 2)]) if rope_interleaved else np.arange(E)
    q_perm = np.concatenate([np.arange(h), h + rope_perm])  # within one head's h + E rows
    kv_perm = np.concatenate([np.arange(C), C + rope_perm])
    pre = "model.layers.{i}.self_attn."
    q_rows = lambda w, n_in: w.reshape(N, W, n_in)[:, q_perm].transpose(2, 0, 1)  # [out, in] -> [in, N, W]
    if cfg.q_lora_rank is None:
        per_layer(("attn", "q", "kernel"), pre + "q_proj.weight", (N * W, D), lambda w: q_rows(w, D))
    else:
        Q = cfg.q_lora_rank
        per_layer(("attn", "q_a", "kernel"), pre + "q_a_proj.weight", (Q, D), lambda w: w.T)
        per_layer(("attn", "q_a_norm", "scale"), pre + "q_a_layernorm.weight", (Q,), lambda w: w)
        per_layer(("attn", "q_b", "kernel"), pre + "q_b_proj.weight", (N * W, Q), lambda w: q_rows(w, Q))
    per_layer(("attn", "kv_a", "kernel"), pre + "kv_a_proj_with_mqa.weight", (C + E, D), lambda w: w[kv_perm].T)
    per_layer(("attn", "kv_a_norm", "scale"), pre + "kv_a_layernorm.weight", (C,), lambda w: w)
    per_layer(("attn", "kv_b", "kernel"), pre + "kv_b_proj.weight", (N * (h + u), C),
              lambda w: w.T.reshape(C, N, h + u))
    per_layer(("attn", "o", "kernel"), pre + "o_proj.weight", (D, N * u), lambda w: w.T.reshape(N, u, D))


def param_plan(cfg: ModelConfig, rope_interleaved: bool = False, moe_names=MOE_NAMES["qwen3_moe"]
               ) -> Dict[Tuple[str, ...], List[Tuple[str, tuple, Callable, Optional[int]]]]:
    """For each parameter leaf path: [(hf_name, hf_shape, transform, index into the leaf or None)].

    The index is the layer (stacked leaves), (layer, expert) for stacked expert weights, the expert alone for an
    unrolled layer's expert weights (cfg.scan_layers False), None for a leaf filled whole.

    hf_shape is the HF tensor's [out, in] shape; transform turns that tensor into the leaf's layout.
    The GGUF loader reuses this plan (GGUF tensors dequantize to the same [out, in] layout).
    rope_interleaved: the checkpoint's RoPE dims are interleaved pairs (DeepSeek); MLA models only.
    moe_names: how the checkpoint names its MoE tensors (MOE_NAMES); MoE models only.
    """
    D, N, K, H, F, V, L = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size, \
        cfg.n_layers
    heads = {"q": N, "k": K, "v": K}
    ident = lambda w: w
    plan = {("embed", "embedding"): [("model.embed_tokens.weight", (V, D), ident, None)],
            ("final_norm", "scale"): [("model.norm.weight", (D,), ident, None)]}
    if not cfg.tie_embeddings:
        plan[("lm_head", "kernel")] = [("lm_head.weight", (V, D), lambda w: w.T, None)]

    def per_layer(leaf, fmt, shape, fn, layers=range(L)):
        plan[("layers",) + leaf] = [(fmt.format(i=i), shape, fn, i) for i in layers]

    pre = "model.layers.{i}."
    per_layer(("attn_norm", "scale"), pre + "input_layernorm.weight", (D,), ident)
    per_layer(("mlp_norm", "scale"), pre + "post_attention_layernorm.weight", (D,), ident)
    if cfg.is_mla:
        _mla_attention_plan(cfg, per_layer, rope_interleaved)
        heads = {}
    for p, n in heads.items():
        per_layer(("attn", p, "kernel"), pre + f"self_attn.{p}_proj.weight", (n * H, D),
                  lambda w, n=n: w.T.reshape(D, n, H))
        if cfg.qkv_bias:
            per_layer(("attn", p, "bias"), pre + f"self_attn.{p}_proj.bias", (n * H,),
                      lambda b, n=n: b.reshape(n, H))
    if cfg.qk_norm:
        for p in ("q", "k"):
            per_layer(("attn", f"{p}_norm", "scale"), pre + f"self_attn.{p}_norm.weight", (H,), ident)
    if not cfg.is_mla:
        per_layer(("attn", "o", "kernel"), pre + "self_attn.o_proj.weight", (D, N * H),
                  lambda w: w.T.reshape(N, H, D))
    dense = [i for i in range(L) if not cfg.is_moe_layer(i)]
    if dense:
        per_layer(("mlp", "gate", "kernel"), pre + "mlp.gate_proj.weight", (F, D), lambda w: w.T, dense)
        per_layer(("mlp", "up", "kernel"), pre + "mlp.up_proj.weight", (F, D), lambda w: w.T, dense)
        per_layer(("mlp", "down", "kernel"), pre + "mlp.down_proj.weight", (D, F), lambda w: w.T, dense)
    if cfg.is_moe:
        _moe_plan(cfg, plan, per_layer, [i for i in range(L) if cfg.is_moe_layer(i)], moe_names)
    return plan if cfg.scan_layers else _unrolled_plan(plan)


def _moe_plan(cfg: ModelConfig, plan: dict, per_layer, layers, names) -> None:
    """The router and the experts of the MoE layers: each expert's [out, in] matrix into its slot [i, j]."""
    D, F, E = cfg.d_model, cfg.moe_intermediate_size, cfg.num_experts
    mod, (gate, up, down) = names
    pre = "model.layers.{i}." + mod
    per_layer(("moe", "router"), pre + ".gate.weight", (E, D), lambda w: w.T, layers)
    for leaf, hf, shape in (("gate", gate, (F, D)), ("up", up, (F, D)), ("down", down, (D, F))):
        plan[("layers", "moe", leaf)] = [(f"{pre.format(i=i)}.experts.{j}.{hf}.weight", shape, lambda w: w.T, (i, j))
                                         for i in layers for j in range(E)]


def _unrolled_plan(plan: dict) -> dict:
    """A stacked plan re-addressed to the unrolled tree: layer i's sources fill "layers_{i}" (an expert's at j)."""
    out: dict = {}
    for leaf, srcs in plan.items():
        if leaf[0] != "layers":
            out[leaf] = srcs
            continue
        for name, shape, fn, idx in srcs:
            i, rest = (idx[0], idx[1]) if isinstance(idx, tuple) else (idx, None)
            out.setdefault((f"layers_{i}",) + leaf[1:], []).append((name, shape, fn, rest))
    return out


def _set_path(tree: dict, path: Tuple[str, ...], value) -> None:
    """tree[path[0]][path[1]]... = value, creating the inner dicts."""
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def fill_params(cfg: ModelConfig, plan: dict, read, device=None, prefilled: Optional[dict] = None) -> dict:
    """The parameter tree of `cfg`, each leaf filled from its plan's sources: read(source name) -> numpy array.

    prefilled: {leaf path: array} built elsewhere (e.g. quantized weights kept in their stored format);
    together with the plan they must cover the model's tree exactly.

    One stacked leaf at a time is assembled on the host in the target dtype and put on `device`,
    so peak host memory stays near one leaf beyond the source. The model's own parameter tree is
    the authority on leaf paths, shapes and dtypes. Shared by every checkpoint format whose plan
    names its tensors (Hugging Face safetensors, GGUF).
    """
    expected = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    flat = {tuple(k.key for k in kp): v for kp, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    prefilled = prefilled or {}
    assert set(flat) == set(plan) | set(prefilled), \
        f"internal: loader plan {sorted(set(plan) | set(prefilled))} != model tree {sorted(flat)}"
    device = device or jax.devices()[0]
    params: dict = {}
    for leaf, value in prefilled.items():
        assert value.shape == flat[leaf].shape and value.dtype == flat[leaf].dtype, (leaf, value.shape, value.dtype)
        _set_path(params, leaf, jax.device_put(value, device))
    for leaf, srcs in plan.items():
        target = flat[leaf]
        host = np.empty(target.shape, target.dtype)
        for name, _, fn, i in srcs:
            w = fn(read(name)).astype(target.dtype)
            if i is None:
                host[...] = w
            else:
                host[i] = w
            del w
        _set_path(params, leaf, jax.device_put(host, device))
        del host
    return params


def load_hf_checkpoint(path: str, dtype: Optional[str] = None, device=None) -> Tuple[ModelConfig, dict]:
    """(ModelConfig, params) from a local HF directory: config.json + *.safetensors (sharded or not).

    dtype: the parameter and compute dtype ("float32", "bfloat16", "float16", or the JAX / numpy dtype);
    None keeps the checkpoint's (config.json `dtype`/`torch_dtype`, else bfloat16).
    device: where the arrays go (default: JAX's default device).
    """
    path = os.fspath(path)
    d = read_config_json(path)
    cfg = hf_to_model_config(d, dtype=dtype, name=os.path.basename(os.path.normpath(path)))
    files = _open_files(path)
    plan = param_plan(cfg, rope_interleaved=rope_interleaved(d),
                      moe_names=MOE_NAMES.get(model_type_of(d), MOE_NAMES["qwen3_moe"]))

    wanted = {name for srcs in plan.values() for name, *_ in srcs}
    missing = sorted(wanted - set(files))
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r}" +
                              (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    allowed_extra = {"lm_head.weight"} if cfg.tie_embeddings else set()
    extra = sorted(n for n in set(files) - wanted - allowed_extra if not n.endswith(_IGNORED_SUFFIXES))
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]!r} for a {cfg.name!r} model of this config "
                              f"(loading would silently drop it)" +
                              (f"; {len(extra) - 1} more" if len(extra) > 1 else ""))
    for srcs in plan.values():  # check every shape before reading any data
        for name, hf_shape, _, _ in srcs:
            got = files[name].shape(name)
            if got != tuple(hf_shape):
                raise CheckpointError(f"tensor {name!r}: shape mismatch: checkpoint has {list(got)}, "
                                      f"config.json implies {list(hf_shape)}")

    return cfg, fill_params(cfg, plan, lambda name: files[name].read(name), device)

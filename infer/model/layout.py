"""The two layouts of the blocks' parameters, and the conversion between them.

Stacked (ModelConfig.scan_layers = True, what every loader, quantizer and parallel path produces): one
"layers" subtree whose leaves carry a leading L axis (L / kv_share_every under CLA), run by one scan.
Unrolled (scan_layers = False): subtrees "layers_0", "layers_1", ... holding one block's leaves each, run
by an unrolled loop, so every dot reads its own weight buffer. Why both: XLA's CPU and GPU backends materialize
each layer's dynamic slice of a stacked weight before the dot, a copy of every projection per decode
step; the unrolled layout avoids it at the cost of compile time growing with depth.

The decode layouts (for_decode, for_engine) also fuse the projections that read one input (fuse_projections):
q|k|v and gate|up as one GEMM each. At batch 1 XLA turned Llama 3 8B's k and v projections into a multiply writing
a float32 [D, K, H] product and a reduction (33.5 MB per layer, `python -m infer.perf.gpu_program`); fused, they
are columns of the q GEMM.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from infer.config.model_config import ModelConfig
from pallas_kernels.platform import family


def unstack_layers(cfg: ModelConfig, params: dict) -> Tuple[ModelConfig, dict]:
    """(cfg with scan_layers=False, params with "layers" split into "layers_{i}"); unrolled input comes back as is."""
    if not cfg.scan_layers:
        return cfg, params
    if "layers" not in params:
        raise ValueError(f"params: no stacked 'layers' subtree to unstack (keys: {sorted(params)})")
    n = cfg.kv_layers
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(n):
        out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], params["layers"])
    return dataclasses.replace(cfg, scan_layers=False), out


def stack_layers(cfg: ModelConfig, params: dict) -> Tuple[ModelConfig, dict]:
    """The inverse of unstack_layers: (cfg with scan_layers=True, params with one stacked "layers")."""
    if cfg.scan_layers:
        return cfg, params
    stacked = dataclasses.replace(cfg, scan_layers=True)  # first: a dense/MoE mix is refused by name (scan_layers)
    names = [f"layers_{i}" for i in range(cfg.kv_layers)]
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"params: unrolled layout lacks {missing[:3]} (expected {names[0]}..{names[-1]})")
    out = {k: v for k, v in params.items() if k not in names}
    out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *(params[k] for k in names))
    return stacked, out


QUANT_LEAVES = ("q", "scale", "min")  # a quantized weight's arrays: [..., I', O], outputs on the last axis


def _concat(parts: list, attn: bool) -> dict:
    """One projection's leaves from several: float kernels / biases join on the heads axis (attention: -2, the
    MLP's outputs: -1), quantized arrays on their output axis (-1)."""
    return {name: jnp.concatenate([p[name] for p in parts], axis=-2 if attn and name in ("kernel", "bias") else -1)
            for name in parts[0]}


def _split(leaves: dict, sizes: Tuple[int, ...], unit: int, attn: bool) -> list:
    """The inverse of _concat: sizes in heads (attention, unit = H columns each) or columns (the MLP)."""
    cuts = np.cumsum(sizes)[:-1]
    out = [dict() for _ in sizes]
    for name, x in leaves.items():
        heads_axis = attn and name in ("kernel", "bias")
        for i, part in enumerate(jnp.split(x, cuts if heads_axis else cuts * unit, axis=-2 if heads_axis else -1)):
            out[i][name] = part
    return out


def _map_blocks(tree, fn):
    """Apply fn to every dict holding an "attn" or "mlp" subtree (a block, stacked or not, CLA parts included)."""
    if not isinstance(tree, dict):
        return tree
    if "attn" in tree or "mlp" in tree:
        return fn(tree)
    return {k: _map_blocks(v, fn) for k, v in tree.items()}


def fuse_projections(cfg: ModelConfig, params: dict) -> Tuple[ModelConfig, dict]:
    """(cfg with fused_projections=True, params with q|k|v -> "qkv" [D, N + 2K, H] and gate|up -> "gate_up"
    [D, 2F]), in either layout and any weight format; fused or MLA input comes back as is (MLA has no q|k|v)."""
    if cfg.fused_projections or cfg.is_mla:
        return cfg, params

    def block(b):
        b = dict(b)
        attn, mlp = dict(b.get("attn", {})), dict(b.get("mlp", {}))
        if all(n in attn for n in ("q", "k", "v")):
            attn["qkv"] = _concat([attn.pop("q"), attn.pop("k"), attn.pop("v")], attn=True)
        if "gate" in mlp and "up" in mlp:
            mlp["gate_up"] = _concat([mlp.pop("gate"), mlp.pop("up")], attn=False)
        b.update({k: v for k, v in (("attn", attn), ("mlp", mlp)) if k in b})
        return b
    return dataclasses.replace(cfg, fused_projections=True), _map_blocks(params, block)


def unfuse_projections(cfg: ModelConfig, params: dict) -> Tuple[ModelConfig, dict]:
    """The inverse of fuse_projections (e.g. before tensor parallelism, which splits q, k, v by heads)."""
    if not cfg.fused_projections:
        return cfg, params
    N, K, H, F = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff

    def block(b):
        b = dict(b)
        attn, mlp = dict(b.get("attn", {})), dict(b.get("mlp", {}))
        if "qkv" in attn:
            attn["q"], attn["k"], attn["v"] = _split(attn.pop("qkv"), (N, K, K), H, attn=True)
        if "gate_up" in mlp:
            mlp["gate"], mlp["up"] = _split(mlp.pop("gate_up"), (F, F), 1, attn=False)
        b.update({k: v for k, v in (("attn", attn), ("mlp", mlp)) if k in b})
        return b
    return dataclasses.replace(cfg, fused_projections=False), _map_blocks(params, block)


LAYOUTS = ("auto", "stacked", "unrolled")
LAYOUT_HELP = ("parameter layout for decoding: auto = unrolled on CPU and GPU (no per-layer weight copies), stacked on "
               "TPU; stacked = one scan over the layers; unrolled = one subtree per layer")
# The layout "auto" picks per target family, for callers that decode many steps (for_decode) and for the engine.
# GPU: XLA copies every layer's slice of a stacked weight out of the scan before its GEMM (Llama 3 8B bf16: 13.96
# GB of copies per decode step, `python -m infer.perf.gpu_program --layout stacked`), and an unrolled step runs
# as one command buffer. CPU: the same copies, so for_decode unrolls (SmolLM2 f32 steps 1.18x faster); the engine
# takes the caller's layout there (stacked from every loader: unrolled gave 0-10% more tokens/s for 2.5x its warm-up
# compile, scripts/engine_layout_probe.py).
# TPU: unmeasured; the scan's flat compile time wins.
DECODE_LAYOUT = {"cpu": "unrolled", "gpu": "unrolled", "tpu": "stacked"}
ENGINE_LAYOUT = {"cpu": None, "gpu": "unrolled", "tpu": None}  # None: as the caller gives it


def to_layout(cfg: ModelConfig, params: dict, layout: str) -> Tuple[ModelConfig, dict]:
    """(cfg, params) in the decode layout "stacked" or "unrolled" (converted only if needed), projections fused
    (one GEMM for q|k|v and one for gate|up: fuse_projections)."""
    if layout not in LAYOUTS[1:]:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    cfg, params = unstack_layers(cfg, params) if layout == "unrolled" else stack_layers(cfg, params)
    return fuse_projections(cfg, params)


def for_decode(cfg: ModelConfig, params: dict, layout: str = "auto", platform: str = None
               ) -> Tuple[ModelConfig, dict]:
    """(cfg, params) in the layout to decode in: "stacked", "unrolled", or "auto" = DECODE_LAYOUT for the target
    platform (pallas_kernels/platform.py): unrolled on CPU and GPU, stacked on TPU.
    For callers that hold the weights for many steps on one device (the CLI, the demo); a device mesh
    (tensor parallelism) needs the stacked layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return to_layout(cfg, params, DECODE_LAYOUT[family(platform)] if layout == "auto" else layout)


def for_engine(cfg: ModelConfig, params: dict, layout: str = "auto", platform: str = None
               ) -> Tuple[ModelConfig, dict]:
    """(cfg, params) in the layout the engine steps in: "auto" = ENGINE_LAYOUT for the target platform
    (unrolled on GPU; on CPU and TPU the layout the caller gives), or "stacked" / "unrolled"."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    layout = ENGINE_LAYOUT[family(platform)] if layout == "auto" else layout
    return (cfg, params) if layout is None else to_layout(cfg, params, layout)

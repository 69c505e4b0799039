"""The two layouts of the blocks' parameters, and the conversion between them.

Stacked (ModelConfig.scan_layers = True, what every loader, quantizer and parallel path produces): one
"layers" subtree whose leaves carry a leading L axis (L / kv_share_every under CLA), run by one scan.
Unrolled (scan_layers = False): subtrees "layers_0", "layers_1", ... holding one block's leaves each, run
by an unrolled loop, so every dot reads its own weight buffer. Why both: XLA's CPU and GPU backends materialize
each layer's dynamic slice of a stacked weight before the dot, a copy of every projection per decode
step; the unrolled layout avoids it at the cost of compile time growing with depth.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

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
    names = [f"layers_{i}" for i in range(cfg.kv_layers)]
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"params: unrolled layout lacks {missing[:3]} (expected {names[0]}..{names[-1]})")
    out = {k: v for k, v in params.items() if k not in names}
    out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *(params[k] for k in names))
    return dataclasses.replace(cfg, scan_layers=True), out


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
    """(cfg, params) in the layout "stacked" or "unrolled" (converted only if needed)."""
    if layout not in LAYOUTS[1:]:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return unstack_layers(cfg, params) if layout == "unrolled" else stack_layers(cfg, params)


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

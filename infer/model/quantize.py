"""Quantize a loaded model's projection weights into a stored format, and back.

    qparams, qcfg = infer.quantize(params, cfg, "int4-g128")   # any format of pallas_kernels/matmul/formats.py
    params2 = infer.dequantize_params(qparams, qcfg)           # float kernels holding exactly the stored values

Which leaves are quantized is read from the quantized model's own parameter layout (an abstract
init with cfg.replace(weight_format=...)): every projection kernel [(L,) in..., out...] is
flattened to [I, O] per layer and rounded to nearest (RTN) on the host; embeddings, norms, biases
and the LM head are kept as they are.
"""
from __future__ import annotations

from typing import Tuple

import jax
import numpy as np

from infer.config import ModelConfig
from infer.model.params import init_params
from pallas_kernels.matmul.formats import dequantize, get_format, quantize as quantize_weight


def _layout(cfg: ModelConfig):
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def _is_quantized(node) -> bool:
    return isinstance(node, dict) and "q" in node and "scale" in node


def quantize(params, cfg: ModelConfig, weight_format: str) -> Tuple[dict, ModelConfig]:
    """(quantized params, cfg with weight_format): projection kernels stored in the format (round to nearest)."""
    get_format(weight_format)
    if cfg.weight_format is not None:
        raise ValueError(f"weight_format: the model is already stored as {cfg.weight_format!r}; "
                         f"dequantize_params it first")
    qcfg = cfg.replace(weight_format=weight_format)

    def walk(p, shape, where):
        if _is_quantized(shape):
            k = np.asarray(jax.device_get(p["kernel"]), np.float32)
            O = shape["q"].shape[-1]
            stacked = shape["q"].ndim == 3
            per = [k[i].reshape(-1, O) for i in range(k.shape[0])] if stacked else [k.reshape(-1, O)]
            try:
                qs = [quantize_weight(w, weight_format) for w in per]
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            out = {n: np.stack([q[n] for q in qs]) if stacked else qs[0][n] for n in qs[0]}
            out = {n: jax.numpy.asarray(v) for n, v in out.items()}
            if "bias" in p:
                out["bias"] = p["bias"]
            return out
        if isinstance(shape, dict):
            return {k: walk(p[k], shape[k], f"{where}/{k}") for k in shape}
        return p

    try:
        layout = _layout(qcfg)
    except ValueError as e:
        raise ValueError(f"weight_format {weight_format!r} does not fit this model: {e}") from None
    return walk(params, layout, "params"), qcfg


def dequantize_params(params, cfg: ModelConfig) -> dict:
    """Float params (cfg.dtype) whose kernels hold exactly the values the stored format decodes to."""
    if cfg.weight_format is None:
        return params
    fcfg = cfg.replace(weight_format=None)
    layout = _layout(fcfg)

    def walk(p, shape):
        if _is_quantized(p):
            kshape = shape["kernel"].shape
            stacked = len(kshape) and p["q"].ndim == 3
            I = int(np.prod(kshape[1:] if stacked else kshape)) // p["q"].shape[-1]  # the true I (rows may be padded)
            deq = lambda qw: np.asarray(dequantize(qw, cfg.weight_format, in_features=I))
            if stacked:
                w = np.stack([deq({n: v[i] for n, v in p.items() if n != "bias"}) for i in range(p["q"].shape[0])])
            else:
                w = deq({n: v for n, v in p.items() if n != "bias"})
            out = {"kernel": jax.numpy.asarray(w.reshape(kshape), fcfg.jnp_dtype)}
            if "bias" in p:
                out["bias"] = p["bias"]
            return out
        if isinstance(p, dict):
            return {k: walk(p[k], shape[k]) for k in p}
        return p

    return walk(params, layout)

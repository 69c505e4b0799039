"""Activation-aware weight quantization (AWQ, Lin et al. 2023), on our explicit parameter tree.

Round-to-nearest treats every input channel alike, but a few input channels carry much larger
activations, so their weights' rounding errors cost more. AWQ scales each input channel i of a
weight up by s_i before quantizing (W' = diag(s) W) and the activation down by the same factor
(x' = x / s): the float model is unchanged, and the salient channels get a finer grid. Per input
site, s = mean|x|^alpha (normalised), alpha searched on a grid to minimise the output error
||x W - x Q(diag(s) W) / s|| on calibration tokens. The 1/s is folded into what produces x:

    site (consumers)        x comes from                  1/s folded into
    attn_norm (q, k, v)     the attention RMSNorm         attn_norm/scale
    mlp_norm (gate, up)     the MLP RMSNorm               mlp_norm/scale
    down                    silu(gate) * up               up's output columns

The attention output projection (o) keeps round-to-nearest: its input passes through the
attention softmax, where a per-channel fold would have to go into v and respect GQA sharing.
Calibration activations come from running each decoder block on its own (the layer scan does
not surface intermediates).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig
from infer.model.quantize import quantize
from layers.block import DecoderBlock
from pallas_kernels.matmul.formats import dequantize, get_format, quantize as quantize_weight

ALPHAS = tuple(np.round(np.arange(0.0, 1.0001, 0.1), 2))


def _site_inputs(params, cfg: ModelConfig, tokens_BT) -> list:
    """Per layer: {"attn": x [n, D], "mlp": x [n, D], "down": x [n, F]} activations of the calibration tokens."""
    x = jnp.asarray(params["embed"]["embedding"])[tokens_BT].astype(cfg.jnp_dtype)
    positions = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    out = []
    for l in range(cfg.n_layers):
        p = jax.tree_util.tree_map(lambda a: a[l], params["layers"])
        ((x, r, _), _), st = DecoderBlock(cfg).apply({"params": p}, (x, jnp.zeros_like(x), None), l, positions,
                                                     None, capture_intermediates=True, mutable=["intermediates"])
        x = x + r  # the block hands its MLP output on un-added (layers/block.py)
        it = st["intermediates"]
        gate, up = it["mlp"]["gate"]["__call__"][0], it["mlp"]["up"]["__call__"][0]
        flat = lambda a: np.asarray(a, np.float32).reshape(-1, a.shape[-1])
        mlp_in = it["mlp_norm"]["__call__"][0][1]  # the MLP norm returns (x + attention, its norm)
        out.append({"attn": flat(it["attn_norm"]["__call__"][0][1]), "mlp": flat(mlp_in),
                    "down": flat(jax.nn.silu(gate) * up)})
    return out


def _search(x_nI, weights_IO: Sequence[np.ndarray], fmt) -> Tuple[np.ndarray, float, float]:
    """(s [I], best alpha, error at alpha = 0 (RTN) / best error)."""
    mag = np.abs(x_nI).mean(axis=0) + 1e-8
    ref = [x_nI @ w for w in weights_IO]
    best = None
    for a in ALPHAS:
        s = mag ** a
        s = s / np.sqrt(s.max() * s.min())
        err = 0.0
        for w, y in zip(weights_IO, ref):
            q = np.asarray(dequantize(quantize_weight(w * s[:, None], fmt), fmt, in_features=len(w))) / s[:, None]
            err += float(((x_nI @ q - y) ** 2).mean())
        if a == 0.0:
            rtn = err
        if best is None or err < best[1]:
            best = (s, err, a)
    return best[0], best[2], rtn / max(best[1], 1e-30)


def awq_scale(params, cfg: ModelConfig, weight_format: str, calib_ids, seq_len: int = 128,
              max_rows: int = 4096) -> Tuple[dict, list]:
    """Float params with AWQ scales folded in (the same float model) and a per-layer report of the search."""
    fmt = get_format(weight_format)
    ids = np.asarray(calib_ids, np.int32)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"calib_ids: need at least seq_len = {seq_len} tokens, got {len(ids)}")
    tokens = jnp.asarray(ids[:n * seq_len].reshape(n, seq_len))
    acts = _site_inputs(params, cfg, tokens)
    p = jax.tree_util.tree_map(lambda a: np.array(a, np.float32), params)
    L, lay = cfg.n_layers, p["layers"]
    report = []
    flat_in = lambda k: k.reshape(k.shape[0], -1) if k.ndim == 3 else k  # [D, n, H] -> [D, n*H]
    for l in range(L):
        a = acts[l]
        rows = lambda x: x[:max_rows]
        qkv = [flat_in(lay["attn"][m]["kernel"][l]) for m in ("q", "k", "v")]
        s_attn, al_attn, g_attn = _search(rows(a["attn"]), qkv, fmt)
        gu = [lay["mlp"][m]["kernel"][l] for m in ("gate", "up")]
        s_mlp, al_mlp, g_mlp = _search(rows(a["mlp"]), gu, fmt)
        s_down, al_down, g_down = _search(rows(a["down"]), [lay["mlp"]["down"]["kernel"][l]], fmt)
        for m in ("q", "k", "v"):
            k = lay["attn"][m]["kernel"]
            k[l] = k[l] * s_attn.reshape((-1,) + (1,) * (k.ndim - 2))
        lay["attn_norm"]["scale"][l] /= s_attn
        for m in ("gate", "up"):
            lay["mlp"][m]["kernel"][l] *= s_mlp[:, None]
        lay["mlp_norm"]["scale"][l] /= s_mlp
        lay["mlp"]["up"]["kernel"][l] /= s_down[None, :]
        lay["mlp"]["down"]["kernel"][l] *= s_down[:, None]
        report.append({"layer": l, "alpha_attn": al_attn, "alpha_mlp": al_mlp, "alpha_down": al_down,
                       "rtn_over_awq_err_attn": g_attn, "rtn_over_awq_err_mlp": g_mlp,
                       "rtn_over_awq_err_down": g_down})
    out = jax.tree_util.tree_map(lambda a, ref: jnp.asarray(a, ref.dtype), p, params)
    return out, report


def awq_quantize(params, cfg: ModelConfig, weight_format: str, calib_ids, **kw):
    """(quantized params, cfg with weight_format, search report): AWQ scales folded in, then round to nearest."""
    scaled, report = awq_scale(params, cfg, weight_format, calib_ids, **kw)
    qparams, qcfg = quantize(scaled, cfg, weight_format)
    return qparams, qcfg, report

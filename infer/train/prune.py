"""Structured pruning of a loaded model: score layers, heads and MLP channels, keep the most important.

    tokens_BT1, weights_BT = ...   # calibration sequences [B, T+1]; weight of predicting token t+1 (0: padding)
    draft_params, draft_cfg, report = prune_to_size(params, cfg, tokens_BT1, weights_BT,
                                                    n_layers=6, n_kv_heads=3, q_per_kv=1, d_ff=512)

Pure functions on the parameter pytree (infer.model.params layout) and ModelConfig; any
Llama-family model the project loads works. Importance is measured on the calibration set:

  layers    loss increase when the block is skipped (its attention and MLP outputs removed, so
            the residual stream passes through unchanged), re-measured after each round of
            removals (`layer_rounds`): scores of the survivors change once neighbours are gone;
  heads     first-order Taylor importance |sum_t a_t . dL/da_t| of each query head's output
            (summed per calibration sequence, absolute value, summed over sequences);
  channels  the same for each SwiGLU channel (the input of `down`).

The Taylor scores are gradients of the loss with respect to multiplicative masks at 1 (a mask
on a head scales its rows of `o`, on a channel its row of `down`): one backward pass per
sequence scores every head and channel at once, and a head or channel whose output is zero
scores exactly 0.

GQA structure is kept: whole KV heads are dropped together with their G query heads (KV head
score = sum of its query heads' scores), and within each kept KV head the same number of
query heads is kept (the best ones), so the draft is again a GQA model with N' = K' * G'.
The embedding, final norm and (untied) LM head are kept as they are, so a tied draft can
share the target's embedding table.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from infer.config.model_config import ModelConfig
from infer.model.forward import forward


def masked_params(params, head_mask_LN, channel_mask_LF, layer_mask_L):
    """params with each head's `o` rows, each channel's `down` row and each layer's outputs scaled by its mask."""
    layers = dict(params["layers"])
    attn, mlp = dict(layers["attn"]), dict(layers["mlp"])
    o_LNHD = attn["o"]["kernel"]
    down_LFD = mlp["down"]["kernel"]
    hm_LN = (head_mask_LN * layer_mask_L[:, None]).astype(o_LNHD.dtype)
    cm_LF = (channel_mask_LF * layer_mask_L[:, None]).astype(down_LFD.dtype)
    attn["o"] = {**attn["o"], "kernel": o_LNHD * hm_LN[:, :, None, None]}
    mlp["down"] = {**mlp["down"], "kernel": down_LFD * cm_LF[:, :, None]}
    layers["attn"], layers["mlp"] = attn, mlp
    return {**params, "layers": layers}


def _ones(cfg: ModelConfig):
    return (jnp.ones((cfg.n_layers, cfg.n_heads), jnp.float32), jnp.ones((cfg.n_layers, cfg.d_ff), jnp.float32),
            jnp.ones((cfg.n_layers,), jnp.float32))


def calibration_loss(params, cfg: ModelConfig, tokens_BT1, weights_BT):
    """Weighted mean next-token cross-entropy (nats): position t predicts tokens_BT1[:, t + 1] with weight
    weights_BT[:, t] (0 on padding and on positions that should not count)."""
    logits_BTV = forward(params, cfg, tokens_BT1[:, :-1])
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tokens_BT1[:, 1:])
    w_BT = weights_BT.astype(jnp.float32)
    return (ce_BT * w_BT).sum() / jnp.maximum(w_BT.sum(), 1.0)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _mask_grads(params, cfg, tokens_1T, weights_1T):
    def loss(masks):
        return calibration_loss(masked_params(params, *masks), cfg, tokens_1T, weights_1T)
    return jax.grad(loss)(_ones(cfg))


def taylor_importance(params, cfg: ModelConfig, tokens_BT1, weights_BT) -> Dict[str, np.ndarray]:
    """First-order Taylor importance: {"heads": [L, N], "channels": [L, F], "layers": [L]}, >= 0.

    Per calibration sequence, |dL/dmask| at mask = 1 (= |sum_t a_t . dL/da_t| of the unit's output),
    summed over sequences.
    """
    tokens_BT1, weights_BT = np.asarray(tokens_BT1), np.asarray(weights_BT)
    acc = [np.zeros(x.shape, np.float64) for x in _ones(cfg)]
    for b in range(tokens_BT1.shape[0]):
        grads = _mask_grads(params, cfg, jnp.asarray(tokens_BT1[b:b + 1]), jnp.asarray(weights_BT[b:b + 1]))
        for a, g in zip(acc, grads):
            a += np.abs(np.asarray(g, np.float64))
    return {"heads": acc[0], "channels": acc[1], "layers": acc[2]}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _masked_loss(params, cfg, layer_mask_L, tokens_BT1, weights_BT):
    head_LN, chan_LF, _ = _ones(cfg)
    return calibration_loss(masked_params(params, head_LN, chan_LF, layer_mask_L), cfg, tokens_BT1, weights_BT)


def layer_skip_scores(params, cfg: ModelConfig, tokens_BT1, weights_BT) -> np.ndarray:
    """[L] loss increase (nats/token) on the calibration set when each block alone is skipped."""
    tokens_BT1, weights_BT = jnp.asarray(tokens_BT1), jnp.asarray(weights_BT)
    ones_L = np.ones((cfg.n_layers,), np.float32)
    base = float(_masked_loss(params, cfg, jnp.asarray(ones_L), tokens_BT1, weights_BT))
    out = np.zeros((cfg.n_layers,), np.float64)
    for i in range(cfg.n_layers):
        m_L = ones_L.copy()
        m_L[i] = 0.0
        out[i] = float(_masked_loss(params, cfg, jnp.asarray(m_L), tokens_BT1, weights_BT)) - base
    return out


def _check_keep(name: str, keep: Sequence[int], size: int) -> np.ndarray:
    keep = np.asarray(keep, np.int64).reshape(-1)
    if keep.size == 0 or keep.min() < 0 or keep.max() >= size or len(set(keep.tolist())) != keep.size:
        raise ValueError(f"{name}: must be distinct indices in [0, {size}), got {keep.tolist()}")
    return keep


def prune(params, cfg: ModelConfig, keep_layers: Sequence[int], keep_kv_LK, keep_q_LKG, keep_channels_LF):
    """Slice the model down to the kept units; returns (params, cfg).

    keep_layers [L']: original layer indices, in order. Per kept layer (row i = keep_layers[i]):
    keep_kv_LK [L', K'] original KV heads, keep_q_LKG [L', K', G'] query heads within each kept
    KV head's group (0..G-1), keep_channels_LF [L', F'] MLP channels. Everything else is unchanged.
    """
    keep_layers = _check_keep("keep_layers", keep_layers, cfg.n_layers)
    keep_kv_LK, keep_q_LKG = np.asarray(keep_kv_LK, np.int64), np.asarray(keep_q_LKG, np.int64)
    keep_ch_LF = np.asarray(keep_channels_LF, np.int64)
    Lp = keep_layers.size
    G = cfg.q_per_kv
    if keep_kv_LK.ndim != 2 or keep_q_LKG.ndim != 3 or keep_ch_LF.ndim != 2 or \
            keep_kv_LK.shape[0] != Lp or keep_q_LKG.shape[:2] != keep_kv_LK.shape or keep_ch_LF.shape[0] != Lp:
        raise ValueError(f"keep_kv_LK {keep_kv_LK.shape}, keep_q_LKG {keep_q_LKG.shape}, keep_channels_LF "
                         f"{keep_ch_LF.shape}: must be [L'={Lp}, K'], [L', K', G'], [L', F']")
    for i in range(Lp):
        _check_keep(f"keep_kv_LK[{i}]", keep_kv_LK[i], cfg.n_kv_heads)
        _check_keep(f"keep_channels_LF[{i}]", keep_ch_LF[i], cfg.d_ff)
        for j in range(keep_kv_LK.shape[1]):
            _check_keep(f"keep_q_LKG[{i}, {j}]", keep_q_LKG[i, j], G)
    Kp, Gp, Fp = keep_kv_LK.shape[1], keep_q_LKG.shape[2], keep_ch_LF.shape[1]
    q_idx_LN = (keep_kv_LK[:, :, None] * G + keep_q_LKG).reshape(Lp, Kp * Gp)  # original query head ids

    def take(x, idx_LX, axis):  # per-layer gather along `axis` of an [L', ...] array
        shape = [1] * x.ndim
        shape[0], shape[axis] = Lp, idx_LX.shape[1]
        return jnp.take_along_axis(x, jnp.asarray(idx_LX.reshape(shape)), axis=axis)

    layers = jax.tree_util.tree_map(lambda x: x[jnp.asarray(keep_layers)], params["layers"])
    attn, mlp = dict(layers["attn"]), dict(layers["mlp"])
    for name, idx in (("q", q_idx_LN), ("k", keep_kv_LK), ("v", keep_kv_LK)):
        sub = dict(attn[name])
        sub["kernel"] = take(sub["kernel"], idx, 2)  # [L, D, N|K, H]
        if "bias" in sub:
            sub["bias"] = take(sub["bias"], idx, 1)  # [L, N|K, H]
        attn[name] = sub
    attn["o"] = {**attn["o"], "kernel": take(attn["o"]["kernel"], q_idx_LN, 1)}  # [L, N, H, D]
    for name in ("gate", "up"):
        mlp[name] = {**mlp[name], "kernel": take(mlp[name]["kernel"], keep_ch_LF, 2)}  # [L, D, F]
    mlp["down"] = {**mlp["down"], "kernel": take(mlp["down"]["kernel"], keep_ch_LF, 1)}  # [L, F, D]
    layers["attn"], layers["mlp"] = attn, mlp
    new_cfg = cfg.replace(n_layers=int(Lp), n_heads=int(Kp * Gp), n_kv_heads=int(Kp), d_ff=int(Fp),
                          name=f"{cfg.name or 'model'}-pruned-L{Lp}-K{Kp}G{Gp}-F{Fp}")
    return {**params, "layers": layers}, new_cfg


def select_layers(params, cfg: ModelConfig, tokens_BT1, weights_BT, n_layers: int, rounds: int = 3):
    """Original indices (ascending) of the n_layers blocks to keep, and the skip scores of each round.

    Each round measures `layer_skip_scores` on the current model and drops the least important
    share of the blocks still to be removed; `rounds` rounds remove L - n_layers blocks in all.
    """
    if not 1 <= n_layers <= cfg.n_layers:
        raise ValueError(f"n_layers: must be in [1, {cfg.n_layers}], got {n_layers}")
    if rounds < 1:
        raise ValueError(f"rounds: must be >= 1, got {rounds}")
    kept = np.arange(cfg.n_layers)
    history: List[Dict[int, float]] = []
    for r in range(rounds):
        to_drop = kept.size - n_layers
        if to_drop == 0:
            break
        cur_params = {**params, "layers": jax.tree_util.tree_map(lambda x: x[jnp.asarray(kept)], params["layers"])}
        scores = layer_skip_scores(cur_params, cfg.replace(n_layers=int(kept.size)), tokens_BT1, weights_BT)
        history.append({int(l): float(s) for l, s in zip(kept, scores)})
        n = -(-to_drop // (rounds - r))  # ceil: what is left spread over the remaining rounds
        drop = set(np.argsort(scores, kind="stable")[:n].tolist())
        kept = np.array([l for i, l in enumerate(kept) if i not in drop])
    return kept, history


def select_units(scores: Dict[str, np.ndarray], cfg: ModelConfig, n_kv_heads: int, q_per_kv: int, d_ff: int):
    """(keep_kv_LK, keep_q_LKG, keep_channels_LF), ascending indices, from Taylor scores of a model `cfg`."""
    K, G = cfg.n_kv_heads, cfg.q_per_kv
    for name, v, hi in (("n_kv_heads", n_kv_heads, K), ("q_per_kv", q_per_kv, G), ("d_ff", d_ff, cfg.d_ff)):
        if not 1 <= v <= hi:
            raise ValueError(f"{name}: must be in [1, {hi}] for {cfg.name or 'this model'}, got {v}")
    heads_LKG = scores["heads"].reshape(cfg.n_layers, K, G)
    # Stable sorts of the negated scores: ties keep the lower index.
    keep_kv_LK = np.sort(np.argsort(-heads_LKG.sum(-1), axis=1, kind="stable")[:, :n_kv_heads], axis=1)
    kept_LKG = np.take_along_axis(heads_LKG, keep_kv_LK[:, :, None], axis=1)
    keep_q_LKG = np.sort(np.argsort(-kept_LKG, axis=2, kind="stable")[:, :, :q_per_kv], axis=2)
    keep_ch_LF = np.sort(np.argsort(-scores["channels"], axis=1, kind="stable")[:, :d_ff], axis=1)
    return keep_kv_LK, keep_q_LKG, keep_ch_LF


def prune_to_size(params, cfg: ModelConfig, tokens_BT1, weights_BT, n_layers: int, n_kv_heads: int,
                  q_per_kv: int, d_ff: int, layer_rounds: int = 3):
    """Depth first (skip scores), then width (Taylor scores measured on the depth-pruned model).

    Returns (params, cfg, report): report names what was kept and the scores behind it.
    """
    keep_layers, history = select_layers(params, cfg, tokens_BT1, weights_BT, n_layers, layer_rounds)
    deep_params, deep_cfg = prune(params, cfg, keep_layers, np.tile(np.arange(cfg.n_kv_heads), (n_layers, 1)),
                                  np.tile(np.arange(cfg.q_per_kv), (n_layers, cfg.n_kv_heads, 1)),
                                  np.tile(np.arange(cfg.d_ff), (n_layers, 1)))
    scores = taylor_importance(deep_params, deep_cfg, tokens_BT1, weights_BT)
    keep_kv, keep_q, keep_ch = select_units(scores, deep_cfg, n_kv_heads, q_per_kv, d_ff)
    out_params, out_cfg = prune(deep_params, deep_cfg, np.arange(n_layers), keep_kv, keep_q, keep_ch)
    out_cfg = out_cfg.replace(name=f"{cfg.name or 'model'}-pruned-L{n_layers}-K{n_kv_heads}G{q_per_kv}-F{d_ff}")
    report = {"kept_layers": keep_layers.tolist(), "layer_skip_scores_by_round": history,
              "kept_kv_heads": keep_kv.tolist(), "kept_q_heads_in_group": keep_q.tolist(),
              "kept_channels_per_layer": int(d_ff)}
    return out_params, out_cfg, report

"""Perplexity of a model on a text: the accuracy half of every precision trade (quantization, dtypes).

    perplexity(params, cfg, ids, seq_len=256, max_windows=None, cached=False) -> {"ppl", "nll", "tokens"}

Non-overlapping windows of seq_len + 1 tokens; each window's first token is context only.
exp(mean next-token cross-entropy in nats). cached=False uses the uncached forward
(infer/model/forward.py); cached=True prefills each window through the paged step, so its
attention reads the keys and values back from page pools of cfg.kv_cache_dtype (what an int8
KV cache costs in accuracy).
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig
from infer.model.heldout_loss import eval_loss, sequential_windows
from infer.model.rows import extend_rows, init_cache


def perplexity(params, cfg: ModelConfig, ids, seq_len: int = 256, max_windows: Optional[int] = None,
               batch_size: int = 8, cached: bool = False) -> dict:
    ids = np.asarray(ids, np.int32)
    if len(ids) < seq_len + 1:
        raise ValueError(f"ids: need at least seq_len + 1 = {seq_len + 1} tokens for one window, got {len(ids)}")
    windows = sequential_windows(ids, seq_len, max_windows)
    nll = _cached_loss(params, cfg, windows, batch_size) if cached else eval_loss(params, cfg, windows, batch_size)
    return {"ppl": math.exp(nll), "nll": nll, "tokens": int(windows.shape[0] * seq_len)}


def _cached_loss(params, cfg: ModelConfig, windows_WT1: np.ndarray, batch_size: int) -> float:
    T = windows_WT1.shape[1] - 1
    total, n = 0.0, 0
    for i in range(0, len(windows_WT1), batch_size):
        w = jnp.asarray(windows_WT1[i:i + batch_size])
        total += float(_window_nll(params, cfg, w))
        n += w.shape[0] * T
    return total / n


@functools.partial(jax.jit, static_argnames=("cfg",))
def _window_nll(params, cfg, w_BT1):
    B, T1 = w_BT1.shape
    cache = init_cache(cfg, B, T1 - 1)
    logits_BTV, _ = extend_rows(params, cfg, w_BT1[:, :-1], jnp.full((B,), T1 - 1, jnp.int32), cache, logits="all")
    logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, w_BT1[:, 1:, None], axis=-1).sum()

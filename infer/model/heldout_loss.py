"""Next-token loss over held-out text: the windows and the mean cross-entropy that training's validation,
the shipped models' evaluation and `infer.perf.perplexity` all read.

    windows_WT1 = sequential_windows(ids, seq_len, max_windows)   # [W, T+1] non-overlapping, from the start
    nll = eval_loss(params, cfg, windows_WT1, batch_size)         # nats per predicted token

Here (under the model, not under infer/train) so that measuring a model never imports the training stack.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from infer.model.forward import forward


def sequential_windows(ids: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping [W, T+1] windows from the start (evaluation); the tail shorter than a window is dropped."""
    n = (len(ids) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return np.stack([ids[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)]).astype(np.int32)


def eval_loss(params, cfg, windows_WT1: np.ndarray, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats/token) over all windows, in batches."""
    total, n = 0.0, 0
    for i in range(0, len(windows_WT1), batch_size):
        w = windows_WT1[i:i + batch_size]
        total += float(_sum_loss(params, cfg, jnp.asarray(w)))
        n += w.shape[0] * (w.shape[1] - 1)
    return total / n


@jax.jit
def _sum_loss_impl(logits_BTV, targets_BT):
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT).sum()


def _sum_loss(params, cfg, w_BT1):
    return _sum_loss_impl(forward(params, cfg, w_BT1[:, :-1]), w_BT1[:, 1:])

"""Perplexity of a model on a text: the accuracy half of every precision trade (quantization, dtypes).

    perplexity(params, cfg, ids, seq_len=256, max_windows=None) -> {"ppl", "nll", "tokens"}

Non-overlapping windows of seq_len + 1 tokens; each window's first token is context only.
exp(mean next-token cross-entropy in nats). Uses the uncached forward (infer/model/forward.py).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from infer.config import ModelConfig
from infer.train.data import sequential_windows
from infer.train.train import eval_loss


def perplexity(params, cfg: ModelConfig, ids, seq_len: int = 256, max_windows: Optional[int] = None,
               batch_size: int = 8) -> dict:
    ids = np.asarray(ids, np.int32)
    if len(ids) < seq_len + 1:
        raise ValueError(f"ids: need at least seq_len + 1 = {seq_len + 1} tokens for one window, got {len(ids)}")
    windows = sequential_windows(ids, seq_len, max_windows)
    nll = eval_loss(params, cfg, windows, batch_size)
    return {"ppl": math.exp(nll), "nll": nll, "tokens": int(windows.shape[0] * seq_len)}

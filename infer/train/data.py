"""Token streams of the corpus splits and random windows of them for training.

Each split is tokenized once (files joined by the EOS token) and cached as a
.npy of uint16 ids under `cache_dir`, keyed by the tokenizer's hash and the
split settings. Batches are windows of T+1 tokens at random offsets drawn from
a generator seeded by (seed, step), so a resumed run sees the same batches.
"""
from __future__ import annotations

import hashlib
import os
from typing import Tuple

import numpy as np
from tokenizers import Tokenizer

from infer.train import corpus
from infer.train.train_tokenizer import EOS
from infer.config.paths import REPO_ROOT


def encode_texts(tok: Tokenizer, texts) -> np.ndarray:
    eos = tok.token_to_id(EOS)
    ids = []
    for enc in tok.encode_batch(list(texts)):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.uint16)




def token_splits(tokenizer_path: str, val_fraction: float,
                 cache_dir: str = os.path.join(REPO_ROOT, "build", "train_cache")) -> Tuple[np.ndarray, np.ndarray]:
    """(train ids, val ids), both 1-D uint16, cached on disk. A relative tokenizer path is tried from the
    current directory, then from the repository root."""
    if not os.path.exists(tokenizer_path) and os.path.exists(os.path.join(REPO_ROOT, tokenizer_path)):
        tokenizer_path = os.path.join(REPO_ROOT, tokenizer_path)
    with open(tokenizer_path, "rb") as f:
        key = hashlib.sha256(f.read() + f"{val_fraction}|{corpus.stdlib_dir()}".encode()).hexdigest()[:16]
    paths = [os.path.join(cache_dir, f"{key}.{s}.npy") for s in ("train", "val")]
    if all(os.path.exists(p) for p in paths):
        return tuple(np.load(p) for p in paths)
    tok = Tokenizer.from_file(tokenizer_path)
    train, val = corpus.read_split(val_fraction)
    out = (encode_texts(tok, train), encode_texts(tok, val))
    os.makedirs(cache_dir, exist_ok=True)
    for p, a in zip(paths, out):
        np.save(p, a)
    return out


def random_windows(ids: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int) -> np.ndarray:
    """[B, T+1] int32 windows at offsets drawn from rng(seed, step)."""
    if len(ids) <= seq_len + 1:
        raise ValueError(f"ids: stream of {len(ids)} tokens is shorter than a window of {seq_len + 1}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(ids) - seq_len - 1, size=batch_size)
    return np.stack([ids[s:s + seq_len + 1] for s in starts]).astype(np.int32)

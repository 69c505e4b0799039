"""The KV cache: an explicit pytree, passed into and returned from every step.

    {"k": [L, B, K, S, H], "v": [L, B, K, S, H], "lengths": [B] int32}
    (dtype="int8" adds "k_scale", "v_scale": [L, B, K, S] float32)

`lengths[b]` is the number of valid positions of row b. Rolling a row back
(speculative decoding) only moves its length; stale entries past the length
are never read and are overwritten before they become valid again.
"""
from typing import Optional

import jax.numpy as jnp
from jax.sharding import PartitionSpec

from infer.config import ModelConfig
from layers import axes


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype: Optional[str] = None) -> dict:
    """An empty cache for `batch_size` rows of up to `max_len` positions (dtype defaults to cfg.dtype)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size: must be > 0, got {batch_size}")
    if max_len <= 0:
        raise ValueError(f"max_len: must be > 0, got {max_len}")
    if max_len > cfg.max_seq_len:
        raise ValueError(f"max_len: {max_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
    dt = jnp.dtype(dtype or cfg.dtype)
    shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
    cache = {
        "k": jnp.zeros(shape, dt),
        "v": jnp.zeros(shape, dt),
        "lengths": jnp.zeros((batch_size,), jnp.int32),
    }
    if dt == jnp.int8:  # int8 cache: per-token, per-head float32 scales [L, B, K, S] (kv_write quantizes)
        cache["k_scale"] = jnp.ones(shape[:-1], jnp.float32)
        cache["v_scale"] = jnp.ones(shape[:-1], jnp.float32)
    return cache


def cache_logical_axes(cache: dict) -> dict:
    """PartitionSpecs of logical axis names for each cache entry."""
    specs = {}
    for name in cache:
        if name == "lengths":
            specs[name] = PartitionSpec(*axes.CACHE_LENGTHS)
        elif name.endswith("_scale"):
            specs[name] = PartitionSpec(*axes.CACHE_KV[:-1])
        else:
            specs[name] = PartitionSpec(*axes.CACHE_KV)
    return specs


def cache_max_len(cache: dict) -> int:
    return cache["k"].shape[3]

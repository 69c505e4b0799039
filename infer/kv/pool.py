"""KV storage: layer-stacked page pools, an explicit pytree passed into and returned from every step.

    {"k": [L, P, K, Z, H], "v": [L, P, K, Z, H]}
    (dtype="int8" adds "k_scale", "v_scale": [L, P, K, Z] float32: value = int8 * scale, per token and head)

P pages of Z tokens each. The pools hold no batch axis and no lengths: which
pages belong to which sequence, and how many of their slots are valid, is
AttentionMetadata's job (infer/kv/metadata.py), built per step. Rolling a
sequence back (speculative decoding) therefore only moves its length; stale
slots are never visible and are overwritten before they become visible again.
"""
from typing import Optional

import jax.numpy as jnp
from jax.sharding import PartitionSpec

from infer.config import DTYPES, ModelConfig
from layers import axes

DEFAULT_PAGE_SIZE = 16  # Z: tokens per page
POOL_DTYPES = DTYPES + ("int8",)


def init_pools(cfg: ModelConfig, num_pages: int, page_size: int = DEFAULT_PAGE_SIZE,
               dtype: Optional[str] = None) -> dict:
    """Empty page pools of `num_pages` pages of `page_size` tokens (dtype defaults to cfg.kv_cache_dtype, then
    cfg.dtype; "int8" quantizes)."""
    if not (isinstance(num_pages, int) and num_pages > 0):
        raise ValueError(f"num_pages: must be an int > 0, got {num_pages!r}")
    if not (isinstance(page_size, int) and page_size > 0):
        raise ValueError(f"page_size: must be an int > 0, got {page_size!r}")
    if dtype is not None and dtype not in POOL_DTYPES:
        raise ValueError(f"dtype: page pools hold one of {POOL_DTYPES} (int8 with per-token scales), got {dtype!r}")
    dt = jnp.dtype(dtype or cfg.kv_cache_dtype or cfg.dtype)
    shape = (cfg.n_layers, num_pages, cfg.n_kv_heads, page_size, cfg.head_dim)
    kv = {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}
    if dt == jnp.int8:
        kv["k_scale"] = jnp.ones(shape[:-1], jnp.float32)
        kv["v_scale"] = jnp.ones(shape[:-1], jnp.float32)
    return kv


def num_pages(kv: dict) -> int:
    """P: pages in the pools."""
    return kv["k"].shape[1]


def page_size(kv: dict) -> int:
    """Z: tokens per page."""
    return kv["k"].shape[3]


def pool_logical_axes(kv: dict) -> dict:
    """PartitionSpecs of logical axis names for each pool array."""
    return {name: PartitionSpec(*(axes.CACHE_KV[:-1] if name.endswith("_scale") else axes.CACHE_KV))
            for name in kv}

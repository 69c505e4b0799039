"""KV storage: layer-stacked page pools, an explicit pytree passed into and returned from every step.

    {"k": [L, P, K, Z, H], "v": [L, P, K, Z, H]}
    (dtype="int8" adds "k_scale", "v_scale": [L, P, K, Z] float32: value = int8 * scale, per token and head)
    MLA: {"c": [L, P, Z, C], "kr": [L, P, Z, E]} (the latent and the shared RoPE key; no head axis)

P pages of Z tokens each. The pools hold no batch axis and no lengths: which
pages belong to which sequence, and how many of their slots are valid, is
AttentionMetadata's job (infer/kv/metadata.py), built per step. Rolling a
sequence back (speculative decoding) therefore only moves its length; stale
slots are never visible and are overwritten before they become visible again.
"""
from typing import Optional

import jax.numpy as jnp
from jax.sharding import PartitionSpec

from infer.config import KV_CACHE_DTYPES, ModelConfig, dtype_name
from layers import axes

DEFAULT_PAGE_SIZE = 16  # Z: tokens per page


def init_pools(cfg: ModelConfig, num_pages: int, page_size: int = DEFAULT_PAGE_SIZE,
               dtype: Optional[str] = None) -> dict:
    """Empty page pools of `num_pages` pages of `page_size` tokens (dtype defaults to cfg.kv_cache_dtype, then
    cfg.dtype; "int8" quantizes). The pools hold cfg.kv_layers layers (fewer than n_layers under CLA).

    MLA models get latent pools instead, with no head axis: {"c": [L, P, Z, C], "kr": [L, P, Z, E]}
    (C = kv_lora_rank, E = qk_rope_head_dim)."""
    if not (isinstance(num_pages, int) and num_pages > 0):
        raise ValueError(f"num_pages: must be an int > 0, got {num_pages!r}")
    if not (isinstance(page_size, int) and page_size > 0):
        raise ValueError(f"page_size: must be an int > 0, got {page_size!r}")
    dtype = dtype_name(dtype)
    if dtype is not None and dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"dtype: page pools hold one of {KV_CACHE_DTYPES} (int8 with per-token scales), got {dtype!r}")
    dt = jnp.dtype(dtype or cfg.kv_cache_dtype or cfg.dtype)
    if cfg.is_mla:
        if dt == jnp.int8:
            raise ValueError("dtype: int8 latent pools are not supported for MLA models")
        lead = (cfg.kv_layers, num_pages, page_size)
        return {"c": jnp.zeros(lead + (cfg.kv_lora_rank,), dt), "kr": jnp.zeros(lead + (cfg.qk_rope_head_dim,), dt)}
    shape = (cfg.kv_layers, num_pages, cfg.n_kv_heads, page_size, cfg.head_dim)
    kv = {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}
    if dt == jnp.int8:
        kv["k_scale"] = jnp.ones(shape[:-1], jnp.float32)
        kv["v_scale"] = jnp.ones(shape[:-1], jnp.float32)
    return kv


def is_latent(kv: dict) -> bool:
    """MLA latent pools ({"c", "kr"}) rather than per-head k/v pools."""
    return "c" in kv


def num_pages(kv: dict) -> int:
    """P: pages in the pools."""
    return (kv["c"] if is_latent(kv) else kv["k"]).shape[1]


def page_size(kv: dict) -> int:
    """Z: tokens per page."""
    return kv["c"].shape[2] if is_latent(kv) else kv["k"].shape[3]


def pool_logical_axes(kv: dict) -> dict:
    """PartitionSpecs of logical axis names for each pool array."""
    if is_latent(kv):
        return {name: PartitionSpec(*axes.CACHE_LATENT) for name in kv}
    return {name: PartitionSpec(*(axes.CACHE_KV[:-1] if name.endswith("_scale") else axes.CACHE_KV))
            for name in kv}

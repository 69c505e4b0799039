"""A row cache that claims S cached tokens of random values, for timing decode steps at context S without
prefilling S tokens first (kv_variants_bench, parallel_bench).

    cache = random_row_cache(cfg, B, S, jax.random.key(0, impl="rbg"), mesh=None)

Same layout as `infer.model.rows.init_cache(cfg, B, S + 1)`; with a mesh the pools are drawn by one jitted
call whose outputs already have `shard_pools`' placement, page table and lengths replicated.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infer.bench.timing import block
from infer.config.model_config import ModelConfig
from infer.kv.pool import DEFAULT_PAGE_SIZE, init_pools
from infer.parallel.sharding import pool_shardings


def on_mesh(x: np.ndarray, mesh: Optional[Mesh]):
    """A host array on the mesh's devices, replicated (the default device without a mesh)."""
    return jnp.asarray(x) if mesh is None else jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def random_row_cache(cfg: ModelConfig, B: int, S: int, key, mesh: Optional[Mesh] = None,
                     page_size: int = DEFAULT_PAGE_SIZE) -> dict:
    """B rows claiming S cached tokens whose pools hold random values (int8 pools: random ints, scales 0.01).
    `key` is best an "rbg" key (`jax.random.key(seed, impl="rbg")`: it compiles in a fraction of threefry's
    time on CPU)."""
    M = -(-(S + 1) // page_size)
    shapes = jax.eval_shape(lambda: init_pools(cfg, B * M, page_size))

    def draw():
        kv = {}
        for i, (name, sd) in enumerate(sorted(shapes.items())):
            if name.endswith("_scale"):
                kv[name] = jnp.full(sd.shape, 0.01, sd.dtype)
            elif jnp.issubdtype(sd.dtype, jnp.floating):
                kv[name] = jax.random.normal(jax.random.fold_in(key, i), sd.shape, sd.dtype)
            else:
                kv[name] = jax.random.randint(jax.random.fold_in(key, i), sd.shape, -127, 128).astype(sd.dtype)
        return kv

    kv = jax.jit(draw, out_shardings=None if mesh is None else pool_shardings(shapes, mesh))()
    table = np.arange(B * M, dtype=np.int32).reshape(B, M)
    return block({"kv": kv, "page_table": on_mesh(table, mesh), "lengths": on_mesh(np.full((B,), S, np.int32), mesh)})

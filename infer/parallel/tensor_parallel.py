"""Tensor parallelism on a JAX mesh: one call turns (params, cfg) into their sharded twins for a "model" axis.

    cfg_tp, params_tp = prepare_tensor_parallel(params, cfg, mesh)

Megatron layout through GSPMD (infer/parallel/sharding.py's rules): query heads, KV heads, FFN columns and
the vocabulary are split over the mesh's "model" axis; XLA inserts the all-reduces after the row-parallel
output projections. The page pools are split on their KV-head axis (`shard_pools`), so no device holds, and
no collective gathers, another device's KV heads.

KV heads that do not divide the TP degree are replicated the way vLLM does: each KV head's k/v projection
is repeated r times (K' = lcm(K, TP) = r * K heads), query head n then reads repeated head n // (N / K'),
which is original head n // (N / K): the same attention, with K' / TP KV heads per device (K' divides N
whenever K and TP do). MLA models split their heads and replicate the
latent (every head reads all of it).

Refusals name the dimension: n_heads, d_ff or vocab_size not divisible by the degree; a mesh without a
"model" axis; KV-head replication of quantized weights.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from infer.config.model_config import ConfigError, ModelConfig
from infer.model.layout import stack_layers, unfuse_projections
from infer.parallel.sharding import param_shardings, pool_shardings, shard

MODEL_AXIS = "model"


def tp_degree(mesh: Optional[Mesh]) -> int:
    """Devices on the mesh's "model" axis (1 without a mesh or without that axis)."""
    return 1 if mesh is None else int(dict(mesh.shape).get(MODEL_AXIS, 1))


def replicated_kv_heads(cfg: ModelConfig, tp: int) -> int:
    """K' >= K: the KV heads the model runs with at TP degree `tp` (K when tp divides K)."""
    for name, n in (("n_heads", cfg.n_heads), ("d_ff", cfg.d_ff), ("vocab_size", cfg.vocab_size)):
        if n % tp:
            raise ConfigError(f"{name}: {n} is not divisible by the tensor-parallel degree {tp}")
    K = cfg.n_kv_heads
    if cfg.is_mla or K % tp == 0:
        return K
    k2 = math.lcm(K, tp)  # divides N, since both K and TP do
    if cfg.weight_format is not None:
        raise ConfigError(f"n_kv_heads: replicating {K} KV heads over {tp} devices is not supported for quantized "
                          f"weights ({cfg.weight_format})")
    return k2


def repeat_kv_heads(params: dict, cfg: ModelConfig, k2: int) -> Tuple[ModelConfig, dict]:
    """Each KV head's k/v projection (and bias) repeated k2 / K times, in place order (head j -> j // r)."""
    r = k2 // cfg.n_kv_heads
    if r == 1:
        return cfg, params
    attn = dict(params["layers"]["attn"])
    for name in ("k", "v"):
        leaf = dict(attn[name])
        leaf["kernel"] = jnp.repeat(leaf["kernel"], r, axis=2)  # [L, D, K, H] -> [L, D, K', H]
        if "bias" in leaf:
            leaf["bias"] = jnp.repeat(leaf["bias"], r, axis=1)  # [L, K, H]
        attn[name] = leaf
    layers = dict(params["layers"], attn=attn)
    return cfg.replace(n_kv_heads=k2), dict(params, layers=layers)


def prepare_tensor_parallel(params: dict, cfg: ModelConfig, mesh: Mesh) -> Tuple[ModelConfig, dict]:
    """(cfg, params) to run on `mesh`: KV heads replicated if needed, every parameter placed by its logical axes
    (in the stacked layout, which the sharding rules name: an unrolled tree, infer/model/layout.py, is stacked, and
    fused projections are split back into q, k, v and gate, up, which the rules split by heads and columns)."""
    if not set(mesh.axis_names) <= {"data", MODEL_AXIS}:
        raise ValueError(f"mesh: axes must be named 'data' and/or {MODEL_AXIS!r} (the sharding rules' names), "
                         f"got {mesh.axis_names}; make_mesh(tp, dp) builds one")
    tp = tp_degree(mesh)
    if cfg.kv_share_every != 1:
        raise ConfigError("kv_share_every: tensor parallelism is not supported for CLA models yet")
    cfg, params = unfuse_projections(*stack_layers(cfg, params))
    cfg, params = repeat_kv_heads(params, cfg, replicated_kv_heads(cfg, tp))
    return cfg, shard(params, param_shardings(cfg, mesh))


def shard_pools(kv: dict, mesh: Mesh) -> dict:
    """Page pools placed with their KV-head axis on "model" (the latent of MLA replicated)."""
    return shard(kv, pool_shardings(kv, mesh))


def constrain_pools(kv: dict, mesh: Optional[Mesh]) -> dict:
    """Inside jit: pools built by the program get the same placement as `shard_pools` (no-op without a mesh)."""
    if mesh is None:
        return kv
    return jax.lax.with_sharding_constraint(kv, pool_shardings(kv, mesh))


def make_mesh(tensor_parallel_size: int = 1, data_parallel_size: int = 1, devices=None) -> Optional[Mesh]:
    """A ("data", "model") mesh over the first dp * tp devices; None for 1 x 1 (plain single-device runs)."""
    for name, v in (("tensor_parallel_size", tensor_parallel_size), ("data_parallel_size", data_parallel_size)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"{name}: must be an int >= 1, got {v!r}")
    if tensor_parallel_size * data_parallel_size == 1:
        return None
    devices = list(jax.devices() if devices is None else devices)
    need = tensor_parallel_size * data_parallel_size
    if len(devices) < need:
        raise ValueError(f"tensor_parallel_size x data_parallel_size: {tensor_parallel_size} x {data_parallel_size} "
                         f"needs {need} devices, {len(devices)} available ({devices[0].platform})")
    import numpy as np
    return Mesh(np.array(devices[:need]).reshape(data_parallel_size, tensor_parallel_size), ("data", MODEL_AXIS))


def mesh_context(mesh: Optional[Mesh]):
    """`with mesh_context(mesh):` around jitted calls: the mesh becomes the tracing context, so the Pallas
    attention kernels run per head shard (layers/attention/impls.py); a no-op without a mesh."""
    import contextlib
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def replica_meshes(mesh: Mesh) -> list:
    """The data rows of a ("data", "model") mesh as 1 x tp meshes: one per data-parallel replica."""
    shape = dict(mesh.shape)
    if set(shape) != {"data", MODEL_AXIS}:
        raise ValueError(f"mesh: data-parallel replicas need axes ('data', {MODEL_AXIS!r}), got {tuple(shape)}")
    rows = mesh.devices.reshape(shape["data"], shape[MODEL_AXIS])
    return [Mesh(row.reshape(1, -1), ("data", MODEL_AXIS)) for row in rows]

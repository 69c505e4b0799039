"""Placing parameters and the KV cache on a device mesh from their logical axis names.

The model code never mentions devices: every parameter and cache array carries
logical axis names (layers/axes.py), and a rule table maps them to mesh axes.
Tensor parallelism over a "model" mesh axis and data parallelism over "data"
is the default table; any flax `logical_axis_rules`-style table works.
"""
from typing import Sequence, Tuple

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infer.cache import cache_logical_axes
from infer.params import param_logical_axes

DEFAULT_RULES: Tuple[Tuple[str, object], ...] = (
    ("batch", "data"),
    ("q_heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("embed", None),
    ("head_dim", None),
    ("layers", None),
    ("cache_seq", None),
)


def _named(mesh: Mesh, logical_specs, rules):
    is_spec = lambda x: isinstance(x, PartitionSpec)
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(s), rules)),
                                  logical_specs, is_leaf=is_spec)


def param_shardings(cfg, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
    return _named(mesh, param_logical_axes(cfg), rules)


def cache_shardings(cache, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
    return _named(mesh, cache_logical_axes(cache), rules)


def shard(tree, shardings):
    return jax.tree_util.tree_map(jax.device_put, tree, shardings)

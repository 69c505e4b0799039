"""Placing parameters and the KV page pools on a device mesh from their logical axis names.

The model code never mentions devices: every parameter and cache array carries
logical axis names (layers/axes.py), and a rule table maps them to mesh axes.
Tensor parallelism over a "model" mesh axis and data parallelism over "data"
is the default table; any flax `logical_axis_rules`-style table works.
"""
from typing import Sequence, Tuple

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infer.kv.pool import pool_logical_axes
from infer.model.params import param_logical_axes

DEFAULT_RULES: Tuple[Tuple[str, object], ...] = (
    ("batch", "data"),
    ("q_heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("embed", None),
    ("head_dim", None),
    ("layers", None),
    ("pages", None),
    ("page_slots", None),
    ("latent", None),  # MLA's latent and RoPE-key widths: every head (every shard) reads all of them
)


def _named(mesh: Mesh, logical_specs, rules):
    is_spec = lambda x: isinstance(x, PartitionSpec)
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(s), rules)),
                                  logical_specs, is_leaf=is_spec)


def param_shardings(cfg, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
    return _named(mesh, param_logical_axes(cfg), rules)


def pool_shardings(kv, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
    """Shardings of the page pools (KV-head axis on "model"); page tables and lengths stay replicated."""
    return _named(mesh, pool_logical_axes(kv), rules)


def shard(tree, shardings):
    return jax.tree_util.tree_map(jax.device_put, tree, shardings)

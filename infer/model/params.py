"""Parameter creation and their logical sharding axes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from infer.config.model_config import ModelConfig
from layers.decoder import Decoder


def _dummy_inputs(cfg: ModelConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    feats = jnp.zeros((1, 1, cfg.d_model), cfg.jnp_dtype) if cfg.feature_input else None
    return tokens, tokens, None, None, feats


@functools.partial(jax.jit, static_argnums=(0,))
def _init_boxed(cfg: ModelConfig, key):
    return Decoder(cfg).init(key, *_dummy_inputs(cfg))["params"]


def init_params(cfg: ModelConfig, key) -> dict:
    """Random parameters: a nested dict of arrays in cfg.dtype.

    Layout (block parameters stacked on a leading L axis under "layers")::

        embed/embedding                       [V, D]
        layers/attn_norm/scale                [L, D]
        layers/attn/{q,k,v}/kernel            [L, D, N|K, H]   (+ bias [L, N|K, H] if qkv_bias)
        layers/attn/{q,k}_norm/scale          [L, H]           (qk_norm only)
        layers/attn/o/kernel                  [L, N, H, D]
        layers/mlp_norm/scale                 [L, D]
        layers/mlp/{gate,up}/kernel           [L, D, F]
        layers/mlp/down/kernel                [L, F, D]
        fuse/{kernel,bias}                    [2D, D], [D]     (feature_input only)
        final_norm/scale                      [D]
        lm_head/kernel                        [D, V]           (absent if tie_embeddings)
    """
    return nn.meta.unbox(_init_boxed(cfg, key))


def param_logical_axes(cfg: ModelConfig) -> dict:
    """The logical axis names of every parameter (same tree as init_params), as PartitionSpecs."""
    boxed = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.PRNGKey(0), *_dummy_inputs(cfg))["params"])
    return nn.get_partition_spec(boxed)


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))

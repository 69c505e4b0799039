"""The uncached reference pass: every logit of a batch of full sequences, no KV cache."""
import functools

import jax
import jax.numpy as jnp

from infer.config import ModelConfig
from layers.decoder import Decoder


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward_hidden(params, cfg: ModelConfig, tokens_BT, features_BTD=None):
    """Full causal pass over tokens [B, T] with no cache: (logits [B, T, V] float32, the final-norm output they
    come from [B, T, D]). features_BTD: a feature_input model's per-token features (an EAGLE draft)."""
    B, T = tokens_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    logits, _, hidden = Decoder(cfg).apply({"params": params}, tokens_BT, positions_BT, None, None, features_BTD,
                                           True)
    return logits, hidden


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward(params, cfg: ModelConfig, tokens_BT):
    """Full causal pass over tokens [B, T] with no cache; logits [B, T, V] in float32."""
    return forward_hidden(params, cfg, tokens_BT)[0]

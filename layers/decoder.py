"""The decoder: embed -> L blocks under nn.scan -> final norm -> logits.

Scanning keeps compile time flat in depth; block parameters are stacked on a
leading L axis (logical axis "layers"). The page pools ride in the scan carry
as whole layer-stacked arrays, and each block indexes its own layer, so a step
updates them in place instead of slicing and re-stacking them.

Two call shapes: the uncached reference (tokens [B, T], logits [B, T, V]) and
the paged step (one flat batch, tokens [1, T], AttentionMetadata `meta`;
logits [O, V] at meta.logits_indices_O). Logits are float32, accumulated in
float32 (never rounded to the model dtype before sampling).
"""
import flax.linen as nn
import jax.numpy as jnp

from layers import axes
from layers.block import DecoderBlock
from layers.linear import Linear
from layers.norm import RMSNorm


class Decoder(nn.Module):
    cfg: object  # infer.ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, kv=None, meta=None):
        """Returns (logits, kv): [B, T, V] without pools, [O, V] at meta.logits_indices_O with them."""
        cfg = self.cfg
        dt = cfg.jnp_dtype
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dt, param_dtype=dt,
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                     (axes.VOCAB, axes.EMBED)),
                         name="embed")
        x_BTD = embed(tokens_BT)
        blocks = nn.scan(DecoderBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(0, nn.broadcast, nn.broadcast), length=cfg.n_layers,
                         metadata_params={nn.PARTITION_NAME: axes.LAYERS})
        (x_BTD, kv), _ = blocks(cfg, name="layers")((x_BTD, kv), jnp.arange(cfg.n_layers, dtype=jnp.int32),
                                                     positions_BT, meta)
        x_BTD = RMSNorm(cfg.norm_eps, dt, name="final_norm")(x_BTD)
        if meta is not None:
            x_BTD = x_BTD[0][meta.logits_indices_O]  # [O, D]
        if cfg.tie_embeddings:
            w_VD = embed.embedding
            logits = jnp.einsum("...d,vd->...v", x_BTD, w_VD.astype(dt), preferred_element_type=jnp.float32)
        else:
            logits = Linear((cfg.d_model,), (cfg.vocab_size,), (axes.EMBED,), (axes.VOCAB,), dt,
                            out_dtype=jnp.float32, name="lm_head")(x_BTD)
        return logits.astype(jnp.float32), kv

"""The decoder: embed -> L blocks under nn.scan -> final norm -> logits.

Scanning keeps compile time flat in depth; block parameters are stacked on a
leading L axis (logical axis "layers"). The KV cache rides in the scan carry
as whole layer-stacked arrays, and each block indexes its own layer, so a
decode step updates the cache in place instead of slicing and re-stacking it.
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
    def __call__(self, tokens_BT, positions_BT, kv=None, kv_len_B=None, write_pos_BT=None, logits_index_B=None):
        """Returns (logits, kv). logits are [B, T, V], or [B, V] at logits_index_B when given."""
        cfg = self.cfg
        dt = cfg.jnp_dtype
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dt, param_dtype=dt,
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                     (axes.VOCAB, axes.EMBED)),
                         name="embed")
        x_BTD = embed(tokens_BT)
        blocks = nn.scan(DecoderBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.n_layers,
                         metadata_params={nn.PARTITION_NAME: axes.LAYERS})
        (x_BTD, kv), _ = blocks(cfg, name="layers")((x_BTD, kv), jnp.arange(cfg.n_layers, dtype=jnp.int32),
                                                     positions_BT, kv_len_B, write_pos_BT)
        x_BTD = RMSNorm(cfg.norm_eps, dt, name="final_norm")(x_BTD)
        if logits_index_B is not None:
            x_BTD = jnp.take_along_axis(x_BTD, logits_index_B[:, None, None], axis=1)[:, 0]  # [B, D]
        if cfg.tie_embeddings:
            logits = embed.attend(x_BTD)
        else:
            logits = Linear((cfg.d_model,), (cfg.vocab_size,), (axes.EMBED,), (axes.VOCAB,), dt,
                            name="lm_head")(x_BTD)
        return logits.astype(jnp.float32), kv

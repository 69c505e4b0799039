"""The decoder: embed -> L blocks under nn.scan -> final norm -> logits.

Scanning keeps compile time flat in depth; block parameters are stacked on a
leading L axis (logical axis "layers"). With cfg.scan_layers = False the blocks
run as an unrolled loop over per-block subtrees "layers_0", "layers_1", ...
(infer/model/layout.py: faster decode on XLA's CPU backend). Under CLA (kv_share_every = n > 1) the scan
runs over L / n groups of n blocks (CLAGroup), one pools' layer per group. The page pools ride in the scan carry
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


class CLAGroup(nn.Module):
    """CLA: kv_share_every adjacent blocks scanned as one unit over the pools' layer `layer`. The first block
    projects (and, cached, writes) keys and values; the others have no k/v projections and attend over the
    first block's. Parameters: layers/first/... and layers/follow{j}/..., each stacked on L / kv_share_every."""

    cfg: object

    @nn.compact
    def __call__(self, carry, layer, positions_BT, meta):
        carry, shared = DecoderBlock(self.cfg, emit_kv=True, name="first")(carry, layer, positions_BT, meta)
        for j in range(1, self.cfg.kv_share_every):
            carry, _ = DecoderBlock(self.cfg, shares_kv=True, name=f"follow{j}")(carry, layer, positions_BT, meta,
                                                                                shared)
        return carry, None


class Decoder(nn.Module):
    cfg: object  # infer.ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, kv=None, meta=None, features_BTD=None, return_hidden=False):
        """Returns (logits, kv): [B, T, V] without pools, [O, V] at meta.logits_indices_O with them.

        features_BTD: the per-position features a feature_input model (an EAGLE draft) fuses with the token
        embeddings; return_hidden: also return the final-norm output the logits are computed from ([B, T, D],
        or [O, D] at the logit positions, or [T, D] at every token with "all"), as (logits, kv, hidden)."""
        cfg = self.cfg
        dt = cfg.jnp_dtype
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dt, param_dtype=dt,
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                     (axes.VOCAB, axes.EMBED)),
                         name="embed")
        x_BTD = embed(tokens_BT)
        if cfg.feature_input:
            if features_BTD is None:
                raise ValueError(f"features_BTD: model {cfg.name or 'config'} has feature_input=True and needs "
                                 f"a feature per token")
            both = jnp.concatenate([features_BTD.astype(dt), x_BTD], axis=-1)  # [B, T, 2D]
            x_BTD = Linear((2 * cfg.d_model,), (cfg.d_model,), (axes.EMBED,), (axes.EMBED,), dt, use_bias=True,
                           name="fuse")(both)
        unit = DecoderBlock if cfg.kv_share_every == 1 else CLAGroup
        r_BTD = jnp.zeros_like(x_BTD)  # the residual the first block's norm adds (layers/block.py)
        if cfg.scan_layers:
            blocks = nn.scan(unit, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=(0, nn.broadcast, nn.broadcast), length=cfg.kv_layers,
                             metadata_params={nn.PARTITION_NAME: axes.LAYERS})
            moe = {"moe": cfg.is_moe_layer(0)} if unit is DecoderBlock else {}  # stacked: every block alike
            (x_BTD, r_BTD, kv), _ = blocks(cfg, **moe, name="layers")((x_BTD, r_BTD, kv),
                                                                jnp.arange(cfg.kv_layers, dtype=jnp.int32),
                                                                positions_BT, meta)
        else:  # one subtree per block: each dot reads its own weight buffer (no per-layer slice copy on CPU)
            for i in range(cfg.kv_layers):
                moe = {"moe": cfg.is_moe_layer(i)} if unit is DecoderBlock else {}
                (x_BTD, r_BTD, kv), _ = unit(cfg, **moe, name=f"layers_{i}")((x_BTD, r_BTD, kv), jnp.int32(i),
                                                                     positions_BT, meta)
        _, x_BTD = RMSNorm(cfg.norm_eps, dt, name="final_norm")(x_BTD, residual=r_BTD)
        hidden = x_BTD
        if meta is not None:
            x_BTD = x_BTD[0][meta.logits_indices_O]  # [O, D]
            hidden = hidden[0] if return_hidden == "all" else x_BTD  # [T, D] or [O, D]
        if cfg.tie_embeddings:
            w_VD = embed.embedding
            logits = jnp.einsum("...d,vd->...v", x_BTD, w_VD.astype(dt), preferred_element_type=jnp.float32)
        else:
            logits = Linear((cfg.d_model,), (cfg.vocab_size,), (axes.EMBED,), (axes.VOCAB,), dt,
                            out_dtype=jnp.float32, name="lm_head")(x_BTD)
        if return_hidden:
            return logits.astype(jnp.float32), kv, hidden
        return logits.astype(jnp.float32), kv

"""One pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x)).

The residual stream rides between blocks as (x_BTD, r_BTD) with the hidden state = x + r: each block adds the
previous block's MLP output r as it normalizes (one add + RMSNorm kernel on a GPU, pallas_kernels/norm/) and hands
its own MLP output on un-added, so no block spends a kernel on a residual add. The decoder starts with r = 0 and
the final norm adds the last r."""
import flax.linen as nn

from layers.attention.gqa import Attention
from layers.attention.mla import MLAttention
from layers.mlp import SwiGLU
from layers.norm import RMSNorm


class DecoderBlock(nn.Module):
    """Scanned over layers: carry = (x_BTD, r_BTD, kv or None) (hidden state x + r), xs = layer index (the pools'
    layer).

    CLA (layers/decoder.py's CLAGroup): the group's first block is built with emit_kv and returns this
    pass's (k, v) as its second output; the others are built with shares_kv and take it as `shared_kv`."""

    cfg: object
    shares_kv: bool = False
    emit_kv: bool = False

    @nn.compact
    def __call__(self, carry, layer, positions_BT, meta, shared_kv=None):
        cfg = self.cfg
        x_BTD, r_BTD, kv = carry
        x_BTD, h = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="attn_norm")(x_BTD, residual=r_BTD)  # x + r, its norm
        if cfg.is_mla:
            a, kv, kv_BT = MLAttention(cfg, name="attn")(h, positions_BT, kv, layer, meta)
        else:
            a, kv, kv_BT = Attention(cfg, self.shares_kv, name="attn")(h, positions_BT, kv, layer, meta, shared_kv)
        x_BTD, h = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="mlp_norm")(x_BTD, residual=a)  # x + a, its norm
        r_BTD = SwiGLU(cfg.d_model, cfg.d_ff, cfg.jnp_dtype, cfg.weight_format, cfg.fused_projections,
                       name="mlp")(h)  # added by the next block's norm (or the final norm)
        return (x_BTD, r_BTD, kv), (kv_BT if self.emit_kv else None)

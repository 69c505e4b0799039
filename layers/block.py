"""One pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""
import flax.linen as nn

from layers.attention.gqa import Attention
from layers.attention.mla import MLAttention
from layers.mlp import SwiGLU
from layers.norm import RMSNorm


class DecoderBlock(nn.Module):
    """Scanned over layers: carry = (x_BTD, kv or None), xs = layer index (the pools' layer).

    CLA (layers/decoder.py's CLAGroup): the group's first block is built with emit_kv and returns this
    pass's (k, v) as its second output; the others are built with shares_kv and take it as `shared_kv`."""

    cfg: object
    shares_kv: bool = False
    emit_kv: bool = False

    @nn.compact
    def __call__(self, carry, layer, positions_BT, meta, shared_kv=None):
        cfg = self.cfg
        x_BTD, kv = carry
        h = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="attn_norm")(x_BTD)
        if cfg.is_mla:
            a, kv, kv_BT = MLAttention(cfg, name="attn")(h, positions_BT, kv, layer, meta)
        else:
            a, kv, kv_BT = Attention(cfg, self.shares_kv, name="attn")(h, positions_BT, kv, layer, meta, shared_kv)
        x_BTD, h = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="mlp_norm")(x_BTD, residual=a)  # x + a, its norm
        x_BTD = x_BTD + SwiGLU(cfg.d_model, cfg.d_ff, cfg.jnp_dtype, cfg.weight_format, cfg.fused_projections,
                               name="mlp")(h)
        return (x_BTD, kv), (kv_BT if self.emit_kv else None)

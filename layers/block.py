"""One pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""
import flax.linen as nn

from layers.attention.gqa import Attention
from layers.attention.mla import MLAttention
from layers.mlp import SwiGLU
from layers.norm import RMSNorm


class DecoderBlock(nn.Module):
    """Scanned over layers: carry = (x_BTD, kv or None), xs = layer index."""

    cfg: object

    @nn.compact
    def __call__(self, carry, layer, positions_BT, meta):
        cfg = self.cfg
        x_BTD, kv = carry
        h = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="attn_norm")(x_BTD)
        attn = MLAttention if cfg.is_mla else Attention
        a, kv = attn(cfg, name="attn")(h, positions_BT, kv, layer, meta)
        x_BTD = x_BTD + a
        h = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="mlp_norm")(x_BTD)
        x_BTD = x_BTD + SwiGLU(cfg.d_model, cfg.d_ff, cfg.jnp_dtype, cfg.weight_format, name="mlp")(h)
        return (x_BTD, kv), None

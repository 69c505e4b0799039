"""One pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x)).

The residual stream rides between blocks as (x_BTD, r_BTD) with the hidden state = x + r: each block adds the
previous block's MLP output r as it normalizes (one add + RMSNorm kernel on a GPU, pallas_kernels/norm/) and hands
its own MLP output on un-added, so no block spends a kernel on a residual add. The decoder starts with r = 0 and
the final norm adds the last r.

On a GPU decode step (few rows, float weights, fused projections: `folds_norms`) neither norm is a kernel of its
own: the block hands the q|k|v and gate|up projections a PreNorm and their GEMV kernels add, normalize and write
h themselves (layers/linear.py, pallas_kernels/gemv/)."""
import flax.linen as nn

from layers.attention.gqa import Attention
from layers.attention.mla import MLAttention
from layers.linear import decode_gemv
from layers.mlp import SwiGLU
from layers.moe import MoE
from layers.norm import RMSNorm


def folds_norms(cfg, x_BTD) -> bool:
    """Whether the block's two norms run inside its q|k|v and gate|up projections' GEMV kernels (float weights,
    fused projections, no q|k|v bias, and rows the decode GEMV takes)."""
    D = x_BTD.shape[-1]
    return cfg.weight_format is None and cfg.fused_projections and not cfg.is_mla and not cfg.qkv_bias and \
        not cfg.is_moe and decode_gemv(x_BTD.size // D, D)


class DecoderBlock(nn.Module):
    """Scanned over layers: carry = (x_BTD, r_BTD, kv or None) (hidden state x + r), xs = layer index (the pools'
    layer).

    moe: this block's MLP is the mixture of experts (layers/moe.py, params "moe") instead of the dense SwiGLU.

    CLA (layers/decoder.py's CLAGroup): the group's first block is built with emit_kv and returns this
    pass's (k, v) as its second output; the others are built with shares_kv and take it as `shared_kv`."""

    cfg: object
    shares_kv: bool = False
    emit_kv: bool = False
    moe: bool = False

    @nn.compact
    def __call__(self, carry, layer, positions_BT, meta, shared_kv=None):
        cfg = self.cfg
        x_BTD, r_BTD, kv = carry
        if folds_norms(cfg, x_BTD) and not self.shares_kv:
            return self._folded(x_BTD, r_BTD, kv, layer, positions_BT, meta)
        x_BTD, h = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="attn_norm")(x_BTD, residual=r_BTD)  # x + r, its norm
        if cfg.is_mla:
            a, kv, kv_BT = MLAttention(cfg, name="attn")(h, positions_BT, kv, layer, meta)
        else:
            a, kv, kv_BT = Attention(cfg, self.shares_kv, name="attn")(h, positions_BT, kv, layer, meta, shared_kv)
        x_BTD, h = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="mlp_norm")(x_BTD, residual=a)  # x + a, its norm
        if self.moe:
            r_BTD = MoE(cfg.d_model, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok,
                        cfg.norm_topk_prob, cfg.jnp_dtype, name="moe")(h)
        else:
            r_BTD = SwiGLU(cfg.d_model, cfg.d_ff, cfg.jnp_dtype, cfg.weight_format, cfg.fused_projections,
                           name="mlp")(h)  # added by the next block's norm (or the final norm)
        return (x_BTD, r_BTD, kv), (kv_BT if self.emit_kv else None)

    def _folded(self, x_BTD, r_BTD, kv, layer, positions_BT, meta):
        """The same block with each norm folded into the projection after it (the same parameters)."""
        cfg = self.cfg
        pre = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="attn_norm")(x_BTD, residual=r_BTD, defer=True)
        a, kv, kv_BT, x_BTD = Attention(cfg, self.shares_kv, name="attn")(pre, positions_BT, kv, layer, meta)
        pre = RMSNorm(cfg.norm_eps, cfg.jnp_dtype, name="mlp_norm")(x_BTD, residual=a, defer=True)
        x_BTD, r_BTD = SwiGLU(cfg.d_model, cfg.d_ff, cfg.jnp_dtype, cfg.weight_format, cfg.fused_projections,
                              name="mlp")(pre)
        return (x_BTD, r_BTD, kv), (kv_BT if self.emit_kv else None)

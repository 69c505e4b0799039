"""Self-attention for MHA (K = N), MQA (K = 1) and GQA (1 < K < N).

Projections go through `Linear` (the quantization seam); the score/softmax/value
math goes through `attention_impl` (the kernel seam). Without a cache the block
attends causally over the tokens it is given (the reference `forward` path);
with a cache it first writes this step's keys and values, then attends over
the cache.
"""
import flax.linen as nn
import jax.numpy as jnp

from layers import attention_impl, axes
from layers.kv_write import write_kv
from layers.linear import Linear
from layers.norm import RMSNorm
from layers.rope import apply_rope, inv_frequencies


class Attention(nn.Module):
    cfg: object  # infer.ModelConfig

    @nn.compact
    def __call__(self, x_BTD, positions_BT, kv=None, layer=None, kv_len_B=None, write_pos_BT=None):
        cfg = self.cfg
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        dt = cfg.jnp_dtype
        proj = lambda n, ax, name: Linear((D,), (n, H), (axes.EMBED,), (ax, axes.HEAD_DIM), dt,
                                          use_bias=cfg.qkv_bias, name=name)
        q_BTNH = proj(N, axes.Q_HEADS, "q")(x_BTD)
        k_BTKH = proj(K, axes.KV_HEADS, "k")(x_BTD)
        v_BTKH = proj(K, axes.KV_HEADS, "v")(x_BTD)
        if cfg.qk_norm:
            q_BTNH = RMSNorm(cfg.norm_eps, dt, axes.HEAD_DIM, name="q_norm")(q_BTNH)
            k_BTKH = RMSNorm(cfg.norm_eps, dt, axes.HEAD_DIM, name="k_norm")(k_BTKH)
        inv_freq = inv_frequencies(H, cfg.rope_theta, cfg.rope_scaling)
        q_BTNH = apply_rope(q_BTNH, positions_BT, inv_freq)
        k_BTKH = apply_rope(k_BTKH, positions_BT, inv_freq)

        if kv is None:
            B, T = positions_BT.shape
            out_BTNH = attention_impl.attend(
                q_BTNH, jnp.swapaxes(k_BTKH, 1, 2), jnp.swapaxes(v_BTKH, 1, 2), positions_BT,
                jnp.full((B,), T, jnp.int32), sliding_window=cfg.sliding_window, softcap=cfg.attn_logit_softcap)
        else:
            kv = write_kv(kv, layer, k_BTKH, v_BTKH, write_pos_BT)
            impl = attention_impl.get(cfg.attention_impl)
            out_BTNH = impl(q_BTNH, kv, layer, positions_BT, kv_len_B,
                            sliding_window=cfg.sliding_window, softcap=cfg.attn_logit_softcap)
        o = Linear((N, H), (D,), (axes.Q_HEADS, axes.HEAD_DIM), (axes.EMBED,), dt, name="o")(out_BTNH)
        return o, kv

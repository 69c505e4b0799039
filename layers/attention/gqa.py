"""Self-attention for MHA (K = N), MQA (K = 1) and GQA (1 < K < N).

Projections go through `Linear` (the quantization seam); the score/softmax/value
math goes through the implementation registry (the kernel seam). Without a
cache the block attends causally over the tokens it is given (the reference
`forward` path, [B, T] tokens); with page pools it takes one flat batch of T
tokens ([1, T]) described by AttentionMetadata, writes this step's keys and
values by slot, then attends over each sequence's pages.

Given a PreNorm (layers/norm.py: the block's add + RMSNorm, not yet computed) instead of x, the fused q|k|v
projection computes it (one kernel on a GPU decode step, layers/linear.py) and the call returns h = x + residual,
the new residual stream, as a fourth value.
"""
import flax.linen as nn
import jax.numpy as jnp

from layers import axes
from layers.attention import dense, registry
from layers.attention.kv_write import write_kv
from layers.linear import Linear
from layers.norm import PreNorm, RMSNorm
from layers.rope import apply_rope, attention_factor, inv_frequencies, rope_cos_sin


class Attention(nn.Module):
    """Returns (out, kv, (k, v) of this pass after RoPE). A CLA follower (`shares_kv`) has no k/v projections:
    it reads the pools' layer `layer` without writing (cached path) or the (k, v) its group's first layer
    computed in this pass (`shared_kv`, uncached path)."""

    cfg: object  # infer.ModelConfig
    shares_kv: bool = False

    @nn.compact
    def __call__(self, x_BTD, positions_BT, kv=None, layer=None, meta=None, shared_kv=None):
        cfg = self.cfg
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        dt = cfg.jnp_dtype
        proj = lambda n, ax, name: Linear((D,), (n, H), (axes.EMBED,), (ax, axes.HEAD_DIM), dt,
                                          use_bias=cfg.qkv_bias, weight_format=cfg.weight_format, name=name)
        inv_freq, factor = inv_frequencies(H, cfg.rope_theta, cfg.rope_scaling), attention_factor(cfg.rope_scaling)
        prenorm, h_BTD = isinstance(x_BTD, PreNorm), None
        fused = cfg.fused_projections and not self.shares_kv
        if prenorm and not fused:  # several projections read the norm: compute it once, here
            h_BTD, x_BTD = x_BTD.compute()
        if fused:  # one GEMM: [D, N + 2K, H] (q | k | v heads)
            qkv_BTXH = proj(N + 2 * K, None, "qkv")(x_BTD)
            if prenorm:  # the norm ran in the projection: (h, q|k|v)
                h_BTD, qkv_BTXH = qkv_BTXH
            q_BTNH, k_BTKH, v_BTKH = jnp.split(qkv_BTXH, (N, N + K), axis=-2)
            # the KV write reads keys and values straight out of the q|k|v product, by head
            xk_BTXH, k_head, xv_BTXH, v_head = qkv_BTXH, N, qkv_BTXH, N + K
        else:
            q_BTNH = proj(N, axes.Q_HEADS, "q")(x_BTD)
        if cfg.qk_norm:
            q_BTNH = RMSNorm(cfg.norm_eps, dt, axes.HEAD_DIM, name="q_norm")(q_BTNH)
        # the queries' source before their rotation (the KV write rotates them with the keys, one kernel on a GPU)
        xq_BTXH = qkv_BTXH if fused and not cfg.qk_norm else q_BTNH
        rotate_q = lambda: apply_rope(q_BTNH, positions_BT, inv_freq, factor)
        if self.shares_kv:
            k_BTKH, v_BTKH = shared_kv if shared_kv is not None else (None, None)
        else:
            if not cfg.fused_projections:
                k_BTKH = proj(K, axes.KV_HEADS, "k")(x_BTD)
                v_BTKH = proj(K, axes.KV_HEADS, "v")(x_BTD)
            if cfg.qk_norm:
                k_BTKH = RMSNorm(cfg.norm_eps, dt, axes.HEAD_DIM, name="k_norm")(k_BTKH)
            if cfg.qk_norm or not cfg.fused_projections:
                xk_BTXH, k_head, xv_BTXH, v_head = k_BTKH, 0, v_BTKH, 0  # the keys before their rotation
            k_BTKH = apply_rope(k_BTKH, positions_BT, inv_freq, factor)

        if kv is None:
            B, T = positions_BT.shape
            out_BTNH = dense.attend(
                rotate_q(), jnp.swapaxes(k_BTKH, 1, 2), jnp.swapaxes(v_BTKH, 1, 2), positions_BT,
                jnp.full((B,), T, jnp.int32), sliding_window=cfg.sliding_window, softcap=cfg.attn_logit_softcap)
        else:  # one flat batch [1, T] over the page pools
            if not self.shares_kv:  # rotates the keys as it writes them, and the queries (one kernel on a GPU)
                kv, q_TNH = write_kv(kv, layer, xk_BTXH[0], k_head, xv_BTXH[0], v_head, meta.slot_T,
                                     rope_cos_sin(positions_BT[0], inv_freq, factor), q=(xq_BTXH[0], 0, N))
            else:
                q_TNH = rotate_q()[0]
            impl = registry.get(cfg.attention_impl)
            out_BTNH = impl(q_TNH, kv, layer, meta, sliding_window=cfg.sliding_window,
                            softcap=cfg.attn_logit_softcap)[None]
        o = Linear((N, H), (D,), (axes.Q_HEADS, axes.HEAD_DIM), (axes.EMBED,), dt, weight_format=cfg.weight_format,
                   name="o")(out_BTNH)
        return (o, kv, (k_BTKH, v_BTKH)) + ((h_BTD,) if prenorm else ())

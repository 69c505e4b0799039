"""Multi-head latent attention (DeepSeek-V2/V3), with its cache as one latent per token.

Letters: D model width, N heads, h = qk_nope_head_dim (the no-RoPE part of a query/key
head), E = qk_rope_head_dim (the decoupled RoPE part, one key shared by all heads),
C = kv_lora_rank (the latent), Q = q_lora_rank, u = v_head_dim.

    q   = x W_q  (or RMSNorm(x W_qa) W_qb)          [T, N, h + E] -> q_nope [T, N, h], q_rope [T, N, E]
    ckv = x W_kva                                   [T, C + E]    -> c = RMSNorm(ckv[:C]), k_rope = ckv[C:]
    k   = [c W_uk, k_rope broadcast over heads]     [S, N, h + E]     (W_uk = W_kvb[:, :, :h])
    v   = c W_uv                                    [S, N, u]         (W_uv = W_kvb[:, :, h:])
    out = softmax(scale * q.k) v W_o,  scale = (h + E)^-0.5 * YaRN mscale^2

RoPE applies to q_rope and k_rope only (half-split layout; cos/sin times YaRN's attention
factor). The cache stores c and k_rope: C + E values per token and layer.

Two execution paths over the page pools, as the lecture describes:
- multi-token steps (prefill, chunks, verify): expand k and v from the gathered latent
  pages of each sequence and attend like MHA (compute-bound anyway);
- decode steps (one token per sequence): absorb W_uk into the query
  (q_c = q_nope W_uk^T, [T, N, C]) and W_uv into the output, and attend directly over
  the latent pages as MQA with key [c, k_rope] and value c (memory-bound: the step reads
  only C + E values per cached token, for all heads at once).
Both paths give the same numbers up to float rounding (tested). The uncached `forward`
path expands, as the reference does.
"""
import flax.linen as nn
import jax.numpy as jnp

from layers import axes
from layers.attention import dense, registry
from layers.attention.kv_write import write_latent
from layers.linear import Linear
from layers.norm import RMSNorm
from layers.rope import apply_rope, attention_factor, inv_frequencies, yarn_softmax_mscale
from pallas_kernels.attention.mla_reference import gather_latent
from pallas_kernels.attention.ragged_reference import attend_gathered, split_prefill_rows

LATENT_NORM_EPS = 1e-6  # DeepSeek's q_a / kv_a RMSNorms use their default eps, not rms_norm_eps


class UpProjection(nn.Module):
    """The latent up-projection W_kvb [C, N, h + u], returned as an array (both paths slice it)."""

    C: int
    N: int
    width: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self):
        init = nn.initializers.normal(stddev=self.C ** -0.5)
        return self.param("kernel", nn.with_logical_partitioning(init, (axes.LATENT, axes.Q_HEADS, axes.HEAD_DIM)),
                          (self.C, self.N, self.width), self.dtype)


def mla_softmax_scale(cfg) -> float:
    return (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5 * yarn_softmax_mscale(cfg.rope_scaling)


class MLAttention(nn.Module):
    cfg: object  # infer.ModelConfig with kv_lora_rank set

    @nn.compact
    def __call__(self, x_BTD, positions_BT, kv=None, layer=None, meta=None):
        cfg = self.cfg
        D, N, dt = cfg.d_model, cfg.n_heads, cfg.jnp_dtype
        h, E, C, u = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank, cfg.v_head_dim
        if cfg.q_lora_rank is None:
            q_BTNW = Linear((D,), (N, h + E), (axes.EMBED,), (axes.Q_HEADS, axes.HEAD_DIM), dt, name="q")(x_BTD)
        else:
            Q = cfg.q_lora_rank
            q_BTQ = Linear((D,), (Q,), (axes.EMBED,), (axes.LATENT,), dt, name="q_a")(x_BTD)
            q_BTQ = RMSNorm(LATENT_NORM_EPS, dt, axes.LATENT, name="q_a_norm")(q_BTQ)
            q_BTNW = Linear((Q,), (N, h + E), (axes.LATENT,), (axes.Q_HEADS, axes.HEAD_DIM), dt, name="q_b")(q_BTQ)
        ckv_BTW = Linear((D,), (C + E,), (axes.EMBED,), (axes.LATENT,), dt, name="kv_a")(x_BTD)
        c_BTC = RMSNorm(LATENT_NORM_EPS, dt, axes.LATENT, name="kv_a_norm")(ckv_BTW[..., :C])
        inv_freq, factor = inv_frequencies(E, cfg.rope_theta, cfg.rope_scaling), attention_factor(cfg.rope_scaling)
        q_nope_BTNh = q_BTNW[..., :h]
        q_rope_BTNE = apply_rope(q_BTNW[..., h:], positions_BT, inv_freq, factor)
        kr_BTE = apply_rope(ckv_BTW[..., None, C:], positions_BT, inv_freq, factor)[:, :, 0]
        w_CNW = UpProjection(C, N, h + u, dt, name="kv_b")()
        w_uk_CNh, w_uv_CNu = w_CNW[..., :h], w_CNW[..., h:]
        scale = mla_softmax_scale(cfg)
        q_BTNW = jnp.concatenate([q_nope_BTNh, q_rope_BTNE], axis=-1)

        if kv is None:  # uncached reference: expand over this pass's own tokens
            B, T = positions_BT.shape
            k_BNSW, v_BNSu = expand(c_BTC, kr_BTE, w_uk_CNh, w_uv_CNu)
            out_BTNu = dense.attend(q_BTNW, k_BNSW, v_BNSu, positions_BT, jnp.full((B,), T, jnp.int32), scale=scale)
        else:  # one flat batch [1, T] over the latent pools
            kv = write_latent(kv, layer, c_BTC[0], kr_BTE[0], meta.slot_T)
            if meta.max_q_len == 1:
                out_TNu = absorbed(q_nope_BTNh[0], q_rope_BTNE[0], kv, layer, meta, w_uk_CNh, w_uv_CNu, scale,
                                   cfg.attention_impl)
            else:
                out_TNu = expanded(q_BTNW[0], kv, layer, meta, w_uk_CNh, w_uv_CNu, scale)
            out_BTNu = out_TNu[None]
        o = Linear((N, u), (D,), (axes.Q_HEADS, axes.HEAD_DIM), (axes.EMBED,), dt, name="o")(out_BTNu)
        return o, kv, None


def expand(c_BSC, kr_BSE, w_uk_CNh, w_uv_CNu):
    """Per-head keys [B, N, S, h + E] and values [B, N, S, u] from latents [B, S, C] and RoPE keys [B, S, E]."""
    f32 = jnp.float32
    k_nope_BNSh = jnp.einsum("bsc,cnh->bnsh", c_BSC, w_uk_CNh, preferred_element_type=f32)
    v_BNSu = jnp.einsum("bsc,cnu->bnsu", c_BSC, w_uv_CNu, preferred_element_type=f32)
    B, N, S, _ = k_nope_BNSh.shape
    kr_BNSE = jnp.broadcast_to(kr_BSE[:, None].astype(f32), (B, N, S, kr_BSE.shape[-1]))
    return jnp.concatenate([k_nope_BNSh, kr_BNSE], axis=-1), v_BNSu


def expanded(q_TNW, kv, layer, meta, w_uk_CNh, w_uv_CNu, scale):
    """Multi-token steps: each sequence's latent pages expanded to per-head keys and values, attended as MHA."""
    def run(tab, start, qlen, kvlen, mql):
        c_RSC = gather_latent(kv["c"], tab, layer)[:, 0]
        kr_RSE = gather_latent(kv["kr"], tab, layer)[:, 0]
        k_RNSW, v_RNSu = expand(c_RSC, kr_RSE, w_uk_CNh, w_uv_CNu)
        return attend_gathered(q_TNW, k_RNSW, v_RNSu, start, qlen, kvlen, max_q_len=mql, scale=scale)
    return split_prefill_rows(run, meta.page_table_RM, meta.query_start_R, meta.query_len_R, meta.kv_len_R,
                              meta.max_q_len, meta.prefill_rows)


def absorbed(q_nope_TNh, q_rope_TNE, kv, layer, meta, w_uk_CNh, w_uv_CNu, scale, impl_name):
    """Decode steps: W_uk folded into the query, attention over the latent itself, W_uv folded into the output."""
    f32 = jnp.float32
    q_c_TNC = jnp.einsum("tnh,cnh->tnc", q_nope_TNh, w_uk_CNh, preferred_element_type=f32)
    o_TNC = registry.get_mla(impl_name)(q_c_TNC.astype(q_nope_TNh.dtype), q_rope_TNE, kv, layer, meta, scale=scale)
    return jnp.einsum("tnc,cnu->tnu", o_TNC, w_uv_CNu, preferred_element_type=f32).astype(q_nope_TNh.dtype)

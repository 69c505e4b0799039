"""Dropless mixture-of-experts MLP: a softmax top-k router and SwiGLU experts run as grouped matmuls.

Dimension letters beyond the repo's (README): E experts, k the experts each token picks (top-k; a lower-case k,
not K the KV heads), A = T·k the token-expert assignments, F the experts' MLP width (moe_intermediate_size).
(MLA's E, its RoPE key width, does not occur here.)

    router   logits x W_r rounded to the model dtype, softmax in float32 over E, the top k kept, optionally
             renormalised to sum to 1 (Qwen3-MoE's norm_topk_prob; Mixtral always), then cast to the model dtype:
             transformers' op order, so the same probabilities tie and each token uses exactly k experts. Between
             experts whose probabilities tie exactly at the k-th place, lax.top_k keeps the lower index; torch.topk
             on a CPU leaves that choice to std::partial_sort / nth_element (unspecified), so no implementation can
             promise its pick, only that it is k experts with their renormalised weights
    experts  y = sum_j w_j * down_e(silu(gate_e(x)) * up_e(x)) over the k picked experts e = e_j

Two paths to the same sum, chosen by the step's static shape:
- A < E (decode: a few tokens): each assignment gathers its expert's weights and multiplies them, so the step
  reads only the experts its tokens picked (k/E of the weights at one token). XLA:CPU lowers ragged_dot to a dense
  computation over every expert (at E = 64, one token: 64x the FLOPs and 3x every expert's bytes, compiled cost).
- otherwise `jax.lax.ragged_dot` over the A assignments sorted by expert: the rows of expert e are one
contiguous group, its size the count of e among the picks (`bincount`, length E), so each group is one GEMM
against its expert's [D, F] / [F, D] weights and no token is dropped (no capacity factor). The outputs are put back
in assignment order and summed with their router weights. Every token's result depends on that token alone:
neither its routing nor its sum reads the other tokens of the batch.

Parameters (stacked per expert): router [D, E], gate [E, D, F], up [E, D, F], down [E, F, D].
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from layers import axes
from pallas_kernels.gemv.dispatch import expert_gemv, gemv

EXPERT = "expert"  # E: the logical axis of the stacked expert weights


def route(logits_TE, k: int, norm_topk_prob: bool, dtype):
    """(weights [T, k] in dtype, expert ids [T, k] int32): softmax in float32, top k, optional renormalisation,
    cast last (transformers' Qwen3MoeTopKRouter / MixtralTopKRouter); exact ties keep the lower expert index."""
    probs_TE = jax.nn.softmax(logits_TE.astype(jnp.float32), axis=-1)
    w_Tk, ids_Tk = jax.lax.top_k(probs_TE, k)
    if norm_topk_prob:
        w_Tk = w_Tk / jnp.sum(w_Tk, axis=-1, keepdims=True)
    return w_Tk.astype(dtype), ids_Tk.astype(jnp.int32)


def gathered_swiglu(x_TD, w_Tk, ids_Tk, gate_EDF, up_EDF, down_EFD, dtype):
    """The same sum as grouped_swiglu, each assignment reading its own expert's weights: bytes and FLOPs follow
    the A = T·k assignments, not E. For steps with fewer assignments than experts. On a GPU target the expert GEMV
    kernels read the picked experts' slices in place (pallas_kernels/gemv/expert_gemv_gpu.py: gate|up with SwiGLU
    in one launch, down in another); elsewhere their twin gathers them."""
    T, k = ids_Tk.shape
    ids_A = ids_Tk.reshape(T * k)
    a_A = jnp.arange(T * k, dtype=jnp.int32)
    act_AF = expert_gemv(x_TD.astype(dtype), gate_EDF.astype(dtype), ids_A, a_A // k, up_EDF.astype(dtype),
                         out_dtype=dtype)
    y_AD = expert_gemv(act_AF, down_EFD.astype(dtype), ids_A, a_A, out_dtype=dtype)
    return weighted_sum(y_AD, w_Tk, dtype)


def weighted_sum(y_AD, w_Tk, dtype):
    """sum_j w_Tk[t, j] * y[t * k + j]: each token's expert outputs (in assignment order) under its router weights."""
    T, k = w_Tk.shape
    return jnp.einsum("tkd,tk->td", y_AD.reshape(T, k, -1), w_Tk.astype(dtype),
                      preferred_element_type=jnp.float32).astype(dtype)


def experts_swiglu(x_TD, w_Tk, ids_Tk, gate_EDF, up_EDF, down_EFD, dtype):
    """gathered_swiglu when the step has fewer assignments than experts (T·k < E, static), else grouped_swiglu."""
    path = gathered_swiglu if ids_Tk.size < gate_EDF.shape[0] else grouped_swiglu
    return path(x_TD, w_Tk, ids_Tk, gate_EDF, up_EDF, down_EFD, dtype)


def grouped_swiglu(x_TD, w_Tk, ids_Tk, gate_EDF, up_EDF, down_EFD, dtype):
    """sum_j w_Tk[:, j] * SwiGLU_{ids_Tk[:, j]}(x_TD) as ragged_dot over the assignments sorted by expert.
    Matmuls accumulate in float32 and round to dtype, as layers/linear.py does."""
    T, k = ids_Tk.shape
    E = gate_EDF.shape[0]
    ids_A = ids_Tk.reshape(T * k)
    order_A = jnp.argsort(ids_A, stable=True)  # assignments grouped by expert, token order within a group
    xs_AD = x_TD[order_A // k]
    sizes_E = jnp.bincount(ids_A, length=E).astype(jnp.int32)
    mm = lambda a, w: jax.lax.ragged_dot(a, w.astype(dtype), sizes_E,
                                         preferred_element_type=jnp.float32).astype(dtype)
    act_AF = jax.nn.silu(mm(xs_AD, gate_EDF)) * mm(xs_AD, up_EDF)
    ys_AD = mm(act_AF, down_EFD)
    y_AD = jnp.zeros_like(ys_AD).at[order_A].set(ys_AD)  # back in assignment order (t, j)
    return weighted_sum(y_AD, w_Tk, dtype)


class MoE(nn.Module):
    d_model: int  # D
    d_ff: int  # F, each expert's width
    num_experts: int  # E
    top_k: int  # k
    norm_topk_prob: bool
    dtype: object

    @nn.compact
    def __call__(self, x_BTD):
        D, F, E, dt = self.d_model, self.d_ff, self.num_experts, self.dtype
        init = lambda names, batch=(0,): nn.with_logical_partitioning(nn.initializers.lecun_normal(batch_axis=batch),
                                                                      names)
        router_DE = self.param("router", init((axes.EMBED, EXPERT), ()), (D, E), dt)
        gate_EDF = self.param("gate", init((EXPERT, axes.EMBED, axes.MLP)), (E, D, F), dt)
        up_EDF = self.param("up", init((EXPERT, axes.EMBED, axes.MLP)), (E, D, F), dt)
        down_EFD = self.param("down", init((EXPERT, axes.MLP, axes.EMBED)), (E, F, D), dt)
        lead = x_BTD.shape[:-1]
        x_TD = x_BTD.reshape(-1, D).astype(dt)
        # rounded like F.linear's output; a decode step's router is the GEMV kernel on a GPU target (XLA would
        # strength-reduce its [T, D] x [D, E] dot into a multiply and a reduction: two launches)
        logits_TE = gemv(x_TD, router_DE.astype(dt), out_dtype=dt)
        w_Tk, ids_Tk = route(logits_TE, self.top_k, self.norm_topk_prob, dt)
        out_TD = experts_swiglu(x_TD, w_Tk, ids_Tk, gate_EDF, up_EDF, down_EFD, dt)
        return out_TD.reshape(*lead, D)

"""Absorbed MLA attention over paged latent pools, pure JAX: the twin of the MLA Pallas kernels.

DeepSeek's multi-head latent attention caches, per token and layer, one latent c
(C = kv_lora_rank values, after its RMSNorm) and one RoPE key k_r (E =
qk_rope_head_dim values, shared by every head). With the key and value
up-projections absorbed into the query and the output (layers/attention/mla.py),
every head attends directly over the latent: it is multi-query attention whose one
key is [c, k_r] (C + E wide) and whose one value is c itself (C wide).

- q_c_TNC [T, N, C]: the absorbed no-RoPE part of each query (q_nope @ W_UK^T).
- q_r_TNE [T, N, E]: the RoPE part of each query, after RoPE.
- c_pages [L, P, Z, C], kr_pages [L, P, Z, E] (or without L): the latent pools.
- page_table_RM, query_start_R, query_len_R, kv_len_R, max_q_len, prefill_rows:
  the ragged contract of ragged_reference.py, unchanged.
- scale: the logit scale (DeepSeek: 1 / sqrt(qk_nope_head_dim + E), times YaRN's
  mscale^2 when YaRN is on); logits = scale * (q_c . c + q_r . k_r).

Returns o_TNC [T, N, C]: the attention-weighted latent, in q_c's dtype (the caller
applies W_UV and the output projection). Reading a token costs C + E values for all
N heads together: the memory-bound decode reads only the latent.
"""
from typing import Optional

import jax.numpy as jnp

from pallas_kernels.attention.decode_reference import as_layer_stacked
from pallas_kernels.attention.ragged_reference import attend_gathered, split_prefill_rows


def gather_latent(pool_LPZ_, page_table_RM, layer):
    """This layer's pages of every sequence as [R, 1, M * Z, width] (one shared 'kv head')."""
    x = as_layer_stacked(pool_LPZ_, 3)[layer][page_table_RM]  # [R, M, Z, width]
    R, M, Z, W = x.shape
    return x.reshape(R, 1, M * Z, W)


def mla_ragged_paged_attention_reference(q_c_TNC, q_r_TNE, c_pages, kr_pages, page_table_RM, query_start_R,
                                         query_len_R, kv_len_R, *, max_q_len: int, scale: float, layer=0,
                                         prefill_rows: Optional[int] = None):
    """Absorbed MLA attention of a flat ragged batch over the latent pools (contract in the module docstring)."""
    q_TNW = jnp.concatenate([q_c_TNC, q_r_TNE.astype(q_c_TNC.dtype)], axis=-1)  # W = C + E

    def run(tab, start, qlen, kvlen, mql):
        c_R1SC = gather_latent(c_pages, tab, layer)
        k_R1SW = jnp.concatenate([c_R1SC, gather_latent(kr_pages, tab, layer).astype(c_R1SC.dtype)], axis=-1)
        return attend_gathered(q_TNW, k_R1SW, c_R1SC, start, qlen, kvlen, max_q_len=mql, scale=scale)
    return split_prefill_rows(run, page_table_RM, query_start_R, query_len_R, kv_len_R, max_q_len, prefill_rows)

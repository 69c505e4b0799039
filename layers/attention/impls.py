"""The implementations behind the attention seam, adapting the model's call to the kernels' arrays.

Every implementation has one signature::

    impl(q_TNH, kv, layer, meta, *, sliding_window, softcap) -> out_TNH

- q_TNH: the step's flat queries after RoPE [T, N, H], in the model dtype.
- kv: the page pools {"k", "v": [L, P, K, Z, H]} (int8 pools add "k_scale",
  "v_scale": [L, P, K, Z] float32); this step's keys and values are already written.
- layer: int32 scalar (traced under the layer scan) selecting the layer; kernels
  index the stacked pools with it, so no per-layer copy is made.
- meta: the step's AttentionMetadata (infer/kv/metadata.py): page_table_RM,
  query_start_R, query_len_R, kv_len_R and the static max_q_len.

The contract (visibility, padding rows, int8, window, softcap) is the one in
pallas_kernels/attention/ragged_reference.py.
"""
from pallas_kernels.attention.dispatch import ragged_paged_attention
from pallas_kernels.attention.ragged_reference import ragged_paged_attention_reference


def _kernel_args(kv, meta):
    return (kv["k"], kv["v"], meta.page_table_RM, meta.query_start_R, meta.query_len_R, meta.kv_len_R)


def reference(q_TNH, kv, layer, meta, *, sliding_window=None, softcap=None):
    """Pure JAX (the twin every kernel is tested against); the default on CPU."""
    return ragged_paged_attention_reference(q_TNH, *_kernel_args(kv, meta), max_q_len=meta.max_q_len, layer=layer,
                                            k_scale=kv.get("k_scale"), v_scale=kv.get("v_scale"),
                                            sliding_window=sliding_window, softcap=softcap,
                                            prefill_rows=meta.prefill_rows)


def pallas(q_TNH, kv, layer, meta, *, sliding_window=None, softcap=None):
    """The Pallas kernels: Triton on GPU, Mosaic on TPU, Triton interpret mode on CPU (tests)."""
    return ragged_paged_attention(q_TNH, *_kernel_args(kv, meta), max_q_len=meta.max_q_len, layer=layer,
                                  k_scale=kv.get("k_scale"), v_scale=kv.get("v_scale"),
                                  sliding_window=sliding_window, softcap=softcap)


# ---- MLA (absorbed decode over the latent pools {"c": [L, P, Z, C], "kr": [L, P, Z, E]}) ----------------------
#     impl(q_c_TNC, q_r_TNE, kv, layer, meta, *, scale) -> o_TNC   (contract: mla_reference.py)

def mla_reference(q_c_TNC, q_r_TNE, kv, layer, meta, *, scale):
    """Pure JAX (the twin the MLA kernels are tested against); the default on CPU."""
    from pallas_kernels.attention.mla_reference import mla_ragged_paged_attention_reference
    return mla_ragged_paged_attention_reference(q_c_TNC, q_r_TNE, kv["c"], kv["kr"], meta.page_table_RM,
                                                meta.query_start_R, meta.query_len_R, meta.kv_len_R,
                                                max_q_len=meta.max_q_len, scale=scale, layer=layer,
                                                prefill_rows=meta.prefill_rows)


def mla_pallas(q_c_TNC, q_r_TNE, kv, layer, meta, *, scale):
    """The MLA Pallas decode kernels (Triton on GPU, Mosaic on TPU, interpret mode on CPU)."""
    from pallas_kernels.attention.dispatch import mla_ragged_paged_attention
    return mla_ragged_paged_attention(q_c_TNC, q_r_TNE, kv["c"], kv["kr"], meta.page_table_RM, meta.query_start_R,
                                      meta.query_len_R, meta.kv_len_R, max_q_len=meta.max_q_len, scale=scale,
                                      layer=layer, prefill_rows=meta.prefill_rows)

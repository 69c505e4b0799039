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
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

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


def tensor_parallel_mesh():
    """The context mesh (`jax.set_mesh`) when it splits heads over a "model" axis of more than one device, else
    None. A Pallas kernel is opaque to XLA's partitioner (it would gather the pools to run it whole), so under
    tensor parallelism the kernels run per shard: each device on its own query heads and KV heads."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "model" not in mesh.axis_names or dict(mesh.shape)["model"] == 1:
        return None
    return mesh


def _per_head_shard(fn, mesh, args, head_axes):
    """shard_map `fn` over the "model" axis: each argument split on its head axis (None: replicated), the output
    [T, heads, width] split on heads."""
    spec = lambda x, ax: P() if ax is None else P(*([None] * ax + ["model"] + [None] * (x.ndim - ax - 1)))
    in_specs = tuple(spec(x, ax) for x, ax in zip(args, head_axes))
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(None, "model", None),
                         check_vma=False)(*args)


def pallas(q_TNH, kv, layer, meta, *, sliding_window=None, softcap=None):
    """The Pallas kernels: Triton on GPU, Mosaic on TPU, Triton interpret mode on CPU (tests); per head shard
    under tensor parallelism."""
    def run(q, k, v, tab, start, qlen, kvlen, layer, k_scale, v_scale):
        return ragged_paged_attention(q, k, v, tab, start, qlen, kvlen, max_q_len=meta.max_q_len, layer=layer,
                                      k_scale=k_scale, v_scale=v_scale, sliding_window=sliding_window,
                                      softcap=softcap, tokens_in_row_order=meta.rows_in_order)
    args = (q_TNH, *_kernel_args(kv, meta), jnp.asarray(layer, jnp.int32), kv.get("k_scale"), kv.get("v_scale"))
    mesh = tensor_parallel_mesh()
    if mesh is None:
        return run(*args)
    if args[-1] is None:  # no int8 scales: keep the argument list fixed for shard_map
        return _per_head_shard(lambda *a: run(*a, None, None), mesh, args[:-2], (1, 2, 2, None, None, None, None,
                                                                                 None))
    return _per_head_shard(run, mesh, args, (1, 2, 2, None, None, None, None, None, 2, 2))


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
    """The MLA Pallas decode kernels (Triton on GPU, Mosaic on TPU, interpret mode on CPU); per head shard under
    tensor parallelism (the latent pools are replicated: every head reads all of them)."""
    from pallas_kernels.attention.dispatch import mla_ragged_paged_attention

    def run(q_c, q_r, c, kr, tab, start, qlen, kvlen, layer):
        return mla_ragged_paged_attention(q_c, q_r, c, kr, tab, start, qlen, kvlen, max_q_len=meta.max_q_len,
                                          scale=scale, layer=layer, prefill_rows=meta.prefill_rows)
    args = (q_c_TNC, q_r_TNE, kv["c"], kv["kr"], meta.page_table_RM, meta.query_start_R, meta.query_len_R,
            meta.kv_len_R, jnp.asarray(layer, jnp.int32))
    mesh = tensor_parallel_mesh()
    if mesh is None:
        return run(*args)
    return _per_head_shard(run, mesh, args, (1, 1, None, None, None, None, None, None, None))

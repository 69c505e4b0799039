"""Attention kernels (GPU via Triton lowering, TPU via Mosaic), each beside its pure-JAX reference twin.

    decode_reference.py  pure-JAX decode twin (contiguous, paged, int8; optional merge stats)
    ragged_reference.py  pure-JAX ragged paged attention twin (any mix of decode, prefill chunks, verify runs)
    block_math.py        online-softmax block update shared by the kernels
    splits.py            split-K heuristic and log-sum-exp merge
    layout.py            GQA packing, layer stacking, argument checks
    decode_gpu.py        Triton decode kernel (contiguous + paged, float + int8)
    decode_tpu.py        Mosaic TPU decode kernel (contiguous + paged, float + int8)
    ragged_gpu.py        Triton ragged paged attention (query blocks x causal mask, float + int8 pages)
    ragged_tpu.py        Mosaic ragged paged attention (padded per-sequence query view, float + int8 pages)
    mla_reference.py     pure-JAX absorbed-MLA (latent) ragged paged attention twin
    mla_block_math.py    online-softmax block update of the MLA kernels (two-part logits, value = latent)
    mla_gpu.py           Triton absorbed-MLA paged decode kernel (head blocks x split-K)
    mla_tpu.py           Mosaic absorbed-MLA paged decode kernel (all heads per tile, pages per grid step)
    dispatch.py          which kernel runs on which backend
    impl_names.py        the names ModelConfig.attention_impl accepts (a plain table, read without loading a kernel)

Public names load on first use (PEP 562), so importing the package loads none of its modules.
"""
from pallas_kernels.lazy_names import lazy_names

_HOMES = {  # public name -> the module that defines it
    "decode_attention": "pallas_kernels.attention.dispatch",
    "paged_decode_attention": "pallas_kernels.attention.dispatch",
    "ragged_paged_attention": "pallas_kernels.attention.dispatch",
    "pick_backend": "pallas_kernels.attention.dispatch",
    "ragged_paged_attention_gpu": "pallas_kernels.attention.ragged_gpu",
    "ragged_paged_attention_tpu": "pallas_kernels.attention.ragged_tpu",
    "decode_attention_gpu": "pallas_kernels.attention.decode_gpu",
    "paged_decode_attention_gpu": "pallas_kernels.attention.decode_gpu",
    "decode_attention_tpu": "pallas_kernels.attention.decode_tpu",
    "paged_decode_attention_tpu": "pallas_kernels.attention.decode_tpu",
    "decode_attention_reference": "pallas_kernels.attention.decode_reference",
    "paged_decode_attention_reference": "pallas_kernels.attention.decode_reference",
    "ragged_paged_attention_reference": "pallas_kernels.attention.ragged_reference",
    "choose_num_splits": "pallas_kernels.attention.splits",
    "merge_splits": "pallas_kernels.attention.splits",
    "mla_ragged_paged_attention": "pallas_kernels.attention.dispatch",
    "mla_paged_decode_attention_gpu": "pallas_kernels.attention.mla_gpu",
    "mla_paged_decode_attention_tpu": "pallas_kernels.attention.mla_tpu",
    "mla_ragged_paged_attention_reference": "pallas_kernels.attention.mla_reference",
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)

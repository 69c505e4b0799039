"""Pallas decode-attention kernels (GPU via Triton lowering, TPU via Mosaic), each beside its pure-JAX reference.

Importing this package registers the "pallas" attention implementation
(`layers.attention_impl.get("pallas")`).

    reference.py   pure-JAX twin (contiguous, paged, int8; optional merge stats)
    block_math.py  online-softmax block update shared by both kernels
    splits.py      split-K heuristic and log-sum-exp merge
    layout.py      GQA packing, layer stacking, argument checks
    decode_gpu.py  Triton kernel (contiguous + paged, float + int8)
    decode_tpu.py  Mosaic TPU kernel (contiguous + paged, float + int8)
    dispatch.py    backend choice and the model seam's "pallas" impl
"""
from pallas_kernels.decode_gpu import decode_attention_gpu, paged_decode_attention_gpu
from pallas_kernels.decode_tpu import decode_attention_tpu, paged_decode_attention_tpu
from pallas_kernels.dispatch import decode_attention, paged_decode_attention, pallas_impl, pick_backend
from pallas_kernels.reference import decode_attention_reference, paged_decode_attention_reference
from pallas_kernels.splits import choose_num_splits, merge_splits

__all__ = [
    "decode_attention", "paged_decode_attention", "pallas_impl", "pick_backend",
    "decode_attention_gpu", "paged_decode_attention_gpu", "decode_attention_tpu", "paged_decode_attention_tpu",
    "decode_attention_reference", "paged_decode_attention_reference", "choose_num_splits", "merge_splits",
]

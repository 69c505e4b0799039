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
"""
from pallas_kernels.attention.decode_gpu import decode_attention_gpu, paged_decode_attention_gpu
from pallas_kernels.attention.decode_reference import decode_attention_reference, paged_decode_attention_reference
from pallas_kernels.attention.decode_tpu import decode_attention_tpu, paged_decode_attention_tpu
from pallas_kernels.attention.dispatch import (decode_attention, mla_ragged_paged_attention, paged_decode_attention,
                                               pick_backend, ragged_paged_attention)
from pallas_kernels.attention.mla_gpu import mla_paged_decode_attention_gpu
from pallas_kernels.attention.mla_reference import mla_ragged_paged_attention_reference
from pallas_kernels.attention.mla_tpu import mla_paged_decode_attention_tpu
from pallas_kernels.attention.ragged_gpu import ragged_paged_attention_gpu
from pallas_kernels.attention.ragged_tpu import ragged_paged_attention_tpu
from pallas_kernels.attention.ragged_reference import ragged_paged_attention_reference
from pallas_kernels.attention.splits import choose_num_splits, merge_splits

__all__ = [
    "decode_attention", "paged_decode_attention", "ragged_paged_attention", "pick_backend",
    "ragged_paged_attention_gpu", "ragged_paged_attention_tpu",
    "decode_attention_gpu", "paged_decode_attention_gpu", "decode_attention_tpu", "paged_decode_attention_tpu",
    "decode_attention_reference", "paged_decode_attention_reference", "ragged_paged_attention_reference",
    "choose_num_splits", "merge_splits",
    "mla_ragged_paged_attention", "mla_paged_decode_attention_gpu", "mla_paged_decode_attention_tpu",
    "mla_ragged_paged_attention_reference",
]

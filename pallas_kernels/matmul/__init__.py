"""Quantized matmul kernels (GPU via Triton lowering, TPU via Mosaic), beside their pure-JAX reference twin.

y[M, O] = x[M, I] @ W[I, O] with W stored in a formats.py format (int8 per-channel, q8_0,
int4-g32/g64/g128, q4_0, q4_1), read packed and decoded in registers, float32 accumulation.

    formats.py           the stored formats: packing, round-to-nearest quantize, dequantize, GGUF blocks, bytes
    quant_xla.py         XLA's packed path (the CPU default): 4-bit weights decoded half-group by half-group
    quant_reference.py   pure-JAX twin: formats.dequantize, then a float32 dot
    quant_block_math.py  per-block math shared by the kernels (nibble split, group scale/min/zero, partial dot)
    quant_layout.py      argument checks, blocking plan, x column order, scale views
    quant_gpu.py         Triton kernel for decode shapes (grid over O blocks x I splits, fori_loop over I blocks)
    quant_tpu.py         Mosaic TPU kernel (grid over O blocks x I blocks, pipelined HBM->VMEM copies)
    dispatch.py          which implementation runs on which backend

Public names load on first use (PEP 562), so importing the package loads none of its modules.
"""
from pallas_kernels.lazy_names import lazy_names

_HOMES = {  # public name -> the module that defines it
    "quant_matmul": "pallas_kernels.matmul.dispatch",
    "pick_impl": "pallas_kernels.matmul.dispatch",
    "quant_matmul_gpu": "pallas_kernels.matmul.quant_gpu",
    "quant_matmul_tpu": "pallas_kernels.matmul.quant_tpu",
    "quant_matmul_reference": "pallas_kernels.matmul.quant_reference",
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)

"""Triton-specific pieces shared by the GPU kernels: the tile-size floor and masked row loads.

A Mosaic-GPU port replaces this file (and each kernel's small pallas_call wrapper), not the kernel math.
"""
from jax.experimental.pallas import triton as plgpu

MIN_TILE = 16  # tl.dot needs every dimension >= 16


# ---------------------------------------------------------------- Triton glue
def load_rows(ref_view, row_valid_T1):
    """Load a [T, ...] view; rows that fall past the array's end (row_valid False) read as 0."""
    if row_valid_T1 is None:
        return ref_view[...]
    return plgpu.load(ref_view, mask=row_valid_T1, other=0)

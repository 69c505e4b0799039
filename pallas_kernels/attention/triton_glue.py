"""Triton-specific pieces shared by the GPU kernels: the tile-size floor and masked row loads.

A Mosaic-GPU port replaces this file, not the kernel math.
"""
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MIN_TILE = 16  # tl.dot needs every dimension >= 16


# ---------------------------------------------------------------- Triton glue
def load_rows(ref_view, row_valid_T1):
    """Load a [T, ...] view; rows that fall past the array's end (row_valid False) read as 0."""
    if row_valid_T1 is None:
        return ref_view[...]
    return plgpu.load(ref_view, mask=row_valid_T1, other=0)


def load_tile_rows(ref_2d, rows_R, valid_R, cols_C):
    """ref_2d[rows_R, cols_C] as an [R, C] tile; rows with valid_R False read as 0 (and must hold an in-bounds
    index: callers clamp them)."""
    return plgpu.load(ref_2d.at[rows_R[:, None], cols_C[None, :]], mask=valid_R[:, None], other=0)


def store_tile_rows(ref_2d, rows_R, valid_R, cols_C, value_RC):
    """ref_2d[rows_R, cols_C] = value_RC for the rows with valid_R True (the others are never written)."""
    plgpu.store(ref_2d.at[rows_R[:, None], cols_C[None, :]], value_RC, mask=valid_R[:, None])


def triton_call(kernel, grid, in_arrays, in_specs, out_shapes, out_specs, *, num_warps, num_stages, interpret,
                name):
    """pallas_call with Triton's compiler parameters (every GPU attention kernel's launch)."""
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shapes,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret, name=name)(*in_arrays)

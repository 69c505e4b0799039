"""Argument checks and the layout every quantized matmul kernel shares (plain JAX, outside the kernels).

- `check_weight` validates a format's pytree ({"q", "scale"[, "min"]}) and returns (I, O).
- `make_plan` fixes the blocking: bk inputs per I block (whole groups, or a slice of one group for
  per-channel formats), bn outputs per O block; every dimension must divide evenly and the errors name
  the dimension that does not.
- `split_x` puts x's columns in the packed weight's row order: for 4-bit formats the columns of each
  group's first half (the low nibbles) and of its second half (the high nibbles) become two [M, I/2]
  arrays, so a kernel never interleaves unpacked rows (quant_block_math).
- `scale_blocks` reshapes scale/min [I/g, O] to [nS, Gs, 1, O] (a free row-major reshape) so the Gs rows
  one I block needs are one leading index and arrive as [Gs, 1, bn] (a full-dim block on TPU however
  small Gs is, and already in the shape the per-row repeat broadcasts from).
"""
import dataclasses

import jax.numpy as jnp

from pallas_kernels.matmul.formats import WeightFormat


@dataclasses.dataclass(frozen=True)
class Plan:  # hashable: the jitted kernel calls are keyed on it (M is not in it: one compile per padded M)
    I: int
    O: int
    bits: int
    g: int  # inputs per scale group (I for per-channel formats)
    zero: int
    has_min: bool
    block_k: int  # inputs per I block
    block_n: int  # outputs per O block

    @property
    def parts(self) -> int:  # inputs per stored byte row: 2 for 4-bit, 1 for 8-bit
        return 2 if self.bits == 4 else 1

    @property
    def rows(self) -> int:  # stored q rows per I block (R)
        return self.block_k // self.parts

    @property
    def num_k_blocks(self) -> int:
        return self.I // self.block_k

    @property
    def num_n_blocks(self) -> int:
        return self.O // self.block_n

    @property
    def scale_rows(self) -> int:  # Gs: scale rows per I block
        return max(1, self.block_k // self.g)

    @property
    def k_blocks_per_scale_block(self) -> int:  # > 1 when a block is a slice of one group
        return max(1, self.g // self.block_k)


def check_weight(qw: dict, fmt: WeightFormat):
    """(I, O) of a format's pytree; raises naming the array and dimension that is wrong."""
    for key in ("q", "scale") + (("min",) if fmt.has_min else ()):
        if key not in qw:
            raise ValueError(f"qw: format {fmt.name} needs a {key!r} array, got keys {sorted(qw)}")
    q = qw["q"]
    if q.ndim != 2:
        raise ValueError(f"q: expected a 2-D stored weight, got shape {tuple(q.shape)} (format {fmt.name})")
    want = jnp.uint8 if fmt.bits == 4 else jnp.int8
    if q.dtype != want:
        raise ValueError(f"q: format {fmt.name} stores {jnp.dtype(want).name}, got {q.dtype}")
    I = q.shape[0] * (2 if fmt.bits == 4 else 1)
    O = q.shape[1]
    g = fmt.group_size(I)  # raises when I is not a multiple of the group
    for key in ("scale",) + (("min",) if fmt.has_min else ()):
        if tuple(qw[key].shape) != (I // g, O):
            raise ValueError(f"{key}: expected shape [I/g, O] = {(I // g, O)} for I={I}, g={g}, O={O}, "
                             f"got {tuple(qw[key].shape)} (format {fmt.name})")
    return I, O


def make_plan(x_MI, qw: dict, fmt: WeightFormat, block_k: int, block_n: int, *, name: str) -> Plan:
    """Validate x against the weight and the chosen blocks (the caller picks them for its backend)."""
    if x_MI.ndim != 2:
        raise ValueError(f"{name}: x must be [M, I], got shape {tuple(x_MI.shape)}")
    I, O = check_weight(qw, fmt)
    if x_MI.shape[1] != I:
        raise ValueError(f"{name}: x's input dimension I={x_MI.shape[1]} does not match the weight's I={I} "
                         f"(x {tuple(x_MI.shape)}, q {tuple(qw['q'].shape)}, format {fmt.name})")
    g = fmt.group_size(I)
    if block_k <= 0 or I % block_k:
        raise ValueError(f"{name}: the input dimension I={I} is not a multiple of the I block block_k={block_k}")
    if block_k % g and g % block_k:
        raise ValueError(f"{name}: block_k={block_k} must hold whole groups of g={g} inputs (or divide g) "
                         f"(input dimension I={I}, format {fmt.name})")
    if block_n <= 0 or O % block_n:
        raise ValueError(f"{name}: the output dimension O={O} is not a multiple of the O block "
                         f"block_n={block_n}; pad the weight's O to a multiple of it")
    if fmt.bits == 4 and block_k < g:
        raise ValueError(f"{name}: 4-bit format {fmt.name} needs whole groups per block (block_k={block_k} < "
                         f"g={g}): a group's two nibble halves must land in the same block")
    return Plan(I=I, O=O, bits=fmt.bits, g=g, zero=fmt.zero, has_min=fmt.has_min, block_k=block_k,
                block_n=block_n)


def split_x(x_MI, plan: Plan, dtype=jnp.float32):
    """x [M, I] -> [x] (8-bit) or [x_lo, x_hi] (4-bit, each [M, I/2]) in the stored rows' order, cast to dtype."""
    x = x_MI.astype(dtype)
    if plan.bits == 8:
        return [x]
    M, g = x.shape[0], plan.g
    x4 = x.reshape(M, plan.I // g, 2, g // 2)
    return [x4[:, :, 0].reshape(M, plan.I // 2), x4[:, :, 1].reshape(M, plan.I // 2)]


def pad_rows(x, rows: int):
    return x if x.shape[0] == rows else jnp.pad(x, ((0, rows - x.shape[0]), (0, 0)))


def scale_blocks(s_GO, plan: Plan):
    """scale / min [I/g, O] -> [nS, Gs, 1, O]: I block k reads index k // k_blocks_per_scale_block."""
    Gs = plan.scale_rows
    return s_GO.reshape(s_GO.shape[0] // Gs, Gs, 1, s_GO.shape[1])


def kernel_operands(x_MI, qw: dict, plan: Plan, rows: int, dtype):
    """What both kernels read: (x's column parts padded to `rows`, q, scale blocks, min blocks or None)."""
    x_parts = tuple(pad_rows(xp, rows) for xp in split_x(x_MI, plan, dtype))
    mn = scale_blocks(jnp.asarray(qw["min"]), plan) if plan.has_min else None
    return x_parts, jnp.asarray(qw["q"]), scale_blocks(jnp.asarray(qw["scale"]), plan), mn


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())

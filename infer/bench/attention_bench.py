"""Experiment `kind: attention_bench`: paged attention kernels vs the reference vs XLA/cuDNN, one layer.

Spec fields (configs/experiments/attention_bench.yaml)::

    batch_sizes: [1, 8, 64]            # R sequences in the step
    context_lens: [1024, 8192, 32768]  # S: every sequence's length after this step's write (kv_len)
    query_lens: [1, 16]                # Q new tokens per sequence (the last Q of its S): 1 = a decode step,
                                       # > 1 = a prefill chunk continuing a prefix / a speculative verify run
    kv_heads: [8]                      # K
    n_heads: 32                        # N (G = N / K query heads per KV head)
    head_dim: 128                      # H
    page_size: 16                      # Z
    kv_dtypes: [bfloat16, int8]        # pool dtype; q is always `q_dtype`
    q_dtype: bfloat16
    impls: [auto, ragged, decode, reference, xla, cudnn]
    warmup: 2
    repeats: 10
    probe_bytes: 1073741824            # bandwidth probe size
    memory_fraction: 0.8               # skip a point whose buffers exceed this share of device memory
    hardware: auto                     # datasheet profile for the roofline line (CPU: the probes)

The step: one layer's pools [1, P, K, Z, H] (+ float32 scales [1, P, K, Z] for int8) holding exactly
the R sequences' pages, P = R * M with M = ceil(S / Z), in a shuffled page order (a pool after
churn); queries q [R * Q, N, H]; metadata from `infer.kv.metadata.rows_metadata` (row r owns flat
rows r * Q ... r * Q + Q - 1). What each impl times (one jitted call, blocked, median of `repeats`):

- auto: the model's attention seam, `layers.attention.registry.get("auto")` with the pools and the
  AttentionMetadata -- exactly what a model step runs here (Pallas on GPU/TPU, which dispatches a
  decode-only step (Q = 1) to the split-K paged decode kernel and any other step to the ragged
  kernel; the pure-JAX reference on CPU).
- ragged: the ragged paged kernel of this backend (`ragged_paged_attention_gpu` / `_tpu`) for any Q.
- decode: the paged decode kernel (`paged_decode_attention_gpu` / `_tpu`), Q = 1 only.
  On CPU both kernels run in Pallas interpret mode, where their times say nothing about the kernel.
- reference: `ragged_paged_attention_reference` (pure JAX, gathers the pages, float32 math).
- xla / cudnn: `jax.nn.dot_product_attention(implementation=...)` over the pages gathered once,
  outside the timing, into a dense [R, S, K, H] cache (the best case for a dense kernel: it reads
  each key once, contiguously); Q > 1 adds the causal mask of the last Q positions. For int8 the
  timed function dequantizes to q's dtype first. cuDNN runs only on GPU with a 16-bit pool.

Reported per row: ms (median); kv_bytes = bytes of the K and V pages the sequences own (and their
int8 scales); bytes = kv_bytes + q and output bytes; GB_s = bytes / time; frac_copy_bw = GB_s / the
measured copy bandwidth (read + write bytes of y = x + 1 per second); frac_read_bw = GB_s / the
measured read bandwidth; flops = 4 * N * H * (visible keys summed over the R * Q queries); pred_ms =
the roofline time max(bytes / profile bandwidth, flops / profile peak); frac_roofline = pred_ms / ms;
speedup_vs_xla = xla ms / ms; err_vs_ref = max |out - reference| / max |reference|.
Goals (GPU, Pallas rows auto / ragged / decode, Q = 1; the `goal` column): frac_copy_bw >= 0.8 at
R * S >= 64 * 8192, >= 0.7 at R = 1, S = 32k; faster than xla wherever S >= 8k.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench.device_probe import device_info, measure_bandwidth, measure_matmul_flops
from infer.bench.experiment import parse_spec, positive_ints, require
from infer.bench.timing import block, time_fn
from infer.config.dtypes import DTYPES, KV_CACHE_DTYPES
from infer.kv.metadata import rows_metadata
from infer.perf.hardware import HardwareProfile, load_hardware, profile_for_device_kind
from infer.perf.roofline import OpCost

IMPLS = ("auto", "ragged", "decode", "reference", "xla", "cudnn")
KERNEL_IMPLS = ("auto", "ragged", "decode")  # rows held to the GPU goals
LARGE_RS = 64 * 8192  # R*S from which the 80% bandwidth goal applies

MARKDOWN_COLUMNS = ("impl", "kernel", "kv_dtype", "R", "S", "Q", "K", "G", "ms", "pred_ms", "GB_s",
                    "frac_copy_bw", "frac_roofline", "speedup_vs_xla", "err_vs_ref", "goal", "status")


@dataclasses.dataclass(frozen=True)
class AttentionBenchSpec:
    batch_sizes: Tuple[int, ...] = (1, 8, 64)
    context_lens: Tuple[int, ...] = (1024, 8192, 32768)
    query_lens: Tuple[int, ...] = (1,)
    kv_heads: Tuple[int, ...] = (8,)
    n_heads: int = 32
    head_dim: int = 128
    page_size: int = 16
    kv_dtypes: Tuple[str, ...] = ("bfloat16", "int8")
    q_dtype: str = "bfloat16"
    impls: Tuple[str, ...] = IMPLS
    warmup: int = 2
    repeats: int = 10
    probe_bytes: int = 1 << 30
    memory_fraction: float = 0.8
    hardware: str = "auto"
    seed: int = 0
    name: str = "attention_bench"

    def __post_init__(self):
        n = self.name
        positive_ints(self.batch_sizes, f"{n}.batch_sizes")
        positive_ints(self.context_lens, f"{n}.context_lens")
        positive_ints(self.query_lens, f"{n}.query_lens")
        positive_ints(self.kv_heads, f"{n}.kv_heads")
        for Q in self.query_lens:
            require(Q <= min(self.context_lens), f"{n}.query_lens", f"Q={Q} exceeds the shortest context")
        for K in self.kv_heads:
            require(self.n_heads % K == 0, f"{n}.kv_heads", f"n_heads={self.n_heads} is not a multiple of K={K}")
        require(self.head_dim > 0, f"{n}.head_dim", "must be > 0")
        require(self.page_size > 0 and self.page_size & (self.page_size - 1) == 0, f"{n}.page_size",
                f"must be a power of two, got {self.page_size}")
        for d in self.kv_dtypes:
            require(d in KV_CACHE_DTYPES, f"{n}.kv_dtypes", f"{d!r} not in {KV_CACHE_DTYPES}")
        require(self.q_dtype in DTYPES, f"{n}.q_dtype", f"must be one of {DTYPES}")
        for i in self.impls:
            require(i in IMPLS, f"{n}.impls", f"{i!r} not in {IMPLS}")
        require(self.repeats >= 1 and self.warmup >= 0, f"{n}.repeats", "need repeats >= 1 and warmup >= 0")
        require(0 < self.memory_fraction <= 1, f"{n}.memory_fraction", "must be in (0, 1]")


def _make_step(R, S, Q, K, N, H, Z, kv_dtype, q_dtype, seed):
    """(q [R*Q, N, H], pools {"k","v": [1, P, K, Z, H]} (+ scales), AttentionMetadata), made on the device."""
    M = -(-S // Z)
    P = R * M
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(keys[0], (R * Q, N, H), q_dtype)
    shape = (1, P, K, Z, H)
    if kv_dtype == "int8":
        kv = {"k": jax.random.randint(keys[1], shape, -127, 128, jnp.int8),
              "v": jax.random.randint(keys[2], shape, -127, 128, jnp.int8),
              "k_scale": jnp.full(shape[:-1], 1 / 64, jnp.float32),
              "v_scale": jnp.full(shape[:-1], 1 / 128, jnp.float32)}
    else:
        kv = {"k": jax.random.normal(keys[1], shape, kv_dtype), "v": jax.random.normal(keys[2], shape, kv_dtype)}
    table_RM = jax.random.permutation(keys[3], P).astype(jnp.int32).reshape(R, M)
    meta = rows_metadata(table_RM, jnp.full((R,), S - Q, jnp.int32), jnp.full((R,), Q, jnp.int32), Q, Z)
    return block((q, kv, meta))


def _kernel_args(kv, meta):
    return (kv["k"], kv["v"], meta.page_table_RM, meta.query_start_R, meta.query_len_R, meta.kv_len_R)


def _impl_fn(impl, q, kv, meta, S, family, interpret):
    """(jitted fn, args, kernel description) timing one attention call of `impl` over the pools."""
    from layers.attention import registry
    import pallas_kernels as pk
    from pallas_kernels.attention.decode_reference import gather_pages

    if impl == "auto":
        chosen = registry.resolve("auto")
        if chosen == "pallas":
            chosen += "/" + ("decode" if meta.max_q_len == 1 else "ragged") + f"_{family}"
        f = jax.jit(lambda q, kv, meta: registry.get("auto")(q, kv, 0, meta))
        return f, (q, kv, meta), f"auto -> {chosen}"
    if impl == "ragged":
        fn = pk.ragged_paged_attention_tpu if family == "tpu" else pk.ragged_paged_attention_gpu
        f = jax.jit(lambda q, kv, meta: fn(q, *_kernel_args(kv, meta), max_q_len=meta.max_q_len,
                                           k_scale=kv.get("k_scale"), v_scale=kv.get("v_scale"),
                                           interpret=interpret))
        return f, (q, kv, meta), f"ragged_{family}" + (" (interpret)" if interpret else "")
    if impl == "decode":
        fn = pk.paged_decode_attention_tpu if family == "tpu" else pk.paged_decode_attention_gpu
        f = jax.jit(lambda q, kv, meta: fn(q, kv["k"], kv["v"], meta.page_table_RM, meta.kv_len_R,
                                           k_scale=kv.get("k_scale"), v_scale=kv.get("v_scale"),
                                           interpret=interpret))
        return f, (q, kv, meta), f"decode_{family}" + (" (interpret)" if interpret else "")
    if impl == "reference":
        f = jax.jit(lambda q, kv, meta: pk.ragged_paged_attention_reference(
            q, *_kernel_args(kv, meta), max_q_len=meta.max_q_len, k_scale=kv.get("k_scale"),
            v_scale=kv.get("v_scale")))
        return f, (q, kv, meta), "ragged_reference (pure JAX)"
    # xla / cudnn: the pages gathered once, outside the timing, into a dense [R, S, K, H] cache.
    R = meta.page_table_RM.shape[0]
    Q = q.shape[0] // R
    dense = jax.jit(lambda x: jnp.swapaxes(gather_pages(x[0], meta.page_table_RM), 1, 2)[:, :S])  # [R, S, K, ...]
    k_RSKH, v_RSKH = block((dense(kv["k"]), dense(kv["v"])))
    ks_RSK = block(dense(kv["k_scale"])) if "k_scale" in kv else None
    vs_RSK = block(dense(kv["v_scale"])) if "v_scale" in kv else None
    mask = None
    if Q > 1:  # query i sits at position S - Q + i and sees keys <= it
        mask = (jnp.arange(S)[None, :] <= (S - Q + jnp.arange(Q))[:, None])[None, None]  # [1, 1, Q, S]

    def sdpa(q, k, v, ks, vs):
        if ks is not None:
            k = (k.astype(jnp.float32) * ks[..., None]).astype(q.dtype)
            v = (v.astype(jnp.float32) * vs[..., None]).astype(q.dtype)
        out_RQNH = jax.nn.dot_product_attention(q.reshape(R, Q, *q.shape[1:]), k, v, mask=mask, implementation=impl)
        return out_RQNH.reshape(q.shape)

    return jax.jit(sdpa), (q, k_RSKH, v_RSKH, ks_RSK, vs_RSK), f"jax.nn.dot_product_attention[{impl}] (dense)"


def _kv_bytes(R, S, K, H, Z, kv_dtype):
    """K and V bytes of the R sequences' pages (+ their int8 scales)."""
    positions = R * -(-S // Z) * Z
    return 2 * positions * K * H * jnp.dtype(kv_dtype).itemsize + (2 * positions * K * 4 if kv_dtype == "int8" else 0)


def _scratch_bytes(impl, kv, R, S, Q, K, N, H, kv_dtype, q_bytes):
    """Rough memory an impl needs beyond the pools `kv` bytes (to skip points that cannot fit)."""
    scores = R * N * Q * S * 4
    if impl == "reference":
        return kv + 2 * R * K * S * H * 4 + 3 * scores  # gathered pages, float32 v, scores/probabilities
    if impl in ("xla", "cudnn"):
        return kv + (2 * R * K * S * H * q_bytes if kv_dtype == "int8" else 0) + 2 * scores
    return 0


def _goal(row, xla_ms, backend):
    if row["impl"] not in KERNEL_IMPLS or backend != "gpu" or row["Q"] != 1:
        return ""
    parts = []
    R, S = row["R"], row["S"]
    if R == 1 and S >= 32768:
        parts.append(f"bw>=70%:{'yes' if row['frac_copy_bw'] >= 0.7 else 'NO'}")
    elif R * S >= LARGE_RS:
        parts.append(f"bw>=80%:{'yes' if row['frac_copy_bw'] >= 0.8 else 'NO'}")
    if S >= 8192 and xla_ms is not None:
        parts.append(f"<xla:{'yes' if row['ms'] < xla_ms else 'NO'}")
    return " ".join(parts)


def _profile(s: AttentionBenchSpec, info: dict, read_bw: float) -> HardwareProfile:
    if s.hardware != "auto":
        return load_hardware(s.hardware)
    hw = profile_for_device_kind(info["device_kind"]) if info["backend"] != "cpu" else None
    return hw or HardwareProfile.measured(f"{info['device_kind']} (probe)", read_bw,
                                          measure_matmul_flops(512, s.q_dtype), info["device_memory_bytes"])


@dataclasses.dataclass(frozen=True)
class _Setting:
    """What every point of a run shares: the spec, the device, the probes, the roofline profile, the kernels."""

    spec: AttentionBenchSpec
    info: dict
    copy_bw: float
    read_bw: float
    hw: HardwareProfile
    family: str
    interpret: bool


def _measure_impl(c: _Setting, impl, q, kv, meta, base, pred_s):
    """(row, output or None) of one impl at one point: its median time and what it is against the probes."""
    row = {**base, "impl": impl}
    t0 = time.perf_counter()
    try:
        fn, args, row["kernel"] = _impl_fn(impl, q, kv, meta, base["S"], c.family, c.interpret)
        out = block(fn(*args))
        t = time_fn(lambda: fn(*args), warmup=c.spec.warmup, repeats=c.spec.repeats)
        gbs = base["bytes"] / t.median_s / 1e9
        row.update(ms=t.median_s * 1e3, ms_min=t.min_s * 1e3, GB_s=gbs, frac_copy_bw=gbs * 1e9 / c.copy_bw,
                   frac_read_bw=gbs * 1e9 / c.read_bw, frac_roofline=pred_s / t.median_s, status="ok")
    except Exception as e:  # one impl failing (e.g. cuDNN shape limits) is a row, not a crash
        out = None
        row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    row["wall_s"] = time.perf_counter() - t0
    return row, out


def _run_point(c: _Setting, kv_dtype: str, K: int, Q: int, S: int, R: int) -> list:
    """The rows of every impl at one (kv dtype, K, Q, S, R), with speedups and errors against xla / reference."""
    s, backend = c.spec, c.info["backend"]
    N, H, Z, q_dt = s.n_heads, s.head_dim, s.page_size, jnp.dtype(s.q_dtype)
    budget = s.memory_fraction * c.info["device_memory_bytes"]
    kv_bytes = _kv_bytes(R, S, K, H, Z, kv_dtype)
    io_bytes = 2 * R * Q * N * H * q_dt.itemsize  # read q, write the output
    visible = R * (Q * S - Q * (Q - 1) // 2)  # keys seen, summed over the queries
    cost = OpCost(flops=4 * N * H * visible, bytes=kv_bytes + io_bytes)
    pred_s = cost.time(c.hw)
    base = {"kv_dtype": kv_dtype, "q_dtype": s.q_dtype, "R": R, "S": S, "Q": Q, "K": K, "G": N // K, "H": H, "Z": Z,
            "kv_bytes": kv_bytes, "bytes": cost.bytes, "flops": cost.flops, "pred_ms": pred_s * 1e3,
            "copy_GB_s": c.copy_bw / 1e9, "read_GB_s": c.read_bw / 1e9, "hardware": c.hw.name,
            "device": c.info["device_kind"]}
    if kv_bytes > budget:
        return [{**base, "impl": i, "status": f"skipped: pool {kv_bytes / 1e9:.1f} GB > budget"} for i in s.impls]
    q, kv, meta = _make_step(R, S, Q, K, N, H, Z, kv_dtype, q_dt, s.seed)
    outs, point = {}, []
    for impl in s.impls:
        if impl == "cudnn" and (backend != "gpu" or kv_dtype == "float32"):
            row = {**base, "impl": impl, "status": "skipped: cuDNN needs a GPU and a 16-bit pool"}
        elif impl == "decode" and Q != 1:
            row = {**base, "impl": impl, "status": "skipped: the decode kernel takes Q = 1"}
        elif kv_bytes + _scratch_bytes(impl, kv_bytes, R, S, Q, K, N, H, kv_dtype, q_dt.itemsize) > budget:
            row = {**base, "impl": impl, "status": "skipped: scratch would exceed the memory budget"}
        else:
            row, out = _measure_impl(c, impl, q, kv, meta, base, pred_s)
            if out is not None:
                outs[impl] = np.asarray(out, np.float32)
        point.append(row)
    del q, kv, meta
    xla_ms = next((r.get("ms") for r in point if r["impl"] == "xla"), None)
    ref = outs.get("reference")
    where = f"{kv_dtype:<8} R={R:<3} S={S:<6} Q={Q:<3}"
    for row in point:
        if "ms" not in row:
            print(f"  {row['impl']:<9} {where} {row['status']}", flush=True)
            continue
        if xla_ms and row["impl"] != "xla":
            row["speedup_vs_xla"] = xla_ms / row["ms"]
        if ref is not None and row["impl"] != "reference":
            got = outs[row["impl"]]
            row["err_vs_ref"] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
        row["goal"] = _goal(row, xla_ms, backend)
        print(f"  {row['impl']:<9} {where} {row['ms']:9.3f} ms {row['GB_s']:8.1f} GB/s "
              f"({row['frac_copy_bw']:.0%} of copy bw) pred {row['pred_ms']:.3f} ms {row['goal']}", flush=True)
    return point


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(AttentionBenchSpec, spec)
    import pallas_kernels as pk

    info = device_info()
    copy_bw = measure_bandwidth(s.probe_bytes, "copy")
    read_bw = measure_bandwidth(s.probe_bytes, "read")
    hw = _profile(s, info, read_bw)
    family, interpret = pk.pick_backend()
    print(f"  device: {info['device_kind']}; probe {copy_bw / 1e9:.1f} GB/s copy, {read_bw / 1e9:.1f} GB/s read; "
          f"roofline profile {hw.name} ({hw.memory_bandwidth / 1e9:.1f} GB/s); Pallas kernels: {family}"
          + (" (interpret mode: their times do not measure the kernels)" if interpret else ""), flush=True)
    c = _Setting(s, info, copy_bw, read_bw, hw, family, interpret)
    rows = []
    for kv_dtype, K, Q, S, R in itertools.product(s.kv_dtypes, s.kv_heads, sorted(s.query_lens),
                                                  sorted(s.context_lens), sorted(s.batch_sizes)):
        rows += _run_point(c, kv_dtype, K, Q, S, R)
    return rows

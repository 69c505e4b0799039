"""Experiment `kind: attention_bench`: decode-attention kernels vs the reference vs XLA/cuDNN.

Spec fields (configs/experiments/attention_bench.yaml)::

    batch_sizes: [1, 8, 64]          # B
    context_lens: [1024, 8192, 32768]  # S: every row holds S valid keys
    kv_heads: [8, 32]                # K
    n_heads: 32                      # N (G = N / K query heads per KV head)
    head_dim: 128                    # H
    kv_dtypes: [bfloat16, int8]      # cache dtype; q is always `q_dtype`
    q_dtype: bfloat16
    impls: [pallas, reference, xla, cudnn]
    warmup: 2
    repeats: 10
    probe_bytes: 1073741824          # copy-bandwidth probe size
    memory_fraction: 0.8             # skip a point whose buffers exceed this share of device memory
    hardware: auto                   # datasheet profile for the roofline line (CPU: the probe)

What each impl times (one jitted call, blocked, median over `repeats`):
- pallas: `pallas_kernels.decode_attention` (Triton on GPU, Mosaic on TPU, interpret mode on CPU,
  where its time says nothing about the kernel) on the cache layout [B, K, S, H] the model uses.
- reference: `pallas_kernels.decode_attention_reference` (pure JAX, float32 math).
- xla / cudnn: `jax.nn.dot_product_attention(implementation=...)` with key_value_seq_lengths, on
  [B, S, K, H] copies made once outside the timing (its preferred layout); for int8 the timed
  function dequantizes to q's dtype first, as the model's "xla" path does. cuDNN runs only on GPU
  with a 16-bit cache (status says why otherwise).

Reported per row: ms (median), kv_bytes = bytes of K, V (and int8 scales) a step must read,
GB_s = kv_bytes / time, frac_copy_bw = GB_s / the measured copy bandwidth (read+write bytes of
y = x + 1 per second), frac_read_bw against the measured read bandwidth, pred_ms = the roofline
time max(kv_bytes / profile bandwidth, FLOPs / profile peak), frac_roofline = pred_ms / ms,
speedup_vs_xla (pallas rows), err_vs_ref = max |pallas - reference| / max |reference|.
Goals (GPU; evaluated in the `goal` column of pallas rows): frac_copy_bw >= 0.8 at large B*S,
>= 0.7 at B = 1, S = 32k; faster than xla wherever S >= 8k.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench.device_probe import device_info, measure_bandwidth, measure_matmul_flops
from infer.bench.experiment import parse_spec, positive_ints, require
from infer.bench.timing import block, time_fn
from infer.perf.hardware import HardwareProfile, load_hardware, profile_for_device_kind

IMPLS = ("pallas", "reference", "xla", "cudnn")
KV_DTYPES = ("bfloat16", "float16", "float32", "int8")
LARGE_BS = 64 * 8192  # B*S from which the 80% bandwidth goal applies

MARKDOWN_COLUMNS = ("impl", "kv_dtype", "B", "S", "K", "G", "ms", "pred_ms", "GB_s", "frac_copy_bw",
                    "frac_roofline", "speedup_vs_xla", "err_vs_ref", "goal", "status")


@dataclasses.dataclass(frozen=True)
class AttentionBenchSpec:
    batch_sizes: Tuple[int, ...] = (1, 8, 64)
    context_lens: Tuple[int, ...] = (1024, 8192, 32768)
    kv_heads: Tuple[int, ...] = (8, 32)
    n_heads: int = 32
    head_dim: int = 128
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
        positive_ints(self.kv_heads, f"{n}.kv_heads")
        for K in self.kv_heads:
            require(self.n_heads % K == 0, f"{n}.kv_heads", f"n_heads={self.n_heads} is not a multiple of K={K}")
        require(self.head_dim > 0, f"{n}.head_dim", "must be > 0")
        for d in self.kv_dtypes:
            require(d in KV_DTYPES, f"{n}.kv_dtypes", f"{d!r} not in {KV_DTYPES}")
        require(self.q_dtype in KV_DTYPES[:3], f"{n}.q_dtype", f"must be one of {KV_DTYPES[:3]}")
        for i in self.impls:
            require(i in IMPLS, f"{n}.impls", f"{i!r} not in {IMPLS}")
        require(self.repeats >= 1 and self.warmup >= 0, f"{n}.repeats", "need repeats >= 1 and warmup >= 0")
        require(0 < self.memory_fraction <= 1, f"{n}.memory_fraction", "must be in (0, 1]")


def _make_inputs(B, S, K, N, H, kv_dtype, q_dtype, seed):
    """q [B, N, H]; k/v [B, K, S, H] (+ float32 scales [B, K, S] for int8), generated on device."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(keys[0], (B, N, H), q_dtype)
    if kv_dtype == "int8":
        k = jax.random.randint(keys[1], (B, K, S, H), -127, 128, jnp.int8)
        v = jax.random.randint(keys[2], (B, K, S, H), -127, 128, jnp.int8)
        ks = jnp.full((B, K, S), 1 / 64, jnp.float32)
        return block((q, k, v, ks, ks * 0.5))
    k = jax.random.normal(keys[1], (B, K, S, H), kv_dtype)
    v = jax.random.normal(keys[2], (B, K, S, H), kv_dtype)
    return block((q, k, v, None, None))


def _impl_fn(impl, q, k, v, ks, vs, lengths):
    """(jitted fn, args) timing one decode-attention call of `impl`."""
    import pallas_kernels as pk

    if impl == "pallas":
        f = jax.jit(lambda q, k, v, ks, vs, n: pk.decode_attention(q, k, v, n, k_scale=ks, v_scale=vs))
        return f, (q, k, v, ks, vs, lengths)
    if impl == "reference":
        f = jax.jit(lambda q, k, v, ks, vs, n: pk.decode_attention_reference(q, k, v, n, k_scale=ks, v_scale=vs))
        return f, (q, k, v, ks, vs, lengths)
    # XLA / cuDNN want [B, S, K, H]; that layout is prepared once, outside the timing
    k_BSKH, v_BSKH = block((jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)))
    ks_BSK = None if ks is None else block(jnp.swapaxes(ks, 1, 2))
    vs_BSK = None if vs is None else block(jnp.swapaxes(vs, 1, 2))

    def sdpa(q, k, v, ks, vs, n):
        if ks is not None:
            k = (k.astype(jnp.float32) * ks[..., None]).astype(q.dtype)
            v = (v.astype(jnp.float32) * vs[..., None]).astype(q.dtype)
        out = jax.nn.dot_product_attention(q[:, None], k, v, key_value_seq_lengths=n, implementation=impl)
        return out[:, 0]

    return jax.jit(sdpa), (q, k_BSKH, v_BSKH, ks_BSK, vs_BSK, lengths)


def _kv_bytes(B, S, K, H, kv_dtype):
    b = 2 * B * K * S * H * jnp.dtype(kv_dtype).itemsize
    return b + (2 * B * K * S * 4 if kv_dtype == "int8" else 0)


def _extra_bytes(impl, B, S, K, N, H, kv_dtype):
    """Rough scratch memory an impl needs beyond the cache (to skip points that cannot fit)."""
    elems = B * K * S * H
    if impl == "reference":
        return 2 * elems * 4 + B * N * S * 8  # float32 copies of k, v and the logits/probabilities
    if impl in ("xla", "cudnn"):
        return _kv_bytes(B, S, K, H, kv_dtype) + (2 * elems * 2 if kv_dtype == "int8" else 0)
    return 0


def _goal(row, xla_ms):
    if row["impl"] != "pallas" or jax.default_backend() != "gpu":
        return ""
    parts = []
    B, S = row["B"], row["S"]
    if B == 1 and S >= 32768:
        parts.append(f"bw>=70%:{'yes' if row['frac_copy_bw'] >= 0.7 else 'NO'}")
    elif B * S >= LARGE_BS:
        parts.append(f"bw>=80%:{'yes' if row['frac_copy_bw'] >= 0.8 else 'NO'}")
    if S >= 8192 and xla_ms is not None:
        parts.append(f"<xla:{'yes' if row['ms'] < xla_ms else 'NO'}")
    return " ".join(parts)


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(AttentionBenchSpec, spec)
    import pallas_kernels as pk

    info = device_info()
    backend = info["backend"]
    copy_bw = measure_bandwidth(s.probe_bytes, "copy")
    read_bw = measure_bandwidth(s.probe_bytes, "read")
    if s.hardware == "auto":
        hw = profile_for_device_kind(info["device_kind"]) if backend != "cpu" else None
        hw = hw or HardwareProfile.measured(f"{info['device_kind']} (probe)", read_bw,
                                            measure_matmul_flops(512, s.q_dtype), info["device_memory_bytes"])
    else:
        hw = load_hardware(s.hardware)
    family, interpret = pk.pick_backend()
    print(f"  device: {info['device_kind']}; probe {copy_bw / 1e9:.1f} GB/s copy, {read_bw / 1e9:.1f} GB/s read; "
          f"roofline profile {hw.name} ({hw.memory_bandwidth / 1e9:.1f} GB/s); pallas kernel: {family}"
          + (" (interpret mode: its times do not measure the kernel)" if interpret else ""), flush=True)
    budget = s.memory_fraction * info["device_memory_bytes"]
    N, H, q_dt = s.n_heads, s.head_dim, jnp.dtype(s.q_dtype)
    rows = []
    for kv_dtype in s.kv_dtypes:
        for K in s.kv_heads:
            for S in sorted(s.context_lens):
                for B in sorted(s.batch_sizes):
                    kv_bytes = _kv_bytes(B, S, K, H, kv_dtype)
                    flops = 4 * B * N * S * H
                    pred_s = max(kv_bytes / hw.memory_bandwidth, flops / hw.peak_flops_bf16)
                    base = {"kv_dtype": kv_dtype, "q_dtype": s.q_dtype, "B": B, "S": S, "K": K, "G": N // K, "H": H,
                            "kv_bytes": kv_bytes, "pred_ms": pred_s * 1e3, "copy_GB_s": copy_bw / 1e9,
                            "read_GB_s": read_bw / 1e9, "hardware": hw.name, "device": info["device_kind"],
                            "pallas_kernel": family + (" (interpret)" if interpret else "")}
                    if kv_bytes > budget:
                        rows += [{**base, "impl": i, "status": f"skipped: cache {kv_bytes / 1e9:.1f} GB > budget"}
                                 for i in s.impls]
                        continue
                    q, k, v, ks, vs = _make_inputs(B, S, K, N, H, kv_dtype if kv_dtype != "int8" else "int8",
                                                   q_dt, s.seed)
                    lengths = jnp.full((B,), S, jnp.int32)
                    outs, point = {}, []
                    for impl in s.impls:
                        row = {**base, "impl": impl}
                        if impl == "cudnn" and (backend != "gpu" or kv_dtype == "float32"):
                            row["status"] = "skipped: cuDNN needs a GPU and a 16-bit cache"
                        elif kv_bytes + _extra_bytes(impl, B, S, K, N, H, kv_dtype) > budget:
                            row["status"] = "skipped: scratch would exceed the memory budget"
                        else:
                            t0 = time.perf_counter()
                            try:
                                fn, args = _impl_fn(impl, q, k, v, ks, vs, lengths)
                                outs[impl] = block(fn(*args))
                                t = time_fn(lambda: fn(*args), warmup=s.warmup, repeats=s.repeats)
                                del args
                                gbs = kv_bytes / t.median_s / 1e9
                                row.update(ms=t.median_s * 1e3, ms_min=t.min_s * 1e3, GB_s=gbs,
                                           frac_copy_bw=gbs * 1e9 / copy_bw, frac_read_bw=gbs * 1e9 / read_bw,
                                           frac_roofline=pred_s / t.median_s, status="ok")
                            except Exception as e:  # one impl failing (e.g. cuDNN shape limits) is a row, not a crash
                                row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                            row["wall_s"] = time.perf_counter() - t0
                        point.append(row)
                    xla_ms = next((r.get("ms") for r in point if r["impl"] == "xla"), None)
                    for row in point:
                        if row["impl"] == "pallas" and "ms" in row:
                            if xla_ms:
                                row["speedup_vs_xla"] = xla_ms / row["ms"]
                            if "reference" in outs:
                                ref = np.asarray(outs["reference"], np.float32)
                                got = np.asarray(outs["pallas"], np.float32)
                                row["err_vs_ref"] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
                            row["goal"] = _goal(row, xla_ms)
                        if "ms" in row:
                            print(f"  {row['impl']:<9} {kv_dtype:<8} B={B:<3} S={S:<6} K={K:<3} {row['ms']:9.3f} ms "
                                  f"{row['GB_s']:8.1f} GB/s ({row['frac_copy_bw']:.0%} of copy bw) "
                                  f"pred {row['pred_ms']:.3f} ms {row.get('goal', '')}", flush=True)
                        else:
                            print(f"  {row['impl']:<9} {kv_dtype:<8} B={B:<3} S={S:<6} K={K:<3} {row['status']}",
                                  flush=True)
                    rows += point
                    del q, k, v, ks, vs, outs
    return rows

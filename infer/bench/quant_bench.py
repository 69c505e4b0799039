"""What each weight format saves and what it costs, side by side in one run.

For one model and each variant (a weight format, optionally with an int8 KV cache): the bytes
the parameters take, perplexity on held-out text, decode tokens/s at each batch size, and MBU
(the weight + KV bytes a decode step must read / the step's time / the device's bandwidth).

Spec fields (configs/experiments/quant_bench.yaml)::

    model: smollm2-135m-instruct   # a model name / dir / .gguf (its tokenizer gives the text's ids), or a
                                   # configs/models name (random weights: perplexity is not reported)
    variants: [float32, bfloat16, int8, int4-g64, native, float32+kv-int8]
                                   # float32 | bfloat16: the float model in that dtype; a format of
                                   # pallas_kernels/matmul/formats.py: quantized after loading (round to nearest);
                                   # native: a GGUF file's own format; "awq:<format>": AWQ scales searched
                                   # on the calibration text, then round to nearest; "+kv-int8": int8 KV cache
    calibration: infer/engine/*.py # AWQ calibration text (a glob under the repo root; not the held-out text)
    batch_sizes: [1, 8]
    prompt_len: 32
    new_tokens: 32
    text: models/val_slice.txt     # held-out text for perplexity (relative to the repo root)
    ppl_windows: 8                 # windows of 256 predicted tokens
    bandwidth_probe_mb: 256        # the read-bandwidth probe behind MBU
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Optional, Tuple

import jax
import numpy as np

from infer.bench import report
from infer.bench.device_probe import measure_bandwidth
from infer.bench.experiment import parse_spec, require
from infer.bench.serving_bench import is_config
from infer.config import SamplingParams
from infer.config.model_config import load_config
from infer.config.paths import REPO_ROOT
from infer.generation.batch import generate
from infer.model.params import init_params
from infer.model.quantize import quantize
from infer.perf import roofline
from infer.perf.perplexity import perplexity
from pallas_kernels.matmul.formats import FORMATS

COLUMNS = ("variant", "weights", "kv", "param_MB", "bytes_per_param", "ppl", "ppl_vs_float32", "batch",
           "ms_per_step", "tok_s", "tok_s_vs_float32", "GB_s", "mbu")

DEFINITIONS = """\
Definitions: param_MB = bytes of every parameter array as stored (embeddings and norms included);
bytes_per_param = param_MB / parameter count. ppl = exp(mean next-token NLL) on the held-out text
(non-overlapping 256-token windows; with an int8 KV cache the windows run through the page pools).
ms_per_step = generate's on-device decode loop time / decode steps (warm: the same shapes ran once
untimed); tok_s = batch / ms_per_step. GB_s = the roofline's bytes of one decode step (weights as
stored + KV read) / ms_per_step; mbu = GB_s / the probed read bandwidth of this device.
"""


@dataclasses.dataclass(frozen=True)
class QuantBenchSpec:
    model: str
    variants: Tuple[str, ...] = ("float32", "int8", "int4-g64")
    batch_sizes: Tuple[int, ...] = (1, 8)
    prompt_len: int = 32
    new_tokens: int = 32
    text: str = "models/val_slice.txt"
    ppl_windows: int = 8
    bandwidth_probe_mb: int = 256
    calibration: str = "infer/engine/*.py"
    plot: bool = True
    # Random-weight models (a configs/models name) only: n_layers replaces the config's layer count (the same
    # matrix shapes in a shorter stack, for a time budget); quant_dtype is the dtype of what a quantized variant
    # keeps in floating point (embeddings, norms, head) and computes in (bfloat16 on a GPU).
    n_layers: Optional[int] = None
    quant_dtype: str = "float32"
    name: str = "quant_bench"

    def __post_init__(self):
        require(len(self.variants) > 0, f"{self.name}.variants", "must not be empty")
        for v in self.variants:
            w = v.split("+")[0].removeprefix("awq:")
            require(w in ("float32", "bfloat16", "native") or w in FORMATS, f"{self.name}.variants",
                    f"{v!r}: weights must be float32, bfloat16, native or one of {sorted(FORMATS)}")
            require(v.count("+") == 0 or v.endswith("+kv-int8"), f"{self.name}.variants",
                    f"{v!r}: the only suffix is +kv-int8")
        require(all(b >= 1 for b in self.batch_sizes), f"{self.name}.batch_sizes", "must be >= 1")
        require(self.n_layers is None or (isinstance(self.n_layers, int) and self.n_layers >= 1),
                f"{self.name}.n_layers", f"must be an int >= 1 or null, got {self.n_layers!r}")
        require(self.quant_dtype in ("float32", "bfloat16"), f"{self.name}.quant_dtype",
                f"must be float32 or bfloat16, got {self.quant_dtype!r}")


def calibration_ids(s: QuantBenchSpec, tok) -> np.ndarray:
    paths = sorted(glob.glob(os.path.join(REPO_ROOT, s.calibration)))
    require(len(paths) > 0, f"{s.name}.calibration", f"{s.calibration!r} matches no file under the repo root")
    return np.asarray(tok.encode("\n\n".join(open(p, encoding="utf-8").read() for p in paths)), np.int32)


def load_variant(s: QuantBenchSpec, variant: str):
    """(cfg, params, tokenizer or None) of one variant."""
    weights = variant.split("+")[0]
    if weights.startswith("awq:"):
        require(not is_config(s.model), f"{s.name}.variants", "AWQ needs a real model and its tokenizer")
        from infer.io.checkpoint import load_model_dir
        from infer.io.tokenizer import load_tokenizer
        from infer.model.awq import awq_quantize
        cfg, params = load_model_dir(s.model, dtype="float32")
        tok = load_tokenizer(s.model, vocab_size=cfg.vocab_size)
        params, cfg, _ = awq_quantize(params, cfg, weights[4:], calibration_ids(s, tok), max_rows=2048)
        if variant.endswith("+kv-int8"):
            cfg = cfg.replace(kv_cache_dtype="int8")
        return cfg, params, tok
    tok = None
    require(s.n_layers is None or is_config(s.model), f"{s.name}.n_layers",
            "only a random-weight model (a configs/models name) can be shortened")
    if is_config(s.model):
        layers = {} if s.n_layers is None else {"n_layers": s.n_layers}
        cfg = load_config(s.model, dtype=weights if weights in ("float32", "bfloat16") else s.quant_dtype, **layers)
        params = init_params(cfg, jax.random.PRNGKey(0))
        if weights not in ("float32", "bfloat16", "native"):
            params, cfg = quantize(params, cfg, weights)
        require(weights != "native", f"{s.name}.variants", "native needs a GGUF model, not random weights")
    else:
        from infer.io.checkpoint import load_model_dir
        from infer.io.tokenizer import load_tokenizer
        dtype = weights if weights in ("float32", "bfloat16") else "float32"
        fmt = None if weights in ("float32", "bfloat16") else weights
        cfg, params = load_model_dir(s.model, dtype=dtype, weight_format=fmt)
        tok = load_tokenizer(s.model, vocab_size=cfg.vocab_size)
    if variant.endswith("+kv-int8"):
        cfg = cfg.replace(kv_cache_dtype="int8")
    return cfg, params, tok


def _ms_per_step(params, cfg, B: int, s: QuantBenchSpec) -> float:
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, size=s.prompt_len).tolist() for _ in range(B)]
    sp = SamplingParams(temperature=0.0, max_new_tokens=s.new_tokens)
    generate(params, cfg, prompts, sp)  # compile
    runs = [generate(params, cfg, prompts, sp) for _ in range(3)]
    return float(np.median([r.decode_s / r.decode_steps for r in runs])) * 1e3


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(QuantBenchSpec, spec)
    bw = measure_bandwidth(s.bandwidth_probe_mb << 20)
    text = None
    if not is_config(s.model):
        with open(os.path.join(REPO_ROOT, s.text), encoding="utf-8") as f:
            text = f.read()
    rows, base = [], {}
    for variant in s.variants:
        cfg, params, tok = load_variant(s, variant)
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
        nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
        ppl = None
        if tok is not None:
            ids = np.asarray(tok.encode(text), np.int32)
            ppl = perplexity(params, cfg, ids, max_windows=s.ppl_windows,
                             cached=cfg.kv_cache_dtype is not None)["ppl"]
        fp_params = roofline.num_params(cfg)
        for B in s.batch_sizes:
            ms = _ms_per_step(params, cfg, B, s)
            cost = roofline.decode_cost(cfg, B, s.prompt_len + s.new_tokens // 2)
            gbs = cost.bytes / (ms / 1e3) / 1e9
            row = {"variant": variant, "weights": cfg.weight_format or cfg.dtype, "kv": cfg.kv_cache_dtype or cfg.dtype,
                   "param_MB": nbytes / 1e6, "bytes_per_param": nbytes / max(n_params, fp_params),
                   "ppl": ppl, "batch": B, "ms_per_step": ms, "tok_s": B / (ms / 1e3), "GB_s": gbs,
                   "mbu": gbs * 1e9 / bw, "probe_GB_s": bw / 1e9, "model": s.model,
                   "backend": jax.default_backend()}
            if variant == s.variants[0]:
                base[B] = row
            rows.append(row)
            print(f"  {variant:>18} B={B}: {row['param_MB']:.1f} MB, ppl {ppl if ppl is None else round(ppl, 3)}, "
                  f"{ms:.2f} ms/step, {row['tok_s']:.1f} tok/s, MBU {row['mbu']:.1%}", flush=True)
        del params
    for r in rows:
        b = base[r["batch"]]
        r["tok_s_vs_float32"] = r["tok_s"] / b["tok_s"]
        r["ppl_vs_float32"] = None if r["ppl"] is None or b["ppl"] is None else r["ppl"] / b["ppl"]
    os.makedirs(out_dir, exist_ok=True)
    table = report.markdown_table(rows, COLUMNS)
    report.write_json({"spec": dataclasses.asdict(s), "definitions": DEFINITIONS, "probe_GB_s": bw / 1e9,
                       "rows": rows}, os.path.join(out_dir, "quant.json"))
    with open(os.path.join(out_dir, "quant.md"), "w") as f:
        f.write(f"# {s.name}: weight formats on {s.model} ({jax.default_backend()}, probed read bandwidth "
                f"{bw / 1e9:.1f} GB/s)\n\n{table}\n{DEFINITIONS}")
    if s.plot:
        _plot(rows, os.path.join(out_dir, "quant.png"), s)
    return rows


def _plot(rows, path: str, s: QuantBenchSpec) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for B in s.batch_sizes:
        pts = [(r["bytes_per_param"], r["tok_s"], r["variant"]) for r in rows if r["batch"] == B]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=f"batch {B}")
        for x, y, name in pts:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("bytes per parameter (as stored)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"{s.name}: {s.model}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""SmolLM2-135M on CPU, side by side: this stack vs transformers (vs llama.cpp when installed).

    python -m infer.bench.cpu_chat_bench --out results/cpu-chat

Every engine gets the same prompts (B rows of `--prompt-len` tokens: windows of real Python
source, models/val_slice.txt, encoded with the model's tokenizer; `--prompts random` draws ids
instead) and decodes `--new-tokens` tokens greedily, with no stop token, at each batch size and dtype:

- this stack: `infer.generate` (prefill + first token timed as TTFT, then the on-device
  `lax.while_loop` decode; ms/step = decode seconds / decode steps);
- this stack, speculative (float32, k = `--k`): prompt lookup (`infer.ngram_speculative_generate`,
  no draft model) and, when one is shipped, the pruned + distilled draft; ms/step = decode
  seconds / tokens emitted per row after the first, so tok/s compares directly with plain;
- transformers: `model.generate(do_sample=False)` on the same GGUF file, timed by a streamer
  that timestamps every generated step (TokenClock): TTFT = call to first token, ms/step =
  first to last token / (N - 1) (generate's own per-step overhead included);
- llama.cpp through llama-cpp-python, only if it is importable (infer/bench/llama_cpp_runner.py: B
  sequences of one context, one llama_decode per step): the Q4_1 file as stored (quantized
  arithmetic) and F32 / F16 files re-encoded from it (infer/io/gguf_convert.py), the float
  baselines of the two dequantized stacks.

This stack runs in `--layouts` (default auto = unrolled on CPU, infer/model/layout.py); with
several, each gets its own rows and the first is the ratio's base.

Each configuration is warmed up once, then timed `--repeats` times; the table reports the
median with min/max and the run-to-run spread ((max - min) / median). tok/s = B * 1000 /
ms_step (decode only). "same greedy" compares the first `--check-tokens` generated ids of
every row with transformers float32 at the same batch. Writes cpu_chat.json and
cpu_chat.md under --out. torch runs with OMP_WAIT_POLICY=PASSIVE unless the environment sets
it (see the comment at the import).
"""
from __future__ import annotations

import os

# Before torch is imported: OpenMP's default busy-wait makes a 2-thread torch forward ~20x slower when the
# 2 cores are shared with other processes (measured 7.9 s vs 0.45 s passive for 2 x 64 tokens).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import jax
import numpy as np

MODEL = "smollm2-135m-instruct"
VOCAB = 49152  # its V: prompts are drawn before any model is loaded
LLAMA_CPP_KINDS = ("q4_1", "f32", "f16")  # the shipped file, and float re-encodings of it
LLAMA_CPP_HINT = ("llama-cpp-python is not installed: `pip install llama-cpp-python diskcache` (builds llama.cpp "
                  "from source, ~10 min on 2 cores), then rerun")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo ('unknown' elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_prompts(B: int, T: int, vocab: int, seed: int = 0) -> List[List[int]]:
    """B prompts of T random token ids (ids from [100, vocab): no special tokens)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(100, vocab, T).tolist() for _ in range(B)]


def text_prompts(B: int, T: int) -> List[List[int]]:
    """B windows of T tokens of real Python source (models/val_slice.txt), spread over the file."""
    import infer
    from infer.config import REPO_ROOT
    with open(os.path.join(REPO_ROOT, "models", "val_slice.txt")) as f:
        ids = infer.load_tokenizer(MODEL).encode(f.read(), add_special_tokens=False)
    step = (len(ids) - T) // max(B, 1)
    return [ids[i * step:i * step + T] for i in range(B)]


def summarize(samples_ms: List[float]) -> dict:
    """Median, min, max and spread ((max - min) / median) of per-repeat ms/step samples."""
    med = statistics.median(samples_ms)
    return {"ms_step": med, "ms_min": min(samples_ms), "ms_max": max(samples_ms),
            "spread": (max(samples_ms) - min(samples_ms)) / med, "samples_ms": samples_ms}


@functools.lru_cache(maxsize=None)
def load_stored(dtype: str):
    """(cfg, params) of the GGUF file at `dtype`, read and dequantized once per dtype (~8 s each)."""
    import infer
    return infer.load_model_dir(MODEL, dtype=dtype)


@functools.lru_cache(maxsize=None)
def load_ours(dtype: str, layout: str = "auto"):
    """(cfg, params) of this stack at `dtype` in `layout`: one file read per dtype, re-laid out per layout."""
    import infer
    return infer.for_decode(*load_stored(dtype), layout)


def run_ours(model, B: int, prompts, new_tokens: int, repeats: int) -> dict:
    """This stack's `model` = (cfg, params) at one batch: decode ms/step samples, TTFT and the generated ids."""
    import infer
    cfg, params = model
    sp = infer.SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    # Warm-up: compiles both programs; half the tokens land in the same shape buckets.
    infer.generate(params, cfg, prompts, infer.SamplingParams(temperature=0.0, max_new_tokens=new_tokens // 2 + 1))
    steps, ttft = [], []
    for _ in range(repeats):
        r = infer.generate(params, cfg, prompts, sp)
        steps.append(r.decode_s / r.decode_steps * 1e3)
        ttft.append(r.ttft_s * 1e3)
    return dict(summarize(steps), ttft_ms=statistics.median(ttft), tokens=r.tokens)


def run_ours_speculative(kind: str, B: int, prompts, new_tokens: int, repeats: int, k: int,
                         layout: str = "auto") -> dict:
    """This stack in float32 with speculative decoding ("prompt lookup" or "draft"): ms per emitted token per row."""
    import infer
    cfg, params = load_ours("float32", layout)
    sp = infer.SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    if kind == "prompt lookup":
        run = lambda s: infer.ngram_speculative_generate(params, cfg, prompts, s, k)
    else:
        from infer.train.smollm2_draft import load_smollm2_draft
        dcfg, dparams = load_smollm2_draft(target_params=params)
        run = lambda s: infer.speculative_generate(params, cfg, dparams, dcfg, prompts, s, k)
    run(infer.SamplingParams(temperature=0.0, max_new_tokens=new_tokens // 2 + 1))
    steps, ttft = [], []
    for _ in range(repeats):
        r = run(sp)
        steps.append(r.decode_s / max(r.decode_steps, 1) * 1e3)
        ttft.append(r.ttft_s * 1e3)
    return dict(summarize(steps), ttft_ms=statistics.median(ttft), tokens=r.tokens,
                acceptance=r.mean_accepted / k, tokens_per_pass=r.tokens_per_target_pass)


def load_transformers(dtype: str):
    """The same GGUF file through transformers (dequantized to float32, then cast)."""
    import torch
    from transformers import AutoModelForCausalLM
    from infer.io.model_names import model_file
    path = model_file(MODEL)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    return model.to(getattr(torch, dtype)).eval()


class TokenClock:
    """A transformers streamer that timestamps each put(): the prompt first, then every generated step.

    sync: wait for the device before each timestamp (on CUDA, put() is called before the step's kernels end)."""

    def __init__(self, sync: bool = False):
        self.times: List[float] = []
        self.sync = sync

    def put(self, value):
        if self.sync:
            import torch
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def run_transformers(model, B: int, prompts, new_tokens: int, repeats: int) -> dict:
    """model.generate greedy with a TokenClock: TTFT = start to first token, ms/step = first to last / (N - 1).
    The prompts go to the model's device (CPU here, CUDA in infer/bench/gpu_chat_bench.py)."""
    import torch
    ids = torch.tensor(prompts, dtype=torch.long, device=model.device)
    mask = torch.ones_like(ids)

    def gen(n: int, clock=None):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                 pad_token_id=0, eos_token_id=None, streamer=clock)
        return out[:, ids.shape[1]:]

    gen(8)  # warm-up (torch compiles nothing: this only warms the allocator and caches)
    steps, ttft = [], []
    for _ in range(repeats):
        clock = TokenClock(sync=model.device.type == "cuda")
        t0 = time.perf_counter()
        out = gen(new_tokens, clock)
        first, last = clock.times[1], clock.times[-1]  # times[0]: the prompt
        steps.append((last - first) / (len(clock.times) - 2) * 1e3)
        ttft.append((first - t0) * 1e3)
    return dict(summarize(steps), ttft_ms=statistics.median(ttft), tokens=out.tolist())


def run_llama_cpp_rows(kinds: List[str], batches: List[int], prompts, new_tokens: int, repeats: int,
                       out_dir: str) -> List[dict]:
    """llama.cpp rows (one per file kind and batch), or one row saying why there are none."""
    if not kinds:
        return []
    if llama_cpp_version() == "not installed":
        return [dict(engine="llama.cpp", dtype="–", batch=batches[0], skipped=LLAMA_CPP_HINT)]
    from infer.bench.llama_cpp_runner import run_llama_cpp
    rows = []
    for kind in kinds:
        path = llama_cpp_file(kind, out_dir)
        for B in batches:
            print(f"[cpu_chat_bench] llama.cpp {kind} batch {B} ...", file=sys.stderr, flush=True)
            r = run_llama_cpp(path, prompts[B], new_tokens, repeats)
            rows.append(dict(engine="llama.cpp (llama-cpp-python)", dtype=f"gguf {kind.upper()}", batch=B,
                             **summarize(r.pop("steps_ms")), **r))
    return rows


def llama_cpp_file(kind: str, out_dir: str) -> str:
    """The GGUF file llama.cpp runs for `kind`: the shipped Q4_1, or a float re-encoding of it written under out_dir
    once (~0.5 GB for f32) and reused by later runs."""
    from infer.io.gguf_convert import write_dequantized
    from infer.io.model_names import model_file
    if kind == "q4_1":
        return model_file(MODEL)
    path = os.path.join(out_dir, f"{MODEL}.{kind}.gguf")
    if not os.path.exists(path):
        os.makedirs(out_dir, exist_ok=True)
        write_dequantized(MODEL, path, kind)
    return path


def llama_cpp_version() -> str:
    """llama-cpp-python's version, or 'not installed'."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return "not installed"


def same_greedy(tokens: List[List[int]], ref: List[List[int]], n: int) -> str:
    """'k/B rows' whose first n generated ids equal the reference's."""
    k = sum(list(a[:n]) == list(b[:n]) for a, b in zip(tokens, ref))
    return f"{k}/{len(ref)}"


def table(rows: List[dict]) -> str:
    """The markdown table of the results."""
    head = ("| engine | dtype | batch | decode tok/s | ms/step (median) | min / max ms | spread | × this stack f32 "
            "| TTFT ms | same greedy as transformers f32 (first 32) | acceptance (tokens/pass) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        if r.get("skipped"):
            body += f"| {r['engine']} | {r['dtype']} | {r['batch']} |" + " – |" * 6 + f" {r['skipped']} | – |\n"
            continue
        body += (f"| {r['engine']} | {r['dtype']} | {r['batch']} | {r['tok_s']:.1f} | {r['ms_step']:.1f} | "
                 f"{r['ms_min']:.1f} / {r['ms_max']:.1f} | {100 * r['spread']:.0f}% | "
                 f"{r['ratio_to_ours_f32']:.2f} | {r['ttft_ms']:.0f} | {r['same_greedy']} | "
                 + (f"{r['acceptance']:.1%} ({r['tokens_per_pass']:.2f}) |\n" if "acceptance" in r else "– |\n"))
    return head + body


def int_list(text: str, allow_empty: bool = False) -> List[int]:
    """An option's type: '1,8' -> [1, 8], positive integers ('' -> [] when allow_empty); anything else is refused
    at parse time with the option's name (argparse adds it)."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = None
    if vals is None or (not vals and not allow_empty) or (vals and min(vals) < 1):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of positive integers"
                                         + (" (or empty)" if allow_empty else ""))
    return vals


def _dtype_list(text: str) -> List[str]:
    from infer.config import DTYPES
    vals = [x.strip() for x in text.split(",") if x.strip()]
    if not vals or set(vals) - set(DTYPES):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of {', '.join(DTYPES)}")
    return vals


def llama_cpp_kinds(text: str) -> List[str]:
    """--llama-cpp's type: 'f32,q4_1' -> ['f32', 'q4_1'] (empty: none); an unknown kind is refused at parse time,
    before the minutes of other rows run."""
    kinds = [x.strip() for x in text.split(",") if x.strip()]
    if set(kinds) - set(LLAMA_CPP_KINDS):
        raise argparse.ArgumentTypeError(f"--llama-cpp {text!r}: kinds are {', '.join(LLAMA_CPP_KINDS)}")
    return kinds


def add_workload_args(ap: argparse.ArgumentParser, dtypes: str, repeats: int) -> None:
    """The workload options both chat benches share: prompt length, new tokens, batches, dtypes, repeats
    (--batches and --dtypes parse to lists; a bad entry is refused at parse time, naming the option)."""
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int_list, default="1,8", help="comma list of positive batch sizes")
    ap.add_argument("--dtypes", type=_dtype_list, default=dtypes)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--check-tokens", type=int, default=32)


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/cpu-chat")
    add_workload_args(ap, dtypes="float32,bfloat16", repeats=3)
    ap.add_argument("--prompts", choices=["text", "random"], default="text")
    ap.add_argument("--k", type=int, default=4, help="proposals per target pass for the speculative rows")
    ap.add_argument("--layouts", default="auto", help="comma list of this stack's parameter layouts: auto, "
                    "stacked, unrolled (several: rows for each, the first is the ratio's base)")
    ap.add_argument("--llama-cpp", type=llama_cpp_kinds, default="q4_1,f32,f16",
                    help="comma list of llama.cpp files: q4_1 (as shipped), f32, f16 (re-encoded); empty: none")
    ap.add_argument("--speculative", default="prompt lookup,draft",
                    help="comma list of speculative rows: 'prompt lookup', 'draft' (skipped if none is shipped)")
    args = ap.parse_args(argv)
    import torch
    import transformers
    batches, dtypes = args.batches, args.dtypes
    t_start = time.perf_counter()
    results: List[dict] = []
    prompts = {B: (text_prompts(B, args.prompt_len) if args.prompts == "text" else
                   make_prompts(B, args.prompt_len, VOCAB)) for B in batches}
    runs: Dict[tuple, Callable[[], dict]] = {}
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    ours = lambda lay: "this stack" if len(layouts) == 1 else f"this stack [{lay}]"
    for lay in layouts:
        for dt in dtypes:
            for B in batches:
                runs[(ours(lay), dt, B)] = (lambda dt=dt, B=B, lay=lay: run_ours(load_ours(dt, lay), B, prompts[B],
                                                                                 args.new_tokens, args.repeats))
    kinds = [x.strip() for x in args.speculative.split(",") if x.strip()]
    for kind in kinds:
        for B in batches:
            runs[(f"{ours(layouts[0])} + {kind} k={args.k}", "float32", B)] = (
                lambda kind=kind, B=B: run_ours_speculative(kind, B, prompts[B], args.new_tokens, args.repeats,
                                                            args.k, layouts[0]))
    for dt in dtypes:
        model = None
        for B in batches:
            def hf(dt=dt, B=B):
                nonlocal model
                model = model if model is not None else load_transformers(dt)
                return run_transformers(model, B, prompts[B], args.new_tokens, args.repeats)
            runs[("transformers", dt, B)] = hf
    for key, fn in runs.items():
        print(f"[cpu_chat_bench] {key[0]} {key[1]} batch {key[2]} ...", file=sys.stderr, flush=True)
        try:
            r = fn()
        except FileNotFoundError as e:  # e.g. no shipped draft
            results.append(dict(engine=key[0], dtype=key[1], batch=key[2], skipped=f"skipped: {e}"))
            continue
        results.append(dict(engine=key[0], dtype=key[1], batch=key[2], **r))
    results += run_llama_cpp_rows(args.llama_cpp, batches, prompts, args.new_tokens, args.repeats, args.out)

    ours_f32 = {r["batch"]: r["ms_step"] for r in results
                if r["engine"] == ours(layouts[0]) and r["dtype"] == "float32"}
    ref = {r["batch"]: r["tokens"] for r in results if r["engine"] == "transformers" and r["dtype"] == "float32"}
    for r in results:
        if r.get("skipped"):
            continue
        r["tok_s"] = r["batch"] * 1e3 / r["ms_step"]
        base = ours_f32.get(r["batch"])
        r["ratio_to_ours_f32"] = base / r["ms_step"] if base else float("nan")
        r["same_greedy"] = (same_greedy(r["tokens"], ref[r["batch"]], args.check_tokens) if r["batch"] in ref
                            else "n/a")
    env = {"cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__, "transformers": transformers.__version__,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "model": MODEL,
           "layouts": layouts, "llama_cpp": llama_cpp_version(),
           "command": "python -m infer.bench.cpu_chat_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
           "total_s": time.perf_counter() - t_start}
    md = (f"{env['cpu']}, {env['cores']} cores; JAX {env['jax']}, transformers {env['transformers']} (torch "
          f"{env['torch']}, {env['torch_threads']} threads); {args.prompt_len}-token prompts, {args.new_tokens} new "
          f"tokens, greedy; median of {args.repeats} after a warm-up; ratio > 1 = faster than this stack f32.\n\n"
          + table(results))
    return write_results(args.out, "cpu_chat", env, results, md)


def write_results(out_dir: str, stem: str, env: dict, results: List[dict], md: str) -> Dict:
    """<out_dir>/<stem>.json (env + rows) and <stem>.md (the table), the table printed; returns env and rows."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump({"env": env, "results": results}, f, indent=1)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"[{stem}_bench] total {env['total_s']:.0f} s", file=sys.stderr)
    return {"env": env, "results": results}


if __name__ == "__main__":
    main()

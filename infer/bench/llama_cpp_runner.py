"""llama.cpp as a baseline: batched greedy decoding through llama-cpp-python's low-level API.

The high-level `Llama` object decodes one sequence; B rows are decoded here as B sequences of one
llama.cpp context: the prompts prefilled in one `llama_decode` (every row's last position asks for
logits), then one `llama_decode` per step with one token per row, argmax in numpy. Timed like the
other engines of cpu_chat_bench: TTFT = prefill + first token, ms/step = the remaining decode time /
(N - 1). Only used when llama_cpp is importable (`pip install llama-cpp-python diskcache`: it
builds llama.cpp from source, ~10 min on 2 cores).

The benchmarks run it in a child process (`python -m infer.bench.llama_cpp_runner --serve`: the model
loaded once, one JSON request per line on stdin, one reply per line on stdout) whose
environment drops OMP_WAIT_POLICY: cpu_chat_bench sets it to PASSIVE for torch, and llama.cpp's
OpenMP threads, which meet at a barrier after every op, then sleep instead of spinning between
ops: its F32 decode step went from ~11 to ~28 ms on 2 cores.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import statistics
import time
from typing import List

import numpy as np


_CALLBACKS = []  # the ctypes log callback, kept alive: llama.cpp holds its pointer


def quiet_llama_cpp() -> None:
    """Silence llama.cpp's own logging (model loading prints hundreds of lines to stderr)."""
    import llama_cpp as lc
    if not _CALLBACKS:
        _CALLBACKS.append(lc.llama_log_callback(lambda level, text, user_data: None))
    lc.llama_log_set(_CALLBACKS[0], ctypes.c_void_p(0))


class LlamaCppBatch:
    """One llama.cpp model + context able to hold `batch` sequences of up to `max_len` tokens each."""

    def __init__(self, path: str, batch: int, max_len: int, threads: int = 0, use_mmap: bool = True):
        import llama_cpp as lc
        self.lc = lc
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.use_mmap = use_mmap
        self.model = lc.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = batch * max_len
        cp.n_batch = cp.n_ubatch = batch * max_len
        cp.n_seq_max = batch
        cp.n_threads = cp.n_threads_batch = threads or os.cpu_count()
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {batch} x {max_len} tokens")
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(batch * max_len, 0, 1)
        self.rows = batch

    def _decode(self, rows: List[List[int]], start: List[int]) -> np.ndarray:
        """Append rows[b] at positions start[b]..; returns the greedy next token of every row [B]."""
        b_, lc = self.batch, self.lc
        n, last = 0, []
        for r, toks in enumerate(rows):
            for j, t in enumerate(toks):
                b_.token[n], b_.pos[n], b_.n_seq_id[n] = int(t), start[r] + j, 1
                b_.seq_id[n][0] = r
                b_.logits[n] = j == len(toks) - 1
                n += 1
            last.append(n - 1)
        b_.n_tokens = n
        rc = lc.llama_decode(self.ctx, b_)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        out = np.empty(len(rows), np.int64)
        for r, i in enumerate(last):
            ptr = lc.llama_get_logits_ith(self.ctx, i)
            out[r] = int(np.argmax(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                                         shape=(self.vocab,))))
        return out

    def generate(self, prompts: List[List[int]], new_tokens: int):
        """Greedy: (tokens [B][N], ttft_ms, ms per later step)."""
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        nxt = self._decode(prompts, [0] * len(prompts))
        t1 = time.perf_counter()
        toks = [nxt]
        pos = [len(p) for p in prompts]
        for _ in range(new_tokens - 1):
            nxt = self._decode([[int(t)] for t in nxt], pos)
            pos = [p + 1 for p in pos]
            toks.append(nxt)
        t2 = time.perf_counter()
        return np.stack(toks, 1).tolist(), (t1 - t0) * 1e3, (t2 - t1) * 1e3 / max(new_tokens - 1, 1)

    def close(self):
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


def child_env() -> dict:
    """This process's environment without OMP_WAIT_POLICY (llama.cpp wants OpenMP's default, spinning)."""
    return {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}


class LlamaCppProcess:
    """A LlamaCppBatch kept alive in a child process: load once, then generate on request (for alternating
    rounds against another engine without reloading; `python -m infer.bench.llama_cpp_runner --serve`)."""

    def __init__(self, path: str, batch: int, max_len: int):
        import subprocess
        self.proc = subprocess.Popen([sys.executable, "-m", "infer.bench.llama_cpp_runner", "--serve", path,
                                      str(batch), str(max_len)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=child_env())

    def generate(self, prompts: List[List[int]], new_tokens: int):
        """(tokens [B][N], ttft_ms, ms per later step), as LlamaCppBatch.generate."""
        self.proc.stdin.write(json.dumps(dict(prompts=prompts, new_tokens=new_tokens)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp child exited ({self.proc.wait()})")
        return tuple(json.loads(line))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def run_llama_cpp(path: str, prompts: List[List[int]], new_tokens: int, repeats: int) -> dict:
    """In a child process: one warm-up, then `repeats` timed greedy runs of `prompts` (B rows) on the GGUF `path`."""
    child = LlamaCppProcess(path, len(prompts), max(len(p) for p in prompts) + new_tokens + 1)
    try:
        child.generate(prompts, max(new_tokens // 2, 2))
        steps, ttft = [], []
        for _ in range(repeats):
            toks, t_first, ms = child.generate(prompts, new_tokens)
            steps.append(ms)
            ttft.append(t_first)
    finally:
        child.close()
    return dict(steps_ms=steps, ttft_ms=statistics.median(ttft), tokens=toks)


def main(argv=None) -> None:
    """The child: `--serve PATH B MAX_LEN`, then one JSON request per line in, one reply per line out."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--serve"] or len(argv) != 4:
        raise SystemExit("usage: python -m infer.bench.llama_cpp_runner --serve PATH BATCH MAX_LEN")
    quiet_llama_cpp()
    eng = LlamaCppBatch(argv[1], int(argv[2]), int(argv[3]))
    for line in sys.stdin:
        job = json.loads(line)
        print(json.dumps(eng.generate(job["prompts"], job["new_tokens"])), flush=True)
    eng.close()


if __name__ == "__main__":
    main()

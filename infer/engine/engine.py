"""The serving engine: continuous batching of requests over one set of page pools.

    engine = infer.Engine(params, cfg, num_pages=512, page_size=16, max_num_seqs=16,
                          max_num_batched_tokens=256, tokenizer=tok)
    rid = engine.add_request("Hello", infer.SamplingParams(max_new_tokens=32))
    while engine.has_unfinished_requests():
        for update in engine.step():        # new token ids / text, finished flag, finish reason
            ...
    for update in engine.stream("Hi", sp):  # or one request's updates as they come
        print(update.new_text, end="")

Each `step()` asks the scheduler (infer/engine/scheduler.py) which sequences run how
many tokens, builds the step's AttentionMetadata on the host, and makes one device call
(infer/engine/device_step.py: page copies, the ragged model step, sampling); its results
come back in one host transfer. Requests join and leave between any two steps.

Shapes come from a small fixed set per engine (R = max_num_seqs, C = R page copies;
`step_shapes`): a decode-only step runs one token per sequence, its rows bucketed (powers
of two up to R) and its M pages per sequence bucketed to its longest sequence; any
other step runs T = max_num_batched_tokens
tokens over every page of max_model_len, its longest chunk bucketed (static max_q_len),
the at most max_num_partial_prefills multi-token sequences in the first rows (so the
reference attention pads only those). After `warmup()` (or a workload that has visited
the buckets) no step compiles. With speculative decoding (infer/engine/speculation.py) a step
with verify runs runs its own program and shapes (infer/engine/verify_step.py), in the same table.

Structured outputs (SamplingParams.constraint: a JSON schema, regex or grammar): each constrained sequence
has an llguidance matcher on the host (infer/sampling/grammar.py). Every step sends a [S, W] int32 token
bitmask (W = ceil(V / 32); all ones for unconstrained rows) in the sampling arrays, so a constrained request
compiles nothing new; the device masks the logits (infer/sampling/token_mask.py, skipped when no row is
constrained). The matcher consumes each sampled token; a sample finishes ("stop") when its grammar allows
nothing more, or on a stop id, which its mask allows wherever the grammar accepts. Constrained sequences do not
speculate (infer/engine/speculation.py): they decode one token per step in an engine with speculation on.

Bad requests are refused by `add_request` with a RequestError naming the request; nothing
of the engine's state changes, and the other requests keep running. That includes sampling
values the step's per-row arrays cannot hold (int32 top_k, uint32 seed, float32 temperature).
A step that fails anyway raises StepError naming the requests it is blamed on: when the step
failed building its inputs, the requests whose own rows cannot be built (nothing ran; once
they are aborted the others go on), else every request in the step.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from typing import Dict, Iterator, List, Optional, Sequence as Seq, Union

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import ModelConfig, SamplingParams
from infer.config.sampling_params import MAX_MIN_TOKENS_STOPS
from infer.engine.block_manager import BlockManager
from infer.engine.device_step import engine_step
from infer.engine.multihost import StepChannel
from infer.engine.output import append_tokens
from infer.engine.request import (ABORT, CompletionOutput, Request, RequestMetrics, RequestOutput,
                                  RequestUpdate, Sequence, Status)
from infer.engine.scheduler import Scheduler
from infer.engine.speculation import SpeculativeConfig, Speculator, speculative_config, verify_inputs
from infer.engine.verify_step import verify_step
from infer.kv.metadata import SequenceStep, bucket, build_metadata
from infer.kv.pool import DEFAULT_PAGE_SIZE, init_pools
from infer.model.layout import for_engine
from infer.parallel.distributed import to_host
from infer.parallel.tensor_parallel import mesh_context, prepare_tensor_parallel, shard_pools
from infer.sampling.processors import host_top_logprobs, processing_arrays
from infer.sampling.grammar import mask_words
from infer.sampling.token_mask import all_allowed

# How much of a sampled request's seed the i-th parallel sample shifts by (sample 0 keeps the seed itself).
SAMPLE_SEED_STRIDE = 0x9E3779B9


class RequestError(ValueError):
    """A request the engine cannot serve; the message names the request and the problem."""


class StepError(RuntimeError):
    """A step failed. `request_ids` are the requests it is attributed to: the ones whose own inputs the step
    could not build when that is where it failed (the others in the step go on: nothing ran), else every
    request in the step. `pools_lost`: the device call consumed the donated page pools, so nothing in flight
    can go on. The engine aborts nobody itself; the caller decides (infer/server/async_engine.py aborts them)."""

    def __init__(self, message: str, request_ids: List[str], pools_lost: bool = False):
        super().__init__(message)
        self.request_ids, self.pools_lost = list(request_ids), pools_lost


def sampling_arrays(per_sample: List[SamplingParams], seeds: List[int], S: int,
                    words: Optional[int] = None) -> dict:
    """Per-sample numpy rows for the device sampler, padded to S with greedy rows; with `words` (W) also the
    token bitmask [S, W] int32, all ones (token_mask.all_allowed: the engine replaces it where a row is
    constrained)."""
    greedy = SamplingParams(temperature=0.0)
    rows = per_sample + [greedy] * (S - len(per_sample))
    col = lambda f, dt: np.array([getattr(p, f) for p in rows], dt)
    out = {"temperature": col("temperature", np.float32), "top_k": col("top_k", np.int32),
           "top_p": col("top_p", np.float32), "min_p": col("min_p", np.float32),
           "seed": np.array(seeds + [0] * (S - len(seeds)), np.uint32)}
    if words is not None:
        out["token_bitmask"] = all_allowed(S, words)
    return out


class Engine:
    def __init__(self, params, cfg: ModelConfig, *, num_pages: Optional[int] = None,
                 page_size: int = DEFAULT_PAGE_SIZE, max_num_seqs: int = 16, max_num_batched_tokens: int = 256,
                 tokenizer=None, max_model_len: Optional[int] = None, enable_prefix_caching: bool = True,
                 poison_freed_pages: bool = False,
                 max_num_partial_prefills: int = 4, mesh=None, layout: str = "auto",
                 speculative: Union[None, str, SpeculativeConfig] = None,
                 num_speculative_tokens: Optional[int] = None):
        """mesh: a jax.sharding.Mesh whose "model" axis runs the engine tensor-parallel (parameters and page
        pools split by heads; infer/parallel/tensor_parallel.py). The host side is unchanged.
        layout: the parameters' layout for the step (infer/model/layout.py's for_engine: "auto" = unrolled on GPU,
        where a layer scan copies every weight slice each step; as given on CPU and TPU); a mesh keeps stacked.
        speculative: None, "ngram" or a SpeculativeConfig (infer/engine/speculation.py); num_speculative_tokens
        sets its k."""
        if mesh is not None:
            cfg, params = prepare_tensor_parallel(params, cfg, mesh)
        else:
            cfg, params = for_engine(cfg, params, layout)
        max_model_len = min(cfg.max_seq_len, max_model_len or cfg.max_seq_len)
        for name, v in (("page_size", page_size), ("max_num_seqs", max_num_seqs),
                        ("max_num_batched_tokens", max_num_batched_tokens), ("max_model_len", max_model_len)):
            if not (isinstance(v, int) and v > 0):
                raise ValueError(f"{name}: must be an int > 0, got {v!r}")
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_num_seqs "
                             f"({max_num_seqs}): every running sequence needs room for its decode token")
        pages_per_seq = -(-max_model_len // page_size)
        if num_pages is None:  # room for every sequence at up to 1024 tokens (or the context, if shorter)
            num_pages = max_num_seqs * -(-min(max_model_len, 1024) // page_size)
        self.params, self.cfg, self.tokenizer, self.mesh = params, cfg, tokenizer, mesh
        self.page_size, self.num_pages = page_size, num_pages
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.max_model_len, self.pages_per_seq = max_model_len, pages_per_seq
        self.poison_freed_pages = poison_freed_pages
        self.kv = init_pools(cfg, num_pages, page_size)  # in cfg.kv_cache_dtype, the one KV dtype knob
        if mesh is not None:
            self.kv = shard_pools(self.kv, mesh)
        # Several processes: process 0 schedules and broadcasts each step's inputs (infer/engine/multihost.py).
        self.mask_words = mask_words(cfg.vocab_size)  # W of the token bitmask every step sends
        self.grammar = None  # the llguidance tokenizer (infer/sampling/grammar.py), built at the first constraint
        self.channel = StepChannel(num_pages, self.mask_words) if jax.process_count() > 1 else None
        self.blocks = BlockManager(num_pages, page_size, enable_prefix_caching)
        if not (isinstance(max_num_partial_prefills, int) and max_num_partial_prefills > 0):
            raise ValueError(f"max_num_partial_prefills: must be an int > 0, got {max_num_partial_prefills!r}")
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max_num_batched_tokens, max_num_partial_prefills)
        spec = speculative_config(speculative, num_speculative_tokens)
        if spec is not None and self.channel is not None:
            raise ValueError("speculative: not supported with several processes yet")
        self.spec = None if spec is None else Speculator(spec, max_num_seqs, max_num_partial_prefills)
        self.requests: Dict[str, Request] = {}
        self.finished_metrics: collections.deque = collections.deque(maxlen=100_000)
        self._outbox: List[RequestUpdate] = []
        self._ids = itertools.count()
        self._seq_ids = itertools.count()
        self._device_called = False  # whether the current step reached its device call (StepError's attribution)
        self.counters = collections.Counter()  # steps, prefill/decode tokens, prefix hit/query tokens, kv slots

    # ---- requests -------------------------------------------------------------------------------------------
    def add_request(self, prompt: Union[str, Seq[int]], sampling_params: Optional[SamplingParams] = None,
                    request_id: Optional[str] = None, n: int = 1, stop: Seq[str] = (),
                    arrival_time: Optional[float] = None) -> str:
        """Queue a request (token ids, or text when the engine has a tokenizer); returns its id.

        n > 1 draws n samples that share the prompt's pages (sample i uses seed + i * SAMPLE_SEED_STRIDE).
        `stop` strings end a sample's text before the string (needs a tokenizer). arrival_time (a
        time.perf_counter() stamp, default now) is when the request arrived, for its latency metrics. Refused with a
        RequestError naming the request: a duplicate id, an empty prompt, ids outside [0, V), a prompt plus
        max_new_tokens longer than max_model_len, a request larger than the whole pool, a bad n or stop."""
        rid = str(next(self._ids)) if request_id is None else str(request_id)
        sp = sampling_params if sampling_params is not None else SamplingParams()
        err = lambda msg: RequestError(f"request {rid!r}: {msg}")
        if rid in self.requests:
            raise err("a request with this id is still running")
        if not isinstance(sp, SamplingParams):
            raise err(f"sampling_params must be a SamplingParams, got {type(sp).__name__}")
        if not (isinstance(n, int) and 1 <= n <= self.max_num_seqs):
            raise err(f"n must be an int in [1, max_num_seqs={self.max_num_seqs}], got {n!r}")
        if isinstance(stop, str):
            stop = (stop,)
        stop = tuple(stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise err(f"stop must be non-empty strings, got {stop!r}")
        if stop and self.tokenizer is None:
            raise err("stop strings need an engine with a tokenizer")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise err("a text prompt needs an engine with a tokenizer (or pass token ids)")
            ids = list(self.tokenizer.encode(prompt))
        else:
            try:
                ids = [int(t) for t in prompt]
            except (TypeError, ValueError):
                raise err(f"prompt must be text or a sequence of token ids, got {type(prompt).__name__}") from None
        if not ids:
            raise err("empty prompt (need at least one token)")
        bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise err(f"token id {bad[0]} outside [0, vocab_size={self.cfg.vocab_size})")
        try:  # what the step will build for it: a value its device arrays cannot hold is refused here
            sampling_arrays([sp], [sp.seed], 1)
        except (OverflowError, ValueError, TypeError) as e:
            raise err(f"sampling_params do not fit the step's arrays: {e}") from None
        bad = [t for t, _ in sp.logit_bias if t >= self.cfg.vocab_size]
        if bad:
            raise err(f"logit_bias: token id {bad[0]} outside [0, vocab_size={self.cfg.vocab_size})")
        if self.channel is not None and sp.non_neutral_processors():
            raise err(f"{sp.non_neutral_processors()[0]}: not supported with several processes yet")
        total = len(ids) + sp.max_new_tokens
        if total > self.max_model_len:
            raise err(f"prompt length {len(ids)} + max_new_tokens {sp.max_new_tokens} = {total} exceeds the "
                      f"context (max_model_len={self.max_model_len})")
        if self.blocks.pages_for(total) > self.num_pages:
            raise err(f"needs {self.blocks.pages_for(total)} pages of {self.page_size} tokens, more than the "
                      f"whole pool ({self.num_pages} pages)")
        if self.tokenizer is not None and not sp.ignore_eos:
            eos = tuple(getattr(self.tokenizer, "eos_ids", ()))
            sp = dataclasses.replace(sp, stop_token_ids=tuple(dict.fromkeys(sp.stop_token_ids + eos)))
        if sp.min_tokens and len(sp.stop_token_ids) > MAX_MIN_TOKENS_STOPS:
            raise err(f"min_tokens: holds back at most {MAX_MIN_TOKENS_STOPS} stop ids (EOS included), "
                      f"this request has {len(sp.stop_token_ids)}")
        matcher = None
        if sp.constraint is not None:
            if self.tokenizer is None:
                raise err("a constraint (structured output) needs an engine with a tokenizer")
            try:
                if self.grammar is None:
                    from infer.sampling.grammar import TokenGrammar
                    self.grammar = TokenGrammar(self.tokenizer, self.cfg.vocab_size)
                matcher = self.grammar.matcher(sp.constraint.kind, sp.constraint.spec, sp.stop_token_ids)
            except ValueError as e:
                raise err(f"constraint: {e}") from None
        req = Request(request_id=rid, prompt=ids, sampling=sp, n=n, stop=stop,
                      metrics=RequestMetrics(arrival=time.perf_counter() if arrival_time is None else arrival_time,
                                             num_prompt_tokens=len(ids)))
        req.sequences.append(self._new_sequence(req, 0, list(ids)))
        req.sequences[0].matcher = matcher
        self.requests[rid] = req
        self.scheduler.add(req.sequences[0])
        return rid

    def _new_sequence(self, req: Request, index: int, tokens: List[int]) -> Sequence:
        seq = Sequence(seq_id=next(self._seq_ids), request=req, index=index, tokens=tokens,
                       seed=(req.sampling.seed + index * SAMPLE_SEED_STRIDE) % 2 ** 32)
        if self.tokenizer is not None:
            from infer.io.detokenize import StreamingDetokenizer
            seq.detok = StreamingDetokenizer(self.tokenizer, req.prompt)
        return seq

    def abort(self, request_id: str) -> bool:
        """Cancel a request: its pages are freed now; each unfinished sample reports finish_reason 'abort'."""
        req = self.requests.pop(str(request_id), None)
        if req is None:
            return False
        now = time.perf_counter()
        for seq in req.sequences:
            if seq.status is not Status.FINISHED:
                self.scheduler.remove(seq)
                seq.finish_reason = ABORT
                self._outbox.append(RequestUpdate(req.request_id, seq.index, [], "", True, ABORT))
        if not req.forked:  # its n samples were not made yet: each still reports its end
            self._outbox += [RequestUpdate(req.request_id, i, [], "", True, ABORT) for i in range(1, req.n)]
        req.metrics.finished = now
        return True

    def reset_pools(self) -> None:
        """Fresh page pools and an empty prefix cache, after a step that consumed the donated pools failed
        (StepError.pools_lost). Every request must have been aborted first: their pages are gone."""
        if self.requests or self.scheduler.running or self.scheduler.waiting:
            raise RuntimeError("reset_pools: abort every request first")
        self.kv = init_pools(self.cfg, self.num_pages, self.page_size)
        if self.mesh is not None:
            self.kv = shard_pools(self.kv, self.mesh)
        self.blocks = self.scheduler.blocks = BlockManager(self.num_pages, self.page_size,
                                                           self.blocks.enable_prefix_caching)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or bool(self._outbox)

    # ---- the step -------------------------------------------------------------------------------------------
    def step(self) -> List[RequestUpdate]:
        """Run one iteration: schedule, one device call, new tokens to their requests. Returns the updates."""
        updates, self._outbox = self._outbox, []
        if self.spec is not None:
            self.spec.propose(self.scheduler.running, self.max_model_len)
        sched = self.scheduler.schedule()
        if self.spec is not None and sched.scheduled:
            sched.scheduled = self.spec.trim(sched.scheduled)
        now = time.perf_counter()
        for seq, cached in sched.admitted:
            self.counters["prefix_query_tokens"] += len(seq.tokens)
            self.counters["prefix_hit_tokens"] += cached
            m = seq.request.metrics
            if m.first_scheduled is None:
                m.first_scheduled, m.num_cached_tokens = now, cached
        if not sched.scheduled:
            return updates
        self._device_called = False
        try:
            tokens_S, logprobs_S, tops_S = self._run(sched.scheduled)
        except Exception as e:
            self._outbox = updates + self._outbox  # abort updates already made still reach their requests
            raise self._attribute(sched.scheduled, e) from e
        now = time.perf_counter()
        self._advance(sched.scheduled, tokens_S, logprobs_S, now, updates, tops_S)
        used, alloc = self.blocks.kv_slots({s.seq_id: s.num_computed for s in self.scheduler.running})
        self.counters["kv_used_slots"] += used
        self.counters["kv_alloc_slots"] += alloc
        self.counters["steps"] += 1
        return updates

    def _attribute(self, scheduled, error: Exception) -> StepError:
        """Which requests a failed step is blamed on. Before the device call nothing ran (the pools are intact and
        no sequence advanced): the requests whose own sampling rows cannot be built, when there are any. After it,
        every request in the step; the pools are lost if the call consumed them (donated)."""
        in_step = list(dict.fromkeys(s.request.request_id for s, _ in scheduled))
        msg = f"the engine step failed: {type(error).__name__}: {error}"[:500]
        if not self._device_called:
            culprits = []
            for rid in in_step:
                sp = self.requests[rid].sampling if rid in self.requests else None
                try:
                    if sp is not None:
                        sampling_arrays([sp], [sp.seed], 1)
                except Exception:
                    culprits.append(rid)
            return StepError(msg, culprits or in_step)
        lost = any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree_util.tree_leaves(self.kv))
        return StepError(msg, in_step, pools_lost=lost)

    def decode_rows(self, num_seqs: int) -> int:
        """Rows of a decode-only step: the power of two >= its sequences, at most max_num_seqs."""
        return bucket(num_seqs, cap=self.max_num_seqs)

    def step_shapes(self, scheduled) -> dict:
        """The step's static shapes: a decode-only step runs one row per sequence (or per sample, where an unforked
        prompt draws n), the rows and the pages per sequence bucketed to what it holds; any other step runs max_num_batched_tokens tokens, max_num_seqs
        sequences over every page of max_model_len, its longest chunk bucketed (max_q_len), the multi-token
        sequences in the first rows (prefill_rows)."""
        longest = max(n for _, n in scheduled)
        if self.spec is not None and self.spec.uses_verify(scheduled):
            pages = max(len(self.blocks.table(s.seq_id)) for s, _ in scheduled)
            return dict(self.spec.step_shapes(
                scheduled, self._num_samples(scheduled), self.decode_rows, bucket(pages, cap=self.pages_per_seq),
                dict(num_tokens=self.max_num_batched_tokens, pages_per_seq=self.pages_per_seq,
                     max_q_len=bucket(longest, cap=self.max_num_batched_tokens))), verify=True)
        if longest == 1:  # rows for every sample: a prompt whose last chunk is 1 token may still draw n of them
            rows = self.decode_rows(max(len(scheduled), self._num_samples(scheduled)))
            pages = max(len(self.blocks.table(s.seq_id)) for s, _ in scheduled)
            return dict(num_tokens=rows, num_seqs=rows, num_logits=rows, max_q_len=1,
                        pages_per_seq=bucket(pages, cap=self.pages_per_seq), prefill_rows=None)
        R = self.max_num_seqs
        return dict(num_tokens=self.max_num_batched_tokens, num_seqs=R, num_logits=R,
                    pages_per_seq=self.pages_per_seq, max_q_len=bucket(longest, cap=self.max_num_batched_tokens),
                    prefill_rows=min(self.scheduler.max_num_partial_prefills, R))

    def all_step_shapes(self) -> list:
        """Every shape step_shapes can choose (what warmup compiles)."""
        def buckets(lo, hi):
            out, b = [], lo
            while True:
                out.append(b)
                if b >= hi:
                    return out
                b = min(2 * b, hi)
        R = self.max_num_seqs
        shapes = [dict(num_tokens=r, num_seqs=r, num_logits=r, max_q_len=1, pages_per_seq=m, prefill_rows=None)
                  for r in buckets(self.decode_rows(1), R) for m in buckets(1, self.pages_per_seq)]
        if self.spec is not None:
            shapes += [dict(self.spec.verify_shapes(r, m), verify=True)
                       for r in buckets(self.decode_rows(1), R) for m in buckets(1, self.pages_per_seq)]
            if self.max_num_batched_tokens > self.spec.k + 1:
                shapes += [dict(self.spec.mixed_shapes(self.max_num_batched_tokens, self.pages_per_seq, q), verify=True)
                           for q in buckets(2, self.max_num_batched_tokens) if q > self.spec.k + 1]
        elif self.max_num_batched_tokens >= 2:
            shapes += [dict(num_tokens=self.max_num_batched_tokens, num_seqs=R, num_logits=R, max_q_len=q,
                            pages_per_seq=self.pages_per_seq,
                            prefill_rows=min(self.scheduler.max_num_partial_prefills, R))
                       for q in buckets(2, self.max_num_batched_tokens)]
        return shapes

    @staticmethod
    def _num_samples(scheduled) -> int:
        """Samples the step draws: one per sequence whose last token runs (n for a prompt not yet forked)."""
        return sum(1 if s.request.forked else s.request.n for s, n in scheduled
                   if s.num_computed + n - len(s.draft) == len(s.tokens))

    def _run(self, scheduled):
        """Build the step's inputs on the host, run the device step, bring the samples back in one transfer.
        Returns each sample's new tokens and their log p (one each; up to k + 1 from a verify run)."""
        R, Z, P = self.max_num_seqs, self.page_size, self.num_pages
        shapes = self.step_shapes(scheduled)
        verify = shapes.pop("verify", False)
        # metadata rows: multi-token sequences first (prefill_rows); samples stay in scheduled order
        order = sorted(range(len(scheduled)), key=lambda i: scheduled[i][1] == 1)
        steps, logits_row, num_rows = [], {}, 0
        for i in order:
            seq, n = scheduled[i]
            c, d = seq.num_computed, len(seq.draft)
            done = c + n - d == len(seq.tokens)
            steps.append(SequenceStep(tokens=seq.tokens[c:c + n - d] + seq.draft, pages=self.blocks.table(seq.seq_id),
                                      cached=c, logits=("all" if d else "last") if done else "none"))
            if done:
                logits_row[i], num_rows = num_rows, num_rows + 1 + d
        samples, seeds, per_sample, positions, seqs, constrained = [], [], [], [], [], []
        for i, (seq, n) in enumerate(scheduled):
            if i not in logits_row:
                continue
            req = seq.request
            for j in range(1 if req.forked else req.n):
                idx = seq.index if req.forked else j
                samples.append((i, logits_row[i]))
                if seq.matcher is not None:
                    constrained.append((seq.matcher, len(samples) - 1))
                seeds.append((req.sampling.seed + idx * SAMPLE_SEED_STRIDE) % 2 ** 32)
                per_sample.append(req.sampling)
                positions.append(len(seq.tokens))
                seqs.append(seq)
        tokens_T, meta = build_metadata(steps, page_size=Z, num_pages=P, **shapes)
        # samples: one per logits row, or n rows from one prompt (mixed steps: S = R; verify steps: their rows)
        S = shapes["num_seqs"] if verify else shapes["num_logits"]
        samp = self._sampling(per_sample, seeds, S, seqs)  # before drain(): a row that fails leaves the copies pending
        if constrained:
            samp["token_bitmask"] = self._filled_masks(constrained, S)
        copies, fresh = self.blocks.drain()
        if len(copies) > R:
            raise AssertionError(f"{len(copies)} page copies in one step, more than the {R} the step holds")
        src = np.zeros((R,), np.int32)
        dst = np.full((R,), P, np.int32)  # P: out of range, dropped
        for i, (s, d) in enumerate(copies):
            src[i], dst[i] = s, d
        poison = None
        if self.poison_freed_pages:
            poison = np.zeros((P,), bool)
            poison[sorted(set(fresh) - {d for _, d in copies})] = True
        pos = np.zeros((S,), np.int32)
        pos[:len(positions)] = positions
        ns = len(samples)
        if verify:
            rows, drafts, nd = verify_inputs(scheduled, logits_row, samples, S, self.spec.k)
            tok, count, logp, top = self.verify_call(tokens_T, meta, src, dst, rows, drafts, nd, pos, samp, poison)
            tops = [[self._top(top, (s, i), per_sample[s]) for i in range(count[s])] for s in range(ns)]
            return ([tok[s, :count[s]].tolist() for s in range(ns)], [logp[s, :count[s]].tolist() for s in range(ns)],
                    tops)
        rows = np.zeros((S,), np.int32)
        rows[:ns] = [r for _, r in samples]
        tok_S, logp_S, top = self.device_call(tokens_T, meta, src, dst, rows, pos, samp, poison)
        return ([[t] for t in tok_S[:ns].tolist()], [[p] for p in logp_S[:ns].tolist()],
                [[self._top(top, s, per_sample[s])] for s in range(ns)])

    def _sampling(self, per_sample: List[SamplingParams], seeds: List[int], S: int, seqs: List[Sequence]) -> dict:
        """The step's sampling rows: the filters' settings, and the logits processors' arrays (penalties, bias,
        min_tokens, top_logprobs; infer/sampling/processors.py) unless several processes run the step."""
        samp = sampling_arrays(per_sample, seeds, S, self.mask_words)
        if self.channel is None:
            samp |= processing_arrays(per_sample, [s.tokens for s in seqs], [s.num_prompt for s in seqs], S,
                                      self.max_model_len, self.cfg.vocab_size)
        return samp

    @staticmethod
    def _top(top, index, sp: SamplingParams):
        """One token's top_logprobs [(id, log p)] (None when its request did not ask)."""
        if not sp.top_logprobs:
            return None
        return host_top_logprobs(top[0][index], top[1][index], sp.top_logprobs)

    def _filled_masks(self, constrained, S: int) -> jax.Array:
        """The step's token bitmask [S, W] with the constrained samples' rows filled, all ones elsewhere (a
        prompt's n samples share one matcher until they fork: its row is filled once and copied)."""
        t = time.perf_counter()
        bitmask_SW = np.full((S, self.mask_words), -1, np.int32)
        first: Dict[int, int] = {}
        unique, copies = [], []
        for m, row in constrained:
            if id(m) in first:
                copies.append((first[id(m)], row))
            else:
                first[id(m)] = row
                unique.append((m, row))
        self.grammar.fill(unique, bitmask_SW)
        for src, dst in copies:
            bitmask_SW[dst] = bitmask_SW[src]
        self.counters["grammar_mask_s"] += time.perf_counter() - t
        return jnp.asarray(bitmask_SW)

    def verify_call(self, tokens_T, meta, src, dst, rows, drafts, num_drafts, pos, samp, poison):
        """The device call of a step with verify runs (infer/engine/verify_step.py), its results on the host."""
        with mesh_context(self.mesh):
            tok, count, logp, top, self.kv = verify_step(self.params, self.cfg, tokens_T, meta, self.kv, src, dst,
                                                         rows, drafts, num_drafts, pos, samp, poison)
        return to_host((tok, count, logp, top))

    def device_call(self, tokens_T, meta, src, dst, rows, pos, samp, poison):
        """The step's one device call (sampled tokens and their log p, on the host). With several processes
        process 0 first broadcasts the inputs and the others run the same call (infer/engine/multihost.py)."""
        self._device_called = True
        if self.channel is not None and jax.process_index() == 0:
            self.channel.send(tokens_T, meta, src, dst, rows, pos, samp, poison)
        with mesh_context(self.mesh):
            tok_S, logp_S, top, self.kv = engine_step(self.params, self.cfg, tokens_T, meta, self.kv, src, dst,
                                                      rows, pos, samp, poison)
        return to_host((tok_S, logp_S, top))  # one transfer per step

    def _advance(self, scheduled, tokens_S, logprobs_S, now, updates, tops_S=None) -> None:
        """Record what the step computed, fork prompts into their samples, append the sampled tokens."""
        k = 0
        got = set()
        for seq, n in scheduled:
            accepted = 0
            if seq.draft:  # a verify run: [last, x_0..x_{j-1}] stay computed (the x_i once appended), the rest rolls back
                accepted = len(tokens_S[k]) - 1
                self.spec.record(seq, len(seq.draft), accepted, accepted + 1)
                n, seq.draft = 1, []
            is_decode = not seq.is_prefill and len(seq.tokens) > seq.num_prompt
            self.counters["decode_tokens" if is_decode else "prefill_tokens"] += n + accepted
            seq.num_computed += n
            if not accepted:
                self._computed(seq)
            if seq.num_computed != len(seq.tokens):
                continue
            req = seq.request
            if not req.forked:
                children = [self._new_sequence(req, i, list(seq.tokens)) for i in range(1, req.n)]
                for c in children:
                    c.num_computed = seq.num_computed
                    c.matcher = None if seq.matcher is None else seq.matcher.fork()
                    self.blocks.fork(seq.seq_id, c.seq_id)
                self.scheduler.insert_after(seq, children)
                req.sequences.extend(children)
                req.forked = True
                samples = [seq] + children
            else:
                samples = [seq]
            for s in samples:
                self._append(s, tokens_S[k], logprobs_S[k], now, updates, tops_S[k] if tops_S else None)
                k += 1
            if accepted and seq.status is Status.RUNNING:
                seq.num_computed += accepted
                self._computed(seq)
            got.add(req.request_id)
        for rid in got:
            req = self.requests.get(rid)
            if req is not None and req.metrics.first_token is None:
                req.metrics.first_token = now
            if req is not None:
                req.metrics.last_token = now
                req.metrics.token_times.append(now)
            if req is not None and req.finished:
                self._finish_request(req, now, updates)

    def _computed(self, seq: Sequence) -> None:
        """Pages past the computed tokens go back (speculation: rejected proposals); the full ones are hashed."""
        if self.spec is not None:
            self.scheduler.rollback(seq)
        self.blocks.register_computed(seq.seq_id, seq.tokens, seq.num_computed)

    def _append(self, seq: Sequence, tokens: List[int], logprobs: List[float], now: float, updates,
                tops=None) -> None:
        """Append a step's new tokens to a sample (one, or a verify run's j + 1) up to its first finish."""
        new, text, reason = append_tokens(seq, tokens, logprobs, self.max_model_len)
        if reason is not None:
            seq.finish_reason = reason
            self.scheduler.remove(seq)
        top = None
        if seq.request.sampling.top_logprobs and tops is not None:
            top = list(tops[:len(new)])
            seq.top_logprobs.extend(top)
        updates.append(RequestUpdate(seq.request.request_id, seq.index, new, text, reason is not None, reason,
                                     [float(p) for p in logprobs[:len(new)]], new_top_logprobs=top))

    def _finish_request(self, req: Request, now: float, updates) -> None:
        req.metrics.finished = now
        self.requests.pop(req.request_id, None)
        self.finished_metrics.append(req.metrics)
        out = RequestOutput(req.request_id, list(req.prompt),
                            [CompletionOutput(s.index, s.text, list(s.output), s.finish_reason, list(s.logprobs),
                                              list(s.top_logprobs) if req.sampling.top_logprobs else None)
                             for s in req.sequences], req.metrics)
        for u in reversed(updates):  # the request's last update carries its whole output
            if u.request_id == req.request_id:
                u.output = out
                break

    # ---- convenience ----------------------------------------------------------------------------------------
    def stream(self, prompt, sampling_params: Optional[SamplingParams] = None, request_id: Optional[str] = None,
               n: int = 1, stop: Seq[str] = ()) -> Iterator[RequestUpdate]:
        """Add a request and yield its updates as steps produce them (other requests' updates wait for step()).

        Closing the generator early aborts the request."""
        rid = self.add_request(prompt, sampling_params, request_id, n=n, stop=stop)
        pending = n
        try:
            while pending:
                for u in self.step():
                    if u.request_id == rid:
                        pending -= u.finished
                        yield u
                    else:
                        self._outbox.append(u)
        finally:
            if rid in self.requests:
                self.abort(rid)
                self._outbox = [u for u in self._outbox if u.request_id != rid]

    def run_to_completion(self) -> Dict[str, RequestOutput]:
        """Step until every request has finished; their outputs by request id."""
        outs: Dict[str, RequestOutput] = {}
        while self.has_unfinished_requests():
            for u in self.step():
                if u.output is not None:
                    outs[u.request_id] = u.output
        return outs

    def warmup(self) -> None:
        """Compile every step shape (all_step_shapes) with empty steps (they write nothing), so serving never
        compiles: decode-only steps per (rows, pages per sequence) bucket, mixed steps per max_q_len bucket."""
        R, P = self.max_num_seqs, self.num_pages
        shapes = self.all_step_shapes()
        for shape in shapes:
            shape = dict(shape)
            verify = shape.pop("verify", False)
            tokens_T, meta = build_metadata([], page_size=self.page_size, num_pages=P, **shape)
            poison = np.zeros((P,), bool) if self.poison_freed_pages else None
            S = shape["num_seqs"] if verify else shape["num_logits"]
            copies = np.zeros((R,), np.int32), np.full((R,), P, np.int32)
            if verify:
                K = self.spec.k
                self.verify_call(tokens_T, meta, *copies, np.zeros((S, K + 1), np.int32), np.zeros((S, K), np.int32),
                                 np.zeros((S,), np.int32), np.zeros((S,), np.int32), self._sampling([], [], S, []),
                                 poison)
            else:
                self.device_call(tokens_T, meta, *copies, np.zeros((S,), np.int32), np.zeros((S,), np.int32),
                                 self._sampling([], [], S, []), poison)
        jax.block_until_ready(self.kv)

    def stats(self) -> dict:
        """Engine-wide counters: queue sizes, pages, KV waste (now and averaged over steps), prefix cache, preemptions."""
        c = self.counters
        used, alloc = self.blocks.kv_slots({s.seq_id: s.num_computed for s in self.scheduler.running})
        return {
            "running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
            "pages_in_use": self.blocks.num_pages - len(self.blocks.free) - len(self.blocks.evictable),
            "pages_cached": len(self.blocks.evictable), "num_pages": self.num_pages,
            "kv_waste": 1 - used / alloc if alloc else 0.0,
            "kv_waste_mean": 1 - c["kv_used_slots"] / c["kv_alloc_slots"] if c["kv_alloc_slots"] else 0.0,
            "prefix_hit_rate": c["prefix_hit_tokens"] / c["prefix_query_tokens"] if c["prefix_query_tokens"] else 0.0,
            "prefix_hit_tokens": c["prefix_hit_tokens"], "prefill_tokens": c["prefill_tokens"],
            "decode_tokens": c["decode_tokens"], "preemptions": self.scheduler.num_preemptions,
            "evictions": self.blocks.evictions, "steps": c["steps"],
        } | (self.spec.stats() if self.spec is not None else {})

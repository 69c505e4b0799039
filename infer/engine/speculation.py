"""Speculative decoding in the engine: proposers, the verify run of each step, and the off-switches.

    engine = infer.Engine(params, cfg, speculative="ngram", num_speculative_tokens=4)
    engine = infer.Engine(params, cfg, speculative=SpeculativeConfig("ngram", k=4, max_batch=4))

A round, per running sequence that decodes (host, then one device call per step):

  1. propose (`Speculator.propose`, before scheduling): the proposer (`Proposer`: histories
     in, up to k tokens each out; `NgramProposer` is prompt lookup, the matching of
     infer/generation/ngram.py run with numpy) puts d <= k tokens in `seq.draft`;
  2. schedule: the scheduler grows the sequence's decode into a verify run of 1 + d tokens
     [last, x_0..x_{d-1}] where budget and free pages allow (infer/engine/scheduler.py); it runs
     in the same ragged step as other sequences' decode tokens and prefill chunks;
  3. verify (infer/engine/verify_step.py): the logits of all d + 1 tokens, and on the device the
     exact acceptance rule: j accepted proposals and one token more (at temperature 0 the
     longest prefix equal to the target's argmax, then the argmax);
  4. commit (the engine's `_advance`): the sequence keeps [last, x_0..x_{j-1}] in the pools
     (num_computed += j + 1) and appends x_0..x_{j-1}, y to its tokens; the scheduler's
     `rollback` gives back the pages past num_computed (a page only rejected tokens reached is
     freed); the prefix cache hashes pages only up to num_computed, so never a rejected token.

Off-switches (turning speculation on should never make a workload slower):
  - per step: no proposals when more than `max_batch` sequences decode (a verify run costs
    more than it saves once the batch fills the device; measured in BENCHMARKS.md);
  - per sequence: an exponential moving average of its accepted proposals per verify run; below
    `min_accepted` it stops proposing for `cooldown` steps, then tries again (starting at the threshold, so
    one more poor run pauses it again), the pause doubling each time in a row (an open chat answer that
    copies little pays for a few probes only);
  - per request: SamplingParams(speculate=False) opts out; a request with a penalty (presence,
    frequency, repetition) never proposes, nor one still under its min_tokens: those processors change
    with every accepted token, and the verify step applies them with the sample's one history
    (infer/engine/verify_step.py), exact only for a run without proposals. logit_bias keeps speculating;
  - structured outputs: a constrained request (SamplingParams.constraint) never proposes, so its grammar
    matcher only ever consumes accepted tokens (no rollback) and each of its steps needs one token mask.

Step shapes (no compile after warm-up): an engine with speculation adds one family, the
verify steps (every sequence <= k + 1 tokens: r = bucketed rows of k + 1 tokens each, pages
bucketed as decode steps), and its mixed steps (a longer chunk) run the verify program with
k + 1 logits rows per sequence; decode steps without proposals keep the plain program.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Dict, List, Optional, Protocol, Sequence as Seq, Tuple, Union

import numpy as np

from infer.engine.request import Sequence, Status
from infer.generation.ngram import ngram_proposals
from infer.kv.metadata import bucket

METHODS = ("ngram",)


class Proposer(Protocol):
    def propose(self, histories: Seq[Seq[int]], ks: Seq[int]) -> List[List[int]]:
        """Up to ks[b] proposed next tokens for each history (prompt + generated tokens); [] for none."""


@dataclasses.dataclass
class NgramProposer:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the history's last n tokens
    (n = max_ngram down to min_ngram); nothing when no n matches."""

    min_ngram: int = 2
    max_ngram: int = 4

    def propose(self, histories, ks):
        if not histories:
            return []
        L = np.array([len(h) for h in histories])
        ctx = np.zeros((len(histories), int(L.max())), np.int32)
        for b, h in enumerate(histories):
            ctx[b, :len(h)] = h
        drafts, n = ngram_proposals(ctx, L, max(ks), self.min_ngram, self.max_ngram, xp=np)
        return [drafts[b, :ks[b]].tolist() if n[b] > 0 else [] for b in range(len(histories))]


@dataclasses.dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"
    k: int = 4  # proposals per verify run
    max_batch: int = 8  # no proposals in a step where more sequences than this decode (BENCHMARKS.md)
    min_accepted: float = 0.5  # a sequence whose mean accepted proposals per run falls below this pauses
    cooldown: int = 16  # steps a paused sequence waits before proposing again
    min_ngram: int = 2
    max_ngram: int = 4

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"speculative: method must be one of {METHODS}, got {self.method!r}")
        for name in ("k", "max_batch", "cooldown", "min_ngram", "max_ngram"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"speculative {name}: must be an int >= 1, got {v!r}")
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"speculative: min_ngram {self.min_ngram} > max_ngram {self.max_ngram}")


def speculative_config(speculative: Union[None, str, SpeculativeConfig],
                       num_speculative_tokens: Optional[int] = None) -> Optional[SpeculativeConfig]:
    """None, a method name ("ngram") or a SpeculativeConfig; num_speculative_tokens overrides its k."""
    if speculative is None:
        return None
    cfg = SpeculativeConfig(speculative) if isinstance(speculative, str) else speculative
    if not isinstance(cfg, SpeculativeConfig):
        raise ValueError(f"speculative: a method name or a SpeculativeConfig, got {type(speculative).__name__}")
    return cfg if num_speculative_tokens is None else dataclasses.replace(cfg, k=num_speculative_tokens)


class Speculator:
    """The engine's speculation state: the proposer, each sequence's acceptance, the counters and the shapes."""

    EMA = 0.5  # weight of the newest verify run in a sequence's acceptance average

    def __init__(self, config: SpeculativeConfig, max_num_seqs: int, max_num_partial_prefills: int):
        self.config, self.k = config, config.k
        self.proposer: Proposer = NgramProposer(config.min_ngram, config.max_ngram)
        self.max_num_seqs = max_num_seqs
        # mixed steps: the partial prefills' rows, then as many verify runs, may hold more than one token
        self.mixed_prefill_rows = min(2 * max_num_partial_prefills, max_num_seqs)
        self.max_num_partial_prefills = max_num_partial_prefills
        self.accept_ema: Dict[int, float] = {}
        self.paused_until: Dict[int, int] = {}
        self.pauses: Dict[int, int] = {}  # pauses in a row per sequence (its next pause lasts cooldown * 2**pauses)
        self.steps = 0
        self.counters = collections.Counter()

    # ---- host: proposals ------------------------------------------------------------------------------------
    def propose(self, running: List[Sequence], max_model_len: int) -> None:
        """Fill `draft` of each running decoding sequence that speculates this step (and clear the others')."""
        self.steps += 1
        live = {s.seq_id for s in running}
        for d in (self.accept_ema, self.paused_until, self.pauses):
            for sid in [sid for sid in d if sid not in live]:
                del d[sid]
        decoding = [s for s in running if s.status is Status.RUNNING and not s.is_prefill]
        for s in running:
            s.draft = []
        if len(decoding) > self.config.max_batch:
            self.counters["steps_batch_off"] += bool(decoding)
            return
        cand, ks = [], []
        for s in decoding:
            sp = s.request.sampling
            room = min(self.k, sp.max_new_tokens - len(s.output) - 1, max_model_len - len(s.tokens))
            if not sp.may_speculate(len(s.output)) or room < 1 or self.paused_until.get(s.seq_id, 0) > self.steps:
                continue
            cand.append(s)
            ks.append(room)
        for s, draft in zip(cand, self.proposer.propose([s.tokens for s in cand], ks)):
            s.draft = [int(t) for t in draft]

    def trim(self, scheduled: List[Tuple[Sequence, int]]) -> List[Tuple[Sequence, int]]:
        """A mixed step (a chunk longer than a verify run) holds at most mixed_prefill_rows multi-token rows: the
        verify runs past that become plain decodes (their extra pages go back after the step)."""
        if max(n for _, n in scheduled) <= self.k + 1:
            return scheduled
        room = self.mixed_prefill_rows - sum(1 for s, n in scheduled if n > 1 and not s.draft)
        out = []
        for s, n in scheduled:
            if s.draft:
                if room > 0:
                    room -= 1
                else:
                    s.draft, n = [], 1
            out.append((s, n))
        return out

    def record(self, seq: Sequence, proposed: int, accepted: int, emitted: int) -> None:
        """After a verify run: the counters, and the sequence's acceptance average (pause it when too low)."""
        c = self.counters
        c["verify_runs"] += 1
        c["proposed_tokens"] += proposed
        c["accepted_tokens"] += accepted
        c["verify_emitted_tokens"] += emitted
        sid, floor = seq.seq_id, self.config.min_accepted
        prior = floor if sid in self.pauses else 1.0  # a sequence back from a pause starts at the threshold
        ema = (1 - self.EMA) * self.accept_ema.get(sid, prior) + self.EMA * accepted
        if ema < floor:
            n = self.pauses.get(sid, 0)
            self.paused_until[sid] = self.steps + self.config.cooldown * 2 ** min(n, 10)
            self.pauses[sid] = n + 1
            self.accept_ema.pop(sid, None)
            c["sequence_pauses"] += 1
        else:
            self.accept_ema[sid] = ema
            if ema >= 2 * floor:
                self.pauses.pop(sid, None)  # paying again: the next pause is short

    def stats(self) -> dict:
        c = self.counters
        runs = c["verify_runs"]
        return {"spec_proposed_tokens": c["proposed_tokens"], "spec_accepted_tokens": c["accepted_tokens"],
                "spec_verify_runs": runs, "spec_emitted_tokens": c["verify_emitted_tokens"],
                "spec_acceptance_rate": c["accepted_tokens"] / c["proposed_tokens"] if c["proposed_tokens"] else 0.0,
                "spec_tokens_per_pass": c["verify_emitted_tokens"] / runs if runs else 0.0,
                "spec_sequence_pauses": c["sequence_pauses"], "spec_steps_batch_off": c["steps_batch_off"]}

    # ---- shapes ---------------------------------------------------------------------------------------------
    def uses_verify(self, scheduled) -> bool:
        """Whether the step runs the verify program (any proposals, or any multi-token chunk)."""
        return any(s.draft or n > 1 for s, n in scheduled)

    def verify_shapes(self, rows: int, pages: int) -> dict:
        K1 = self.k + 1
        return dict(num_tokens=rows * K1, num_seqs=rows, num_logits=rows * K1, max_q_len=bucket(K1),
                    pages_per_seq=pages, prefill_rows=None)

    def mixed_shapes(self, num_tokens: int, pages_per_seq: int, max_q_len: int) -> dict:
        R = self.max_num_seqs
        return dict(num_tokens=num_tokens, num_seqs=R, num_logits=R * (self.k + 1), max_q_len=max_q_len,
                    pages_per_seq=pages_per_seq, prefill_rows=self.mixed_prefill_rows)

    def step_shapes(self, scheduled, num_samples: int, rows_bucket, pages_bucket, mixed: dict) -> dict:
        """Shapes of a verify-program step: a verify step when every sequence runs <= k + 1 tokens, else mixed."""
        if max(n for _, n in scheduled) <= self.k + 1:
            return self.verify_shapes(rows_bucket(max(len(scheduled), num_samples)), pages_bucket)
        return self.mixed_shapes(**mixed)


def verify_inputs(scheduled, first_row: Dict[int, int], samples: List[Tuple[int, int]], S: int, K: int):
    """Per-sample arrays of the verify program: logits rows [S, K+1], proposals [S, K], proposal counts [S].

    samples: (index into scheduled, logits row of its sequence's first new token ... as first_row) per sample."""
    K1 = K + 1
    rows = np.zeros((S, K1), np.int32)
    drafts = np.zeros((S, K), np.int32)
    nd = np.zeros((S,), np.int32)
    for s, (i, _) in enumerate(samples):
        seq = scheduled[i][0]
        d = len(seq.draft)
        rows[s] = first_row[i] + np.minimum(np.arange(K1), d)
        drafts[s, :d] = seq.draft
        nd[s] = d
    return rows, drafts, nd

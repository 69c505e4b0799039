"""Iteration-level scheduling: which sequences run how many tokens in the next step.

Each step fills a budget of `max_num_batched_tokens` tokens, in this order:

  1. decode tokens of running sequences (one each), oldest admission first. When the
     pool has no page for one, the most recently admitted running sequence is
     preempted by recompute (its pages freed, itself requeued at the front of the
     waiting queue with every token it has) until the page is found or the needy
     sequence was itself the newest;
     Then a running sequence with proposed tokens (`seq.draft`, speculative decoding) grows
     its decode into a verify run of 1 + len(draft) tokens where the budget and the free
     pages allow without preempting anyone (else its draft is dropped);
  2. the next prefill chunk of running sequences still prefilling (chunked prefill: a
     long prompt takes what budget is left, so it never stalls the decodes);
  3. waiting sequences in arrival order (preempted ones first), each starting from
     the longest prefix the prefix cache holds, while the budget, the pages and
     `max_num_seqs` allow (a request with n samples reserves n sequence slots).
At most `max_num_partial_prefills` sequences run more than one token in a step (the
step's attention pads only that many rows to the longest chunk).

A preempted sequence later prefills its prompt and generated tokens again and
continues exactly where it was (its next token's random key depends on its seed and
position only).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import List, Tuple

from infer.engine.block_manager import BlockManager
from infer.engine.request import Sequence, Status


@dataclasses.dataclass
class SchedulerOutput:
    scheduled: List[Tuple[Sequence, int]]  # (sequence, new tokens this step), in the order they were scheduled
    preempted: List[Sequence]
    admitted: List[Tuple[Sequence, int]] = dataclasses.field(default_factory=list)  # (sequence, prefix-cache hit tokens)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_num_partial_prefills: int = 4):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_partial_prefills = max_num_partial_prefills
        self.waiting: collections.deque = collections.deque()
        self.running: List[Sequence] = []  # in admission order
        self.num_preemptions = 0
        self._admissions = 0

    # ---- queue ----------------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def seq_slots(self) -> int:
        """Sequence slots held by running sequences (a prompt whose n samples are not forked yet holds n)."""
        return sum(1 if s.request.forked else s.request.n for s in self.running)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queues, freeing its pages (finish or abort)."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self.blocks.free_sequence(seq.seq_id)
        elif seq.status is Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def insert_after(self, parent: Sequence, children: List[Sequence]) -> None:
        """Forked samples run beside their parent and count as admitted with it."""
        i = self.running.index(parent)
        for c in children:
            c.status, c.admitted_at = Status.RUNNING, parent.admitted_at
        self.running[i + 1:i + 1] = children

    def _preempt(self, seq: Sequence, out: SchedulerOutput, budget: int) -> int:
        """Free a running sequence's pages and requeue it first; returns the budget with its tokens refunded."""
        for i, (s, n) in enumerate(out.scheduled):
            if s is seq:
                del out.scheduled[i]
                budget += n
                break
        self.running.remove(seq)
        self.blocks.free_sequence(seq.seq_id)
        seq.num_computed, seq.status, seq.draft = 0, Status.WAITING, []
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        self.num_preemptions += 1
        return budget

    # ---- the step -------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(scheduled=[], preempted=[])
        budget = self.max_num_batched_tokens
        bm = self.blocks

        # 1. decodes, oldest first; preempt the newest when pages run out
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not Status.RUNNING or seq.is_prefill:
                continue
            while not bm.reserve(seq.seq_id, seq.num_computed, seq.num_computed + 1):
                victim = self.running[-1]
                budget = self._preempt(victim, out, budget)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                out.scheduled.append((seq, 1))
                budget -= 1
            else:
                seq.draft = []
        # 1b. verify runs: the drafts ride on the decodes where budget and free pages allow (no preemption)
        for i, (seq, _) in enumerate(out.scheduled):
            d = len(seq.draft)
            if d and d <= budget and bm.reserve(seq.seq_id, seq.num_computed, seq.num_computed + 1 + d):
                out.scheduled[i] = (seq, 1 + d)
                budget -= d
            else:
                seq.draft = []

        # 2. chunks of prompts already admitted
        chunks = 0  # sequences running more than one token this step
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not Status.RUNNING or not seq.is_prefill:
                continue
            cap = budget if chunks < self.max_num_partial_prefills else 1
            n = self._fit(seq, min(len(seq.tokens) - seq.num_computed, cap))
            if n == 0 and seq is self.running[-1] and len(out.scheduled) == 0:
                # Nothing runs and the newest cannot grow: it gives its pages back (progress for the others).
                budget = self._preempt(seq, out, budget)
                continue
            if n:
                bm.reserve(seq.seq_id, seq.num_computed, seq.num_computed + n)
                out.scheduled.append((seq, n))
                budget -= n
                chunks += n > 1

        # 3. admissions in arrival order (no skipping: first come, first served)
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            slots = 1 if seq.request.forked else seq.request.n
            if self.seq_slots() + slots > self.max_num_seqs:
                break
            hit = bm.match_prefix(seq.tokens)
            cached = len(hit) * bm.page_size
            n = min(len(seq.tokens) - cached, budget if chunks < self.max_num_partial_prefills else 1)
            need = bm.pages_for(cached + n) - len(hit)
            if need > bm.num_free_pages - bm.evictable_among(hit):
                break
            self.waiting.popleft()
            bm.admit(seq.seq_id, hit)
            seq.num_computed, seq.status = cached, Status.RUNNING
            seq.admitted_at, self._admissions = self._admissions, self._admissions + 1
            if not bm.reserve(seq.seq_id, cached, cached + n):
                raise AssertionError("admission reserved fewer pages than it counted")
            self.running.append(seq)
            out.scheduled.append((seq, n))
            out.admitted.append((seq, cached))
            budget -= n
            chunks += n > 1
        return out

    def rollback(self, seq: Sequence) -> None:
        """After a verify run: give back the pages past the sequence's computed tokens (rejected proposals)."""
        self.blocks.truncate(seq.seq_id, seq.num_computed)

    def _fit(self, seq: Sequence, n: int) -> int:
        """The most of the next n tokens of a sequence the free pages can hold (0 if none)."""
        bm = self.blocks
        start = seq.num_computed
        while n > 0 and bm.pages_needed(seq.seq_id, start, start + n) > bm.num_free_pages:
            # shrink to the end of the last page we can get
            have = len(bm.table(seq.seq_id)) + bm.num_free_pages
            n = min(n - 1, have * bm.page_size - start)
        return max(n, 0)

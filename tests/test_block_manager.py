"""The block manager (infer/engine/block_manager.py) against independent models.

1. `TestBlockManagerStateful`: a hypothesis state machine drives one BlockManager through random admits (with
   prefix-cache hits), reserves + register_computed, forks, frees, preemptions (free, re-admit from scratch) and
   pool-filling allocations that force evictions. It keeps its own model of ownership (page tables, reference
   counts as numbers of owners), of the prefix cache (keyed by the full token prefix, not by hashes) and of the
   LRU order of cached-but-unowned pages, and checks the manager against it after every operation. `check()` is
   called too, but nothing relies on it.
2. `test_contents_*`: simulates the device pools' CONTENTS (page -> slot values), performs the queued copies,
   poisons fresh pages, writes every scheduled sequence's tokens through its page table, and asserts that every
   sequence reads back exactly its own tokens, that prefix-cache hits contain exactly the matched tokens and that
   every cached page holds the tokens its hash names.
3. Small deterministic unit tests of the documented edge cases.
"""
import collections
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import hypothesis_examples
from infer.engine.block_manager import ROOT_HASH, BlockManager, page_hash

ALPHABET = 2  # token ids 0..1: with pages of 1-5 tokens, page contents and prefixes repeat often
MAX_SEQS = 6


def cdiv(a, b):
    return -(-a // b)


def chain_hashes(tokens, Z, n_pages):
    """The chained hashes of the first n_pages full pages of `tokens`."""
    out, prev = [], ROOT_HASH
    for j in range(n_pages):
        prev = page_hash(prev, tokens[j * Z:(j + 1) * Z])
        out.append(prev)
    return out


def snapshot(bm):
    """Everything a failed reserve must leave unchanged."""
    return (bm.ref_count.tolist(), list(bm.free), list(bm.evictable), dict(bm.cached), dict(bm.hash_of),
            {s: list(t) for s, t in bm.tables.items()}, {s: list(h) for s, h in bm.hashes.items()},
            list(bm.pending_copies), list(bm.fresh_pages), bm.evictions)


# ================================================================================================================
# 1. ownership / cache model, as a hypothesis state machine
# ================================================================================================================
class BlockManagerMachine(RuleBasedStateMachine):
    """Operations in the engine's order: sequences are scheduled (reserve) between device steps; a device step
    drains the queued copies and fresh pages, then the scheduled writes are registered (register_computed);
    forks happen right after a device step. Admits, frees and preemptions (also of scheduled sequences) happen
    at any time."""

    @initialize(num_pages=st.integers(4, 24), page_size=st.integers(1, 5), caching=st.integers(0, 3).map(bool))
    def setup(self, num_pages, page_size, caching):
        self.N, self.Z, self.caching = num_pages, page_size, caching
        self.bm = BlockManager(num_pages, page_size, enable_prefix_caching=caching)
        self.tables = {}  # model: sequence -> its pages
        self.toks = {}  # sequence -> its known tokens (prompt + generated)
        self.done = {}  # sequence -> tokens computed (written into its pages)
        self.scheduled = {}  # sequence -> end of its reserved write [done, end), written at the next device step
        self.named = {}  # sequence -> leading pages already offered to the cache
        self.cache = {}  # model prefix cache: full token prefix (tuple) -> page
        self.key = {}  # page -> the full token prefix it is cached under
        self.lru = collections.OrderedDict()  # cached unowned pages, least recently used first
        self.copies, self.fresh = [], []  # expected pending_copies / fresh_pages since the last drain
        self.evictions = 0
        self.preempted = []  # token lists of preempted sequences, waiting to be re-admitted
        self.history = []  # every prompt admitted so far (new prompts extend their prefixes: cache hits)
        self.next_id = 0
        self.ops = 0

    def teardown(self):
        if hasattr(self, "ops"):
            event(f"operations: {'>=30' if self.ops >= 30 else '>=10' if self.ops >= 10 else '<10'}")

    # ---- model helpers ---------------------------------------------------------------------------------------
    def owners(self):
        return collections.Counter(p for t in self.tables.values() for p in t)

    def unscheduled(self):
        return sorted(s for s in self.tables if s not in self.scheduled)

    def draw_tokens(self, data, lo, hi):
        n = data.draw(st.integers(lo, hi))
        return data.draw(st.lists(st.integers(0, ALPHABET - 1), min_size=n, max_size=n))

    def draw_prompt(self, data):
        """Mostly a known prefix (all or part of an earlier sequence's tokens) plus a few new tokens."""
        head = []
        if self.history and data.draw(st.integers(0, 3)):
            base = data.draw(st.sampled_from(self.history[-8:]))
            head = list(base[:data.draw(st.sampled_from([len(base), len(base) // 2, len(base) - 1]))])
        return head + self.draw_tokens(data, 0 if head else 1, 3 * self.Z)

    def admit_tokens(self, tokens):
        bm, Z = self.bm, self.Z
        expected = []
        if self.caching:
            for j in range((len(tokens) - 1) // Z):
                page = self.cache.get(tuple(tokens[:(j + 1) * Z]))
                if page is None:
                    break
                expected.append(page)
        hits = bm.match_prefix(tokens)
        assert hits == expected, (tokens, hits, expected)
        assert len(hits) * Z < len(tokens), "match_prefix must leave at least one token to run"
        own = self.owners()
        assert bm.evictable_among(hits) == sum(1 for p in hits if own[p] == 0)
        if hits:
            event("prefix-cache hit")
        s = self.next_id
        self.next_id += 1
        bm.admit(s, hits)
        for p in hits:
            if own[p] == 0:
                del self.lru[p]  # KeyError here = the model thinks the hit page was not evictable
        self.tables[s], self.toks[s] = list(hits), list(tokens)
        self.done[s], self.named[s] = len(hits) * Z, len(hits)
        self.history.append(list(tokens))
        return s

    def reserve(self, s, end):
        """bm.reserve(s, done, end), checked against the model; updates the model; returns its result."""
        bm, Z = self.bm, self.Z
        start, old = self.done[s], list(self.tables[s])
        own = self.owners()
        n_pages = cdiv(end, Z)
        cow = [j for j in range(start // Z, min(len(old), n_pages)) if own[old[j]] > 1]
        needed = len(cow) + max(0, n_pages - len(old))
        unowned = self.N - len(own)
        assert bm.pages_needed(s, start, end) == needed
        assert bm.num_free_pages == unowned
        before = snapshot(bm)
        free_before = list(bm.free)
        ok = bm.reserve(s, start, end)
        assert ok == (needed <= unowned), (needed, unowned, ok)
        if not ok:
            assert snapshot(bm) == before, "a failed reserve changed the manager"
            event("reserve refused")
            return False
        new = list(bm.tables[s])
        assert len(new) == max(len(old), n_pages)
        taken, new_copies = [], []
        for j, p in enumerate(old):
            if j in cow:
                assert new[j] != p, "a write into a shared page did not copy it"
                taken.append(new[j])
                new_copies.append((p, new[j]))
            else:
                assert new[j] == p, "reserve moved a page it did not need to copy"
        taken += new[len(old):]
        assert len(taken) == needed and len(set(taken)) == needed
        assert all(own[p] == 0 for p in taken), "reserve handed out a page somebody owns"
        # free pages go first, then cached unowned pages, least recently used first
        from_free = min(len(free_before), needed)
        assert set(taken[:from_free]) <= set(free_before)
        evicted = list(self.lru)[:needed - from_free]
        assert taken[from_free:] == evicted, ("eviction order", taken[from_free:], evicted)
        if evicted:
            event("eviction")
        if new_copies:
            event("copy-on-write")
        for p in evicted:
            del self.lru[p]
            del self.cache[self.key.pop(p)]
            self.evictions += 1
        self.tables[s] = new
        self.copies += new_copies
        self.fresh += taken
        if cow:
            self.named[s] = min(self.named[s], cow[0])
        # every new copy: the destination is now owned by the writer alone, the source was shared and still is
        own_after = collections.Counter(p for t in bm.tables.values() for p in t)
        for src, dst in new_copies:
            assert own_after[dst] == 1 and bm.ref_count[dst] == 1 and dst in bm.tables[s]
            assert own[src] > 1 and own_after[src] == own[src] - 1 and bm.ref_count[src] == own[src] - 1
            assert src not in bm.tables[s]
        assert bm.pending_copies == self.copies
        assert bm.fresh_pages == self.fresh
        return True

    def compute(self, s, end):
        """The step wrote positions [done, end): register them, in the manager and in the model."""
        self.done[s] = end
        self.bm.register_computed(s, self.toks[s], end)
        if not self.caching:
            return
        Z, t, table = self.Z, self.toks[s], self.tables[s]
        for j in range(self.named[s], end // Z):
            key, page = tuple(t[:(j + 1) * Z]), table[j]
            if key not in self.cache and page not in self.key:
                self.cache[key], self.key[page] = page, key
        self.named[s] = max(self.named[s], end // Z)

    def release(self, s):
        table = self.tables[s]
        own = self.owners()
        for p in reversed(table):
            own[p] -= 1
            if own[p] == 0 and p in self.key:
                self.lru[p] = None
        # a queued copy into a page nobody owns any more is moot (a preempted writer's copy-on-write)
        dropped = [(a, b) for a, b in self.copies if own[b] == 0]
        self.copies = [(a, b) for a, b in self.copies if own[b] > 0]
        if dropped:
            event("free dropped a moot copy")
        self.bm.free_sequence(s)
        for d in (self.tables, self.toks, self.done, self.named):
            del d[s]
        self.scheduled.pop(s, None)
        assert self.bm.pending_copies == self.copies

    # ---- rules -----------------------------------------------------------------------------------------------
    @precondition(lambda self: len(self.tables) < MAX_SEQS)
    @rule(data=st.data())
    def admit(self, data):
        if self.preempted and data.draw(st.booleans()):
            tokens = self.preempted.pop(data.draw(st.integers(0, len(self.preempted) - 1)))
        else:
            tokens = self.draw_prompt(data)
        self.admit_tokens(tokens)

    @precondition(lambda self: len(self.unscheduled()) > 0)
    @rule(data=st.data())
    def schedule(self, data):
        """Prefill a chunk of the known tokens, or decode (append 1..Z+1 new tokens) when all are computed."""
        s = data.draw(st.sampled_from(self.unscheduled()))
        if self.done[s] == len(self.toks[s]):
            self.toks[s] += self.draw_tokens(data, 1, self.Z + 1)
        end = data.draw(st.integers(self.done[s] + 1, len(self.toks[s])))
        if self.reserve(s, end):
            self.scheduled[s] = end

    @rule()
    def device_step(self):
        copies, fresh = self.bm.drain()
        assert copies == self.copies and fresh == self.fresh
        assert self.bm.pending_copies == [] and self.bm.fresh_pages == []
        self.copies, self.fresh = [], []
        for s, end in sorted(self.scheduled.items()):
            self.compute(s, end)
            self.history.append(list(self.toks[s][:end]))
        self.scheduled = {}

    @precondition(lambda self: len(self.tables) < MAX_SEQS)
    @rule(data=st.data())
    def fill(self, data):
        """A long prompt takes as many pages as the pool can give (evicting cached ones); one more must fail."""
        s = self.admit_tokens(self.draw_prompt(data) + self.draw_tokens(data, 0, self.N * self.Z))
        unowned = self.N - len(self.owners())
        end = min(len(self.toks[s]), (len(self.tables[s]) + unowned) * self.Z)
        if end < len(self.toks[s]):
            assert not self.reserve(s, len(self.toks[s])), "not enough pages: this reserve must fail"
        if end > self.done[s]:
            assert self.reserve(s, end)
            self.scheduled[s] = end
            assert self.bm.num_free_pages == 0 or end == len(self.toks[s])

    def fork_one(self, parent):
        self.device_step()  # the engine forks a sequence after the step that computed it
        child = self.next_id
        self.next_id += 1
        self.bm.fork(parent, child)
        self.tables[child] = list(self.tables[parent])
        self.toks[child] = list(self.toks[parent][:self.done[parent]])  # continues differently from here
        self.done[child], self.named[child] = self.done[parent], self.named[parent]
        return child

    @precondition(lambda self: 0 < len(self.tables) < MAX_SEQS)
    @rule(data=st.data())
    def fork(self, data):
        self.fork_one(data.draw(st.sampled_from(sorted(self.tables))))

    @precondition(lambda self: 0 < len(self.tables) < MAX_SEQS)
    @rule(data=st.data())
    def fork_and_diverge(self, data):
        """Parallel sampling: fork, then parent and child both write their own next tokens (copy-on-write)."""
        parent = data.draw(st.sampled_from(sorted(self.tables)))
        child = self.fork_one(parent)
        for s in (child, parent):
            if self.done[s] == len(self.toks[s]):
                self.toks[s] += self.draw_tokens(data, 1, self.Z)
            if self.reserve(s, len(self.toks[s])):
                self.scheduled[s] = len(self.toks[s])
        self.device_step()

    @precondition(lambda self: len(self.tables) > 0)
    @rule(data=st.data())
    def preempt_and_readmit(self, data):
        """Preemption by recomputation: free a sequence, admit its tokens again at once (prefix-cache hits)."""
        s = data.draw(st.sampled_from(sorted(self.tables)))
        tokens = list(self.toks[s])
        self.release(s)
        if tokens:
            self.admit_tokens(tokens)

    @precondition(lambda self: len(self.tables) > 0)
    @rule(data=st.data())
    def free(self, data):
        self.release(data.draw(st.sampled_from(sorted(self.tables))))

    @precondition(lambda self: len(self.tables) > 0)
    @rule(data=st.data())
    def preempt(self, data):
        s = data.draw(st.sampled_from(sorted(self.tables)))
        if self.toks[s]:  # (a fork taken before its parent computed anything has no tokens yet)
            self.preempted.append(list(self.toks[s]))
        self.release(s)

    # ---- after every operation -------------------------------------------------------------------------------
    @invariant()
    def consistent(self):
        if not hasattr(self, "bm"):
            return
        bm, N, Z = self.bm, self.N, self.Z
        self.ops += 1
        assert bm.tables == self.tables
        for s, t in self.tables.items():
            assert len(set(t)) == len(t), f"sequence {s} owns a page twice: {t}"
            assert len(t) >= cdiv(self.scheduled.get(s, self.done[s]), Z), "tokens outside the page table"
        own = self.owners()
        assert bm.ref_count.tolist() == [own[p] for p in range(N)], "refcount != number of owners"
        owned, free, evict = set(own), list(bm.free), list(bm.evictable)
        assert len(set(free)) == len(free), "double free"
        assert not set(free) & owned, "a page is both free and owned"
        assert not set(evict) & owned, "a page is both evictable and owned"
        assert not set(free) & set(evict), "a page is both free and evictable"
        assert len(free) + len(evict) + len(owned) == N, "a page was lost"
        assert bm.num_free_pages == N - len(owned) and bm.num_used_pages == len(owned)
        # queued copies: distinct destinations (the device does them in one scatter), each owned by one sequence
        dsts = [dst for _, dst in bm.pending_copies]
        assert len(set(dsts)) == len(dsts), ("two queued copies into one page", bm.pending_copies)
        for src, dst in bm.pending_copies:
            assert own[dst] == 1, ("a queued copy's destination is not owned by one sequence", src, dst)
        # the prefix cache and its LRU order
        assert evict == list(self.lru), "evictable pages or their LRU order"
        assert set(self.lru) == {p for p in self.key if own[p] == 0}
        assert bm.hash_of.keys() == self.key.keys() and len(bm.cached) == len(self.key)
        for p, key in self.key.items():
            assert bm.cached[chain_hashes(list(key), Z, len(key) // Z)[-1]] == p
        for s, t in self.tables.items():  # a cached page in a table holds that sequence's prefix
            for j in range(self.done[s] // Z):
                if t[j] in self.key:
                    assert self.key[t[j]] == tuple(self.toks[s][:(j + 1) * Z])
        assert bm.evictions == self.evictions
        # kv_slots: distinct (page, slot) pairs holding computed tokens; allocated = distinct owned pages
        used = {(self.tables[s][q // Z], q % Z) for s in self.tables for q in range(self.done[s])}
        assert bm.kv_slots(self.done) == (len(used), len(owned) * Z)
        bm.check()


TestBlockManagerStateful = BlockManagerMachine.TestCase
TestBlockManagerStateful.settings = settings(max_examples=hypothesis_examples(300), stateful_step_count=60, deadline=None, database=None,
                                             suppress_health_check=[HealthCheck.too_slow])


# ================================================================================================================
# 2. content model: what each sequence reads through its page table
# ================================================================================================================
class HypothesisDraws:
    def __init__(self, data):
        self.data = data

    def int(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def bool(self):
        return self.data.draw(st.booleans())

    def choice(self, xs):
        return self.data.draw(st.sampled_from(xs))


class RandomDraws:
    def __init__(self, seed):
        self.rng = random.Random(seed)

    def int(self, lo, hi):
        return self.rng.randint(lo, hi)

    def bool(self):
        return self.rng.random() < 0.5

    def choice(self, xs):
        return self.rng.choice(xs)


def run_contents(d):
    """Random engine rounds over a simulated pool; returns counts of what happened (for the coverage test).

    A round: admits (prefix-cache hits), forks of sequences not yet scheduled, frees and preemptions (also of
    scheduled sequences: their write is dropped), and scheduling (reserve, preempting another sequence to make
    room when it fails). Then the device step: the queued copies (all at once), poison on the other fresh pages,
    the writes; then register_computed, and every sequence reads its tokens back through its page table.
    """
    N, Z, caching, poison = d.int(4, 12), d.int(1, 4), d.int(0, 3) > 0, d.bool()
    bm = BlockManager(N, Z, enable_prefix_caching=caching)
    mem = {p: [("init", p, i) for i in range(Z)] for p in range(N)}
    toks, done, preempted, history, known = {}, {}, [], [], {}
    stats = collections.Counter()
    next_id = 0

    def new_tokens(lo, hi):
        return [d.int(0, ALPHABET - 1) for _ in range(d.int(lo, hi))]

    def read(s, n):
        table = bm.tables[s]
        return [mem[table[q // Z]][q % Z] for q in range(n)]

    def drop(s, scheduled):
        if toks[s]:
            preempted.append(toks[s])
        bm.free_sequence(s)
        scheduled.pop(s, None)
        del toks[s], done[s]

    def schedule(s, scheduled):
        if done[s] == len(toks[s]):  # decode: the continuation differs between forks
            toks[s] = toks[s] + new_tokens(1, Z + 1)
        end = d.int(done[s] + 1, len(toks[s]))
        ok = bm.reserve(s, done[s], end)
        others = [v for v in bm.tables if v != s]
        if not ok and others and d.bool():  # preempt another sequence and retry
            drop(d.choice(others), scheduled)
            ok = bm.reserve(s, done[s], end)
        if ok:
            scheduled[s] = (done[s], end)
        else:
            stats["reserve_failed"] += 1

    for _ in range(d.int(4, 25)):
        scheduled = {}
        for _ in range(d.int(0, 6)):
            op = d.choice(["admit", "fork", "free", "preempt", "schedule", "schedule", "schedule"])
            live = sorted(bm.tables)
            if op == "admit" and len(live) < MAX_SEQS:
                if preempted and d.bool():
                    tokens = preempted.pop(d.int(0, len(preempted) - 1))
                else:
                    head = []
                    if history and d.int(0, 3):
                        base = d.choice(history[-8:])
                        head = base[:d.choice([len(base), len(base) // 2, len(base) - 1])]
                    tokens = head + new_tokens(0 if head else 1, 3 * Z)
                hits = bm.match_prefix(tokens)
                assert len(hits) * Z < len(tokens)
                for j, p in enumerate(hits):  # a hit page holds exactly the matched tokens
                    assert mem[p] == tokens[j * Z:(j + 1) * Z], (j, p, mem[p], tokens)
                stats["hit_pages"] += len(hits)
                s, next_id = next_id, next_id + 1
                bm.admit(s, hits)
                toks[s], done[s] = list(tokens), len(hits) * Z
            elif op == "fork" and live and len(live) < MAX_SEQS:
                parent = d.choice(live)
                if parent in scheduled:  # the engine forks after a step, not between reserve and write
                    continue
                child, next_id = next_id, next_id + 1
                bm.fork(parent, child)
                toks[child], done[child] = list(toks[parent][:done[parent]]), done[parent]
                if d.bool():  # both continue at once, differently (copy-on-write)
                    schedule(child, scheduled)
                    if parent in bm.tables:
                        schedule(parent, scheduled)
            elif op in ("free", "preempt") and live:
                s = d.choice(live)
                if op == "free":
                    toks[s] = []
                drop(s, scheduled)
            elif op == "schedule" and live:
                s = d.choice(live)
                if s not in scheduled:
                    schedule(s, scheduled)
            bm.check()

        # the device step (infer/engine/device_step.py): all copies at once (one scatter: every source is read
        # before any destination is written), then poison on the other fresh pages, then the writes
        copies, fresh = bm.drain()
        assert len({dst for _, dst in copies}) == len(copies), ("two copies into one page in one step", copies)
        before = {src: list(mem[src]) for src, _ in copies}
        for src, dst in copies:
            mem[dst] = list(before[src])
        stats["copies"] += len(copies)
        stats["evictions"] = bm.evictions
        dsts = {dst for _, dst in copies}
        for p in fresh:
            if any(v != ("init", p, i) for i, v in enumerate(mem[p])):
                stats["reused_pages"] += 1  # handed out again, holding a previous owner's data
            if poison and p not in dsts:
                mem[p] = [("poison", p)] * Z
        for s, (start, end) in scheduled.items():
            table = bm.tables[s]
            for q in range(start, end):
                mem[table[q // Z]][q % Z] = toks[s][q]
        for s, (start, end) in scheduled.items():
            done[s] = end
            bm.register_computed(s, toks[s], end)
            history.append(toks[s][:end])
            for j, h in enumerate(chain_hashes(toks[s], Z, end // Z)):
                prefix = tuple(toks[s][:(j + 1) * Z])
                assert known.setdefault(h, prefix) == prefix, "two prefixes with one hash"
        bm.check()

        # every sequence sees exactly its own tokens
        for s in bm.tables:
            assert read(s, done[s]) == toks[s][:done[s]], (s, bm.tables[s], read(s, done[s]), toks[s])
        # every cached page holds the tokens its hash names
        for h, p in bm.cached.items():
            assert h in known and mem[p] == list(known[h][-Z:]), (p, mem[p], known.get(h))
        stats["shared_pages"] += sum(1 for p in range(N) if bm.ref_count[p] > 1)
    return stats


@settings(max_examples=hypothesis_examples(150), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_contents_every_sequence_reads_its_own_tokens(data):
    for what, n in run_contents(HypothesisDraws(data)).items():
        if n:
            event(what)


def test_contents_model_exercises_copies_hits_evictions_reuse():
    """The content property is not vacuous: over fixed seeds, every mechanism it is about actually happens."""
    total = collections.Counter()
    for seed in range(400):  # each run is ~1 ms: this is also 400 more runs of the property
        total += run_contents(RandomDraws(seed))
    for what in ("hit_pages", "copies", "evictions", "reused_pages", "reserve_failed", "shared_pages"):
        assert total[what] >= 20, (what, total)


# ================================================================================================================
# 3. unit tests
# ================================================================================================================
def run(bm, s, tokens, hits=None):
    """Admit s with `tokens` (using match_prefix unless hits are given), compute all of them; return its table."""
    hits = bm.match_prefix(tokens) if hits is None else hits
    bm.admit(s, hits)
    assert bm.reserve(s, len(hits) * bm.page_size, len(tokens))
    bm.register_computed(s, tokens, len(tokens))
    bm.check()
    return list(bm.tables[s])


def test_page_hash_chains_the_prefix():
    a, b = page_hash(ROOT_HASH, [1, 2]), page_hash(ROOT_HASH, [1, 3])
    assert a != b and page_hash(ROOT_HASH, [1, 2]) == a
    assert page_hash(a, [5, 5]) != page_hash(b, [5, 5])  # same page tokens, different prefix
    assert page_hash(a, [5, 5]) == page_hash(page_hash(ROOT_HASH, np.array([1, 2])), (5, 5))


def test_match_prefix_leaves_at_least_one_token():
    Z = 4
    bm = BlockManager(8, Z)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    t = run(bm, 0, tokens)
    assert len(bm.cached) == 2
    assert bm.match_prefix(tokens[:8]) == [t[0]]  # exactly 2 pages: the last one must run
    assert bm.match_prefix(tokens[:9]) == t[:2]
    assert bm.match_prefix(tokens[:5]) == [t[0]]
    assert bm.match_prefix(tokens[:4]) == []
    assert bm.match_prefix(tokens[:1]) == [] and bm.match_prefix([]) == []
    assert bm.match_prefix([1, 2, 3, 4, 5, 6, 7, 0, 9]) == [t[0]]  # second page differs
    assert bm.match_prefix([0, 2, 3, 4, 5, 6, 7, 8, 9]) == []  # first page differs: no later page either
    for n in range(1, 20):  # page size 1: tokens of n pages give n - 1 hits at most
        bm1 = BlockManager(24, 1)
        run(bm1, 0, list(range(n)))
        assert len(bm1.match_prefix(list(range(n)))) == n - 1
    off = BlockManager(8, Z, enable_prefix_caching=False)
    run(off, 0, tokens)
    assert off.match_prefix(tokens) == [] and off.cached == {}


@pytest.mark.parametrize("first", ["a", "b"])
def test_lru_eviction_order(first):
    Z = 2
    bm = BlockManager(6, Z)
    seqs = {"a": (0, [1, 1, 2, 2]), "b": (1, [3, 3, 4, 4])}
    tables = {k: run(bm, s, tok) for k, (s, tok) in seqs.items()}
    second = "b" if first == "a" else "a"
    bm.free_sequence(seqs[first][0])
    bm.free_sequence(seqs[second][0])
    # the first freed sequence's pages are the least recently used; within one, the tail goes first
    order = tables[first][::-1] + tables[second][::-1]
    assert list(bm.evictable) == order
    assert len(bm.free) == 2 and bm.num_free_pages == 6
    # a new sequence of 3 pages takes the 2 free pages, then evicts the first freed sequence's tail
    t = run(bm, 2, [9, 9, 8, 8, 7])
    assert bm.evictions == 1 and t[2] == order[0]
    f_tok, s_tok = seqs[first][1], seqs[second][1]
    assert bm.match_prefix(f_tok + [0]) == [tables[first][0]]  # its head is still cached, its tail is not
    assert bm.match_prefix(s_tok + [0]) == tables[second]
    assert bm.reserve(2, 5, 7)  # one more page: evicts the head
    assert bm.evictions == 2 and bm.tables[2][3] == order[1]
    assert bm.match_prefix(f_tok + [0]) == []
    assert list(bm.evictable) == order[2:]
    bm.check()


def test_reowned_cached_page_becomes_most_recently_used():
    Z = 2
    bm = BlockManager(4, Z)
    ta = run(bm, 0, [1, 1, 5])  # page 0 cached, page 1 partial
    tb = run(bm, 1, [2, 2, 5])
    bm.free_sequence(0)
    bm.free_sequence(1)
    assert list(bm.evictable) == [ta[0], tb[0]]
    assert sorted(bm.free) == sorted([ta[1], tb[1]])
    run(bm, 2, [1, 1, 6])  # hits ta[0]: takes it out of the LRU ...
    assert bm.tables[2][0] == ta[0] and list(bm.evictable) == [tb[0]]
    bm.free_sequence(2)  # ... and puts it back at the most recently used end
    assert list(bm.evictable) == [tb[0], ta[0]]
    run(bm, 3, [7, 7, 7, 7, 7, 7, 7])  # 4 pages: both free ones, then tb[0], then ta[0]
    assert bm.evictions == 2 and bm.tables[3][2:] == [tb[0], ta[0]]


def test_evicted_page_is_no_longer_matched_and_reuse_is_clean():
    Z = 2
    bm = BlockManager(2, Z)
    t = run(bm, 0, [5, 5, 6])
    bm.free_sequence(0)
    assert bm.match_prefix([5, 5, 6]) == [t[0]]
    assert list(bm.evictable) == [t[0]] and list(bm.free) == [t[1]]
    t2 = run(bm, 1, [7, 7, 8])  # needs both pages: the cached one is evicted
    assert sorted(t2) == sorted(t) and bm.evictions == 1
    assert bm.match_prefix([5, 5, 6]) == []
    assert bm.match_prefix([7, 7, 8]) == [t2[0]]  # the page is cached again, under its new content
    assert bm.hash_of == {t2[0]: page_hash(ROOT_HASH, [7, 7])}
    bm.free_sequence(1)
    assert bm.num_free_pages == 2 and list(bm.evictable) == [t2[0]]


def test_kv_slots_counts_a_shared_page_once():
    Z = 4
    bm = BlockManager(8, Z)
    t = run(bm, 0, [1, 2, 3, 4, 5, 6])
    assert bm.kv_slots({0: 6}) == (6, 8)
    bm.fork(0, 1)
    assert bm.kv_slots({0: 6, 1: 6}) == (6, 8)
    assert bm.reserve(1, 6, 7)  # the child copies the partial page
    assert bm.kv_slots({0: 6, 1: 7}) == (4 + 2 + 3, 12)
    run(bm, 2, [1, 2, 3, 4, 9])  # a prefix-cache hit shares the first page
    assert bm.tables[2][0] == t[0]
    assert bm.kv_slots({0: 6, 1: 7, 2: 5}) == (4 + 2 + 3 + 1, 16)
    assert bm.kv_slots({}) == (0, 16)


def test_fork_then_write_into_shared_partial_page_copies_once():
    Z = 4
    bm = BlockManager(8, Z)
    t = run(bm, 0, [1, 2, 3, 4, 5, 6])
    bm.fork(0, 1)
    assert bm.ref_count[t].tolist() == [2, 2]
    bm.drain()
    assert bm.pages_needed(1, 6, 7) == 1
    assert bm.reserve(1, 6, 7)
    child = bm.tables[1]
    assert child[0] == t[0] and child[1] not in t
    assert bm.pending_copies == [(t[1], child[1])] and bm.fresh_pages == [child[1]]
    assert bm.ref_count[t].tolist() == [2, 1] and bm.ref_count[child[1]] == 1
    # the parent is the sole owner of its partial page now: no copy
    assert bm.pages_needed(0, 6, 7) == 0 and bm.reserve(0, 6, 7)
    assert bm.tables[0] == t and bm.drain() == ([(t[1], child[1])], [child[1]])
    # a write spanning the shared partial page and the next one: one copy, one new page
    bm.fork(0, 2)
    assert bm.pages_needed(2, 7, 11) == 2 and bm.reserve(2, 7, 11)
    copies, fresh = bm.drain()
    assert copies == [(t[1], bm.tables[2][1])] and fresh == bm.tables[2][1:]
    bm.check()


def test_fork_then_write_after_full_last_page_copies_nothing():
    Z = 4
    bm = BlockManager(8, Z)
    t = run(bm, 0, [1, 2, 3, 4, 5, 6, 7, 8])
    bm.fork(0, 1)
    bm.drain()
    assert bm.pages_needed(1, 8, 9) == 1 and bm.reserve(1, 8, 9)
    assert bm.tables[1][:2] == t and len(bm.tables[1]) == 3
    copies, fresh = bm.drain()
    assert copies == [] and fresh == [bm.tables[1][2]]
    assert bm.ref_count[t].tolist() == [2, 2]
    bm.check()


def test_failed_reserve_changes_nothing():
    Z = 2
    bm = BlockManager(3, Z)
    run(bm, 0, [1, 2, 3])  # 2 pages, the second partial
    bm.fork(0, 1)
    assert bm.num_free_pages == 1
    assert bm.pages_needed(1, 3, 7) == 3  # one copy + two new pages
    before = snapshot(bm)
    assert not bm.reserve(1, 3, 7)
    assert snapshot(bm) == before
    assert bm.reserve(1, 3, 4)  # the copy alone fits
    assert bm.num_free_pages == 0 and not bm.reserve(0, 3, 5)
    bm.check()


def test_admit_and_fork_refuse_an_existing_sequence():
    bm = BlockManager(4, 2)
    bm.admit(0, [])
    with pytest.raises(ValueError):
        bm.admit(0, [])
    with pytest.raises(ValueError):
        bm.fork(0, 0)
    for bad in [(0, 2), (4, 0), (2.0, 2), (4, -1)]:
        with pytest.raises(ValueError):
            BlockManager(*bad)


def test_free_keeps_a_queued_copy_that_another_owner_of_its_destination_needs():
    """Freeing a writer drops its queued copy only if nobody owns the destination any more."""
    Z = 4
    bm = BlockManager(8, Z)
    t = run(bm, 0, [1, 2, 3, 4, 5, 6])  # page t[1] is partial (positions 4, 5)
    bm.fork(0, 1)
    bm.drain()
    assert bm.reserve(1, 6, 7)  # the child copies the shared partial page: (t[1], d) is queued
    [(src, d)] = bm.pending_copies
    assert src == t[1]
    bm.fork(1, 2)  # before the device step: sequence 2 shares d and will read positions 4, 5 from it
    bm.free_sequence(1)
    assert bm.ref_count[d] == 1 and bm.tables[2] == [t[0], d]
    assert bm.pending_copies == [(src, d)], "the copy sequence 2 relies on was dropped"
    bm.free_sequence(2)  # now nobody owns d: the copy is moot
    assert bm.ref_count[d] == 0 and bm.pending_copies == []
    # a preempted writer's own copy is dropped at once
    bm.fork(0, 3)
    assert bm.reserve(3, 6, 7)
    [(src3, d3)] = bm.pending_copies
    bm.free_sequence(3)
    assert bm.pending_copies == [] and d3 in bm.free
    bm.check()

"""The block manager: which pages of the pools each sequence owns, on the host.

Pages (Z token slots each) are owned through reference counts. A page is in
exactly one of three places:

    free        refcount 0, no content anyone can ask for (a deque, handed out first)
    evictable   refcount 0, but holding a full page of a known token prefix (the prefix
                cache): reusable by a later request until the pool needs it (LRU order)
    owned       refcount >= 1: in the page tables of that many sequences

Prefix caching: a full page is named by a chained hash, sha256(previous page's hash,
this page's Z token ids), so a hash names the whole prefix up to the page's end.
A new sequence reuses the cached pages of its longest matching prefix (`match_prefix`)
and prefills only the rest; it never reuses its last token's page in full (at least one
token must run to produce logits). A page enters the cache once its tokens are computed
(`register_computed`, after the step that wrote them).

Copy-on-write: `fork` shares every page of a sequence (parallel sampling); a write
into a page that another sequence also holds (only a shared partial last page can be
written: full pages lie below every sequence's write position) first moves the writer
to a fresh copy, queued in `pending_copies` for the device to perform before the step.

Pages handed out fresh (from the free list or by eviction) are listed in `fresh_pages`
so a debugging engine can poison them; masking by length is what guarantees that a
previous owner's data is never read.
"""
from __future__ import annotations

import collections
import hashlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

ROOT_HASH = b""


def page_hash(prev: bytes, tokens: Sequence[int]) -> bytes:
    """The chained hash of a full page: names the prefix ending with `tokens` after the page hashed `prev`."""
    return hashlib.sha256(prev + np.asarray(tokens, np.int64).tobytes()).digest()


class OutOfPages(RuntimeError):
    """Not enough free or evictable pages for an allocation (the scheduler checks first; this is a bug guard)."""


class BlockManager:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True):
        if not (isinstance(num_pages, int) and num_pages > 0):
            raise ValueError(f"num_pages: must be an int > 0, got {num_pages!r}")
        if not (isinstance(page_size, int) and page_size > 0):
            raise ValueError(f"page_size: must be an int > 0, got {page_size!r}")
        self.num_pages, self.page_size = num_pages, page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = np.zeros((num_pages,), np.int64)
        self.free: collections.deque = collections.deque(range(num_pages))
        self.evictable: "collections.OrderedDict[int, None]" = collections.OrderedDict()  # LRU first
        self.cached: Dict[bytes, int] = {}  # hash -> page
        self.hash_of: Dict[int, bytes] = {}  # page -> hash
        self.tables: Dict[int, List[int]] = {}  # sequence id -> its pages in order
        self.hashes: Dict[int, List[bytes]] = {}  # sequence id -> hashes of its leading full pages
        self.pending_copies: List[Tuple[int, int]] = []  # (src, dst) the device copies before the next step
        self.fresh_pages: List[int] = []  # pages handed out fresh since the last drain
        self.evictions = 0

    # ---- capacity -------------------------------------------------------------------------------------------
    @property
    def num_free_pages(self) -> int:
        """Pages an allocation can take now: free, or cached but unowned (evicted on demand)."""
        return len(self.free) + len(self.evictable)

    @property
    def num_used_pages(self) -> int:
        return self.num_pages - self.num_free_pages

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    # ---- prefix cache ---------------------------------------------------------------------------------------
    def match_prefix(self, tokens: Sequence[int]) -> List[int]:
        """The cached pages of the longest prefix of `tokens` in whole pages, leaving at least one token to run."""
        if not self.enable_prefix_caching:
            return []
        Z, prev, hit = self.page_size, ROOT_HASH, []
        for j in range((len(tokens) - 1) // Z):
            prev = page_hash(prev, tokens[j * Z:(j + 1) * Z])
            page = self.cached.get(prev)
            if page is None:
                break
            hit.append(page)
        return hit

    def evictable_among(self, pages: Sequence[int]) -> int:
        """How many of `pages` are cached but unowned (admitting them takes them out of the free count)."""
        return sum(1 for p in pages if p in self.evictable)

    def register_computed(self, seq_id: int, tokens: Sequence[int], num_computed: int) -> None:
        """Name the sequence's full pages whose tokens are now in the pools, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        Z, table, hashes = self.page_size, self.tables[seq_id], self.hashes[seq_id]
        for j in range(len(hashes), num_computed // Z):
            h = page_hash(hashes[-1] if hashes else ROOT_HASH, tokens[j * Z:(j + 1) * Z])
            hashes.append(h)
            page = table[j]
            if h not in self.cached and page not in self.hash_of:
                self.cached[h], self.hash_of[page] = page, h

    # ---- ownership ------------------------------------------------------------------------------------------
    def _take_page(self) -> int:
        if self.free:
            page = self.free.popleft()
        elif self.evictable:
            page, _ = self.evictable.popitem(last=False)  # least recently used
            del self.cached[self.hash_of.pop(page)]
            self.evictions += 1
        else:
            raise OutOfPages("no free or evictable page left")
        self.ref_count[page] = 1
        self.fresh_pages.append(page)
        return page

    def _own(self, page: int) -> None:
        if self.ref_count[page] == 0:
            self.evictable.pop(page)
        self.ref_count[page] += 1

    def admit(self, seq_id: int, hit_pages: Sequence[int]) -> None:
        """Start a page table for a new sequence holding the prefix-cache hits `hit_pages` (from match_prefix)."""
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id} already has a page table")
        for p in hit_pages:
            self._own(p)
        self.tables[seq_id] = list(hit_pages)
        self.hashes[seq_id] = [self.hash_of[p] for p in hit_pages]

    def pages_needed(self, seq_id: int, start: int, end: int) -> int:
        """New pages a write of positions [start, end) needs: pages past the table, plus copies of shared pages."""
        table, Z = self.tables[seq_id], self.page_size
        grow = max(0, self.pages_for(end) - len(table))
        copies = sum(1 for j in range(start // Z, min(len(table), self.pages_for(end)))
                     if self.ref_count[table[j]] > 1)
        return grow + copies

    def reserve(self, seq_id: int, start: int, end: int) -> bool:
        """Make positions [start, end) writable by this sequence alone; False (and no change) if pages run out."""
        if self.pages_needed(seq_id, start, end) > self.num_free_pages:
            return False
        table, Z = self.tables[seq_id], self.page_size
        for j in range(start // Z, min(len(table), self.pages_for(end))):
            src = table[j]
            if self.ref_count[src] > 1:  # copy-on-write
                dst = self._take_page()
                self.ref_count[src] -= 1
                table[j] = dst
                self.pending_copies.append((src, dst))
                del self.hashes[seq_id][j:]  # its pages from j on are its own now (never hashed yet: j is partial)
        while len(table) < self.pages_for(end):
            table.append(self._take_page())
        return True

    def fork(self, parent_id: int, child_id: int) -> None:
        """The child shares every page of the parent (parallel sampling); writes copy on demand."""
        if child_id in self.tables:
            raise ValueError(f"sequence {child_id} already has a page table")
        for p in self.tables[parent_id]:
            self.ref_count[p] += 1
        self.tables[child_id] = list(self.tables[parent_id])
        self.hashes[child_id] = list(self.hashes[parent_id])

    def free_sequence(self, seq_id: int) -> None:
        """Drop a sequence's pages: unowned cached pages become evictable (its tail first), the rest free."""
        table = self.tables.pop(seq_id)
        self.hashes.pop(seq_id)
        for p in reversed(table):
            self.ref_count[p] -= 1
            if self.ref_count[p] == 0:
                if p in self.hash_of:
                    self.evictable[p] = None  # most recently used end; the tail goes in first, so is evicted first
                else:
                    self.free.append(p)
        # A queued copy into a page nobody owns any more is moot (a preempted sequence's copy-on-write);
        # one into a page a fork still holds must stay.
        self.pending_copies = [(s, d) for s, d in self.pending_copies if self.ref_count[d] > 0]

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Roll a sequence back to its first `num_tokens` positions (speculative rejections): the pages past
        pages_for(num_tokens) go back (free, or evictable if cached). Its hashes cover only computed full pages,
        never the rolled-back positions; a page's later writes overwrite the rejected slots before it is hashed."""
        table = self.tables[seq_id]
        keep = self.pages_for(num_tokens)
        del self.hashes[seq_id][num_tokens // self.page_size:]
        for p in reversed(table[keep:]):
            self.ref_count[p] -= 1
            if self.ref_count[p] == 0:
                if p in self.hash_of:
                    self.evictable[p] = None
                else:
                    self.free.appendleft(p)  # handed out again first: the pool stays compact
        del table[keep:]
        self.pending_copies = [(s, d) for s, d in self.pending_copies if self.ref_count[d] > 0]

    def table(self, seq_id: int) -> List[int]:
        return self.tables[seq_id]

    def drain(self) -> Tuple[List[Tuple[int, int]], List[int]]:
        """The copies and fresh pages queued since the last drain (the engine hands them to the device step)."""
        copies, fresh = self.pending_copies, self.fresh_pages
        self.pending_copies, self.fresh_pages = [], []
        return copies, fresh

    # ---- accounting -----------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise AssertionError if any invariant is broken (tests call this after every operation)."""
        owners = collections.Counter(p for t in self.tables.values() for p in t)
        for p in range(self.num_pages):
            assert self.ref_count[p] == owners.get(p, 0), f"page {p}: refcount {self.ref_count[p]} != owners {owners.get(p, 0)}"
        free, evict = list(self.free), list(self.evictable)
        assert len(set(free)) == len(free), "a page is on the free list twice"
        assert not set(free) & set(evict), "a page is both free and evictable"
        assert not (set(free) | set(evict)) & set(owners), "an owned page is free or evictable"
        assert len(free) + len(evict) + len(owners) == self.num_pages, "a page is lost (neither free nor owned)"
        assert all(p in self.hash_of for p in evict), "an evictable page has no hash"
        assert all(p not in self.hash_of for p in free), "a free page still has a hash"
        assert {self.cached[h]: h for h in self.cached} == self.hash_of, "hash maps disagree"

    def kv_slots(self, num_computed: Dict[int, int]) -> Tuple[int, int]:
        """(used, allocated) token slots over distinct owned pages; a shared page counts once, as full as its fullest owner."""
        Z = self.page_size
        fill: Dict[int, int] = {}
        for sid, table in self.tables.items():
            n = num_computed.get(sid, 0)
            for j, p in enumerate(table):
                fill[p] = max(fill.get(p, 0), min(Z, max(0, n - j * Z)))
        return sum(fill.values()), len(fill) * Z


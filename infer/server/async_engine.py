"""The engine on its own thread, fed by asyncio handlers.

One thread owns the Engine and is the only one that touches it: it takes new requests
and aborts from an inbox, runs `engine.step()` while anything is unfinished, and hands
each update to the asyncio queue of the request it belongs to (thread-safely, through
the handler's event loop). HTTP handlers therefore only enqueue and read.

A step that raises fails the requests it is attributed to (the engine's StepError: the
request whose inputs the step could not build, else the requests in that step; every
request in flight when the error is not the engine's own or the page pools were lost);
each handler returns the error to its own client and the others go on. Metrics are
refreshed after every step, failed or not, and at shutdown, so they never show requests
that are gone.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from typing import Callable, Dict, List, Optional

from infer.engine import Engine, RequestUpdate, StepError

log = logging.getLogger("infer.server")


@dataclasses.dataclass
class EngineFailure:
    """Put on a request's queue when the step it was in failed."""

    message: str


@dataclasses.dataclass
class _Route:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    remaining: int  # samples not finished yet


class AsyncEngine:
    def __init__(self, engine: Engine, on_step: Optional[Callable[[Engine, List[RequestUpdate]], None]] = None):
        self.engine = engine
        self.on_step = on_step  # called on the engine thread after every step (metrics)
        self._inbox: "queue.SimpleQueue" = queue.SimpleQueue()
        self._routes: Dict[str, _Route] = {}
        self._failed: set = set()  # requests failed by a step: their abort updates are not counted as aborts
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    def start(self) -> "AsyncEngine":
        self._thread.start()
        return self

    # ---- called from the event loop -------------------------------------------------------------------------
    async def add(self, prompt, sampling, n: int = 1, stop=(), out: Optional[asyncio.Queue] = None):
        """Queue a request; returns (request id, prompt token count, the queue its updates arrive on).

        Raises the engine's RequestError if it refuses the request."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        out = out if out is not None else asyncio.Queue()
        self._inbox.put(("add", (prompt, sampling, n, tuple(stop)), fut, out, loop))
        self._wake.set()
        rid, n_prompt = await fut
        return rid, n_prompt, out

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Abort what is still running, end the loop, wait for the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    @property
    def num_active(self) -> int:
        return len(self._routes)

    # ---- the engine thread ----------------------------------------------------------------------------------
    def _post(self, route: _Route, item) -> None:
        try:
            route.loop.call_soon_threadsafe(route.queue.put_nowait, item)
        except RuntimeError:  # the handler's loop is gone (shutdown): nobody is listening
            pass

    @staticmethod
    def _resolve(loop, fut, value=None, error=None) -> None:
        def set_():
            if not fut.done():
                fut.set_exception(error) if error is not None else fut.set_result(value)
        try:
            loop.call_soon_threadsafe(set_)
        except RuntimeError:
            pass

    def _drain_inbox(self) -> None:
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if msg[0] == "add":
                _, (prompt, sampling, n, stop), fut, out, loop = msg
                try:
                    rid = self.engine.add_request(prompt, sampling, n=n, stop=stop)
                except Exception as e:  # RequestError (refused) or anything else: that client alone
                    self._resolve(loop, fut, error=e)
                    continue
                self._routes[rid] = _Route(loop, out, n)
                self._resolve(loop, fut, value=(rid, len(self.engine.requests[rid].prompt)))
            elif msg[0] == "abort":
                self.engine.abort(msg[1])

    def _dispatch(self, updates: List[RequestUpdate]) -> None:
        for u in updates:
            route = self._routes.get(u.request_id)
            if route is None:
                continue
            self._post(route, u)
            if u.finished:
                route.remaining -= 1
                if route.remaining == 0:
                    del self._routes[u.request_id]

    def _fail(self, error: Exception) -> None:
        """Abort the requests a failed step is attributed to and tell their handlers; the abort updates drain
        through the next step (nobody is routed to them any more), which also refreshes the metrics."""
        if isinstance(error, StepError) and not error.pools_lost:
            rids, message = error.request_ids, str(error)
        else:
            rids, message = list(self._routes), f"the engine step failed: {type(error).__name__}: {error}"[:500]
            rids += [r for r in getattr(self.engine, "requests", {}) if r not in self._routes]
        for rid in rids:
            if self.engine.abort(rid):
                self._failed.add(rid)
            route = self._routes.pop(rid, None)
            if route is not None:
                self._post(route, EngineFailure(message))
        if isinstance(error, StepError) and error.pools_lost:
            reset = getattr(self.engine, "reset_pools", None)
            if reset is not None:
                reset()

    def _metrics(self, updates: List[RequestUpdate]) -> None:
        if self._failed:  # the handler counted these as errors; their abort updates (all in the step after the
            # failure: aborts come out of the engine's outbox at once) are not aborts too
            updates = [u for u in updates if u.request_id not in self._failed]
            self._failed = set()
        if self.on_step is not None:
            try:
                self.on_step(self.engine, updates)
            except Exception:
                log.exception("metrics callback failed")

    def _run(self) -> None:
        while True:
            self._drain_inbox()
            if self._stopping:
                for rid in list(self._routes):
                    self.engine.abort(rid)
                updates = []
                try:
                    updates = self.engine.step() if self.engine.has_unfinished_requests() else []
                except Exception:
                    log.exception("the engine step failed at shutdown")
                self._dispatch(updates)
                self._metrics(updates)
                return
            if not self.engine.has_unfinished_requests():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                updates = self.engine.step()
            except Exception as e:  # a bad request, a bug or a device error: fail whom it concerns, keep serving
                log.exception("engine step failed")
                self._fail(e)
                continue
            self._dispatch(updates)
            self._metrics(updates)

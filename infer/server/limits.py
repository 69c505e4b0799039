"""What one server accepts from its clients: body size, fan-out, queue depth, the API key, connection timeouts.

    limits = ServerLimits(max_body_bytes=8 << 20, max_waiting_sequences=64, api_key="sk-...")
    admission = Admission(limits, running_capacity=engine.max_num_seqs)

A request fans out into len(prompts) x n sequences. `Admission` counts the sequences the
server has accepted and not yet finished (on the event loop: no locks); one that would take
the count past the engine's running slots plus `max_waiting_sequences` is refused with 429
and a Retry-After, and every new request gets 503 while the server shuts down. A request
that could never fit (more sequences than that whole capacity) is a 400, not a 429.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from infer.server.protocol import APIError

API_KEY_ENV = "INFER_API_KEY"


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 4 << 20  # a request body past this gets 413 (counted while it is read)
    max_prompts_per_request: int = 64  # /v1/completions' list of prompts
    max_waiting_sequences: int = 256  # accepted sequences beyond the engine's running slots
    retry_after_s: int = 1  # the Retry-After of a 429 / 503
    api_key: Optional[str] = None  # when set: `Authorization: Bearer <key>` on every route but /health
    metrics_need_key: bool = False  # /metrics behind the key too (when one is set)
    timeout_keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    timeout_headers_s: float = 10.0  # a connection that has not sent a whole request head by then is closed
    max_requests_per_connection: Optional[int] = 1000  # then the connection closes (keep-alive limit)
    max_connections: Optional[int] = 1024  # open at once; one more is answered 503 and closed

    def __post_init__(self):
        for name in ("max_body_bytes", "max_prompts_per_request", "retry_after_s"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"{name}: must be an int > 0, got {v!r}")
        v = self.max_waiting_sequences
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ValueError(f"max_waiting_sequences: must be an int >= 0, got {v!r}")
        for name in ("timeout_keep_alive_s", "timeout_headers_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")
        for name in ("max_requests_per_connection", "max_connections"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"{name}: must be None or an int > 0, got {v!r}")
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key.strip()
                                             and self.api_key.isprintable()):
            raise ValueError("api_key: must be None or a non-empty printable string")
        if not isinstance(self.metrics_need_key, bool):
            raise ValueError(f"metrics_need_key: must be a bool, got {self.metrics_need_key!r}")


class Admission:
    """Sequences accepted and not finished, bounded; used only from the event loop."""

    def __init__(self, limits: ServerLimits, running_capacity: int):
        self.limits = limits
        self.capacity = running_capacity + limits.max_waiting_sequences
        self.in_flight = 0
        self.closing = False

    def admit(self, sequences: int) -> None:
        """Count `sequences` in, or refuse: 503 while shutting down, 400 if they could never fit, 429 if full now."""
        retry = {"Retry-After": str(self.limits.retry_after_s)}
        if self.closing:
            raise APIError("the server is shutting down", status=503, type="server_error",
                           code="shutting_down", headers=retry)
        if sequences > self.capacity:
            raise APIError(f"this request makes {sequences} sequences (prompts x n); the server holds at most "
                           f"{self.capacity} at a time", param="n", code="too_many_sequences")
        if self.in_flight + sequences > self.capacity:
            raise APIError(f"the server is at capacity ({self.in_flight} of {self.capacity} sequences accepted); "
                           f"retry after {self.limits.retry_after_s} s", status=429, type="rate_limit_error",
                           code="server_busy", headers=retry)
        self.in_flight += sequences

    def release(self, sequences: int) -> None:
        self.in_flight -= sequences

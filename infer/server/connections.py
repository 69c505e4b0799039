"""uvicorn's HTTP/1.1 protocol (h11) with the two connection bounds it lacks.

- A request head (request line and headers) must arrive whole within `timeout_headers_s` of the
  connection opening or of the previous response: a client that opens a connection and sends
  nothing, or sends its headers a byte at a time, is disconnected (uvicorn's own keep-alive
  timeout only starts after a first response, and stops at the first byte).
- At most `max_requests_per_connection` requests per connection: the last response says
  `Connection: close` and the connection ends (clients reconnect), so no one connection holds a
  server task forever.
- At most `max_connections` open at once: one more has its request answered 503 in the OpenAI
  error shape with a Retry-After, and is closed (uvicorn's own limit_concurrency answers in plain text).

    uvicorn.Config(app, http=guarded_h11(limits), timeout_keep_alive=limits.timeout_keep_alive_s, ...)
"""
from __future__ import annotations

from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

from infer.server.limits import ServerLimits
from infer.server.middleware import send_error
from infer.server.protocol import APIError


class GuardedH11Protocol(H11Protocol):
    timeout_headers_s: float = 10.0
    max_requests_per_connection: Optional[int] = None
    max_connections: Optional[int] = None
    retry_after_s: int = 1

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._seen_cycle, self._requests, self._head_timer = None, 0, None
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self.app = self._refuse  # its request (read as usual, so the client reads the answer) gets the 503
        self._arm()

    async def _refuse(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        e = APIError(f"the server holds at most {self.max_connections} connections; retry after {self.retry_after_s} s",
                     status=503, type="server_error", code="too_many_connections",
                     headers={"Retry-After": self.retry_after_s, "Connection": "close"})
        await send_error(send, e)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.timeout_headers_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection: no whole request head within %.1f s", self.timeout_headers_s)
            self.transport.close()

    def _check_new_cycle(self) -> None:
        """A new request head arrived (uvicorn made a new cycle for it): stop the clock, count it."""
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            self._seen_cycle = self.cycle
            self._disarm()
            self._requests += 1
            limit = self.max_requests_per_connection
            if limit is not None and self._requests >= limit:
                self.cycle.keep_alive = False  # this response closes the connection, and says so
                self.cycle.default_headers = list(self.cycle.default_headers) + [(b"connection", b"close")]

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # timed out: nothing more is read
            return
        super().data_received(data)
        self._check_new_cycle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._check_new_cycle()  # a pipelined request may have started already
        if not self.transport.is_closing() and (self.cycle is None or self.cycle is self._seen_cycle):
            self._arm()  # the next request head has the same time to arrive

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_h11(limits: ServerLimits) -> type:
    """The protocol class for uvicorn.Config(http=...) with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"timeout_headers_s": float(limits.timeout_headers_s),
                 "max_requests_per_connection": limits.max_requests_per_connection,
                 "max_connections": limits.max_connections, "retry_after_s": limits.retry_after_s})

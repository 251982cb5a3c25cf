"""Malformed requests and unexpected errors: one rate-limited log line each, never a traceback.

Without this, grpc's asyncio server logs a full traceback ("Unexpected [DecodeError] raised by
servicer method …") for every request whose bytes do not parse, and for every exception that
escapes a handler, and answers UNKNOWN: a peer can fill the coordinator's log at will.

`RequestGuard` is a server interceptor (placed after the authorisation interceptor, so a caller is
authorised before its request is looked at). It wraps each method's request deserializer so that
bytes that do not parse become a `Malformed` marker instead of an exception, answers such a
request with INVALID_ARGUMENT, and answers an exception escaping a handler with INTERNAL; either
way one line is logged, at most `limit` lines per peer (and kind: malformed requests, errors)
per `window_s` seconds, then one "suppressed K similar lines" line when the window closes.
`quiet_grpc_loggers` adds a filter to grpc's own loggers that turns any traceback they still log
into one rate-limited line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from coordinator.wrapping import WrappingInterceptor
from federation.tls import peer_identity

log = logging.getLogger("concordia.coordinator")

DEFAULT_LIMIT = 10
DEFAULT_WINDOW_S = 10.0
_MAX_KEYS = 4096
_MAX_LINE = 300
GRPC_LOGGERS = ("grpc._cython.cygrpc", "grpc._server", "grpc.aio._server", "grpc._common")


@dataclass
class _Window:
    start: float
    count: int = 0
    suppressed: int = 0
    flush_scheduled: bool = False


class RateLimitedLog:
    """At most `limit` lines per key per `window_s` seconds, then one summary line per window:
    a peer that sends garbage in a loop must not be able to fill the coordinator's log."""

    def __init__(
        self,
        logger: logging.Logger,
        limit: int = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.logger = logger
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, key: str) -> bool:
        """Count one line for `key`; True if it may be logged now (for callers, like the grpc
        log filter, that emit the line themselves)."""
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.start >= self.window_s:
            self._close(key, window)
            window = None
        if window is None:
            self._prune(now)
            window = self._windows[key] = _Window(start=now)
        if window.count < self.limit:
            window.count += 1
            return True
        window.suppressed += 1
        if not window.flush_scheduled:
            window.flush_scheduled = self._schedule_close(key, window, now)
        return False

    def log(self, key: str, level: int, message: str) -> bool:
        """Log `message` (one line, truncated) for `key` unless over the limit; True if logged.
        Truncation keeps a peer-controlled string from making one line huge."""
        if not self.admit(key):
            return False
        self.logger.log(level, "%s", one_line(message))
        return True

    def _close(self, key: str, window: _Window) -> None:
        if self._windows.get(key) is window:
            del self._windows[key]
        if window.suppressed:
            self.logger.warning(
                "suppressed %d similar lines from %s in %.0f s",
                window.suppressed,
                key,
                self.window_s,
            )
            window.suppressed = 0

    def _schedule_close(self, key: str, window: _Window, now: float) -> bool:
        """Report the suppressed count when the window ends, even if nothing else comes."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # reported lazily, by the next line for this key
        delay = max(0.0, window.start + self.window_s - now)
        loop.call_later(delay, self._close, key, window)
        return True

    def _prune(self, now: float) -> None:
        if len(self._windows) < _MAX_KEYS:
            return
        for key, window in list(self._windows.items()):
            if now - window.start >= self.window_s:
                self._close(key, window)
        while len(self._windows) >= _MAX_KEYS:  # all still open: forget the oldest
            oldest = next(iter(self._windows))
            self._close(oldest, self._windows[oldest])


def one_line(text: str) -> str:
    """`text` on one line, at most _MAX_LINE characters: log lines stay greppable and bounded
    whatever a peer put into the message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MAX_LINE else flat[: _MAX_LINE - 1] + "…"


def describe(exc: BaseException) -> str:
    """An exception as one log line: its type and message, never a traceback a peer can
    provoke at will."""
    return one_line(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not parse, so the guard (not grpc) answers it."""

    error: str


def _safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or anything a deserializer may raise
            return Malformed(describe(exc))

    return deserialize


def peer_key(context: aio.ServicerContext) -> str:
    """Who is calling, for log lines and rate-limit keys: the certificate identity, else the
    transport address without its ephemeral port (so reconnecting does not reset the limit)."""
    try:
        identity = peer_identity(context)
    except Exception:
        identity = None
    if identity is not None:
        return identity.uri
    peer = str(context.peer() or "unknown peer")
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer  # drop the ephemeral port


class RequestGuard(WrappingInterceptor):
    """Malformed request → INVALID_ARGUMENT, escaped exception → INTERNAL; one line each, so
    the caller gets an answer and the log a bounded trace instead of grpc's traceback."""

    def __init__(self, rate_log: RateLimitedLog | None = None) -> None:
        super().__init__()
        self.rate_log = rate_log or RateLimitedLog(log)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Wrap deserializer and handler of every method: grpc itself would log a traceback
        for both kinds of failure, outside any handler's reach."""
        deserializer = _safe_deserializer(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(method, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(method, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _malformed(
        self, method: str, request: Malformed, context: aio.ServicerContext
    ) -> None:
        name = method.rsplit("/", 1)[-1]
        peer = peer_key(context)
        self.rate_log.log(
            f"{peer} (malformed requests)",
            logging.WARNING,
            f"malformed request to {method} from {peer}: {request.error}",
        )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request: it does not parse"
        )

    async def _failed(self, method: str, exc: Exception, context: aio.ServicerContext) -> None:
        peer = peer_key(context)
        self.rate_log.log(
            f"{peer} (errors)",
            logging.ERROR,
            f"{method} from {peer} failed unexpectedly: {describe(exc)}",
        )
        log.debug("%s failed", method, exc_info=exc)  # the traceback only when debugging
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the coordinator log")

    def _guard_unary(self, method: str, behaviour: Any) -> Any:
        async def guarded(request: Any, context: aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await self._malformed(method, request, context)
                return None
            try:
                return await behaviour(request, context)
            except aio.AbortError:
                raise  # context.abort(): the handler chose its answer
            except Exception as exc:
                await self._failed(method, exc, context)
                return None

        return guarded

    def _guard_stream(self, method: str, behaviour: Any) -> Any:
        async def guarded(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                await self._malformed(method, request, context)
                return
            try:
                async for item in behaviour(request, context):
                    yield item
            except aio.AbortError:
                raise
            except Exception as exc:
                await self._failed(method, exc, context)

        return guarded


class GrpcTracebackFilter(logging.Filter):
    """Turns a grpc log record that carries a traceback into one rate-limited line: grpc logs
    some failures itself, before or after any interceptor could catch them."""

    def __init__(self, rate_log: RateLimitedLog) -> None:
        super().__init__()
        self.rate_log = rate_log

    def filter(self, record: logging.LogRecord) -> bool:
        """Flatten the record in place and rate-limit it: grpc's own loggers are the last
        place a peer's garbage could still turn into a traceback per request."""
        if not record.exc_info and not record.exc_text:
            return True
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {describe(record.exc_info[1])}"
        record.msg, record.args = one_line(message), None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return self.rate_log.admit(f"grpc:{record.name}")


def quiet_grpc_loggers(rate_log: RateLimitedLog | None = None) -> GrpcTracebackFilter:
    """Install one GrpcTracebackFilter on grpc's loggers (once, so serving twice in a process,
    as tests do, does not stack filters; returns the installed filter)."""
    for name in GRPC_LOGGERS:
        for existing in logging.getLogger(name).filters:
            if isinstance(existing, GrpcTracebackFilter):
                return existing
    installed = GrpcTracebackFilter(rate_log or RateLimitedLog(log))
    for name in GRPC_LOGGERS:
        logging.getLogger(name).addFilter(installed)
    return installed

"""Failed TLS handshakes as one coordinator log line each, naming the peer address and the cause.

A handshake that fails never reaches a servicer or an interceptor: Python sees nothing of it. The
gRPC C core does: with its `handshaker` tracer on (`GRPC_TRACE=handshaker`, at
`GRPC_VERBOSITY=INFO`) it logs, to file descriptor 2, a record per handshake step whose failure
record carries both the OpenSSL error and `grpc.internal.endpoint_peer_address`. So the
coordinator process (`python -m coordinator` only, see `enable_handshake_trace`) points fd 2 at a
pipe, reads the core's records back, turns each failure into one rate-limited line such as

    TLS handshake from 10.0.0.7:51234 refused [client_cert_expired]: the peer's certificate has
    expired; …renew…

and forwards every other line to the real stderr (the INFO records it switched on itself are
dropped, so the log is not flooded with the tracer's chatter). What the server cannot see it does
not claim: a site that rejects the *coordinator's* certificate (another CA, expired, a host name
the certificate lacks) only closes the connection, and is logged as exactly that, pointing at the
site's own log, which names the cause (`site_agent/connection.py`). The client certificate's
subject is not in the core's records, so handshake failures name the address only; refusals
after the handshake (revoked, not on the roster) name the subject and fingerprint
(`coordinator/auth.py`).
"""

from __future__ import annotations

import contextlib
import enum
import io
import logging
import os
import re
import select
import sys
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

log = logging.getLogger("concordia.coordinator.tls")

OWNED_ENV = "CONCORDIA_GRPC_TRACE_OWNED"
"""Set when this module switched the core's tracer on: its INFO records are then dropped."""

_RENEW = "issue that site a renewed kit (`fedctl provision renew SITE`) and install it"
_HEADER = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.\-/]+:\d+\]")
_FAILED = re.compile(r"CallNextHandshakerLocked: error=(.*?)\s+shutdown=", re.S)
_PEER = re.compile(r"grpc\.internal\.endpoint_peer_address=([^,}\s]+)")
_NOISE = re.compile(r"=== Source Location Trace: ===|src/core/\S+:\d+")
_FLUSH_S = 0.2


def enable_handshake_trace(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Switch the core's handshake tracer on; call before `grpc` is first imported (the core
    reads its environment once, at start). An operator's own GRPC_TRACE/GRPC_VERBOSITY win and
    are left alone. True if this call switched it on."""
    if "grpc" in sys.modules or environ.get("GRPC_TRACE") or environ.get("GRPC_VERBOSITY"):
        return False
    environ["GRPC_TRACE"] = "handshaker"
    environ["GRPC_VERBOSITY"] = "INFO"
    environ[OWNED_ENV] = "1"
    return True


class FailureKind(enum.StrEnum):
    """Why the handshake failed, stable for log searches (the line says it in words)."""

    UNKNOWN_CA = "unknown_ca"
    CLIENT_CERT_EXPIRED = "client_cert_expired"
    CLIENT_CERT_NOT_YET_VALID = "client_cert_not_yet_valid"
    NO_CLIENT_CERT = "no_client_cert"
    NOT_TLS = "not_tls"
    PEER_ENDED = "peer_ended_handshake"
    TIMEOUT = "timeout"
    OTHER = "tls_failed"


_CLASSES: tuple[tuple[tuple[str, ...], FailureKind, str], ...] = (
    (
        ("certificate has expired",),
        FailureKind.CLIENT_CERT_EXPIRED,
        f"the peer's certificate has expired; {_RENEW}",
    ),
    (
        ("certificate is not yet valid",),
        FailureKind.CLIENT_CERT_NOT_YET_VALID,
        f"the peer's certificate is not valid yet: check the clock of the site's computer, or"
        f" {_RENEW}",
    ),
    (
        ("unable to get local issuer certificate", "self signed certificate", "self-signed"),
        FailureKind.UNKNOWN_CA,
        "the peer's certificate is not from this consortium's CA (a kit of another consortium,"
        " or from before a `provision --force`): give that site its kit from this consortium",
    ),
    (
        ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE"),
        FailureKind.NO_CLIENT_CERT,
        "the peer sent no client certificate: every caller needs a kit from `fedctl provision`",
    ),
    (
        ("HTTP_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTPS_PROXY_REQUEST"),
        FailureKind.NOT_TLS,
        "the peer does not speak TLS (plain HTTP, a port scanner or a health check without"
        " TLS): point it at a TLS endpoint or ignore it",
    ),
    (
        ("Socket closed", "Connection reset", "BAD_PACKET_LENGTH", "ALERT", "End of TCP stream"),
        FailureKind.PEER_ENDED,
        "the peer ended the handshake, most often a site refusing this coordinator's"
        " certificate (other CA, expired, or lacking the host name it dials); which one only"
        " the site agent's log says",
    ),
    (
        ("timed out", "Timed out", "DEADLINE_EXCEEDED"),
        FailureKind.TIMEOUT,
        "the peer did not finish the handshake in time (a slow or lossy network, or a stalled"
        " client)",
    ),
)
_IGNORED = ("Shutdown", "shutdown", "CANCELLED", "Cancelled")


@dataclass(frozen=True)
class HandshakeFailure:
    """One failed handshake: the peer address, the cause, and the core's own error text."""

    peer: str
    kind: FailureKind
    advice: str
    error: str

    def line(self) -> str:
        """The coordinator's log line for it."""
        return f"TLS handshake from {self.peer} refused [{self.kind}]: {self.advice}"


def parse_record(record: str) -> HandshakeFailure | None:
    """The failure a core log record reports, or None if it reports none (a successful step,
    another tracer's line, or a handshake cut short by the server's own shutdown)."""
    found = _FAILED.search(record)
    if found is None:
        return None
    error = " ".join(_NOISE.sub(" ", found.group(1)).split())
    if error.startswith("OK") or any(word in error for word in _IGNORED):
        return None
    peer_match = _PEER.search(record)
    peer = _address(peer_match.group(1)) if peer_match else "an unknown address"
    for needles, kind, advice in _CLASSES:
        if any(needle in error for needle in needles):
            return HandshakeFailure(peer, kind, advice, error)
    return HandshakeFailure(peer, FailureKind.OTHER, f"TLS failed: {error[:200]}", error)


def _address(uri: str) -> str:
    """`ipv4:10.0.0.7:51234` → `10.0.0.7:51234`; `ipv6:%5B::1%5D:5` → `[::1]:5`."""
    for prefix in ("ipv4:", "ipv6:"):
        if uri.startswith(prefix):
            return uri[len(prefix) :].replace("%5B", "[").replace("%5D", "]")
    return uri


class RecordReader:
    """Splits the core's stderr stream into records (a header line plus its continuation lines)
    and hands each to `on_failure` or `forward`; pure, so it is tested without a pipe."""

    def __init__(
        self,
        on_failure: Callable[[HandshakeFailure], None],
        forward: Callable[[str], None],
        *,
        drop_info: bool,
    ) -> None:
        self._on_failure, self._forward, self._drop_info = on_failure, forward, drop_info
        self._pending: list[str] = []
        self._partial = ""

    def feed(self, data: str) -> None:
        """Take more text; complete records are handled, the last one waits for `flush`."""
        lines = (self._partial + data).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if _HEADER.match(line) and self._pending:
                self._emit()
            self._pending.append(line)

    def flush(self) -> None:
        """Handle the record held back (nothing more came for a moment, or the stream ended)."""
        if self._partial:
            self._pending.append(self._partial)
            self._partial = ""
        if self._pending:
            self._emit()

    def _emit(self) -> None:
        lines, self._pending = self._pending, []
        record = "\n".join(lines)
        failure = parse_record(record)
        if failure is not None:
            self._on_failure(failure)
        if (
            self._drop_info
            and _HEADER.match(record)
            and (record.startswith("I") or "Log level INFO is not suitable" in record)
        ):
            return  # the tracer's chatter this module switched on; nobody asked for it
        self._forward(record + "\n")


class StderrCapture:
    """Points fd 2 (where the core logs) at a pipe read by a thread; Python's own `sys.stderr`
    keeps writing to the real stderr, so the reader never reads its own lines back."""

    def __init__(self, on_failure: Callable[[HandshakeFailure], None], *, drop_info: bool) -> None:
        self._saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._read_fd = read_fd
        self.stderr: io.TextIOWrapper = io.TextIOWrapper(
            os.fdopen(os.dup(self._saved), "wb", buffering=0), line_buffering=True
        )
        self._reader = RecordReader(on_failure, self._write, drop_info=drop_info)
        self._thread = threading.Thread(target=self._run, name="grpc-stderr", daemon=True)
        self._thread.start()

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError):  # stderr gone: nothing left to tell
            os.write(self._saved, text.encode("utf-8", "replace"))

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._read_fd], [], [], _FLUSH_S)
            if not ready:
                self._reader.flush()
                continue
            data = os.read(self._read_fd, 65536)
            if not data:
                break
            self._reader.feed(data.decode("utf-8", "replace"))
        self._reader.flush()
        os.close(self._read_fd)

    def close(self) -> None:
        """Give fd 2 back to the real stderr; the reader drains what is left and ends."""
        os.dup2(self._saved, 2)
        self._thread.join(timeout=2.0)


def capture_handshake_failures(
    on_failure: Callable[[HandshakeFailure], None],
) -> StderrCapture | None:
    """Start the capture if this process switched the tracer on (`python -m coordinator`);
    None otherwise (imported in a test process, or the operator chose their own tracing)."""
    if os.environ.get(OWNED_ENV) != "1" or os.environ.get("GRPC_TRACE") != "handshaker":
        return None
    capture = StderrCapture(on_failure, drop_info=True)
    sys.stderr = capture.stderr
    return capture


# ---- Runtime: the collector's rules and its protocol (docs/protocol.md) ----

import json as _json
import math as _math
import os as _os
import random as _random
import socket as _socket
import time as _time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

MIN_TIME_MS = @MIN_TIME_MS@
MAX_TIME_MS = @MAX_TIME_MS@
_KEY_SEPARATOR = "\x1f"


class ValidationError(ValueError):
    """An event breaks a registry rule: the collector would reject it with
    the same field, rule code and message."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"`{field}` {message}" if field else message)
        self.field = field
        self.rule = rule


class Rejected(Exception):
    """The collector rejected lines (they were not stored; resending them
    unchanged will not help). `rejections` holds its answers."""

    def __init__(self, rejections: List[Dict[str, Any]]) -> None:
        super().__init__("; ".join(r.get("error", "") for r in rejections))
        self.rejections = rejections


class NotStored(Exception):
    """Events could not be stored before the deadline (the collector
    refused them, was unreachable, or closed the connection); resend."""


def _int(field: str, value: Any, lo: int, hi: int, ty: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"attrs.{field}", "wrong_type", f"must be an integer ({ty})")
    if value < lo or value > hi:
        raise ValidationError(f"attrs.{field}", "out_of_range", f"must be from {lo} to {hi}")
    return value


def _float(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _math.isfinite(value):
        raise ValidationError(f"attrs.{field}", "wrong_type", "must be a number")
    return float(value)


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"attrs.{field}", "wrong_type", "must be true or false")
    return value


def _str(field: str, value: Any, max_len: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"attrs.{field}", "wrong_type", "must be a string")
    if len(value.encode("utf-8")) > max_len:
        raise ValidationError(
            f"attrs.{field}", "too_long", f"is longer than its max_len of {max_len} bytes"
        )
    if _KEY_SEPARATOR in value:
        raise ValidationError(
            f"attrs.{field}",
            "key_separator",
            "may not contain U+001F (the unit separator, which joins key fields in the keyed-state table)",
        )
    return value


def _enum(field: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"attrs.{field}", "wrong_type", "must be a string")
    if value not in allowed:
        raise ValidationError(f"attrs.{field}", "not_in_enum", "must be one of: " + ", ".join(allowed))
    return value


def _time_ms(value: Optional[int], past_s: int, future_s: int) -> int:
    now = int(_time.time() * 1000)
    if value is None:
        return now
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise ValidationError(
            "time",
            "time_out_of_range",
            f"must be milliseconds since the Unix epoch, from {MIN_TIME_MS} (2000-01-01) to {MAX_TIME_MS} (2105-12-31); a value near 1.7e9 is seconds, multiply by 1000",
        )
    if value < now - past_s * 1000:
        raise ValidationError(
            "time",
            "time_too_old",
            f"is more than {past_s} s before the collector's clock (the event type's accept_past_s); to load older history on purpose, raise the collector's limits.history_s",
        )
    if value > now + future_s * 1000:
        raise ValidationError(
            "time",
            "time_too_new",
            f"is more than {future_s} s after the collector's clock (the event type's accept_future_s); is the sender's clock right?",
        )
    return value


class Event:
    """Base of the generated event types."""

    EVENT = ""

    def __init__(self, time_ms: int, attrs: Dict[str, Any]) -> None:
        self.time_ms = time_ms
        self.attrs = attrs

    def to_line(self) -> bytes:
        """The event as one line of the collector's protocol."""
        attrs = {k: v for k, v in self.attrs.items() if v is not None}
        return (
            _json.dumps(
                {"event": self.EVENT, "time": self.time_ms, "attrs": attrs},
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode("utf-8")
            + b"\n"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(time_ms={self.time_ms}, attrs={self.attrs!r})"


class Client:
    """Sends events to the collector on this host: over its Unix socket
    (pipelined; returns once every event is acknowledged, i.e. durable in
    the spool; refused lines are retried with backoff), or by appending to
    an inbox file (no network call at all). Chosen by the arguments, else
    by SPOOLHOUSE_SOCKET or SPOOLHOUSE_INBOX."""

    def __init__(
        self,
        socket_path: Optional[str] = None,
        inbox_dir: Optional[str] = None,
        inbox_name: Optional[str] = None,
        timeout_s: float = 30.0,
    ) -> None:
        if socket_path is None and inbox_dir is None:
            socket_path = _os.environ.get("SPOOLHOUSE_SOCKET")
            inbox_dir = _os.environ.get("SPOOLHOUSE_INBOX")
        if socket_path is None and inbox_dir is None:
            raise ValueError(
                "no collector to send to: pass socket_path or inbox_dir, or set SPOOLHOUSE_SOCKET or SPOOLHOUSE_INBOX"
            )
        self.socket_path = socket_path
        self.inbox_dir = inbox_dir
        self.inbox_name = inbox_name or f"events-{_os.getpid()}.log"
        self.timeout_s = timeout_s
        self._sock: Optional[_socket.socket] = None
        self._buf = b""
        self._lines = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf = b""

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, *events: Event) -> int:
        """Sends the events; returns how many were stored. Raises Rejected
        if the collector rejected any (the others are stored), NotStored if
        some could not be stored within the timeout."""
        lines = [e.to_line() for e in events]
        if not lines:
            return 0
        if self.socket_path is None:
            return self._append(lines)
        return self._send_socket(lines)

    def _append(self, lines: List[bytes]) -> int:
        assert self.inbox_dir is not None
        path = _os.path.join(self.inbox_dir, self.inbox_name)
        fd = _os.open(path, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT, 0o640)
        try:
            # One write() per line: lines of several writers never interleave.
            for line in lines:
                _os.write(fd, line)
        finally:
            _os.close(fd)
        return len(lines)

    def _connect(self) -> _socket.socket:
        if self._sock is None:
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            s.settimeout(self.timeout_s)
            s.connect(self.socket_path)
            self._sock = s
            self._buf = b""
            self._lines = 0
        return self._sock

    def _answer(self) -> Dict[str, Any]:
        sock = self._sock
        assert sock is not None
        while b"\n" not in self._buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the collector closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return _json.loads(line)

    def _send_socket(self, lines: List[bytes]) -> int:
        deadline = _time.monotonic() + self.timeout_s
        pending = list(lines)
        rejected: List[Dict[str, Any]] = []
        stored = 0
        attempt = 0
        while pending:
            if _time.monotonic() > deadline:
                raise NotStored(f"{len(pending)} event(s) not stored within {self.timeout_s} s")
            retry: List[bytes] = []
            settled = 0
            try:
                sock = self._connect()
                # The collector numbers lines from 1 per connection.
                base = self._lines
                sock.sendall(b"".join(pending))
                self._lines += len(pending)
                while settled < len(pending):
                    a = self._answer()
                    if "rule" in a:
                        a["line_sent"] = pending[a["line"] - base - 1].decode("utf-8", "replace")
                        rejected.append(a)
                    elif "ack" in a:
                        stored += a.get("accepted", 0)
                        settled = a["ack"] - base
                    elif "refused" in a:
                        retry.extend(pending[a["from"] - base - 1 : a["through"] - base])
                        settled = a["through"] - base
                    elif "closing" in a:
                        raise ConnectionError(a["closing"])
            except (OSError, ValueError, KeyError, IndexError):
                # Lines after the last ack or refusal were not stored: again,
                # on a new connection.
                retry.extend(pending[settled:])
                self.close()
            pending = retry
            if pending:
                attempt += 1
                delay = min(0.05 * (2 ** min(attempt, 6)), 2.0) * _random.uniform(0.75, 1.25)
                _time.sleep(max(0.0, min(delay, deadline - _time.monotonic())))
        if rejected:
            raise Rejected(rejected)
        return stored

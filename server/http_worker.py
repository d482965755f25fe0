"""The web worker: gunicorn's gthread worker, with every request read whole before a thread
serves it.

gunicorn's gthread worker waits for a connection's first byte in its event loop, then gives
the connection to a pool thread, which blocks until the whole request head has come (and the
body, as the app reads it). A client that sends slowly, a header line a second, so holds a
thread, and sixteen of them hold every thread of the server (issue #15.8). gevent or eventlet
would not hold threads, but their monkeypatching is not safe for what runs in request threads
here: torch inference and blocking database calls.

``BufferingWorker`` keeps gthread (its pool, keep-alive, graceful stop) and changes one step:
the worker's event loop reads each request, head and body, from the non-blocking socket into
a buffer, and a thread gets the connection only once the request is complete, its bytes given
back to gunicorn's own parser, which parses and validates them as usual. The loop answers
itself, and closes, when a request

* is not complete within ``server.header_timeout_s`` of the connection (or of the first byte
  of a kept-alive connection's next request), then ``server.body_timeout_s`` for the body: 408;
* announces, or sends chunked, a body over ``limits.max_request_bytes``: 413, before reading it
  (a chunked body was cut at that size and processed, issue #15.9);
* has a head over gunicorn's own limits (431) or a malformed chunked body (400).

A head that gunicorn's parser refuses goes to a thread all the same: gunicorn answers it from
the buffered bytes, as it always did. The worker holds at most ``worker_connections``
(``server.max_connections``) connections, each buffering at most the largest head and body.

Requests for /health/live and /health/ready get threads of their own (``health.PATHS``), so
busy request threads never delay a probe (issue #20.7).

Plain HTTP/1.1 only: TLS, HTTP/2 and the PROXY protocol are refused at start; terminate them
in a reverse proxy. The client's address stays the peer's, which the app's auth relies on
(loopback clients).
"""
from __future__ import annotations

import json
import selectors
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus

from gunicorn.errors import ConfigError
from gunicorn.http.body import DEFAULT_MAX_CHUNK_SIZE_LINE, ChunkedReader
from gunicorn.http.errors import NoMoreData
from gunicorn.http.message import (
    DEFAULT_MAX_HEADERFIELD_SIZE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Request,
)
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
)

from aquamask.processes.errors import exception_document
from aquamask.processes.settings import Settings
from aquamask.server import health

RECV_BYTES = 64 * 1024
# after an error answer, how long and how much the loop reads and discards before it closes:
# closing with unread bytes resets the connection, and the answer may be lost (RFC 9112 9.6);
# a client commonly sends a whole body (a few times the limit) before it reads the answer
LINGER_S = 2.0
LINGER_BYTES = 8 * 1024 * 1024
SWEEP_S = 0.25


def _receive(sock: socket.socket) -> bytes | None:
    """What a ready socket holds: None when nothing after all, b"" when the client closed it
    (or it failed)."""
    try:
        return sock.recv(RECV_BYTES)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


@dataclass(frozen=True)
class FrontLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "FrontLimits":
        return cls(header_timeout_s=settings.server.header_timeout_s,
                   body_timeout_s=settings.server.body_timeout_s,
                   max_body_bytes=settings.limits.max_request_bytes)


def max_head_bytes(cfg) -> int:
    """The longest head gunicorn's parser accepts with these settings (its own bounds)."""
    line = cfg.limit_request_line
    line = MAX_REQUEST_LINE if line <= 0 or line > MAX_REQUEST_LINE else line
    fields = cfg.limit_request_fields
    fields = MAX_HEADERS if fields <= 0 or fields > MAX_HEADERS else fields
    field = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 \
        else DEFAULT_MAX_HEADERFIELD_SIZE
    return line + 2 + fields * (field + 2) + 2


def error_response(error: HTTPException) -> bytes:
    """The answer the app gives to a werkzeug HTTPException (app.py's ``http_error``), as
    bytes on the wire, closing the connection."""
    status = error.code or 500
    code = error.name.replace(" ", "")
    body = json.dumps(exception_document(status, code, error.description or "")).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


@dataclass
class Linger:
    deadline: float
    drained: int = 0


class Refused(Exception):
    def __init__(self, error: HTTPException) -> None:
        super().__init__(error.description)
        self.error = error


class ChunkedFraming:
    """Where a chunked body ends, and its decoded size, from its bytes as they arrive.

    gunicorn's ChunkedReader decodes a body it pulls from a blocking source and cannot stop
    halfway for more bytes, so this follows only the framing (RFC 9112 7.1): chunk-size lines
    as gunicorn reads them, chunk data skipped, trailers. The thread's ChunkedReader decodes
    and validates the same bytes afterwards (chunk extensions, trailer fields)."""

    def __init__(self, start: int, max_body_bytes: int) -> None:
        self.pos = start
        self.max_body_bytes = max_body_bytes
        # framing costs bytes too (a body of one-byte chunks is six times its size)
        self.max_raw_bytes = 2 * max_body_bytes + RECV_BYTES
        self.start = start
        self.decoded = 0
        self.left = 0  # data bytes of the current chunk not yet received
        self.state = "size"

    def advance(self, data: bytearray) -> bool:
        """True once the whole body is in ``data``; raises Refused."""
        if len(data) - self.start > self.max_raw_bytes:
            raise Refused(RequestEntityTooLarge(self._too_large()))
        while True:
            if self.state == "size":
                end = data.find(b"\r\n", self.pos)
                if end < 0:
                    if len(data) - self.pos > DEFAULT_MAX_CHUNK_SIZE_LINE:
                        raise Refused(BadRequest("a chunk-size line is too long"))
                    return False
                self._chunk(bytes(data[self.pos:end]))
                self.pos = end + 2
            elif self.state == "data":
                taken = min(self.left, len(data) - self.pos)
                self.pos += taken
                self.left -= taken
                if self.left:
                    return False
                self.state = "data-end"
            elif self.state == "data-end":
                if len(data) - self.pos < 2:
                    return False
                if data[self.pos:self.pos + 2] != b"\r\n":
                    raise Refused(BadRequest("a chunk does not end with CRLF"))
                self.pos += 2
                self.state = "size"
            else:  # trailers: an empty line ends them
                if data[self.pos:self.pos + 2] == b"\r\n":
                    self.pos += 2
                    return True
                end = data.find(b"\r\n\r\n", self.pos)
                if end < 0:
                    return False
                self.pos = end + 4
                return True

    def _chunk(self, line: bytes) -> None:
        # as gunicorn's parse_chunk_size: hex digits, blanks only before an extension
        size, *extension = line.split(b";", 1)
        if extension:
            size = size.rstrip(b" \t")
        if not size or size.strip(b"0123456789abcdefABCDEF"):
            raise Refused(BadRequest("a chunk size is not a hexadecimal number"))
        length = int(size, 16)
        self.decoded += length
        if self.decoded > self.max_body_bytes:
            raise Refused(RequestEntityTooLarge(self._too_large()))
        self.left = length
        self.state = "data" if length else "trailers"

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_body_bytes} bytes"


class RequestBuffer:
    """One request's bytes as they arrive, and whether they make a whole request yet (no
    I/O: the worker's loop feeds it)."""

    def __init__(self, cfg, peer, limits: FrontLimits, data: bytes, now: float) -> None:
        self.cfg = cfg
        self.peer = peer
        self.limits = limits
        self.data = bytearray(data)
        self.max_head = max_head_bytes(cfg)
        self.deadline = now + limits.header_timeout_s
        self.request: Request | None = None  # gunicorn's parse of the head, once whole
        self.path = ""
        self.body_end: int | None = None  # Content-Length: the index after the body
        self.chunked: ChunkedFraming | None = None
        self.malformed = False
        self.wants_continue = False  # Expect: 100-continue, before any byte of the body
        self._scanned = 0

    def feed(self, data: bytes) -> None:
        self.data += data

    def complete(self, now: float) -> bool:
        """Whether the request is whole, or its head one that gunicorn refuses (its thread
        answers that from these bytes); raises Refused."""
        if self.request is None and not self.malformed:
            self._read_head(now)
        if self.malformed:
            return True
        if self.request is None:
            return False
        if self.chunked is not None:
            return self.chunked.advance(self.data)
        return len(self.data) >= (self.body_end or 0)

    def _read_head(self, now: float) -> None:
        end = self.data.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            if len(self.data) > self.max_head:
                raise Refused(RequestHeaderFieldsTooLarge(
                    f"the request head is longer than {self.max_head} bytes"))
            self._scanned = len(self.data)
            return
        self._scanned = end + 4
        unreader = IterUnreader([bytes(self.data)])
        try:
            request = Request(self.cfg, unreader, self.peer)
        except NoMoreData:  # gunicorn wants more than this blank line: wait for it
            return
        except Exception:  # noqa: BLE001 - gunicorn's own error, answered by its thread
            self.malformed = True
            return
        body_start = len(self.data) - len(unreader.buf.getvalue())
        self.request, self.path = request, request.path or ""
        self.deadline = now + self.limits.body_timeout_s
        if isinstance(request.body.reader, ChunkedReader):
            self.chunked = ChunkedFraming(body_start, self.limits.max_body_bytes)
        else:
            length = request.body.reader.length
            if length > self.limits.max_body_bytes:
                raise Refused(RequestEntityTooLarge(
                    f"the request body is larger than {self.limits.max_body_bytes} bytes"))
            self.body_end = body_start + length
        has_body = self.chunked is not None or (self.body_end or 0) > body_start
        self.wants_continue = has_body and len(self.data) == body_start \
            and request.version >= (1, 1) and any(
                name == "EXPECT" and value.lower() == "100-continue"
                for name, value in request.headers)


class BufferingWorker(ThreadWorker):
    """gthread, with each request read whole by the event loop before a thread serves it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = FrontLimits.from_settings(Settings.load())
        self.buffers: dict[TConn, RequestBuffer] = {}
        self.lingering: dict[socket.socket, Linger] = {}  # error answered, closing
        self.health_pools: dict[str, ThreadPoolExecutor] = {}
        self.next_sweep = 0.0

    @classmethod
    def check_config(cls, cfg, log) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.http_protocols != ["h1"] or cfg.http2_cleartext != "off" \
                or cfg.proxy_protocol != "off" or cfg.protocol != "http":
            raise ConfigError(
                f"{cls.__name__} serves plain HTTP/1.1 only: terminate TLS, HTTP/2 and the "
                "PROXY protocol in a reverse proxy in front of it")

    def init_process(self) -> None:
        # /health/live never queues behind a readiness probe waiting on a slow check
        live = ThreadPoolExecutor(1, thread_name_prefix="health-live")
        ready = ThreadPoolExecutor(2, thread_name_prefix="health-ready")
        self.health_pools = {path: live if path == health.LIVE else ready
                             for path in health.PATHS}
        super().init_process()  # runs the loop

    # -- reading requests in the loop -------------------------------------------------------
    def enqueue_req(self, conn: TConn) -> None:
        """gthread hands a connection to a thread here (new, kept alive and readable, or with
        a pipelined request buffered): read its request first."""
        buffered = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        buffer = RequestBuffer(self.cfg, conn.client, self.limits, buffered, time.monotonic())
        self.buffers[conn] = buffer
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_request_data, conn))
        if buffered:
            self.advance(conn, buffer)
        else:  # gthread found the socket readable: read now rather than on the next wait
            self.on_request_data(conn, conn.sock)

    def on_request_data(self, conn: TConn, sock: socket.socket) -> None:
        data = _receive(sock)
        if data is None:
            return
        if not data:  # the client went away
            self.forget(conn)
            self.close(conn.sock)
            return
        buffer = self.buffers[conn]
        buffer.feed(data)
        self.advance(conn, buffer)

    def advance(self, conn: TConn, buffer: RequestBuffer) -> None:
        try:
            whole = buffer.complete(time.monotonic())
        except Refused as refusal:
            self.refuse(conn, refusal.error)
            return
        if buffer.wants_continue:
            buffer.wants_continue = False
            send_quietly(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
        if whole:
            self.dispatch(conn, buffer)

    def dispatch(self, conn: TConn, buffer: RequestBuffer) -> None:
        """The request is whole: to a thread, its bytes back in gunicorn's parser."""
        self.forget(conn)
        conn.init()  # gunicorn's parser for a new connection; the socket blocking again
        conn.parser.unreader.unread(bytes(buffer.data))
        conn.data_ready = True  # handle() then reads only what is buffered
        pool = self.health_pools.get(buffer.path) or self.tpool
        assert pool is not None  # gunicorn made tpool when the worker started
        future = pool.submit(self.handle, conn)
        future.add_done_callback(
            lambda done: self.method_queue.defer(self.finish_request, conn, done))

    def forget(self, conn: TConn) -> None:
        del self.buffers[conn]
        self.poller.unregister(conn.sock)

    # -- refusing and closing ---------------------------------------------------------------
    def refuse(self, conn: TConn, error: HTTPException) -> None:
        """Answer ``error`` and close (in the loop: no thread waits on this client)."""
        self.forget(conn)
        self.log.info("Refused a request from ip=%s: %s %s", conn.client[0] if conn.client
                      else "", error.code, error.description)
        send_quietly(conn.sock, error_response(error))
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn.sock)
            return
        self.lingering[conn.sock] = Linger(time.monotonic() + LINGER_S)
        self.poller.register(conn.sock, selectors.EVENT_READ, self.on_lingering_data)

    def on_lingering_data(self, sock: socket.socket) -> None:
        data = _receive(sock)
        if data is None:
            return
        linger = self.lingering[sock]
        linger.drained += len(data)
        if not data or linger.drained > LINGER_BYTES:  # closed by the client, or too much
            self.unlinger(sock)

    def unlinger(self, sock: socket.socket) -> None:
        del self.lingering[sock]
        self.poller.unregister(sock)
        self.close(sock)

    def close(self, sock: socket.socket) -> None:
        self.nr_conns -= 1
        sock.close()

    def murder_pending(self) -> None:
        """gthread's loop calls this after each wait for events (1 s at most): the requests
        and closes overdue, looked for at most every SWEEP_S (the deadlines are seconds long,
        the connections up to worker_connections)."""
        super().murder_pending()
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_S
        for conn, buffer in [(c, b) for c, b in self.buffers.items() if b.deadline <= now]:
            if buffer.data:
                self.refuse(conn, RequestTimeout(
                    "the request did not arrive in time (server.header_timeout_s, "
                    "server.body_timeout_s)"))
            else:  # a connection that never sent a byte: nothing to answer
                self.forget(conn)
                self.close(conn.sock)
        for sock in [s for s, linger in self.lingering.items() if linger.deadline <= now]:
            self.unlinger(sock)


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """One non-blocking send of a short answer; a client that does not read loses it."""
    try:
        sock.send(data)
    except OSError:
        pass

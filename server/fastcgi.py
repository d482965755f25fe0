"""A FastCGI client for one responder process, and a bounded pool of persistent ``mapserv``
processes that speak it.

MapServer's ``mapserv`` run as CGI links ~150 shared libraries and parses its configuration on
every request (~60 ms before it does anything); run as FastCGI it stays loaded and answers in a
few milliseconds. Debian's ``mapserv`` is built with libfcgi: started with a listening socket as
its standard input (what ``spawn-fcgi`` does) it serves FastCGI requests on it, one at a time, for
as long as it lives.

Written by hand because no maintained Python FastCGI *client* exists: flup's ``fcgi_app`` is
Python 2 code that no longer runs, and fcgiproto and the other packages implement the
application side. The protocol needed here is small (FastCGI 1.0: BEGIN_REQUEST, PARAMS, STDIN
in; STDOUT, STDERR, END_REQUEST out; one request per connection, no multiplexing).

The pool gives each ``mapserv`` its own Unix socket in a private folder, so the process that
serves a request is known: a request that runs past its time-out kills exactly that process, and
a process that died is restarted by the next request that finds it gone. Requests wait (bounded)
for a free process rather than queueing unseen in a kernel backlog. The processes are children
of the process that owns the pool (a gunicorn web worker) and die with it: they are started
through util-linux's ``setpriv --pdeathsig KILL`` from one long-lived thread, since the kernel
sends the parent-death signal when the *thread* that forked the child ends.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Iterable, TypeVar

LOGGER = logging.getLogger(__name__)

FCGI_VERSION = 1
FCGI_BEGIN_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS, FCGI_STDIN, FCGI_STDOUT, FCGI_STDERR = (
    1, 3, 4, 5, 6, 7)
FCGI_RESPONDER = 1
FCGI_REQUEST_COMPLETE = 0
HEADER = struct.Struct("!BBHHBx")
REQUEST_ID = 1
MAX_CONTENT = 65535
# stdout kept in memory up to this size, then spilled to a temporary file (a WCS coverage can
# be hundreds of MB)
SPOOL_BYTES = 8 << 20


class FastCGIError(Exception):
    """The responder closed the connection or broke the protocol."""


def _name_value(name: bytes, value: bytes) -> bytes:
    def length(n: int) -> bytes:
        return struct.pack("!B", n) if n < 128 else struct.pack("!I", n | 0x80000000)
    return length(len(name)) + length(len(value)) + name + value


def _records(kind: int, payload: bytes) -> Iterable[bytes]:
    """``payload`` as records of ``kind``, then the empty record that ends the stream."""
    for start in range(0, len(payload), MAX_CONTENT):
        chunk = payload[start:start + MAX_CONTENT]
        padding = -len(chunk) % 8
        yield HEADER.pack(FCGI_VERSION, kind, REQUEST_ID, len(chunk), padding) + chunk \
            + b"\0" * padding
    yield HEADER.pack(FCGI_VERSION, kind, REQUEST_ID, 0, 0)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise FastCGIError("the FastCGI responder closed the connection")
        data += chunk
    return bytes(data)


@dataclass
class FastCGIResponse:
    """What the responder wrote: its stdout (a CGI response: headers, blank line, body) in a
    spooled file positioned at 0, and its stderr."""

    stdout: tempfile.SpooledTemporaryFile
    stderr: bytes


def fastcgi_request(sock: socket.socket, params: dict[str, str], body: bytes = b""
                    ) -> FastCGIResponse:
    """Send one request on a connected socket and read the whole response."""
    begin = struct.pack("!HB5x", FCGI_RESPONDER, 0)  # flags 0: the responder closes after
    encoded = b"".join(_name_value(k.encode("latin-1"), v.encode("latin-1"))
                       for k, v in params.items())
    sock.sendall(HEADER.pack(FCGI_VERSION, FCGI_BEGIN_REQUEST, REQUEST_ID, len(begin), 0)
                 + begin + b"".join(_records(FCGI_PARAMS, encoded))
                 + b"".join(_records(FCGI_STDIN, body)))
    stdout = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    stderr = bytearray()
    try:
        while True:
            _version, kind, _rid, length, padding = HEADER.unpack(_read_exact(sock, HEADER.size))
            content = _read_exact(sock, length + padding)[:length] if length + padding else b""
            if kind == FCGI_STDOUT:
                stdout.write(content)
            elif kind == FCGI_STDERR:
                stderr += content[:65536 - len(stderr)]
            elif kind == FCGI_END_REQUEST:
                if len(content) >= 5 and content[4] != FCGI_REQUEST_COMPLETE:
                    raise FastCGIError(f"the responder refused the request (status {content[4]})")
                break
    except BaseException:
        stdout.close()
        raise
    stdout.seek(0)
    return FastCGIResponse(stdout, bytes(stderr))


class _Spawner:
    """Starts child processes from one daemon thread, so that their parent-death signal
    (``setpriv --pdeathsig``) fires when this process ends, not when a request thread does."""

    def __init__(self) -> None:
        self._jobs: "queue.SimpleQueue[tuple[list[str], dict, Future]]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mapserv-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            args, kwargs, future = self._jobs.get()
            try:
                future.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as err:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(err)

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        future: Future = Future()
        self._jobs.put((args, kwargs, future))
        return future.result()


_SETPRIV = shutil.which("setpriv")
PDEATHSIG = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


class PoolBusy(Exception):
    """Every process stayed busy for longer than the wait allowed."""


T = TypeVar("T")


@dataclass(eq=False)
class _Waiter(Generic[T]):
    ready: threading.Event = field(default_factory=threading.Event)
    item: T | None = None


class FairLifo(Generic[T]):
    """Free items handed out most recently used first, and to waiting threads first come,
    first served. ``queue.LifoQueue`` lets a thread that arrives as an item comes back take it
    ahead of threads already waiting, so under load some requests lose again and again (p99 at
    8 clients was 11x the median); here a returned item goes straight to the longest waiter."""

    def __init__(self, items: Iterable[T]) -> None:
        self._lock = threading.Lock()
        self._free: list[T] = list(items)
        self._waiters: deque[_Waiter[T]] = deque()

    def get(self, timeout: float) -> T:
        """A free item, waiting up to ``timeout`` s for one; raises queue.Empty."""
        with self._lock:
            if self._free and not self._waiters:
                return self._free.pop()
            waiter: _Waiter[T] = _Waiter()
            self._waiters.append(waiter)
        waiter.ready.wait(timeout)
        with self._lock:
            if waiter.item is None:  # the wait ended before an item was handed over
                self._waiters.remove(waiter)
                raise queue.Empty
            return waiter.item

    def put(self, item: T) -> None:
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.item = item
                waiter.ready.set()
            else:
                self._free.append(item)

    def take_free(self) -> list[T]:
        """The items not in use now, taken out."""
        with self._lock:
            taken, self._free = self._free, []
            return taken

    def free_items(self) -> list[T]:
        with self._lock:
            return list(self._free)


@dataclass
class _Process:
    socket_path: Path
    popen: subprocess.Popen | None = None
    served: int = 0

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class MapServerPool:
    """``size`` persistent ``mapserv`` FastCGI processes owned by this process.

    ``environment`` is each process's whole environment (nothing of the server's own is
    inherited: no secrets reach MapServer). Processes start with ``start()`` (a web worker
    calls it as it starts), else on first use; one that dies, or is killed for running past
    ``timeout``, is started again by the next request that takes it. Waiting requests take
    free processes in arrival order (``FairLifo``).
    """

    binary: str
    size: int
    environment: dict[str, str]
    timeout: float = 60.0
    wait: float = 30.0
    _free: FairLifo[_Process] = field(init=False, repr=False)
    _folder: Path = field(init=False, repr=False)
    _owner: int = field(init=False, repr=False)
    _closed: bool = field(init=False, default=False, repr=False)
    _spawner: _Spawner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a MapServer pool needs at least one process")
        self._owner = os.getpid()
        self._spawner = _Spawner()
        self._folder = Path(tempfile.mkdtemp(prefix="aquamask-mapserv-"))
        os.chmod(self._folder, 0o700)
        # most recently used first: a warm process answers faster than one idle for long
        self._free = FairLifo(_Process(self._folder / f"mapserv-{i}.sock")
                              for i in range(self.size))

    def request(self, params: dict[str, str], body: bytes = b"") -> FastCGIResponse:
        """Serve one request on a free process (waiting up to ``wait`` s for one)."""
        if os.getpid() != self._owner:
            raise RuntimeError("a MapServer pool is not shared across fork()")
        try:
            process = self._free.get(timeout=self.wait)
        except queue.Empty:
            raise PoolBusy(f"all {self.size} map engine processes stayed busy for "
                           f"{self.wait:g} s") from None
        try:
            return self._serve(process, params, body)
        finally:
            self._give_back(process)

    def start(self) -> None:
        """Start every process now (a web worker's first maps then find them running); one
        that fails to start is tried again by the request that takes it."""
        for process in self._free.take_free():
            try:
                if not self._closed and not process.alive():
                    self._start(process)
            except OSError as err:
                LOGGER.error("map engine process could not start: %s", err)
            finally:
                self._give_back(process)

    def _give_back(self, process: _Process) -> None:
        """A process out of use: free again, or stopped when the pool closed meanwhile."""
        if self._closed:
            self._stop(process)
        else:
            self._free.put(process)

    def _serve(self, process: _Process, params: dict[str, str], body: bytes
               ) -> FastCGIResponse:
        for attempt in (1, 2):
            if not process.alive():
                self._start(process)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(self.timeout)
                    sock.connect(str(process.socket_path))
                    response = fastcgi_request(sock, params, body)
                process.served += 1
                return response
            except (socket.timeout, TimeoutError):
                LOGGER.error("map engine process %s ran past %.0f s: killed",
                             process.popen.pid if process.popen else "?", self.timeout)
                self._stop(process)
                raise
            except (FastCGIError, ConnectionError, FileNotFoundError) as err:
                # it died (killed, crashed) before or while answering: once more on a fresh one
                LOGGER.warning("map engine process %s failed (%s); restarting it",
                               process.popen.pid if process.popen else "?", err)
                self._stop(process)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(self, process: _Process) -> None:
        process.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(process.socket_path))
            listener.listen(8)
            # the listening socket as stdin is how libfcgi tells FastCGI from CGI (spawn-fcgi)
            process.popen = self._spawner.popen(
                [*PDEATHSIG, self.binary], stdin=listener.fileno(), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=self.environment, close_fds=True,
                start_new_session=True)
        finally:
            listener.close()  # the child holds it now
        process.served = 0
        LOGGER.info("map engine process %d started", process.popen.pid)

    @staticmethod
    def _stop(process: _Process) -> None:
        if process.popen is not None:
            if process.popen.poll() is None:
                process.popen.kill()
            process.popen.wait()
            process.popen = None
        process.socket_path.unlink(missing_ok=True)

    def pids(self) -> list[int]:
        """The live processes (for /health and tests)."""
        return [p.popen.pid for p in self._free.free_items() if p.alive() and p.popen]

    def close(self) -> None:
        """Stop every process (those serving a request are stopped when they come back)."""
        if self._closed or os.getpid() != self._owner:
            return
        self._closed = True
        for process in self._free.take_free():
            self._stop(process)
        shutil.rmtree(self._folder, ignore_errors=True)

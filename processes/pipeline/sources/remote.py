"""Remote images a user points at, read by GDAL through Python so that the code that connects
checks every connection and every redirect hop.

GDAL's own /vsicurl resolves names and follows redirects itself, out of reach of any check made
before it (a host answering a Python HEAD with 200 and GDAL's GET with a redirect sends the read
anywhere). Here GDAL gets a rasterio ``opener`` instead: its reads become HTTP range requests
made by a requests session whose connections resolve the host once, check every address with
:meth:`HrefPolicy.connectable` and connect to exactly those (no second lookup: no DNS
rebinding; a refused address receives not even a SYN), whose redirects are followed here, each
hop checked, at most ``MAX_REDIRECTS``, and whose retries are those of :mod:`.http`.

Written by hand, because no library does it: requests/urllib3 have no hook for the address a
connection goes to (hence the small ``_new_conn`` override), fsspec's HTTP file system is
aiohttp-based with its own redirects, and rasterio's opener protocol wants a file object.
Reads are cached in ``CHUNK``-sized pieces (GDAL reads a TIFF header a few bytes at a time) and
GDAL's multi-range reads of tiles are merged and fetched in parallel, as /vsicurl does.
"""
from __future__ import annotations

import bisect
import io
import re
import socket
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence
from urllib.parse import urljoin
from uuid import uuid4

import requests
from rasterio.abc import MultiByteRangeResourceContainer
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util.connection import create_connection

from aquamask.processes.errors import AquamaskError, InvalidInput, TooLarge
from aquamask.processes.pipeline.sources.http import HttpPolicy
from aquamask.processes.pipeline.sources.urls import MAX_REDIRECTS, HrefPolicy

CHUNK = 64 * 1024  # bytes per cached piece and per request for small reads
CACHE_BYTES = 16 * 2**20  # per open image
DIRECT = 4 * CHUNK  # reads at least this long bypass the cache
PARALLEL = 4  # range requests in flight for one multi-range read
# longest wait a Retry-After may impose (urllib3 honours up to 6 h): a user's server is not
# trusted to hold a web request for long
RETRY_AFTER_MAX = 10.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class _CheckedConnection(HTTPConnection):
    """Mixed into urllib3's connections: the socket goes only to addresses the policy allows."""

    policy: HrefPolicy  # set on the classes made for each policy

    def _new_conn(self) -> socket.socket:
        failure: OSError | None = None
        for *_, sockaddr in self.policy.connectable(self._dns_host, self.port):
            try:
                sock = create_connection(sockaddr[:2], self.timeout,
                                         source_address=self.source_address,
                                         socket_options=self.socket_options)
            except socket.timeout as err:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                                f"(connect timeout={self.timeout})") from err
            except OSError as err:
                failure = err
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        raise NewConnectionError(self, f"Failed to establish a new connection: {failure}")


@lru_cache(maxsize=8)
def _checked_pools(policy: HrefPolicy) -> dict[str, type]:
    def checked(pool: type, connection: type) -> type:
        conn = type(f"Checked{connection.__name__}", (_CheckedConnection, connection),
                    {"policy": policy})
        return type(f"Checked{pool.__name__}", (pool,), {"ConnectionCls": conn})
    return {"http": checked(HTTPConnectionPool, HTTPConnection),
            "https": checked(HTTPSConnectionPool, HTTPSConnection)}


class _CheckedAdapter(HTTPAdapter):
    def __init__(self, policy: HrefPolicy, **kwargs) -> None:
        self.policy = policy  # before super().__init__, which makes the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _checked_pools(self.policy)


def checked_session(policy: HrefPolicy, http: HttpPolicy) -> requests.Session:
    """A session whose every connection is checked by ``policy``, retried as ``http`` says."""
    session = requests.Session()
    # no proxy or netrc from the environment: a proxy would be the peer the check sees
    session.trust_env = False
    retry = http.retry().new(retry_after_max=int(min(http.timeout, RETRY_AFTER_MAX)))
    adapter = _CheckedAdapter(policy, max_retries=retry, pool_maxsize=PARALLEL)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _reason(err: requests.RequestException) -> str:
    # after the retries, requests wraps urllib3's last error: that one says what happened
    cause = getattr(err.args[0], "reason", err.args[0]) if err.args else err
    if isinstance(cause, NewConnectionError):  # a subclass of ConnectTimeoutError
        return "the connection failed"
    if isinstance(err, requests.ConnectTimeout) or isinstance(cause, ConnectTimeoutError):
        return "the connection timed out"
    if isinstance(err, requests.ReadTimeout) or isinstance(cause, ReadTimeoutError):
        return "it stopped answering"
    return "the connection failed"


@dataclass
class _Span:
    start: int
    end: int  # exclusive


def _merged(offsets: Sequence[int], sizes: Sequence[int], gap: int,
            longest: int) -> list[_Span]:
    """The spans to request for these ranges: neighbours closer than ``gap`` are merged into
    spans of at most ``longest`` bytes."""
    spans: list[_Span] = []
    for start, size in sorted(zip(offsets, sizes)):
        if spans and start <= spans[-1].end + gap and start + size - spans[-1].start <= longest:
            spans[-1].end = max(spans[-1].end, start + size)
        else:
            spans.append(_Span(start, start + size))
    return spans


class RemoteImage:
    """One remote file, read by HTTP range requests through a checked session. Raises the
    first refusal (Forbidden, InvalidInput) itself; ``failure`` keeps it for the caller when
    GDAL, reading through :class:`_RangeFile`, turns it into a generic read error.

    ``max_range`` bounds one read: a TIFF can claim any size for a tile, and GDAL asks for
    what it claims."""

    def __init__(self, href: str, policy: HrefPolicy, http: HttpPolicy,
                 max_range: int = 128 * 2**20) -> None:
        self.href = href
        self.max_range = max_range
        # the name GDAL opens, mapped to this image by the opener: unique, so that images
        # open at once never share rasterio's opener registration (keyed by host and folder)
        self.path = f"aquamask://{uuid4().hex}/image.tif"
        self.url = href  # where reads go: the end of the redirects of the first one
        self.policy = policy
        self.http = http
        self.session = checked_session(policy, http)
        self.failure: AquamaskError | None = None
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.size = 0
        try:
            self._first_chunk()
        except BaseException:
            self.session.close()
            raise

    def close(self) -> None:
        self.session.close()

    # --- reads
    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes at ``start`` (fewer at the end of the file); small reads (GDAL
        reads headers and tile indexes a few bytes at a time) through the cache."""
        end = min(start + length, self.size)
        if end <= start:
            return b""
        if end - start >= DIRECT:  # tiles: read once, straight through
            return self._get(start, end - start)
        first, last = start // CHUNK, (end - 1) // CHUNK
        with self._lock:
            missing = [i for i in range(first, last + 1) if i not in self._cache]
        if missing:
            lo, hi = missing[0] * CHUNK, min((missing[-1] + 1) * CHUNK, self.size)
            self._store(lo, self._get(lo, hi - lo))
        with self._lock:
            pieces = []
            for i in range(first, last + 1):
                self._cache.move_to_end(i)
                pieces.append(self._cache[i])
        return b"".join(pieces)[start - first * CHUNK:end - first * CHUNK]

    def read_ranges(self, offsets: Sequence[int], sizes: Sequence[int]) -> list[bytes]:
        """GDAL's multi-range read (the tiles of a window): merged spans, fetched in
        parallel, not cached (each tile is read once)."""
        spans = _merged(offsets, sizes, CHUNK, self.max_range)
        with ThreadPoolExecutor(min(PARALLEL, len(spans))) as pool:
            data = list(pool.map(lambda s: self._get(s.start, s.end - s.start), spans))
        starts = [span.start for span in spans]
        out = []
        for start, size in zip(offsets, sizes):
            i = bisect.bisect_right(starts, start) - 1
            out.append(data[i][start - starts[i]:start - starts[i] + size])
        return out

    def _store(self, start: int, data: bytes) -> None:
        with self._lock:
            for offset in range(0, len(data), CHUNK):
                self._cache[(start + offset) // CHUNK] = data[offset:offset + CHUNK]
                self._cache.move_to_end((start + offset) // CHUNK)
            while len(self._cache) * CHUNK > CACHE_BYTES:
                self._cache.popitem(last=False)

    def _first_chunk(self) -> None:
        """Fetch the first chunk (the TIFF header); the file's size from its Content-Range."""
        data, self.size = self._request(0, CHUNK)
        self._store(0, data)

    def _get(self, start: int, length: int) -> bytes:
        if length > self.max_range:
            raise TooLarge(f"{self.policy.field}: '{self.href}' would need a read of "
                           f"{length / 2**20:,.0f} MiB at once; at most "
                           f"{self.max_range / 2**20:,.0f} MiB are read (write it tiled)")
        data, _ = self._request(start, length)
        if len(data) != min(length, self.size - start):
            raise InvalidInput(f"{self.policy.field}: '{self.href}' sent {len(data)} bytes "
                               f"for a range of {length}")
        return data

    # --- HTTP
    def _request(self, start: int, length: int) -> tuple[bytes, int]:
        """The bytes of one range request and the file's size, following redirects here."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            self.policy.check_url(url)
            try:
                response = self.session.get(
                    url, allow_redirects=False, stream=True,
                    headers={"Range": f"bytes={start}-{start + length - 1}",
                             "Accept-Encoding": "identity"},
                    timeout=(min(self.http.timeout, 30.0), self.http.timeout))
            except requests.RequestException as err:
                raise InvalidInput(f"{self.policy.field}: '{self.href}' cannot be read: "
                                   f"{_reason(err)}") from err
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                body = self._body(response, start, length)
            self.url = url  # the next ranges go where this one ended (as /vsicurl does)
            return body
        raise InvalidInput(f"{self.policy.field}: '{self.href}' redirects more than "
                           f"{MAX_REDIRECTS} times")

    def _body(self, response: requests.Response, start: int,
              length: int) -> tuple[bytes, int]:
        field, href = self.policy.field, self.href
        if response.status_code == 416 and start >= self.size > 0:
            return b"", self.size
        if response.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != start:
                raise InvalidInput(f"{field}: '{href}' answered a range request with "
                                   "another range")
            size = int(match.group(3))
            return self._read(response, min(length, size - start)), size
        if response.status_code == 200 and start == 0:
            # a server without ranges: accepted only for a file that fits the first chunk
            data = self._read(response, length + 1)
            if len(data) > length:
                raise InvalidInput(f"{field}: the server of '{href}' does not answer HTTP "
                                   "range requests; serve the file from one that does (any "
                                   "static file server or object store)")
            return data, len(data)
        raise InvalidInput(f"{field}: '{href}' answered HTTP {response.status_code}")

    def _read(self, response: requests.Response, limit: int) -> bytes:
        """At most ``limit`` bytes of the body within ``http.timeout`` in all, so that a
        server dripping bytes cannot hold the read for long."""
        deadline = time.monotonic() + self.http.timeout
        pieces, got = [], 0
        while got < limit:
            if time.monotonic() > deadline:
                raise InvalidInput(f"{self.policy.field}: '{self.href}' is too slow (no "
                                   f"{limit:,} bytes in {self.http.timeout:g} s)")
            piece = response.raw.read1(min(limit - got, 1 << 20))
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def opener(self) -> "_Opener":
        """The ``opener=`` to give ``rasterio.open(self.path, ...)``."""
        return _Opener(self)


class _RangeFile(io.RawIOBase):
    """The file object GDAL reads through (rasterio's opener protocol): a position over the
    shared :class:`RemoteImage`. A refusal is kept on the image for the caller to raise; GDAL
    sees a short read (an exception raised into its C code would be left pending), or, from a
    multi-range read, which has no other way to fail, the exception."""

    def __init__(self, image: RemoteImage) -> None:
        super().__init__()
        self.image = image
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.image.size}
        self.position = max(0, base[whence] + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        """What rasterio calls (RawIOBase's read would copy the data twice more)."""
        try:
            data = self.image.read(self.position, self.image.size if size < 0 else size)
        except AquamaskError as err:
            self.image.failure = self.image.failure or err
            return b""
        self.position += len(data)
        return data

    def get_byte_ranges(self, offsets: Sequence[int], sizes: Sequence[int]) -> list[bytes]:
        try:
            return self.image.read_ranges(offsets, sizes)
        except AquamaskError as err:
            self.image.failure = self.image.failure or err
            raise


class _Opener(MultiByteRangeResourceContainer):
    """rasterio's ``opener=``: the one URL and nothing beside it, so GDAL's probes for
    sidecar files (.aux.xml, .ovr, .msk) are answered 'no such file' without a request."""

    def __init__(self, image: RemoteImage) -> None:
        self.image = image

    def open(self, path: str, mode: str = "r", **kwargs) -> _RangeFile:
        if path != self.image.path:
            raise FileNotFoundError(path)
        if "r" not in mode or "+" in mode:
            raise PermissionError("remote images are read-only")
        return _RangeFile(self.image)

    def isfile(self, path: str) -> bool:
        return path == self.image.path

    def isdir(self, path: str) -> bool:
        return False

    def ls(self, path: str) -> list[str]:
        return []

    def mtime(self, path: str) -> int:
        return 0

    def rm(self, path: str) -> None:
        raise PermissionError("remote images are read-only")

    def size(self, path: str) -> int:
        if path != self.image.path:
            raise FileNotFoundError(path)
        return self.image.size

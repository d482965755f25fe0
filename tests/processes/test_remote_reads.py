"""Image hrefs under attack (issue #15, items 3, 6 and 9): each test is an attack that succeeded
before, now refused with a 4xx before any byte reaches where it aimed.

Real HTTP on loopback, no mock of the network: an "attacker" on 127.0.0.2 (allow-listed through
``href_private_hosts``, as the operator of the session server allows its data host) answers with
files, redirects and lies; an "internal" listener on 127.0.0.3 (not allowed) stands for this
server's own network and must see no connection at all.
"""
from __future__ import annotations

import datetime as dt
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin
from rasterio.windows import Window

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.demo import make_demo_scene
from aquamask.processes.errors import Forbidden, InvalidInput, TooLarge
from aquamask.processes.pipeline.sources.bands import BandAsset, SourceItem
from aquamask.processes.pipeline.sources.http import HttpPolicy
from aquamask.processes.pipeline.sources.local import LocalSource
from aquamask.processes.pipeline.sources.raster import RasterSource
from aquamask.processes.settings import Settings
from tests.support.standins import Response, send, serve_bytes

ATTACKER, INTERNAL = "127.0.0.2", "127.0.0.3"


# --------------------------------------------------------------------------- the two hosts
class Internal:
    """A TCP listener standing for an internal service: records every connection it gets."""

    def __init__(self) -> None:
        self.sock = socket.create_server((INTERNAL, 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/secret.tif", host: str = INTERNAL) -> str:
        return f"http://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:  # closed
                return
            self.connections.append(peer)
            conn.close()


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    sent: int = 0  # body bytes


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients hang up mid-answer on purpose here (a refused redirect, an ignored range)."""


@dataclass
class Attacker:
    """HTTP/1.1 on 127.0.0.2: ``routes`` path -> handler(handler, head) -> Response."""

    routes: dict[str, Callable[..., Response]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        attacker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                attacker._answer(self, head=True)

            def do_GET(self) -> None:
                attacker._answer(self, head=False)

        self.httpd = _QuietServer((ATTACKER, 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{ATTACKER}:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, data: bytes) -> str:
        self.routes[path] = lambda handler, head: serve_bytes(handler, data)
        return self.url(path)

    def redirect(self, path: str, target: str) -> str:
        self.routes[path] = lambda handler, head: (302, {"Location": target}, b"")
        return self.url(path)

    def gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET"]

    def _answer(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        route = self.routes.get(handler.path)
        status, headers, body = route(handler, head) if route else (404, {}, b"")
        self.seen.append(Seen(handler.command, handler.path, handler.headers.get("Range"),
                              0 if head else len(body)))
        send(handler, (status, headers, body), head)


@pytest.fixture
def internal():
    listener = Internal()
    yield listener
    listener.sock.close()


@pytest.fixture
def attacker():
    host = Attacker()
    yield host
    host.httpd.shutdown()
    host.httpd.server_close()


@pytest.fixture(scope="module")
def cog(tmp_path_factory) -> Path:
    """A 1024 x 1024 COG of the demo scene in 256 x 256 tiles (~4 MB)."""
    folder = tmp_path_factory.mktemp("cog")
    make_demo_scene(folder / "demo.tif", size=1024)
    rasterio.shutil.copy(folder / "demo.tif", folder / "scene.tif", driver="COG",
                         COMPRESS="DEFLATE", BLOCKSIZE=256)
    return folder / "scene.tif"


@pytest.fixture
def root(tmp_path, cog) -> Path:
    """A data root of its own holding scene.tif."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(cog, data / "scene.tif")
    return data


@pytest.fixture
def source(root) -> RasterSource:
    return RasterSource(root, 10**9, ["http", "https"], private_hosts=[ATTACKER],
                        http=HttpPolicy(retries=1, backoff=0.01, timeout=2))


def no_server_path(err: pytest.ExceptionInfo, root: Path) -> None:
    assert str(root) not in str(err.value) and str(root.resolve()) not in str(err.value)


def vrt(source_xml: str, data_type: str = "Int16") -> bytes:
    """A 64 x 64 VRT of one band whose pixels come from ``source_xml``."""
    return (f'<VRTDataset rasterXSize="64" rasterYSize="64">'
            f'<SRS>EPSG:32630</SRS><GeoTransform>600000,10,0,4220000,0,-10</GeoTransform>'
            f'<VRTRasterBand dataType="{data_type}" band="1">{source_xml}</VRTRasterBand>'
            f'</VRTDataset>').encode()


def simple_source(filename: str, band: int = 1) -> str:
    return (f'<SimpleSource><SourceFilename relativeToVRT="0">{filename}</SourceFilename>'
            f'<SourceBand>{band}</SourceBand></SimpleSource>')


RAW_PASSWD = vrt("", "Byte").replace(
    b'<VRTRasterBand dataType="Byte" band="1">',
    b'<VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">'
    b'<SourceFilename relativeToVRT="0">/etc/passwd</SourceFilename>'
    b'<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>64</LineOffset>')


# --------------------------------------------------------------------------- the happy path
def test_an_allowed_remote_cog_reads_pixel_identical_by_ranges(source, attacker, root):
    data = (root / "scene.tif").read_bytes()
    url = attacker.serve("/scene.tif", data)
    remote, local = source.read(url), source.read("scene.tif")
    window = Window(512, 512, 256, 256)
    assert np.array_equal(remote.read(window), local.read(window), equal_nan=True)
    # the header and one tile, by ranges: a small part of the file, not a download of it
    assert attacker.gets() and all(s.range for s in attacker.gets())
    assert sum(s.sent for s in attacker.gets()) < len(data) / 4
    whole = Window(0, 0, remote.width, remote.height)
    assert np.array_equal(remote.read(whole), local.read(whole), equal_nan=True)
    assert remote.sha256 is None and local.sha256
    remote.close(), local.close()


def test_a_remote_scene_is_read_and_closed_from_other_threads(source, attacker, root):
    """Detection reads blocks in a thread of its own: GDAL's callbacks then still find the
    opener rasterio registered in the opening thread (its registry is a context variable)."""
    scene = source.read(attacker.serve("/scene.tif", (root / "scene.tif").read_bytes()))
    local = source.read("scene.tif")
    window = Window(512, 512, 256, 256)
    with ThreadPoolExecutor(1) as reader:
        bands = reader.submit(scene.read, window).result()
        reader.submit(scene.close).result()
    assert np.array_equal(bands, local.read(window), equal_nan=True)
    local.close()


# --------------------------------------------------------------------------- redirects
def test_a_host_answering_head_200_and_get_302_cannot_send_the_read_inside(
        source, attacker, internal):
    """GDAL's /vsicurl followed the GET's redirect that a Python HEAD never saw."""
    def sneaky(handler, head: bool) -> Response:
        if head:
            return 200, {"Content-Type": "image/tiff", "Content-Length": "4096"}, b""
        return 302, {"Location": internal.url()}, b""

    attacker.routes["/sneaky.tif"] = sneaky
    with pytest.raises(Forbidden, match="loopback, link-local or private"):
        source.check(attacker.url("/sneaky.tif"))
    assert [s.method for s in attacker.seen] == ["GET"]
    assert internal.connections == []


@pytest.mark.parametrize("spelling", [
    INTERNAL,
    "2130706435",  # 127.0.0.3 as one decimal number
    "0x7f.0.0.3",  # hex and short forms inet_aton reads
    "[::ffff:127.0.0.3]",  # IPv4-mapped IPv6
    "localhost",
])
def test_redirect_chains_to_internal_addresses_are_refused_hop_by_hop(
        source, attacker, internal, spelling):
    attacker.redirect("/a.tif", attacker.url("/b.tif"))
    attacker.redirect("/b.tif", "/c.tif")  # relative, as servers also answer
    attacker.redirect("/c.tif", internal.url(host=spelling))
    with pytest.raises(Forbidden, match="loopback, link-local or private"):
        source.check(attacker.url("/a.tif"))
    assert [s.path for s in attacker.gets()] == ["/a.tif", "/b.tif", "/c.tif"]
    assert internal.connections == []


@pytest.mark.parametrize("target,match", [
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    (f"http://admin:admin@{ATTACKER}/scene.tif", "credentials"),
])
def test_redirects_to_other_schemes_or_with_credentials_are_refused(source, attacker, target,
                                                                    match):
    with pytest.raises((Forbidden, InvalidInput), match=match):
        source.check(attacker.redirect("/r.tif", target))
    assert len(attacker.gets()) == 1


def test_redirect_loops_stop_after_five_hops(source, attacker):
    attacker.redirect("/loop.tif", "/loop.tif")
    with pytest.raises(InvalidInput, match="redirects more than 5 times"):
        source.check(attacker.url("/loop.tif"))
    assert len(attacker.gets()) == 6


# GDAL reads these tiles with a multi-range read, which can only fail by raising into GDAL's C
# code: Python reports that exception as unraisable, then GDAL fails the read
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_tile_read_redirected_inside_mid_job_is_refused(source, attacker, internal, root):
    """The header is served honestly (the request is accepted); the tiles redirect inside."""
    data = (root / "scene.tif").read_bytes()

    def late(handler, head: bool) -> Response:
        if (handler.headers.get("Range") or "").startswith("bytes=0-"):
            return serve_bytes(handler, data)
        return 302, {"Location": internal.url()}, b""

    attacker.routes["/late.tif"] = late
    url = attacker.url("/late.tif")
    assert source.check(url) == 1024 * 1024
    scene = source.read(url)
    with pytest.raises(Forbidden, match="loopback, link-local or private"):
        scene.read(Window(768, 768, 256, 256))
    scene.close()
    assert internal.connections == []


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("document", [
    pytest.param("vsicurl", id="vsicurl-sources-to-internal"),
    pytest.param("raw", id="raw-local-file-source"),
])
def test_a_remote_vrt_is_refused(source, attacker, internal, document):
    body = RAW_PASSWD if document == "raw" else vrt(
        simple_source(f"/vsicurl/{internal.url()}"))
    url = attacker.serve("/image.vrt", body)
    with pytest.raises(InvalidInput, match="GeoTIFF and Cloud-Optimized GeoTIFF images only") \
            as err:
        source.check(url)
    assert "root:" not in str(err.value)
    assert internal.connections == []


@pytest.mark.parametrize("name,document", [
    ("scene.vrt", lambda root: vrt(simple_source(str(root / "scene.tif")))),
    ("passwd.vrt", lambda root: RAW_PASSWD),
    ("named-like-a.tif", lambda root: RAW_PASSWD),  # formats are told by content, not name
    ("mixed-types.vrt", lambda root: vrt(simple_source(str(root / "scene.tif")), "Float32")
     .replace(b"</VRTDataset>", b'<VRTRasterBand dataType="Byte" band="2">'
              + simple_source(str(root / "scene.tif"), 2).encode()
              + b"</VRTRasterBand></VRTDataset>")),
])
def test_a_local_vrt_under_the_data_root_is_refused(source, root, name, document):
    (root / name).write_bytes(document(root))
    with pytest.raises(InvalidInput, match="GeoTIFF and Cloud-Optimized GeoTIFF images only") \
            as err:
        source.check(name)
    assert int(err.value.http_status_code) == 400
    no_server_path(err, root)


def test_bands_that_are_not_real_numbers_are_400(source, root):
    with rasterio.open(root / "complex.tif", "w", driver="GTiff", width=8, height=8, count=6,
                       dtype="complex64", crs="EPSG:32630",
                       transform=from_origin(0, 80, 10, 10)) as dst:
        dst.write(np.ones((6, 8, 8), np.complex64))
    with pytest.raises(InvalidInput, match="complex64; bands must hold integers or real"):
        source.check("complex.tif")


# --------------------------------------------------------------------------- block size
def huge_block(path: Path, tiled: bool, size: int = 12000, dtype: str = "int16") -> Path:
    """``size`` x ``size`` x 6 bands in one tile (or one strip), never written: by default
    12000 x 12000 int16, 1.6 GiB a block in a file of a few hundred bytes, under the pixel
    limit, that kept a worker for minutes at GBs of memory."""
    blocks = {"blockxsize": size, "blockysize": size} if tiled else {"blockysize": size}
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=6,
                       dtype=dtype, crs="EPSG:32630", tiled=tiled, sparse_ok=True,
                       compress="deflate", transform=from_origin(600000, 4220000, 10, 10),
                       **blocks):
        pass
    return path


@pytest.mark.parametrize("tiled", [True, False], ids=["one-tile", "one-strip"])
@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_images_with_huge_blocks_are_413_before_any_pixel_is_read(source, attacker, root,
                                                                  tiled, remote):
    path = huge_block(root / "huge.tif", tiled)
    assert path.stat().st_size < 4096
    href = attacker.serve("/huge.tif", path.read_bytes()) if remote else "huge.tif"
    started = time.monotonic()
    with pytest.raises(TooLarge, match=r"1,648 MiB each.*at most 64 MiB.*gdal_translate") \
            as err:
        source.check(href)
    assert int(err.value.http_status_code) == 413 and time.monotonic() - started < 10


# --------------------------------------------------------------------------- hrefs
@pytest.mark.parametrize("href,match", [
    ("scene.tif\x00.vrt", "control character U\\+0000"),
    ("\x1b[2Jscene.tif", "control character U\\+001B"),
    ("scene\ud800.tif", "control character U\\+D800"),
    (42, "must be a non-empty string"),
    (["scene.tif"], "must be a non-empty string"),
    ("a/" * 1100 + "scene.tif", "at most 2,048"),
    ("file://server/scene.tif", "a file: URL names no host"),
    (f"http://user:secret@{ATTACKER}/scene.tif", "credentials in a URL are not accepted"),
    (f"http://{ATTACKER}:80\\@{INTERNAL}/scene.tif", "ambiguous"),
    ("http://[::1/scene.tif", "not a valid path or URL"),
    ("x" * 300 + ".tif", "no such file"),  # a name longer than the file system takes
])
def test_malformed_hrefs_are_400(source, root, attacker, internal, href, match):
    with pytest.raises(InvalidInput, match=match) as err:
        source.check(href)
    assert int(err.value.http_status_code) == 400
    no_server_path(err, root)
    assert attacker.seen == [] and internal.connections == []


@pytest.mark.parametrize("href", ["../scene.tif", "file:///etc/passwd",
                                  "file:///%2E%2E/etc/passwd", "/etc/passwd",
                                  "link/../../outside.tif", "link"])
def test_paths_leading_out_of_the_data_root_are_403(source, root, href):
    (root.parent / "outside.tif").write_bytes((root / "scene.tif").read_bytes())
    (root / "link").symlink_to(root.parent / "outside.tif")
    with pytest.raises(Forbidden, match="outside the data root") as err:
        source.check(href)
    no_server_path(err, root)


def test_unreadable_local_files_name_no_server_path(source, root):
    (root / "junk.tif").write_text("not a raster")
    with pytest.raises(InvalidInput, match="'junk.tif' cannot be read as a raster") as err:
        source.check("junk.tif")
    no_server_path(err, root)


def test_a_truncated_local_image_is_the_request_s_error_not_the_server_s(source, root):
    """Its header opens; the blocks past the cut fail (at the sample read for the reflectance
    scale, or mid-job): an InvalidInput naming no path (it was reported as a failed write of
    the results)."""
    data = (root / "scene.tif").read_bytes()
    (root / "cut.tif").write_bytes(data[:len(data) * 2 // 3])

    def read_all() -> None:
        scene = source.read("cut.tif")
        try:
            scene.read(Window(0, 0, scene.width, scene.height))
        finally:
            scene.close()

    with pytest.raises(InvalidInput, match="missing or damaged") as err:
        read_all()
    no_server_path(err, root)


@pytest.mark.parametrize("host", ["localhost", "2130706435", "[::ffff:127.0.0.3]", "127.3"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_names_resolving_to_internal_addresses_are_refused(source, internal, host, scheme):
    with pytest.raises(Forbidden, match="loopback, link-local or private"):
        source.check(internal.url(host=host).replace("http:", f"{scheme}:"))
    assert internal.connections == []


# --------------------------------------------------------------------------- slow and odd hosts
def test_a_host_that_never_answers_times_out(source, attacker):
    def silent(handler, head: bool) -> Response:
        time.sleep(6)
        return 200, {}, b""

    attacker.routes["/silent.tif"] = silent
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="stopped answering"):
        source.check(attacker.url("/silent.tif"))
    assert time.monotonic() - started < 6  # 2 s read timeout, one retry


def test_a_retry_after_of_an_hour_is_not_waited_for(source, attacker):
    attacker.routes["/busy.tif"] = lambda handler, head: (503, {"Retry-After": "3600"}, b"")
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="answered HTTP 503"):
        source.check(attacker.url("/busy.tif"))
    assert len(attacker.gets()) == 2 and time.monotonic() - started < 6  # one retry, 2 s


def test_a_host_ignoring_ranges_is_refused_not_downloaded(source, attacker, root):
    data = (root / "scene.tif").read_bytes()
    attacker.routes["/whole.tif"] = lambda handler, head: (200, {}, data)
    with pytest.raises(InvalidInput, match="does not answer HTTP range requests"):
        source.check(attacker.url("/whole.tif"))


# --------------------------------------------------------------------------- local catalogs
def test_a_local_catalog_naming_a_vrt_is_refused_before_reading(tmp_path, root):
    """A catalog on disk may name any file; a VRT named like a band is not read."""
    (root / "band.tif").write_bytes(RAW_PASSWD)
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    local = LocalSource("local", {"kind": "local", "path": str(root)}, settings)
    item = SourceItem(id="S2X", source="local", datetime=dt.datetime(2023, 8, 1),
                      assets={b: BandAsset(path=str(root / "scene.tif"), band=i + 1)
                              for i, b in enumerate(DETECTION_BANDS)})
    assert local.materialize(item) is item
    for path in (str(root / "band.tif"), "/vsimem/x.tif"):
        bad = item.with_assets(dict(item.assets, B08=BandAsset(path=path)), "")
        with pytest.raises(InvalidInput, match=r"'S2X' \(B08\)") as err:
            local.materialize(bad)
        no_server_path(err, root)


def test_a_local_folder_skips_files_that_are_not_geotiffs(tmp_path, root):
    (root / "scene.tif").rename(root / "S2_20230801.tif")
    (root / "S2_20230802.tif").write_bytes(vrt(simple_source(str(root / "S2_20230801.tif"))))
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    local = LocalSource("local", {"kind": "local", "path": str(root)}, settings)
    assert [item.id for item in local.items()] == ["S2_20230801"]

"""/ows under attack (issue #15, items 1, 2, 4, 5 and 9): each test replays an attack that
succeeded against the earlier pass-through, against the real MapServer pool behind the strict
gateway, over real HTTP on loopback. An "attacker" host (127.0.0.2) serves documents the attacks
point MapServer at; an "internal" listener (127.0.0.3) stands for the private network and must
receive nothing."""
from __future__ import annotations

import datetime as dt
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
import requests
from werkzeug.serving import make_server

from aquamask.processes.publishing.names import series_name
from tests.support.mapserver import (
    ALICE,
    ANONYMOUS,
    BOB,
    MANAGER,
    catalogue_at,
    coverage_ids,
    layer_names,
    ows_app,
)

SECRET = "root:x:0:0:the-secret-line"


class Listener:
    """An HTTP server on one loopback address that counts every connection it accepts."""

    def __init__(self, host: str, body: bytes = b"", content_type: str = "text/xml") -> None:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                listener.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Counting(ThreadingHTTPServer):
            def get_request(self):
                listener.connections += 1
                return super().get_request()

        self.paths: list[str] = []
        self.connections = 0
        self.server = Counting((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def internal():
    listener = Listener("127.0.0.3", SECRET.encode(), "text/plain")
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def attacker(internal):
    # a Web Map Context whose WMS-client layer reads the internal host, and an SLD whose
    # graphic is fetched from it
    wmc = (f'<ViewContext version="1.1.0" id="x" xmlns="http://www.opengis.net/context">'
           f'<LayerList><Layer queryable="0" hidden="0"><Server service="OGC:WMS" '
           f'version="1.1.1"><OnlineResource xmlns:xlink="http://www.w3.org/1999/xlink" '
           f'xlink:href="{internal.url}/wms?"/></Server><Name>x</Name></Layer></LayerList>'
           f"</ViewContext>").encode()
    listener = Listener("127.0.0.2", wmc)
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, masks):
    """Alice's private layer and series, Carol's public layer."""
    catalogue = catalogue_at(tmp_path_factory.mktemp("security"))
    catalogue.publish(masks["EPSG:32630"], "alice-private", owner=ALICE)
    carol = BOB.__class__("carol", ALICE.roles, issuer=ALICE.issuer)
    catalogue.publish(masks["EPSG:4326"], "carol-public", owner=carol, public=True)
    series = series_name("alice-series")
    catalogue.publish(masks["EPSG:32630"], "alice-series--d1", owner=ALICE, series=series,
                      when=dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc))
    return catalogue


@pytest.fixture(scope="module")
def servers(catalogue):
    """One real HTTP server on loopback per caller."""
    running = {}
    for who, identity in (("alice", ALICE), ("bob", BOB), ("anonymous", ANONYMOUS),
                          ("manager", MANAGER)):
        server = make_server("127.0.0.1", 0, ows_app(catalogue, identity), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running[who] = (server, f"http://127.0.0.1:{server.server_port}/ows")
    yield {who: url for who, (_, url) in running.items()}
    for server, _ in running.values():
        server.shutdown()


def ows(url: str, query: str, timeout: float = 30) -> requests.Response:
    return requests.get(f"{url}?{query}", timeout=timeout)


GETMAP = ("SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS={layer}&STYLES=&CRS=EPSG:3857"
          "&BBOX=-340000,5300000,-320000,5320000&WIDTH=64&HEIGHT=64&FORMAT=image/png")


# -- 1. MapServer's own CGI inputs never reach it ------------------------------------------------
@pytest.mark.parametrize("attack", [
    "mode=map&CONTEXT=/proc/self/fd/0&layers=all",
    "mode=map&CONTEXT={attacker}/context.xml&layers=all",
    "SERVICE=WMS&REQUEST=GetCapabilities&CONTEXT=/etc/passwd",
    "mode=browse&template=/etc/passwd",
    "map=/etc/passwd&SERVICE=WMS&REQUEST=GetCapabilities",
    "map%3DAQUAMASK=1&SERVICE=WMS&REQUEST=GetCapabilities",
    "map%00=x&SERVICE=WMS&REQUEST=GetCapabilities",
    "%6Dap=/etc/passwd&SERVICE=WMS&REQUEST=GetCapabilities",
    "map.web.imagepath=/tmp/&SERVICE=WMS&REQUEST=GetCapabilities",
    "map_web_template=/etc/passwd&SERVICE=WMS&REQUEST=GetCapabilities",
    "mode=map&mapsize=20000+20000&layers=all",
    "qlayer=x&mode=nquery&mapxy=0+0",
])
def test_non_ogc_inputs_are_refused_and_reach_nobody(servers, attacker, internal, attack):
    before = (attacker.connections, internal.connections)
    response = ows(servers["bob"], attack.format(attacker=quote(attacker.url, safe="")))
    assert response.status_code == 400, response.text[:300]
    assert b"ServiceException" in response.content or b"ExceptionReport" in response.content
    assert SECRET.encode() not in response.content and b"root:" not in response.content
    assert (attacker.connections, internal.connections) == before


def test_a_posted_context_document_is_refused(servers, attacker, internal):
    document = requests.get(f"{attacker.url}/context.xml", timeout=10).content
    before = internal.connections
    response = requests.post(f"{servers['bob']}?mode=map&CONTEXT=/proc/self/fd/0&layers=all",
                             data=document, headers={"Content-Type": "text/xml"}, timeout=30)
    assert response.status_code == 415 and b"OperationNotSupported" in response.content
    assert internal.connections == before


def test_context_cannot_tell_whether_a_file_exists(servers):
    answers = {path: ows(servers["bob"], f"SERVICE=WMS&REQUEST=GetCapabilities&CONTEXT={path}")
               for path in ("/etc/passwd", "/no/such/file")}
    texts = {p: (r.status_code, r.text) for p, r in answers.items()}
    assert texts["/etc/passwd"] == texts["/no/such/file"]


def test_mapserver_itself_refuses_posted_requests(catalogue):
    """Defence in depth: should a request slip past the gateway, MapServer's configuration
    (MS_NO_POST) refuses a body on its standard input."""
    from aquamask.server.ows import find_mapserv

    publisher = catalogue.publisher
    document = b'<ViewContext version="1.1.0" xmlns="http://www.opengis.net/context"/>'
    run = subprocess.run(
        [find_mapserv()], input=document, capture_output=True, timeout=30,
        env={"MAPSERVER_CONFIG_FILE": str(publisher.config_path), "REQUEST_METHOD": "POST",
             "CONTENT_TYPE": "text/xml", "CONTENT_LENGTH": str(len(document)),
             "QUERY_STRING": "mode=map&CONTEXT=/proc/self/fd/0",
             "MS_MAPFILE": str(publisher.view_mapfile(None, everyone=True))})
    assert b"image/" not in run.stdout[:200]
    assert b"METHOD of GET" in run.stdout  # MS_NO_POST: refused before any parameter is read


# -- 2. no SLD from clients: no SSRF, no port scan, no stalled workers -------------------------
@pytest.mark.parametrize("parameter", ["SLD", "SLD_BODY"])
def test_client_styles_are_refused_and_nothing_is_fetched(servers, internal, parameter):
    before = internal.connections
    value = (f"{internal.url}/style.sld" if parameter == "SLD" else
             '<StyledLayerDescriptor version="1.1.0"><NamedLayer><Name>water-carol-public'
             '</Name><UserStyle><FeatureTypeStyle><Rule><PointSymbolizer><Graphic>'
             f'<ExternalGraphic><OnlineResource href="{internal.url}/x.png"/></ExternalGraphic>'
             "</Graphic></PointSymbolizer></Rule></FeatureTypeStyle></UserStyle></NamedLayer>"
             "</StyledLayerDescriptor>")
    query = GETMAP.format(layer="water-carol-public") + f"&{parameter}={quote(value)}"
    response = ows(servers["bob"], query)
    assert response.status_code == 400 and b"SLD" in response.content
    assert internal.connections == before


def test_sld_urls_cannot_scan_ports(servers, internal):
    """An open port, a closed one, another: one and the same answer, and nothing fetched."""
    answers = set()
    for target in (f"{internal.url}/style.sld", "http://127.0.0.3:1/closed.sld",
                   "http://127.0.0.3:9/never-answers.sld"):
        response = ows(servers["bob"], GETMAP.format(layer="water-carol-public")
                       + "&SLD=" + quote(target, safe=""), timeout=5)
        answers.add((response.status_code, response.text))
    assert len(answers) == 1 and next(iter(answers))[0] == 400


# -- 4. layers belong to their owners ------------------------------------------------------------
def test_capabilities_show_each_caller_their_own_and_the_public_layers(servers):
    caps = "SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"
    wcs = "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCapabilities"
    seen = {who: set(layer_names(ows(url, caps).content)) for who, url in servers.items()}
    series = series_name("alice-series")
    assert seen["alice"] == {"water-alice-private", "water-carol-public",
                             "water-alice-series--d1", series}
    assert seen["bob"] == seen["anonymous"] == {"water-carol-public"}
    assert seen["manager"] == seen["alice"]
    assert set(coverage_ids(ows(servers["bob"], wcs).content)) == {"water-carol-public"}
    assert "alice" not in ows(servers["bob"], caps).text


@pytest.mark.parametrize("query", [
    GETMAP,
    "SERVICE=WMS&VERSION=1.3.0&REQUEST=GetFeatureInfo&LAYERS={layer}&QUERY_LAYERS={layer}"
    "&STYLES=&CRS=EPSG:3857&BBOX=-340000,5300000,-320000,5320000&WIDTH=64&HEIGHT=64&I=1&J=1"
    "&INFO_FORMAT=text/plain",
    "SERVICE=WMS&VERSION=1.3.0&REQUEST=GetLegendGraphic&LAYER={layer}&FORMAT=image/png",
    "SERVICE=WCS&VERSION=2.0.1&REQUEST=DescribeCoverage&COVERAGEID={layer}",
    "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage&COVERAGEID={layer}&FORMAT=image/tiff",
])
def test_another_users_layer_is_answered_as_one_that_does_not_exist(servers, query):
    private = ows(servers["bob"], query.format(layer="water-alice-private"))
    missing = ows(servers["bob"], query.format(layer="water-no-such-thing"))
    assert 400 <= private.status_code < 500
    assert (private.status_code, private.text.replace("alice-private", "X")) == \
        (missing.status_code, missing.text.replace("no-such-thing", "X"))
    assert ows(servers["alice"], query.format(layer="water-alice-private")).status_code == 200
    assert ows(servers["manager"], query.format(layer="water-alice-private")).status_code == 200


def test_a_series_and_a_mixed_request_are_checked_layer_by_layer(servers):
    series = series_name("alice-series")
    assert ows(servers["bob"], GETMAP.format(layer=series)).status_code == 400
    assert ows(servers["alice"], GETMAP.format(layer=series)).status_code == 200
    mixed = GETMAP.format(layer="water-carol-public,water-alice-private")
    assert b"LayerNotDefined" in ows(servers["bob"], mixed).content
    drawn = ows(servers["alice"], mixed)
    assert drawn.status_code == 200 and drawn.headers["Content-Type"] == "image/png"


# -- 5. sizes are integers within the configured bounds ------------------------------------------
@pytest.mark.parametrize("tamper", [
    "WIDTH=8192abc", "WIDTH=8192.0", "WIDTH=1e4", "WIDTH=%208192", "WIDTH=4097",
    "WIDTH=0", "WIDTH=-5", "WIDTH=0x1000", "HEIGHT=99999999999999999999",
])
def test_sizes_are_checked_as_integers(servers, tamper):
    key = tamper.split("=")[0]
    base = GETMAP.format(layer="water-carol-public").replace(f"&{key}=64", "")
    response = ows(servers["bob"], f"{base}&{tamper}")
    assert response.status_code == 400 and key.encode() in response.content, tamper


def test_scalesize_cannot_smuggle_anything(servers):
    for attack in ("SCALESIZE=Long(100),Lat(100)%26map%3DAQUAMASK",
                   "SCALESIZE=Long(100000),Lat(10)", "SCALEFACTOR=1000",
                   "SCALESIZE=Long(10);map=x"):
        response = ows(servers["bob"], "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage"
                       f"&COVERAGEID=water-carol-public&{attack}")
        assert response.status_code == 400, attack


def test_duplicated_and_unknown_parameters_are_refused(servers):
    for query in (GETMAP.format(layer="water-carol-public") + "&WIDTH=64",
                  GETMAP.format(layer="water-carol-public") + "&BOGUS=1",
                  "SERVICE=WMS&REQUEST=GetCapabilities&SERVICE=WCS"):
        assert ows(servers["bob"], query).status_code == 400, query


def test_common_client_extras_are_accepted(servers):
    """QGIS, OpenLayers and browsers add parameters no server needs: accepted, not passed on."""
    query = GETMAP.format(layer="water-carol-public") + \
        "&DPI=96&MAP_RESOLUTION=96&FORMAT_OPTIONS=dpi:96&TILED=true&_=1700000000"
    response = ows(servers["bob"], query)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"


def test_nothing_of_the_server_leaks_into_errors(servers, catalogue):
    home = str(catalogue.settings.home)
    for query in ("SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=water-carol-public",
                  "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage&COVERAGEID=water-carol-public"
                  "&SUBSET=Long(500,600)", "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage"
                  "&COVERAGEID=water-carol-public&FORMAT=image/jpeg"):
        response = ows(servers["bob"], query)
        assert 400 <= response.status_code < 500 and home not in response.text, query


def test_the_internal_listener_was_never_reached(internal):
    """Runs last in this module: every attack above left the private network alone."""
    assert internal.connections == 0 and internal.paths == []

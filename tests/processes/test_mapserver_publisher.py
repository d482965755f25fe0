"""The embedded MapServer publisher: catalogue, mapfile, idempotence, concurrency, validation.

Real MapServer (``mapserv`` through the /ows blueprint), real COGs, no mocks.
"""
from __future__ import annotations

import multiprocessing
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from aquamask.processes.publishers import Publisher
from aquamask.processes.publishers.mapserver import (MapServerPublisher, layer_name,
                                                     validate_product_id)
from aquamask.server.ows import find_mapserv
from tests.processes.conftest_mapserver import (BASE_URL, client, coverage_ids,  # noqa: F401
                                                layer_names, make_product, mapfile_text,
                                                masks, ows_app, publisher)

WMS_CAPS = "/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"
WCS_CAPS = "/ows?SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCapabilities"

UUID = "3f2b8c1e-9a47-4d2e-8b1f-0c9d7e6a5b43"


def test_is_a_publisher(publisher):
    assert isinstance(publisher, Publisher)
    assert publisher.name == "embedded"
    assert publisher.mapfile_path.is_file() and publisher.config_path.is_file()
    config = publisher.config_path.read_text()
    assert str(publisher.mapfile_path) in config and 'MS_MAP_NO_PATH "1"' in config


def test_layer_name_is_an_ncname_for_uuid_ids():
    assert layer_name(UUID) == f"water-{UUID}"
    assert layer_name("a") == "water-a"


@pytest.mark.parametrize("bad", ["", "-abc", "_abc", "a b", 'a"b', "a\nb", "../etc", "a/b",
                                 "a.b", "a" * 65, "é", "x;END", None, 42])
def test_invalid_ids_raise(publisher, masks, bad):
    with pytest.raises(ValueError):
        validate_product_id(bad)
    with pytest.raises(ValueError):
        layer_name(bad)
    if isinstance(bad, str):
        product = make_product(masks["EPSG:32630"], "ok")
        product.id = bad
        with pytest.raises(ValueError):
            publisher.publish(product)
        with pytest.raises(ValueError):
            publisher.unpublish(bad)
    assert publisher.layers() == []


def test_text_cannot_break_out_of_the_mapfile(publisher, client, masks):
    product = make_product(masks["EPSG:32630"], "p1", title='evil" END LAYER\nNAME "x')
    publisher.publish(product)
    text = mapfile_text(publisher)
    assert 'NAME "x' not in text and "evil' END LAYER NAME 'x" in text
    assert layer_names(client.get(WMS_CAPS).data) == ["water-p1"]


def test_empty_mapfile_is_valid(publisher, client):
    wms = client.get(WMS_CAPS)
    assert wms.status_code == 200 and b"<WMS_Capabilities" in wms.data
    assert layer_names(wms.data) == []
    wcs = client.get(WCS_CAPS)
    assert wcs.status_code == 200 and b"<wcs:Capabilities" in wcs.data
    assert coverage_ids(wcs.data) == []


def test_publish_returns_the_layer_and_its_urls(publisher, masks):
    mask = masks["EPSG:32630"]
    layer = publisher.publish(make_product(mask, UUID))
    name = f"water-{UUID}"
    assert layer.name == name and layer.publisher == "embedded"
    assert layer.wms_url == layer.wcs_url == f"{BASE_URL}/ows"
    caps = parse_qs(urlsplit(layer.get_capabilities_url).query)
    assert caps == {"SERVICE": ["WMS"], "VERSION": ["1.3.0"], "REQUEST": ["GetCapabilities"]}
    getmap = {k: v[0] for k, v in parse_qs(urlsplit(layer.get_map_url).query,
                                           keep_blank_values=True).items()}
    minx, miny, maxx, maxy = mask.bbox_wgs84
    assert getmap["LAYERS"] == name and getmap["CRS"] == "EPSG:4326"
    assert [float(v) for v in getmap["BBOX"].split(",")] == pytest.approx([miny, minx, maxy, maxx])
    assert getmap["WIDTH"] == "512" and getmap["FORMAT"] == "image/png"
    assert getmap["TRANSPARENT"] == "TRUE" and getmap["VERSION"] == "1.3.0"
    assert int(getmap["HEIGHT"]) == round(512 * (maxy - miny) / (maxx - minx))
    coverage = parse_qs(urlsplit(layer.get_coverage_url).query)
    assert coverage["COVERAGEID"] == [name] and coverage["VERSION"] == ["2.0.1"]
    assert coverage["FORMAT"] == ["image/tiff"]
    assert parse_qs(urlsplit(layer.describe_coverage_url).query)["REQUEST"] == \
        ["DescribeCoverage"]
    assert parse_qs(urlsplit(layer.legend_url).query)["REQUEST"] == ["GetLegendGraphic"]
    assert publisher.layer(UUID) == layer
    [entry] = publisher.layers()
    assert entry["id"] == UUID and entry["name"] == name and entry["epsg"] == 32630
    assert entry["path"] == str(mask.path.resolve())
    assert entry["bbox_wgs84"] == pytest.approx(list(mask.bbox_wgs84))


def test_the_layer_urls_work(publisher, masks):
    layer = publisher.publish(make_product(masks["EPSG:32630"], UUID))
    client = ows_app(publisher).test_client()
    for url, ctype in ((layer.get_capabilities_url, "text/xml"),
                       (layer.get_map_url, "image/png"),
                       (layer.get_coverage_url, "image/tiff"),
                       (layer.describe_coverage_url, "text/xml"),
                       (layer.legend_url, "image/png")):
        response = client.get(url.removeprefix(BASE_URL))
        assert response.status_code == 200, url
        assert response.content_type.startswith(ctype), (url, response.data[:500])


def test_republish_does_not_duplicate(publisher, client, masks):
    product = make_product(masks["EPSG:32630"], "twice")
    first = publisher.publish(product)
    published = publisher.layers()[0]["published"]
    assert publisher.publish(product) == first
    assert [e["id"] for e in publisher.layers()] == ["twice"]
    assert publisher.layers()[0]["published"] == published
    assert mapfile_text(publisher).count('NAME "water-twice"') == 1
    assert layer_names(client.get(WMS_CAPS).data) == ["water-twice"]


def test_unpublish(publisher, client, masks):
    publisher.publish(make_product(masks["EPSG:32630"], "a"))
    publisher.publish(make_product(masks["EPSG:4326"], "b"))
    assert layer_names(client.get(WMS_CAPS).data) == ["water-a", "water-b"]
    assert coverage_ids(client.get(WCS_CAPS).data) == ["water-a", "water-b"]
    publisher.unpublish("a")
    assert layer_names(client.get(WMS_CAPS).data) == ["water-b"]
    assert coverage_ids(client.get(WCS_CAPS).data) == ["water-b"]
    assert not publisher.is_published("a") and publisher.is_published("b")
    publisher.unpublish("a")          # unknown now: a no-op
    publisher.unpublish("never-seen")
    publisher.unpublish("b")
    assert publisher.layers() == []
    assert layer_names(client.get(WMS_CAPS).data) == []


def test_each_layer_has_a_mapfile_of_its_own_until_unpublished(publisher, masks):
    publisher.publish(make_product(masks["EPSG:32630"], "a"))
    publisher.publish(make_product(masks["EPSG:4326"], "b"))
    own = publisher.layer_mapfile("water-a")
    assert own is not None and own.parent == publisher.layer_maps_dir
    includes = re.findall(r'^  INCLUDE "([^"]+)"$', own.read_text(), flags=re.M)
    assert includes == [str(publisher.layer_maps_dir / "water-a.layer")]
    assert 'NAME "water-a"' in Path(includes[0]).read_text()
    # the catalogue's mapfile includes the same block: a publish writes each layer once
    assert f'INCLUDE "{includes[0]}"' in publisher.mapfile_path.read_text()
    assert publisher.layer_mapfile("water-b") != own
    for name in ("water-never-seen", "a", "series-0123456789abcdef", "water-../../etc/x",
                 "water-a,water-b", ""):
        assert publisher.layer_mapfile(name) is None, name
    Path(includes[0]).write_text("")  # as a crash may leave it (derived files: no fsync)
    assert publisher.layer_mapfile("water-a") is None
    publisher.unpublish("a")
    assert publisher.layer_mapfile("water-a") is None
    assert not own.exists() and not Path(includes[0]).exists()
    assert publisher.layer_mapfile("water-b") is not None


def test_layer_mapfiles_are_made_for_a_catalogue_published_before_them(publisher, masks):
    """A server upgraded from one mapfile for everything gets the layers' own at start."""
    publisher.publish(make_product(masks["EPSG:4326"], "old"))
    for stale in publisher.layer_maps_dir.glob("*.map"):
        stale.unlink()
    publisher.config_path.write_text("# an older config\n")
    again = MapServerPublisher(publisher.workdir, BASE_URL)
    assert again.layer_mapfile("water-old") is not None


def test_a_second_instance_sees_the_same_catalogue(publisher, masks):
    publisher.publish(make_product(masks["EPSG:4326"], "shared"))
    other = MapServerPublisher(publisher.workdir, BASE_URL)
    assert [e["id"] for e in other.layers()] == ["shared"]
    other.unpublish("shared")
    assert publisher.layers() == []


def test_srs_lists_the_native_crs_of_each_layer(publisher, masks):
    publisher.publish(make_product(masks["EPSG:32630"], "utm"))
    text = mapfile_text(publisher)
    assert '"ows_srs" "EPSG:4326 EPSG:3857 EPSG:32630"' in text
    assert '"ows_srs" "EPSG:32630 EPSG:4326 EPSG:3857"' in text


def test_missing_cog_raises_and_changes_nothing(publisher, masks, tmp_path):
    publisher.publish(make_product(masks["EPSG:4326"], "kept"))
    before = mapfile_text(publisher)
    product = make_product(masks["EPSG:4326"], "gone")
    product.mask_cog = tmp_path / "missing.tif"
    with pytest.raises(Exception):
        publisher.publish(product)
    assert mapfile_text(publisher) == before
    assert [e["id"] for e in publisher.layers()] == ["kept"]


def _publish_in_process(workdir: str, mask_path: str, ids: list[str]) -> None:
    from tests.processes.conftest_mapserver import GRIDS, MaskFile, mask_array
    mask = MaskFile(Path(mask_path), "EPSG:32630", GRIDS["EPSG:32630"], mask_array())
    pub = MapServerPublisher(Path(workdir), BASE_URL)
    for product_id in ids:
        pub.publish(make_product(mask, product_id))


def test_concurrent_publish_keeps_every_layer(tmp_path, masks):
    """Several processes (as gunicorn and job workers do), each with threads, publish at once."""
    workdir = tmp_path / "mapserver"
    mask = masks["EPSG:32630"]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_publish_in_process,
                         args=(str(workdir), str(mask.path), [f"proc{p}-{i}" for i in range(4)]))
             for p in range(3)]
    for proc in procs:
        proc.start()
    publisher = MapServerPublisher(workdir, BASE_URL)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: publisher.publish(make_product(mask, f"thread-{i}")), range(8)))
        list(pool.map(lambda i: publisher.unpublish(f"thread-{i}"), range(0, 8, 2)))
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    expected = {f"proc{p}-{i}" for p in range(3) for i in range(4)} | \
        {f"thread-{i}" for i in range(1, 8, 2)}
    assert {e["id"] for e in publisher.layers()} == expected
    assert not list(workdir.glob(".*.tmp"))
    # mapserv parses the mapfile and lists every layer exactly once
    names = layer_names(ows_app(publisher).test_client().get(WMS_CAPS).data)
    assert sorted(names) == sorted(f"water-{i}" for i in expected)


def test_from_settings(tmp_path):
    from aquamask.processes.settings import Settings

    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path),
                                      "AQUAMASK__SERVER__URL": "http://example.org:8080/"})
    pub = MapServerPublisher.from_settings(settings)
    assert pub.workdir == (tmp_path / "mapserver").resolve()
    assert pub.ows_url == "http://example.org:8080/ows"


def test_the_mapfile_is_valid_for_map2img(publisher, masks, tmp_path):
    """The mapfile also renders outside the CGI (a check the lead's CLI may reuse)."""
    publisher.publish(make_product(masks["EPSG:32630"], "cli"))
    tool = next((t for t in ("map2img", "shp2img") if subprocess.run(
        ["which", t], capture_output=True).returncode == 0), None)
    if tool is None:
        pytest.skip("no map2img/shp2img")
    out = tmp_path / "map.png"
    result = subprocess.run([tool, "-m", str(publisher.mapfile_path), "-o", str(out),
                             "-conf", str(publisher.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert find_mapserv()


def test_a_layer_whose_cog_is_gone_is_left_out(publisher, client, tmp_path):
    from tests.processes.conftest_mapserver import write_mask_cog

    doomed = write_mask_cog(tmp_path / "doomed" / "mask.tif", "EPSG:4326")
    kept = write_mask_cog(tmp_path / "kept" / "mask.tif", "EPSG:4326")
    publisher.publish(make_product(doomed, "doomed"))
    doomed.path.unlink()
    publisher.publish(make_product(kept, "kept"))
    assert layer_names(client.get(WMS_CAPS).data) == ["water-kept"]
    assert {e["id"] for e in publisher.layers()} == {"doomed", "kept"}
    publisher.unpublish("doomed")
    assert [e["id"] for e in publisher.layers()] == ["kept"]


def test_getfeatureinfo_answers_the_class(publisher, client, masks):
    from tests.processes.conftest_mapserver import WATER_PIXEL

    mask = masks["EPSG:32630"]
    publisher.publish(make_product(mask, "fi"))
    left, bottom, right, top = mask.bounds
    row, col = WATER_PIXEL
    response = client.get(
        "/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetFeatureInfo&LAYERS=water-fi"
        f"&QUERY_LAYERS=water-fi&STYLES=&CRS=EPSG:32630&BBOX={left},{bottom},{right},{top}"
        f"&WIDTH=256&HEIGHT=256&I={col}&J={row}&INFO_FORMAT=text/plain&FORMAT=image/png")
    assert response.status_code == 200
    assert "value_0 = '1'" in response.data.decode() and "Water" in response.data.decode()


def test_a_new_base_url_is_advertised_without_a_publish(publisher, masks):
    publisher.publish(make_product(masks["EPSG:4326"], "moved"))
    moved = MapServerPublisher(publisher.workdir, "https://maps.example.org/aquamask")
    assert '"ows_onlineresource" "https://maps.example.org/aquamask/ows?"' in \
        mapfile_text(moved)
    assert [e["id"] for e in moved.layers()] == ["moved"]
    assert 'NAME "water-moved"' in mapfile_text(moved)

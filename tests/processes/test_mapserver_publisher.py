"""The embedded map engine: layers kept in the job store, MapServer's files derived from them
(rendered again when missing or broken, kept until no request can read them), idempotence,
concurrency, validation. Real MapServer (FastCGI through /ows), real COGs, a real job store."""
from __future__ import annotations

import multiprocessing
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from aquamask.processes.publishing import service as publishing
from aquamask.processes.publishing.base import Publisher
from aquamask.processes.publishing.mapserver import MapServerPublisher
from aquamask.processes.publishing.names import layer_name, validate_product_id
from tests.support.mapserver import (
    ALICE,
    BASE_URL,
    catalogue_at,
    coverage_ids,
    layer_names,
    make_product,
    ows_app,
)

WMS_CAPS = "/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"
WCS_CAPS = "/ows?SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCapabilities"
UUID = "3f2b8c1e-9a47-4d2e-8b1f-0c9d7e6a5b43"


def included(mapfile: Path) -> str:
    """A mapfile as MapServer reads it: each INCLUDEd block in place."""
    return re.sub(r'^  INCLUDE "([^"]+)"$', lambda m: Path(m.group(1)).read_text(),
                  mapfile.read_text(), flags=re.M)


def test_is_a_publisher_with_a_locked_down_config(catalogue):
    publisher = catalogue.publisher
    assert isinstance(publisher, Publisher) and publisher.name == "embedded"
    config = publisher.config_path.read_text()
    for line in ('MS_MAP_NO_PATH "1"', 'MS_NO_POST "1"', 'GDAL_VRT_ENABLE_RAWRASTERBAND "NO"'):
        assert line in config
    assert publisher.config_path.stat().st_mode & 0o077 == 0  # the store's secrets may be in it


def test_layer_name_is_an_ncname_for_uuid_ids():
    assert layer_name(UUID) == f"water-{UUID}"
    assert layer_name("a") == "water-a"


@pytest.mark.parametrize("bad", ["", "-abc", "_abc", "a b", 'a"b', "a\nb", "../etc", "a/b",
                                 "a.b", "a" * 65, "é", "x;END", None, 42])
def test_invalid_ids_raise_and_publish_nothing(catalogue, masks, bad):
    with pytest.raises(ValueError):
        validate_product_id(bad)
    with pytest.raises(ValueError):
        layer_name(bad)
    if isinstance(bad, str):
        product = make_product(masks["EPSG:32630"], "ok")
        product.id = bad
        with pytest.raises(ValueError):
            publishing.publish(product, catalogue.settings)
        with pytest.raises(ValueError):
            publishing.unpublish(bad, catalogue.settings)
    assert catalogue.names() == []


def test_text_cannot_break_out_of_the_mapfile(catalogue, client, masks):
    catalogue.publish(masks["EPSG:32630"], "p1", title='evil" END LAYER\nNAME "x')
    text = included(catalogue.publisher.layer_mapfile(catalogue.store.layer("p1")))
    assert 'NAME "x' not in text and "evil' END LAYER NAME 'x" in text
    assert layer_names(client.get(WMS_CAPS).data) == ["water-p1"]


def test_an_empty_catalogue_is_valid(client):
    wms = client.get(WMS_CAPS)
    assert wms.status_code == 200 and b"<WMS_Capabilities" in wms.data
    assert layer_names(wms.data) == []
    wcs = client.get(WCS_CAPS)
    assert wcs.status_code == 200 and b"<wcs:Capabilities" in wcs.data
    assert coverage_ids(wcs.data) == []


def test_publish_stores_the_layer_with_its_owner_and_returns_its_urls(catalogue, masks):
    mask = masks["EPSG:32630"]
    layer = catalogue.publish(mask, UUID)
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
    assert int(getmap["HEIGHT"]) == round(512 * (maxy - miny) / (maxx - minx))
    coverage = parse_qs(urlsplit(layer.get_coverage_url).query)
    assert coverage["COVERAGEID"] == [name] and coverage["VERSION"] == ["2.0.1"]
    row = catalogue.store.layer(UUID)
    assert row["name"] == name and row["job_id"] == UUID and row["owner"] == ALICE.owner
    assert row["public"] is False and row["engine"] == "embedded"
    assert row["facts"]["epsg"] == 32630 and row["facts"]["path"] == str(mask.path.resolve())
    assert row["facts"]["bbox_wgs84"] == pytest.approx(list(mask.bbox_wgs84))
    assert catalogue.publisher.layer(row) == layer


def test_the_layer_urls_work(catalogue, masks):
    layer = catalogue.publish(masks["EPSG:32630"], UUID)
    client = ows_app(catalogue, ALICE).test_client()
    for url, ctype in ((layer.get_capabilities_url, "text/xml"),
                       (layer.get_map_url, "image/png"),
                       (layer.get_coverage_url, "image/tiff"),
                       (layer.describe_coverage_url, "text/xml"),
                       (layer.legend_url, "image/png")):
        response = client.get(url.removeprefix(BASE_URL))
        assert response.status_code == 200, (url, response.data[:500])
        assert response.content_type.startswith(ctype), (url, response.data[:500])


def test_republish_does_not_duplicate(catalogue, client, masks):
    catalogue.publish(masks["EPSG:32630"], "twice")
    published = catalogue.store.layer("twice")["published"]
    catalogue.publish(masks["EPSG:32630"], "twice")
    assert catalogue.names() == ["water-twice"]
    assert catalogue.store.layer("twice")["published"] == published
    assert layer_names(client.get(WMS_CAPS).data) == ["water-twice"]


def test_unpublish_removes_the_layer_and_keeps_its_files_for_readers(catalogue, client, masks):
    catalogue.publish(masks["EPSG:32630"], "a")
    catalogue.publish(masks["EPSG:4326"], "b")
    assert layer_names(client.get(WMS_CAPS).data) == ["water-a", "water-b"]
    assert coverage_ids(client.get(WCS_CAPS).data) == ["water-a", "water-b"]
    # what a request that chose the view just before the unpublish will read
    view = catalogue.publisher.view_mapfile(None, everyone=True)
    old_includes = re.findall(r'INCLUDE "([^"]+)"', view.read_text())
    assert any("water-a" in path for path in old_includes)
    catalogue.unpublish("a")
    assert layer_names(client.get(WMS_CAPS).data) == ["water-b"]
    assert coverage_ids(client.get(WCS_CAPS).data) == ["water-b"]
    assert all(Path(path).exists() for path in old_includes)
    catalogue.unpublish("a")          # unknown now: a no-op
    catalogue.unpublish("never-seen")
    short = MapServerPublisher(catalogue.publisher.workdir, BASE_URL, catalogue.store,
                               grace_s=0)
    assert short.collect() == 1
    assert not list(short.workdir.glob("layers/water-a.*"))
    assert (short.workdir / "layers" / "water-b.map").exists()


def test_broken_or_missing_files_are_rendered_again_from_the_store(catalogue, client, masks):
    catalogue.publish(masks["EPSG:4326"], "a")
    getmap = ("/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=water-a&STYLES="
              "&CRS=EPSG:3857&BBOX=-340000,5300000,-320000,5320000&WIDTH=32&HEIGHT=32"
              "&FORMAT=image/png")
    workdir = catalogue.publisher.workdir
    block = workdir / "layers" / "water-a.layer"
    block.write_text(block.read_text()[:40])  # cut short, as a crash may leave it
    assert client.get(getmap).status_code == 200
    shutil.rmtree(workdir)  # everything derived is gone
    catalogue.publisher.rebuild()
    assert layer_names(client.get(WMS_CAPS).data) == ["water-a"]
    assert client.get(getmap).content_type == "image/png"


def test_rebuild_retires_the_files_of_layers_the_store_no_longer_has(catalogue, masks):
    catalogue.publish(masks["EPSG:4326"], "gone")
    catalogue.store.delete_layer("gone")  # as a restored older store would
    publisher = catalogue.publisher
    publisher.rebuild()
    assert (publisher.workdir / "layers" / "water-gone.retired").exists()


def test_a_new_base_url_is_advertised_after_a_restart(tmp_path, masks):
    first = catalogue_at(tmp_path)
    first.publish(masks["EPSG:4326"], "moved", owner=ALICE)
    moved = catalogue_at(tmp_path, "https://maps.example.org/aquamask")
    moved.publisher.rebuild()  # what the server does when it starts
    row = moved.store.layer("moved")
    text = included(moved.publisher.layer_mapfile(row))
    assert '"ows_onlineresource" "https://maps.example.org/aquamask/ows?"' in text
    assert 'NAME "water-moved"' in text


def _publish_in_process(home: str, mask_path: str, ids: list[str]) -> None:
    from tests.support.mapserver import GRIDS, MaskFile, mask_array
    mask = MaskFile(Path(mask_path), "EPSG:32630", GRIDS["EPSG:32630"], mask_array())
    catalogue = catalogue_at(Path(home))
    for product_id in ids:
        catalogue.publish(mask, product_id)


def test_concurrent_publish_keeps_every_layer(tmp_path, masks):
    """Several processes (as job workers do), each with threads, publish at once."""
    mask = masks["EPSG:32630"]
    catalogue = catalogue_at(tmp_path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_publish_in_process,
                         args=(str(tmp_path), str(mask.path), [f"proc{p}-{i}" for i in range(4)]))
             for p in range(3)]
    for proc in procs:
        proc.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: catalogue.publish(mask, f"thread-{i}"), range(8)))
        list(pool.map(lambda i: catalogue.unpublish(f"thread-{i}"), range(0, 8, 2)))
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    expected = {f"proc{p}-{i}" for p in range(3) for i in range(4)} | \
        {f"thread-{i}" for i in range(1, 8, 2)}
    assert {row["product_id"] for row in catalogue.store.layers()} == expected
    assert not list(catalogue.publisher.workdir.rglob(".*.tmp"))
    # mapserv parses the view and lists every layer exactly once
    names = layer_names(ows_app(catalogue).test_client().get(WMS_CAPS).data)
    assert sorted(names) == sorted(f"water-{i}" for i in expected)


def test_from_settings(tmp_path):
    catalogue = catalogue_at(tmp_path, "http://example.org:8080/")
    publisher = catalogue.publisher
    assert publisher.workdir == (tmp_path / "mapserver").resolve()
    assert publisher.ows_url == "http://example.org:8080/ows"
    assert publisher.max_size == 16384


def test_a_layers_mapfile_is_valid_for_map2img(catalogue, masks, tmp_path):
    """The mapfile also renders outside /ows."""
    catalogue.publish(masks["EPSG:32630"], "cli")
    tool = shutil.which("map2img") or shutil.which("shp2img")
    if tool is None:
        pytest.skip("no map2img/shp2img")
    out = tmp_path / "map.png"
    publisher = catalogue.publisher
    result = subprocess.run([tool, "-m", str(publisher.layer_mapfile(
        catalogue.store.layer("cli"))), "-o", str(out), "-conf", str(publisher.config_path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_cog_raises_and_stores_nothing(catalogue, masks, tmp_path):
    catalogue.publish(masks["EPSG:4326"], "kept")
    product = make_product(masks["EPSG:4326"], "gone")
    product.mask_cog = tmp_path / "missing.tif"
    catalogue.add_job("gone")
    with pytest.raises(Exception):
        publishing.publish(product, catalogue.settings)
    assert catalogue.names() == ["water-kept"]


def test_getfeatureinfo_answers_the_class(catalogue, client, masks):
    from tests.support.mapserver import WATER_PIXEL

    mask = masks["EPSG:32630"]
    catalogue.publish(mask, "fi")
    left, bottom, right, top = mask.bounds
    row, col = WATER_PIXEL
    response = client.get(
        "/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetFeatureInfo&LAYERS=water-fi"
        f"&QUERY_LAYERS=water-fi&STYLES=&CRS=EPSG:32630&BBOX={left},{bottom},{right},{top}"
        f"&WIDTH=256&HEIGHT=256&I={col}&J={row}&INFO_FORMAT=text/plain&FORMAT=image/png")
    assert response.status_code == 200, response.data
    assert "value_0 = '1'" in response.data.decode() and "Water" in response.data.decode()

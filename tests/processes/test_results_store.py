"""Results on an object store (processes/storage/results.py): s3fs writes, GDAL's /vsis3/ and
the store read, against moto's S3 server over loopback HTTP (tests/support/objectstore.py: moto
implements the S3 REST API and stands in for S3 because no real object store can run here)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from aquamask.processes.settings import Settings
from aquamask.processes.storage.results import (
    FsspecResultStore,
    LocalResultStore,
    ResultStoreError,
    gdal_options_for,
    results_store,
)


def write_result(folder: Path, size: int = 64) -> None:
    """A small result: a mask GeoTIFF, a probability, a nested date product, the STAC item."""
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                   crs="EPSG:32630", transform=from_origin(500000, 4200000, 10, 10),
                   tiled=True, blockxsize=32, blockysize=32)
    data = np.zeros((1, size, size), "uint8")
    data[:, : size // 2] = 1
    with rasterio.open(folder / "mask.tif", "w", **profile) as dst:
        dst.write(data)
    (folder / "probability.tif").write_bytes(b"p" * 1000)
    (folder / "dates" / "d1").mkdir(parents=True)
    (folder / "dates" / "d1" / "mask.tif").write_bytes(b"m")
    (folder / "dates" / "d1" / "item.json").write_text("{}")
    (folder / "item.json").write_text(json.dumps({"properties": {"datetime": "2023-07-01"}}))


@pytest.fixture
def store(s3, tmp_path) -> FsspecResultStore:
    bucket = s3.new_bucket()
    return FsspecResultStore(f"s3://{bucket}/results", tmp_path / "staging", s3.options())


def bucket_of(store: FsspecResultStore) -> str:
    return store.root.split("/", 1)[0]


def test_commit_uploads_data_first_and_the_item_last_then_removes_the_local_copy(
        s3, store, monkeypatch):
    staging = store.staging("job-1")
    write_result(staging)
    order = []
    put_file = store.fs.put_file
    monkeypatch.setattr(store.fs, "put_file",
                        lambda local, key, **kw: (order.append(key), put_file(local, key, **kw)))
    store.commit("job-1", staging)
    prefix = f"{store.root}/job-1/"
    assert [k[len(prefix):] for k in order] == [
        "dates/d1/mask.tif", "mask.tif", "probability.tif", "dates/d1/item.json", "item.json"]
    assert s3.keys(bucket_of(store), "results/job-1/") == sorted(
        f"results/job-1/{n}" for n in ("dates/d1/mask.tif", "mask.tif", "probability.tif",
                                       "dates/d1/item.json", "item.json"))
    assert not staging.exists()
    assert store.exists("job-1", "item.json") and not store.exists("job-1", "nothing.tif")
    assert json.loads(store.read_text("job-1", "item.json"))["properties"]["datetime"]
    info = store.info("job-1", "probability.tif")
    assert info["size"] == 1000 and info["etag"]
    assert store.read_range("job-1", "probability.tif", 10, 20) == b"p" * 10


def test_gdal_reads_the_committed_cog_through_vsis3(store):
    staging = store.staging("job-2")
    write_result(staging)
    local = rasterio.open(staging / "mask.tif").read()
    store.commit("job-2", staging)
    path = store.gdal_path("job-2", "mask.tif")
    assert path == f"/vsis3/{store.root}/job-2/mask.tif"
    with store.gdal_env(), rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32630
        np.testing.assert_array_equal(src.read(), local)
    assert store.is_file(path) and not store.is_file(path + ".gone")


def test_remove_deletes_the_objects_and_any_local_leftovers(s3, store):
    staging = store.staging("job-3")
    write_result(staging)
    store.commit("job-3", staging)
    other = store.staging("job-4")
    write_result(other)
    store.commit("job-4", other)
    work = store.work_dir("job-3")
    (work / "scratch.tif").write_bytes(b"x")
    store.remove("job-3")
    assert s3.keys(bucket_of(store), "results/job-3/") == []
    assert not work.exists()
    assert s3.keys(bucket_of(store), "results/job-4/")  # another job's result stays
    store.remove("job-3")  # removing twice is fine


def test_a_failed_upload_leaves_no_partial_objects_and_keeps_what_was_stored(
        s3, store, monkeypatch):
    staging = store.staging("kept")
    write_result(staging)
    store.commit("kept", staging)
    before = s3.keys(bucket_of(store), "results/")

    staging = store.staging("broken")
    write_result(staging)
    put_file = store.fs.put_file
    calls = []

    def failing(local, key, **kw):  # the store goes away after two objects
        calls.append(key)
        if len(calls) > 2:
            raise PermissionError("Access Denied")
        return put_file(local, key, **kw)

    monkeypatch.setattr(store.fs, "put_file", failing)
    with pytest.raises(ResultStoreError) as raised:
        store.commit("broken", staging)
    message = str(raised.value)
    assert message.startswith(f"storing the results in {store.url} failed: access denied")
    assert "Traceback" not in message
    assert isinstance(raised.value, OSError)
    assert s3.keys(bucket_of(store), "results/broken/") == []  # the two uploaded, removed
    assert not staging.exists()
    assert s3.keys(bucket_of(store), "results/") == before


def test_a_missing_bucket_and_an_unreachable_store_are_clear_errors(s3, tmp_path):
    missing = FsspecResultStore("s3://no-such-bucket-here/results", tmp_path / "a",
                                s3.options())
    staging = missing.staging("job")
    write_result(staging)
    with pytest.raises(ResultStoreError, match="no such bucket"):
        missing.commit("job", staging)
    assert not staging.exists()
    assert missing.check().startswith("error: no such bucket")

    down = FsspecResultStore("s3://bucket/results", tmp_path / "b",
                             s3.options(endpoint_url="http://127.0.0.1:9"))
    staging = down.staging("job")
    write_result(staging)
    started = time.monotonic()
    with pytest.raises(ResultStoreError, match="failed: unreachable"):
        down.commit("job", staging)
    assert time.monotonic() - started < 20
    assert not staging.exists()
    started = time.monotonic()
    assert down.check(timeout=3) == "error: unreachable" or down.check(timeout=3).startswith(
        "error: no answer")
    assert time.monotonic() - started < 8


def test_health_check_of_a_working_store(store):
    assert store.check() == "ok"  # an empty prefix of an existing bucket is fine


COMMON = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "3",
          "GDAL_HTTP_RETRY_DELAY": "0.5"}


def test_gdal_options_from_the_fsspec_options():
    options = gdal_options_for("s3", {
        "endpoint_url": "https://minio.example.org:9000", "key": "K", "secret": "S",
        "client_kwargs": {"region_name": "eu-central-1"}}, environ={})
    assert options == {"AWS_S3_ENDPOINT": "minio.example.org:9000", "AWS_HTTPS": "YES",
                       "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_ACCESS_KEY_ID": "K",
                       "AWS_SECRET_ACCESS_KEY": "S", "AWS_REGION": "eu-central-1",
                       "AWS_DEFAULT_REGION": "eu-central-1", **COMMON}
    # AWS S3 itself, keys from the standard environment: only GDAL's reading options
    assert gdal_options_for("s3", {}, environ={}) == COMMON
    # botocore's endpoint variable is followed by GDAL too
    assert gdal_options_for("s3", {}, environ={"AWS_ENDPOINT_URL": "http://10.0.0.5:9000"})[
        "AWS_S3_ENDPOINT"] == "10.0.0.5:9000"
    assert gdal_options_for("az", {"account_name": "acc", "account_key": "k"}, environ={})[
        "AZURE_STORAGE_ACCOUNT"] == "acc"


def test_settings_pick_the_store_and_keep_secrets_in_the_environment(tmp_path):
    local = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    assert isinstance(results_store(local), LocalResultStore)
    assert local.results_dir == tmp_path / "results" and local.results_url is None
    remote = Settings.load(environ={
        "AQUAMASK__HOME": str(tmp_path), "AQUAMASK__PATHS__RESULTS": "s3://bucket/some/prefix",
        "AQUAMASK__STORAGE__OPTIONS__ENDPOINT_URL": "http://127.0.0.1:9000",
        "AQUAMASK__STORAGE__OPTIONS__KEY": "K", "AQUAMASK__STORAGE__OPTIONS__SECRET": "S",
        "AQUAMASK__STORAGE__GDAL__AWS_VIRTUAL_HOSTING": "TRUE"})
    store = results_store(remote)
    assert isinstance(store, FsspecResultStore) and store is results_store(remote)
    assert remote.results_url == "s3://bucket/some/prefix"
    assert remote.results_dir == tmp_path / "staging"  # where jobs stage their files
    assert store.gdal_path("j", "mask.tif") == "/vsis3/bucket/some/prefix/j/mask.tif"
    assert store.gdal_options["AWS_ACCESS_KEY_ID"] == "K"
    assert store.gdal_options["AWS_VIRTUAL_HOSTING"] == "YES"  # storage.gdal overrides
    assert store.cgi_environment()["AWS_SECRET_ACCESS_KEY"] == "S"
    with pytest.raises(ValueError, match="object store URL must start with"):
        FsspecResultStore("ftp://host/x", tmp_path)
    with pytest.raises(ValueError, match="names no bucket"):
        FsspecResultStore("s3://", tmp_path)


def test_the_folder_store_is_todays_behaviour(tmp_path):
    store = LocalResultStore(tmp_path / "results")
    staging = store.staging("job")
    assert staging == tmp_path / "results" / ".staging-job"
    write_result(staging)
    store.commit("job", staging)
    assert (tmp_path / "results" / "job" / "item.json").is_file() and not staging.exists()
    assert store.gdal_path("job", "mask.tif") == str(tmp_path / "results" / "job" / "mask.tif")
    assert store.read_range("job", "probability.tif", 0, 3) == b"ppp"
    work = store.work_dir("job")
    store.remove("job")
    assert not (tmp_path / "results" / "job").exists() and not work.exists()


def test_a_water_mask_written_to_the_object_store_is_published_from_vsis3(
        s3, store, tmp_path, demo_scene):
    """The pipeline's product: the COGs committed, their /vsis3/ paths in the mapfile."""
    import datetime as dt

    from aquamask.processes.pipeline.detection import detect
    from aquamask.processes.pipeline.products import write_product
    from aquamask.processes.pipeline.sources.raster import RasterSource
    from aquamask.processes.publishing.mapserver import MapServerPublisher, product_facts
    from aquamask.processes.publishing.names import layer_name
    from aquamask.processes.storage.jobstore import JobStore

    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path),
                                      "AQUAMASK__PATHS__DATA_ROOT": str(demo_scene.parent)})
    scene = RasterSource.from_settings(settings).read(demo_scene.name)
    work = store.work_dir("job-5")
    mask = detect(scene, "ndwi", 0.5, work)
    product = write_product("job-5", mask, scene, {"method": "ndwi"}, store,
                            dt.datetime.now(dt.timezone.utc))
    scene.close()
    assert str(product.mask_cog) == f"/vsis3/{store.root}/job-5/mask.tif"
    assert s3.keys(bucket_of(store), "results/job-5/") == [
        f"results/job-5/{name}" for name in ("item.json", "mask.qml", "mask.sld", "mask.tif",
                                             "mask.tif.aux.xml", "probability.tif")]
    assert store.exists("job-5", "item.json")
    jobs = JobStore(f"sqlite:///{tmp_path}/jobs.sqlite")
    publisher = MapServerPublisher(tmp_path / "mapserver", "http://127.0.0.1:1", jobs, store)
    row = {"product_id": "job-5", "name": layer_name("job-5"),
           "facts": product_facts(product, store)}
    layer = publisher.publish(product, row)
    block = (publisher.workdir / "layers" / "water-job-5.layer").read_text()
    assert f'DATA "/vsis3/{store.root}/job-5/mask.tif"' in block
    assert "AWS_SECRET_ACCESS_KEY" not in block and "aquamask-test-secret" not in block
    # the store's credentials reach MapServer through its config file, readable by us alone
    assert publisher.config_path.stat().st_mode & 0o077 == 0
    assert layer.name == "water-job-5"


def test_a_forked_worker_uses_a_filesystem_of_its_own(store):
    """Job workers are forked; the parent's async S3 client must not be reused in the child."""
    import multiprocessing

    staging = store.staging("job-6")
    write_result(staging)
    store.commit("job-6", staging)  # the parent's filesystem exists now
    parent_fs = store.fs

    def child(queue):
        try:
            queue.put((store.read_text("job-6", "item.json"), store.fs is not parent_fs))
        except Exception as err:  # noqa: BLE001
            queue.put((repr(err), False))

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    text, own = queue.get(timeout=60)
    process.join(timeout=30)
    assert json.loads(text)["properties"]["datetime"] == "2023-07-01" and own

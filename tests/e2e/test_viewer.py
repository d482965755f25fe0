"""The /viewer page in a real browser: Debian's chromium driven by Playwright, against a real
aquamask server on loopback (gunicorn, job workers, MapServer behind /ows).

A person's journey: draw a box over the demo scene, run, watch the progress bar reach 100 %, see
the water drawn from the server's WMS (checked on a screenshot: a known lake pixel is the water
colour, a known dry pixel is not), read the statistics, download the mask; pick the result again
later; see the server's own message when a request is refused. Screenshots and the browser's
console of failing tests go to test-artifacts/viewer/.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pyproj import Transformer

from tests.support.server import REPO

CHROMIUM = Path(os.environ.get("AQUAMASK_CHROMIUM", "/usr/bin/chromium"))
BUILT = REPO / "server" / "viewer" / "static" / "viewer.js"
ARTIFACTS = REPO / "test-artifacts" / "viewer"
# Playwright gives each launch a fresh profile of its own (its --user-data-dir)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
VIEWPORT = {"width": 1366, "height": 768}  # a laptop screen

# The demo scene (aquamask.processes.demo): 512 x 512 px of 10 m, UTM 30N, origin (600000,
# 4220000); a lake centred at row 0.35, column 0.6 of the scene; row 0.6, column 0.85 is dry land.
DEMO = "demo/demo-scene.tif"
SIZE, ORIGIN_X, ORIGIN_Y, PIXEL = 512, 600000.0, 4220000.0, 10.0
_TO_WGS84 = Transformer.from_crs("EPSG:32630", "EPSG:4326", always_xy=True)


def demo_lonlat(row: float, col: float) -> tuple[float, float]:
    """WGS84 longitude/latitude of a (fractional) pixel centre of the demo scene."""
    return _TO_WGS84.transform(ORIGIN_X + (col + 0.5) * PIXEL, ORIGIN_Y - (row + 0.5) * PIXEL)


LAKE = demo_lonlat(0.35 * SIZE, 0.6 * SIZE)
DRY = demo_lonlat(0.6 * SIZE, 0.85 * SIZE)


def require_browser() -> None:
    pytest.importorskip("playwright.sync_api",
                        reason="playwright is absent: bash scripts/setup.sh --test installs it")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: bash scripts/setup.sh --test installs Debian's "
                    "chromium")
    if not BUILT.exists():
        pytest.fail("the viewer is not built: bash scripts/setup.sh runs npm ci and the build")


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser context per test; on failure its screenshot and console are kept."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    console: list[str] = []
    tab.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    tab.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    tab.console_messages = console  # type: ignore[attr-defined]
    failed_before = request.session.testsfailed
    yield tab
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        try:
            tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        finally:
            (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(console) + "\n")
    context.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


def draw_polygon(page, west: float, south: float, east: float, north: float) -> None:
    """The Polygon tool: three corners clicked, the fourth double-clicked to close it."""
    page.get_by_role("button", name="Polygon").click()
    for corner in [(west, south), (east, south), (east, north)]:
        page.mouse.click(*pixel_of(page, corner))
    page.mouse.dblclick(*pixel_of(page, (west, north)))
    expect(page.locator("#place-summary")).to_contain_text("Polygon:")


def run_job(page, timeout_ms: int = 120_000) -> str:
    """Press Run and wait for the job's end: its final state."""
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#progress[data-final]", timeout=timeout_ms)
    return page.get_attribute("#progress", "data-final")


def open_viewer(page, server) -> None:
    page.goto(f"{server.url}/viewer")
    page.wait_for_selector("body[data-ready=true]")


def page_errors(page) -> list[str]:
    return [m for m in page.console_messages if m.startswith("pageerror")]


def pixel_of(page, lonlat: tuple[float, float]) -> tuple[int, int]:
    x, y = page.evaluate("([lon, lat]) => window.aquamaskViewer.pixelOf(lon, lat)",
                         list(lonlat))
    return round(x), round(y)


def screenshot_rgb(page, name: str | None = None) -> Image.Image:
    png = page.screenshot()
    if name:  # kept for a person to look at
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / name).write_bytes(png)
    return Image.open(io.BytesIO(png)).convert("RGB")


def is_water_colour(rgb: tuple[int, int, int]) -> bool:
    """The mask's water colour (0, 112, 255) over the base map at the page's opacity."""
    r, g, b = rgb
    return b > 200 and r < 90 and b - r > 140


def draw_box(page, lower_left: tuple[float, float], upper_right: tuple[float, float],
             drag: bool = True) -> None:
    """A box drawn as people draw one: a drag from corner to corner, or two clicks."""
    page.get_by_role("button", name="Box").click()
    x1, y1 = pixel_of(page, lower_left)
    x2, y2 = pixel_of(page, upper_right)
    if drag:
        page.mouse.move(x1, y1)
        page.mouse.down()
        page.mouse.move(x2, y2, steps=8)
        page.mouse.up()
        return
    page.mouse.click(x1, y1)
    page.mouse.move((x1 + x2) / 2, (y1 + y2) / 2, steps=3)
    page.mouse.click(x2, y2)


# -- the endpoints beside the page ----------------------------------------------------------

def test_scenes_api_lists_rasters_under_the_data_root_with_wgs84_bounds(server):
    junk = server.data_root / "viewer-junk"
    junk.mkdir(exist_ok=True)
    (junk / "notes.tif").write_text("not a raster")
    (junk / ".hidden.tif").write_bytes((server.data_root / DEMO).read_bytes())
    response = requests.get(f"{server.url}/viewer/api/scenes", timeout=30)
    assert response.status_code == 200
    scenes = {s["href"]: s for s in response.json()["scenes"]}
    assert DEMO in scenes
    assert not any(href.startswith("viewer-junk/") for href in scenes), scenes.keys()
    demo = scenes[DEMO]
    assert (demo["width"], demo["height"], demo["count"]) == (512, 512, 6)
    assert demo["crs"] == "EPSG:32630"
    west, south, east, north = demo["bbox"]
    # the scene's corners, in WGS84, lie inside the bbox and touch it
    corners = [demo_lonlat(r, c) for r in (-0.5, SIZE - 0.5) for c in (-0.5, SIZE - 0.5)]
    assert min(c[0] for c in corners) == pytest.approx(west, abs=1e-5)
    assert max(c[0] for c in corners) == pytest.approx(east, abs=1e-5)
    assert min(c[1] for c in corners) == pytest.approx(south, abs=1e-5)
    assert max(c[1] for c in corners) == pytest.approx(north, abs=1e-5)
    assert west < LAKE[0] < east and south < LAKE[1] < north


def test_landing_page_links_the_viewer(server):
    html = requests.get(f"{server.url}/?f=html", timeout=30)
    assert html.status_code == 200
    assert f'href="{server.url}/viewer"' in html.text
    links = requests.get(f"{server.url}/?f=json", timeout=30).json()["links"]
    assert {"rel": "related", "type": "text/html", "title": "aquamask viewer",
            "href": f"{server.url}/viewer"} in links
    page = requests.get(f"{server.url}/viewer", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "viewer/static/viewer.js" in page.text
    slash = requests.get(f"{server.url}/viewer/", timeout=30, allow_redirects=False)
    assert slash.status_code == 308 and slash.headers["Location"].endswith("/viewer")
    assert requests.get(f"{server.url}/viewer/static/../viewer.py",
                        timeout=30).status_code == 404


# -- the journeys in the browser ------------------------------------------------------------

def test_draw_a_box_run_and_see_the_water(page, server):
    open_viewer(page, server)
    # the scene list is there, and the page only offers what the process describes
    assert page.locator("#scene-list option[value='demo/demo-scene.tif']").count() == 1
    methods = page.eval_on_selector_all("#method option", "os => os.map(o => o.value)")
    description = requests.get(f"{server.url}/processes/water-detection?f=json",
                               timeout=30).json()
    assert methods == description["inputs"]["method"]["schema"]["enum"]
    if "datetime" not in description["inputs"]:
        assert page.locator("#when").is_hidden()

    scene = next(s for s in requests.get(f"{server.url}/viewer/api/scenes", timeout=30)
                 .json()["scenes"] if s["href"] == DEMO)
    west, south, east, north = scene["bbox"]
    # a box over the scene's lower left part: the drawing picks the scene under it
    draw_box(page, (west + 0.15 * (east - west), south + 0.15 * (north - south)),
             (west + 0.45 * (east - west), south + 0.45 * (north - south)))
    expect(page.locator("#image")).to_have_value(DEMO)
    page.get_by_label("Method", exact=True).select_option("ndwi")
    assert run_job(page) == "successful", page.text_content("#error")
    page.wait_for_selector("#map[data-layer-state=shown]", timeout=60_000)
    assert page.eval_on_selector("#progress", "e => e.value") == 100
    assert page.text_content("#progress-text") == "100 %"
    assert page.locator("#error").is_hidden()

    image = screenshot_rgb(page, "journey.png")
    lake, dry = pixel_of(page, LAKE), pixel_of(page, DRY)
    for point in (lake, dry):
        assert 370 < point[0] < VIEWPORT["width"] and 46 < point[1] < VIEWPORT["height"], point
    assert is_water_colour(image.getpixel(lake)), image.getpixel(lake)
    assert not is_water_colour(image.getpixel(dry)), image.getpixel(dry)
    assert min(image.getpixel(dry)) > 180, image.getpixel(dry)  # the pale base map shows

    # the statistics and the links are those of the job the server ran
    results = requests.get(f"{server.url}/viewer/api/results", timeout=30).json()["results"]
    job = results[0]
    assert job["inputs"]["image"]["href"] == DEMO and job["inputs"]["method"] == "ndwi"
    outputs = job["outputs"]
    assert page.text_content("#stat-area") == f"{outputs['water_area_km2']:.3f} km²"
    assert page.text_content("#stat-valid") == f"{outputs['valid_fraction'] * 100:.1f} %"
    assert page.text_content("#layer-name") == outputs["layer"]["name"]
    mask_href = page.get_attribute("#downloads a:has-text('Water mask')", "href")
    assert mask_href == outputs["mask"]["href"]
    mask = requests.get(mask_href, timeout=30)
    assert mask.status_code == 200 and mask.content[:4] in (b"II*\x00", b"MM\x00*")
    stac_href = page.get_attribute("#downloads a:has-text('STAC item')", "href")
    assert requests.get(stac_href, timeout=30).json()["type"] == "Feature"
    with page.expect_download() as download:  # built in the page, saved by the browser
        page.get_by_role("link", name="Statistics (CSV)").click()
    csv = Path(download.value.path()).read_text()
    assert download.value.suggested_filename == f"{job['id']}.csv"
    header, row = csv.strip().splitlines()[:2]
    assert header.startswith("datetime,water_area_km2,water_fraction,valid_fraction")
    assert f",{outputs['water_area_km2']}," in row and job["id"] in row
    # the demo scene says not when it was acquired: its date is unknown, not the processing
    # time, so the chart has no point to draw
    assert page.text_content("#stat-date") == "unknown"
    assert page.locator("#chart canvas").count() == 0
    assert page.get_attribute("#chart", "aria-label") == "No dated result to chart."
    assert page_errors(page) == []
    # nothing refused on the way (a Content-Security-Policy violation is a console error)
    assert [m for m in page.console_messages if m.startswith("error")] == []

    # later: the same result picked from the list of earlier results
    page.goto("about:blank")
    open_viewer(page, server)
    page.get_by_label("Show an earlier result").select_option(job["id"])
    page.wait_for_selector("#map[data-layer-state=shown]")
    assert page.text_content("#stat-area") == f"{outputs['water_area_km2']:.3f} km²"
    assert page.input_value("#image") == DEMO and page.input_value("#method") == "ndwi"
    image = screenshot_rgb(page)
    assert is_water_colour(image.getpixel(pixel_of(page, LAKE)))
    assert not is_water_colour(image.getpixel(pixel_of(page, DRY)))
    assert page_errors(page) == []


def test_the_scene_shows_under_the_mask_and_a_click_tells_class_and_probability(page, server):
    open_viewer(page, server)
    page.fill("#image", DEMO)
    page.get_by_label("Method", exact=True).select_option("ndwi")
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#map[data-layer-state=shown]", timeout=120_000)
    expect(page.locator("#scene-view")).to_be_visible()
    mask = page.text_content("#layer-name")

    def scene_tile(response) -> bool:
        return f"LAYERS={mask}--truecolor" in response.url and "GetMap" in response.url

    with page.expect_response(scene_tile) as tile:
        page.get_by_label("True colour").check()
    assert tile.value.status == 200
    rgba = np.asarray(Image.open(io.BytesIO(tile.value.body())).convert("RGBA"))
    assert (rgba[..., 3] == 255).any() and rgba[..., :3].std() > 5  # an image, not a blank
    assert page.get_attribute("#map", "data-scene-layer") == f"{mask}--truecolor"
    page.get_by_label("None").check()
    assert page.get_attribute("#map", "data-scene-layer") == ""

    page.mouse.click(*pixel_of(page, LAKE))
    expect(page.locator("#point-info")).to_contain_text(re.compile(
        r": Water, water probability \d\.\d\d$"))
    page.mouse.click(*pixel_of(page, DRY))
    expect(page.locator("#point-info")).to_contain_text(re.compile(
        r": Dry, water probability \d\.\d\d$"))
    assert page_errors(page) == []


def test_a_refused_request_shows_the_servers_message(page, server):
    open_viewer(page, server)
    inputs = {"image": {"href": "../outside.tif"}, "method": "ndwi", "threshold": 0.5}
    expected = server.execute(inputs)
    assert expected.status_code == 403
    # by keyboard: type the image, Enter submits the form
    page.get_by_label("Method", exact=True).select_option("ndwi")
    page.get_by_label(re.compile(r"^Image")).fill("../outside.tif")
    page.get_by_label(re.compile(r"^Image")).press("Enter")
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible")
    assert alert.text_content() == expected.json()["description"]
    assert page.eval_on_selector("#progress", "e => e.value") == 0
    assert page.get_attribute("#map", "data-layer-state") == "none"
    assert page.is_enabled("#run")

    # a form problem the page sees itself is told as plainly, with no request sent
    page.get_by_label(re.compile(r"^Image")).fill("")
    page.get_by_role("button", name="Run").click()
    assert alert.text_content().startswith("Choose the image")
    assert page_errors(page) == []


def test_a_pasted_token_goes_with_every_request(page, server):
    """auth.mode is none here, so the server refuses any token: the page must send it (seen on
    the wire) and show the server's reason."""
    open_viewer(page, server)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.headers.get("authorization", ""))
            if "/processes/" in r.url or "/viewer/api/" in r.url else None)
    page.locator("#auth summary").click()
    page.get_by_label("Access token").fill("Bearer abc.def.ghi")
    page.get_by_role("button", name="Use token").click()
    page.get_by_label(re.compile(r"^Image")).fill(DEMO)
    page.get_by_role("button", name="Run").click()
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible")
    assert "does not accept tokens" in alert.text_content()
    assert sent and all(h == "Bearer abc.def.ghi" for h in sent), sent
    assert page.text_content("#auth-state") == "set"
    # the token lives in the tab's session only, and can be forgotten
    page.get_by_role("button", name="Forget").click()
    assert page.evaluate("sessionStorage.length") == 0


def test_the_page_is_labelled_and_fits_a_laptop_screen(page, server):
    open_viewer(page, server)
    unnamed = page.evaluate("""() => [...document.querySelectorAll(
            'input, select, textarea, button, [role=application]')]
        .filter(e => e.offsetParent !== null)
        .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label')
                       || e.getAttribute('aria-labelledby') || e.textContent.trim()))
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == []
    # a point of interest picks the scene under it
    page.get_by_role("button", name="Point").click()
    expect(page.get_by_role("button", name="Point")).to_have_attribute("aria-pressed", "true")
    page.mouse.click(*pixel_of(page, LAKE))
    expect(page.locator("#image")).to_have_value(DEMO)
    expect(page.get_by_role("button", name="Point")).to_have_attribute("aria-pressed", "false")
    # the map takes keyboard focus (arrow keys pan it)
    before = page.evaluate("window.aquamaskViewer.center()")
    page.focus("#map")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("([x]) => window.aquamaskViewer.center()[0] > x", arg=[before[0]])
    # no horizontal scrolling; Run is on screen without scrolling
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]
    box = page.get_by_role("button", name="Run").bounding_box()
    assert box and box["y"] + box["height"] < VIEWPORT["height"]
    assert page_errors(page) == []


# -- Sentinel-2 by place and date (when the process lists bbox and datetime) ------------------

@pytest.fixture(scope="module")
def place_server(tmp_path_factory):
    """A server of its own whose offline scene folder holds the demo scene on two dates (the
    local source reads the date from the file name)."""
    from aquamask.processes.demo import make_demo_scene
    from tests.support.server import start_server

    home = tmp_path_factory.mktemp("viewer-place-home")
    scene = make_demo_scene(home / "data" / DEMO)
    (home / "scenes").mkdir()
    for day in ("2024-05-10", "2024-06-12"):
        (home / "scenes" / f"demo_{day}.tif").write_bytes(scene.read_bytes())
    srv = start_server(home, {"AQUAMASK__SOURCES__DEFAULT": "local"}, workers=1)
    yield srv
    srv.stop()


def test_a_place_and_dates_run_as_a_time_series(page, place_server):
    description = requests.get(f"{place_server.url}/processes/water-detection?f=json",
                               timeout=30).json()
    if not {"bbox", "datetime"} <= set(description["inputs"]):
        pytest.skip("the process takes no place and date yet (bbox, datetime)")
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith("/execution") else None)
    open_viewer(page, place_server)
    page.get_by_label("Sentinel-2 by place and date").check()
    expect(page.locator("#when")).to_be_visible()
    expect(page.locator("#image")).to_be_hidden()
    west, south = demo_lonlat(0.9 * SIZE, 0.1 * SIZE)
    east, north = demo_lonlat(0.1 * SIZE, 0.9 * SIZE)

    def run(start: str, end: str) -> str:
        page.fill("#date-start", start)
        page.fill("#date-end", end)
        page.evaluate("document.querySelector('#progress').removeAttribute('data-final')")
        return run_job(page)

    # typed by keyboard: no scene on those dates, so the job fails with the server's reason
    page.get_by_label(re.compile(r"^Bounding box")).fill(
        f"{west:.5f}, {south:.5f}, {east:.5f}, {north:.5f}")
    page.get_by_label(re.compile(r"^Bounding box")).press("Tab")
    page.get_by_label("Method", exact=True).select_option("ndwi")
    assert run("2023-05-01", "2023-05-31") == "failed"
    failed = requests.get(f"{place_server.url}/jobs?f=json&limit=1", timeout=30).json()["jobs"][0]
    assert failed["status"] == "failed"
    assert page.get_by_role("alert").text_content() == failed["message"]
    assert sent[-1]["inputs"] == {"bbox": pytest.approx([west, south, east, north], abs=1e-5),
                                  "datetime": "2023-05-01/2023-05-31", "max_cloud_cover": 30,
                                  "method": "ndwi", "threshold": 0.5}

    # May, then June with the box drawn on the map: two dates of one place
    assert run("2024-05-01", "2024-05-31") == "successful"
    page.wait_for_selector("#map[data-layer-state=shown]")
    draw_box(page, (west, south), (east, north))
    expect(page.locator("#place-summary")).to_contain_text("Box:")
    assert run("2024-06-01", "2024-06-30") == "successful"
    page.wait_for_selector("#map[data-layer-state=shown]")
    drawn = sent[-1]["inputs"]
    assert "image" not in drawn and drawn["datetime"] == "2024-06-01/2024-06-30"
    assert drawn["bbox"] == pytest.approx([west, south, east, north], abs=2e-4)  # a pixel's play

    image = screenshot_rgb(page, "place-series.png")
    assert is_water_colour(image.getpixel(pixel_of(page, LAKE)))
    assert not is_water_colour(image.getpixel(pixel_of(page, DRY)))
    # the time slider steps back to May: its layer, its date
    results = requests.get(f"{place_server.url}/viewer/api/results", timeout=30).json()["results"]
    june, may = results[0], results[1]
    assert june["datetime"].startswith("2024-06-12") and may["datetime"].startswith("2024-05-10")
    expect(page.locator("#time-out")).to_contain_text("2 of 2")
    assert page.text_content("#layer-name") == june["outputs"]["layer"]["name"]
    page.focus("#time")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#time-out")).to_contain_text("1 of 2")
    assert page.text_content("#layer-name") == may["outputs"]["layer"]["name"]
    assert page.text_content("#stat-date").startswith("2024-05-10")
    label = page.get_attribute("#chart", "aria-label")
    assert "2024-05-10" in label and "2024-06-12" in label

    # a polygon goes as a GeoJSON geometry (lon/lat), closed
    draw_polygon(page, west, south, east, north)
    assert run("2023-05-01", "2023-05-31") == "failed"
    geometry = sent[-1]["inputs"]["geometry"]
    assert "bbox" not in sent[-1]["inputs"] and geometry["type"] == "Polygon"
    ring = geometry["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    drawn = [(west, south), (east, south), (east, north), (west, north)]
    assert ring[:4] == [pytest.approx(list(c), abs=2e-4) for c in drawn]
    assert page_errors(page) == []


# -- drawing, numbers and layout (issue #18, item 11) ----------------------------------------

def is_drawn_colour(rgb: tuple[int, int, int]) -> bool:
    """The drawn place's outline, #7048e8."""
    r, g, b = rgb
    return b > 180 and 70 < r < 150 and g < 120


def test_a_dragged_box_keeps_both_corners_and_its_area_is_the_box_area(page, place_server):
    from pyproj import Geod

    open_viewer(page, place_server)
    page.get_by_label("Sentinel-2 by place and date").check()
    page.get_by_label("Method", exact=True).select_option("ndwi")
    west, south = demo_lonlat(0.8 * SIZE, 0.2 * SIZE)
    east, north = demo_lonlat(0.3 * SIZE, 0.7 * SIZE)
    draw_box(page, (west, south), (east, north))
    expect(page.locator("#place-summary")).to_contain_text("Box:")
    drawn = [float(v) for v in page.input_value("#bbox").split(",")]
    assert drawn == pytest.approx([west, south, east, north], abs=2e-4)  # both corners kept
    assert "Drag" not in (page.text_content("#status") or "")  # the instructions are done with
    image = screenshot_rgb(page)
    assert is_drawn_colour(image.getpixel(pixel_of(page, ((west + east) / 2, north))))
    page.fill("#date-start", "2024-06-01")
    page.fill("#date-end", "2024-06-30")
    assert run_job(page) == "successful", page.text_content("#error")
    job = requests.get(f"{place_server.url}/viewer/api/results", timeout=30).json()["results"][0]
    assert job["inputs"]["bbox"] == pytest.approx(drawn, abs=1e-5)  # the field shows 5 digits
    w, s, e, n = job["inputs"]["bbox"]
    box_km2 = abs(Geod(ellps="WGS84").polygon_area_perimeter(
        [w, e, e, w], [s, s, n, n])[0]) / 1e6
    # the whole box is valid data: its valid area is the box's own ellipsoidal area
    valid = job["outputs"]["valid_area_km2"]
    assert valid == pytest.approx(box_km2, rel=0.005), (valid, box_km2)
    # the earlier results name the process, and say the date the scene was acquired
    label = page.locator(f"#earlier-select option[value='{job['id']}']").text_content()
    assert label.startswith("2024-06-12") and "water-detection (ndwi)" in label

    # a polygon closed by a double-click stays drawn
    draw_polygon(page, west, south, east, north)
    page.wait_for_timeout(300)
    image = screenshot_rgb(page, "polygon.png")
    assert is_drawn_colour(image.getpixel(pixel_of(page, (west, (south + north) / 2))))
    assert page_errors(page) == []


def test_change_and_frequency_results_show_their_own_numbers_legend_and_cog(page,
                                                                           place_server):
    west, south = demo_lonlat(0.8 * SIZE, 0.2 * SIZE)
    east, north = demo_lonlat(0.3 * SIZE, 0.7 * SIZE)
    place = {"bbox": [west, south, east, north], "method": "ndwi"}
    change = place_server.execute({**place, "before": "2024-05-01/2024-05-31",
                                   "after": "2024-06-01/2024-06-30"}, process_id="water-change")
    assert change.status_code == 200, change.text
    frequency = place_server.execute({**place, "datetime": "2024-05-01/2024-06-30"},
                                     process_id="water-frequency")
    assert frequency.status_code == 200, frequency.text
    results = requests.get(f"{place_server.url}/viewer/api/results", timeout=30).json()["results"]
    by_process = {r["process_id"]: r for r in results}
    open_viewer(page, place_server)

    done = by_process["water-change"]
    page.get_by_label("Show an earlier result").select_option(done["id"])
    gained = value(done["outputs"]["area_km2"])["gained"]
    expect(page.locator("#stats-other")).to_contain_text(f"Water gained{gained:.3f} km²")
    assert page.locator("#stats-water").is_hidden()
    expect(page.locator("#legend-other")).to_be_visible()
    assert page.locator("#legend").is_hidden()
    page.wait_for_function("() => document.querySelector('#legend-image').naturalWidth > 0")
    cog = page.get_attribute("#downloads a:has-text('Water change (COG)')", "href")
    assert cog == done["outputs"]["change"]["href"]
    assert requests.get(cog, timeout=30).content[:4] in (b"II*\x00", b"MM\x00*")

    done = by_process["water-frequency"]
    page.get_by_label("Show an earlier result").select_option(done["id"])
    mean = value(done["outputs"]["statistics"])["mean_frequency"]
    expect(page.locator("#stats-other")).to_contain_text(f"Mean frequency{mean * 100:.1f} %")
    cog = page.get_attribute("#downloads a:has-text('Water frequency (COG)')", "href")
    assert cog == done["outputs"]["frequency"]["href"]
    assert page_errors(page) == []


def test_another_scene_clears_the_numbers_of_the_last(page, place_server):
    other = place_server.data_root / "demo" / "other-scene.tif"
    other.write_bytes((place_server.data_root / DEMO).read_bytes())
    open_viewer(page, place_server)
    page.get_by_label("Method", exact=True).select_option("ndwi")
    page.get_by_label(re.compile(r"^Image")).fill(DEMO)
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#map[data-layer-state=shown]", timeout=120_000)
    assert page.locator("#results").is_visible()
    page.get_by_label(re.compile(r"^Image")).fill("demo/other-scene.tif")
    page.get_by_label(re.compile(r"^Image")).press("Tab")
    expect(page.locator("#results")).to_be_hidden()
    assert page.get_attribute("#map", "data-layer-state") == "none"


def test_on_a_phone_the_page_scrolls_to_the_map_after_run(browser, place_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    try:
        open_viewer(page, place_server)
        map_top = page.locator("#map").bounding_box()["y"]
        assert map_top > 400  # below the form, mostly out of sight
        page.get_by_label("Method", exact=True).select_option("ndwi")
        page.get_by_label(re.compile(r"^Image")).fill(DEMO)
        page.get_by_role("button", name="Run").click()
        page.wait_for_selector("#progress[data-final=successful]", timeout=120_000)
        # the whole map in sight, scrolled to (the result is drawn there)
        page.wait_for_function("""() => {
            const r = document.querySelector('#map').getBoundingClientRect();
            return scrollY > 0 && r.top >= 0 && r.bottom <= innerHeight + 1; }""",
                               timeout=10_000)
    finally:
        context.close()


def test_earlier_results_link_to_this_server_whatever_port_made_them(tmp_path):
    from aquamask.server.viewer import result_summary

    record = {"identifier": "j1", "process_id": "water-detection", "inputs": {},
              "outputs": {"mask": {"href": "http://127.0.0.1:5000/results/j1/mask.tif"},
                          "layer": {"name": "water-j1", "wms": "http://127.0.0.1:5000/ows",
                                    "getmap": "http://127.0.0.1:5000/ows?SERVICE=WMS"},
                          "water_area_km2": 1.5}}
    summary = result_summary(record, tmp_path, "http://127.0.0.1:5001")
    outputs = summary["outputs"]
    assert outputs["mask"]["href"] == "http://127.0.0.1:5001/results/j1/mask.tif"
    assert outputs["layer"]["wms"] == "http://127.0.0.1:5001/ows"
    assert outputs["layer"]["getmap"] == "http://127.0.0.1:5001/ows?SERVICE=WMS"
    assert outputs["water_area_km2"] == 1.5


# -- pygeoapi's own HTML pages under the strict CSP (issue #18, item 6) ----------------------

def test_pygeoapi_pages_work_under_the_strict_content_security_policy(page, server):
    from aquamask.server.app import SECURITY_HEADERS

    done = server.execute({"image": {"href": DEMO}, "method": "ndwi"})
    assert done.status_code == 200, done.text
    job = requests.get(f"{server.url}/jobs?f=json&limit=1", timeout=30).json()["jobs"][0]
    for path in ("/processes?f=html", "/openapi?f=html", f"/jobs/{job['jobID']}/results?f=html"):
        response = requests.get(server.url + path, timeout=30)
        assert response.status_code == 200
        assert response.headers["Content-Security-Policy"] == \
            SECURITY_HEADERS["Content-Security-Policy"], path
        assert "unpkg.com" not in response.text and "cdn" not in response.text, path

    page.goto(f"{server.url}/processes?f=html")
    # styled: Bootstrap, from this server, is applied
    assert page.evaluate("""() => [...document.styleSheets].some(s => s.href
        && s.href.endsWith('/viewer/static/vendor/bootstrap.min.css') && s.cssRules.length)""")
    assert page.evaluate("getComputedStyle(document.querySelector('.container')).maxWidth") \
        != "none"
    for docs in ("/openapi?f=html", "/openapi?f=html&ui=redoc"):  # Swagger UI, both
        page.goto(f"{server.url}{docs}")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("aquamask")
        expect(page.locator(".opblock-tag").first).to_be_visible()
    page.goto(f"{server.url}/jobs/{job['jobID']}/results?f=html")
    shown = json.loads(page.text_content("#results"))
    assert shown["water_area_km2"] == done.json()["water_area_km2"]
    # nothing refused by the policy, no script error
    assert [m for m in page.console_messages if m.startswith(("error", "pageerror"))] == []


# -- a time series is one place over dates (issue #18, item 1) ------------------------------

@pytest.fixture(scope="module")
def series_server(tmp_path_factory):
    """A server whose page runs a date range as the water-timeseries process, over the demo
    scene on two dates."""
    from aquamask.processes.demo import make_demo_scene
    from tests.support.server import start_server

    home = tmp_path_factory.mktemp("viewer-series-home")
    scene = make_demo_scene(home / "data" / DEMO)
    (home / "scenes").mkdir()
    for day in ("2024-05-10", "2024-06-12"):
        (home / "scenes" / f"demo_{day}.tif").write_bytes(scene.read_bytes())
    srv = start_server(home, {"AQUAMASK__SOURCES__DEFAULT": "local",
                              "AQUAMASK__VIEWER__SERIES_PROCESS": "water-timeseries"},
                       workers=1)
    yield srv
    srv.stop()


def value(output):
    """An output's value: a results document qualifies object values ({"value", "mediaType"})."""
    return output["value"] if isinstance(output, dict) and "mediaType" in output else output


def chart_dates(page) -> list[str]:
    """The dates the chart draws, as its text alternative lists them."""
    return re.findall(r"\d{4}-\d{2}-\d{2}", page.get_attribute("#chart", "aria-label"))


def test_the_chart_shows_one_series_and_nothing_else(page, series_server):
    srv = series_server
    # unrelated results first: the whole demo image (no acquisition date) and another box
    whole = srv.execute({"image": {"href": DEMO}, "method": "ndwi"})
    assert whole.status_code == 200, whole.text
    west, south = demo_lonlat(0.9 * SIZE, 0.1 * SIZE)
    east, north = demo_lonlat(0.1 * SIZE, 0.9 * SIZE)
    other_box = [west, south, (west + east) / 2, (south + north) / 2]
    other = srv.execute({"bbox": other_box, "datetime": "2024-06-01/2024-06-30",
                         "method": "ndwi"})
    assert other.status_code == 200, other.text

    open_viewer(page, srv)
    page.get_by_label("Sentinel-2 by place and date").check()
    page.get_by_label(re.compile(r"^Bounding box")).fill(
        f"{west:.5f}, {south:.5f}, {east:.5f}, {north:.5f}")
    page.get_by_label(re.compile(r"^Bounding box")).press("Tab")
    page.get_by_label("Method", exact=True).select_option("ndwi")
    page.fill("#date-start", "2024-05-01")
    page.fill("#date-end", "2024-06-30")
    assert run_job(page, 180_000) == "successful", page.text_content("#error")
    page.wait_for_selector("#map[data-layer-state=shown]", timeout=60_000)
    job = requests.get(f"{srv.url}/jobs?f=json&limit=1", timeout=30).json()["jobs"][0]
    assert job["processID"] == "water-timeseries"
    rows = value(requests.get(f"{srv.url}/jobs/{job['jobID']}/results?f=json",
                              timeout=30).json()["timeseries"])
    assert [r["date"] for r in rows if r["status"] == "ok"] == ["2024-05-10", "2024-06-12"]
    # exactly the series' own dates: not the other box's result, not the undated image
    assert chart_dates(page) == ["2024-05-10", "2024-06-12"]
    expect(page.locator("#time-out")).to_contain_text("2 of 2")
    assert page.text_content("#stat-date").startswith("2024-06-12")
    assert page.text_content("#stat-area") == f"{rows[1]['water_area_km2']:.3f} km²"
    page.focus("#time")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#time-out")).to_contain_text("1 of 2")
    assert page.text_content("#stat-area") == f"{rows[0]['water_area_km2']:.3f} km²"
    assert page.text_content("#stat-date").startswith("2024-05-10")

    # an earlier single result stands alone: the undated image has no date to chart
    results = requests.get(f"{srv.url}/viewer/api/results", timeout=30).json()["results"]
    by_process = {(r["process_id"], bool(r["inputs"].get("image"))): r for r in results}
    image_result = by_process[("water-detection", True)]
    assert image_result["datetime"] is None
    page.get_by_label("Show an earlier result").select_option(image_result["id"])
    expect(page.locator("#stat-date")).to_have_text("unknown")
    assert chart_dates(page) == []
    assert page.locator("#time-field").is_hidden()
    label = page.locator("#earlier-select option", has_text="date unknown")
    assert label.count() == 1 and DEMO in label.text_content()
    # ... and the other box's June result is its own one date, not joined to the series
    box_result = by_process[("water-detection", False)]
    page.get_by_label("Show an earlier result").select_option(box_result["id"])
    expect(page.locator("#stat-date")).to_contain_text("2024-06-12")
    assert chart_dates(page) == ["2024-06-12"]
    assert page_errors(page) == []


# -- the blueprint on its own (no browser, no server) ----------------------------------------

def _viewer_client(tmp_path, **env):
    from flask import Flask

    from aquamask.processes.settings import Settings
    from aquamask.server.viewer import viewer_blueprint

    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path), **env})
    app = Flask("viewer-test")
    app.register_blueprint(viewer_blueprint(settings))
    return app.test_client(), settings


def test_config_offers_the_offline_map_unless_a_base_map_is_configured(tmp_path):
    client, _ = _viewer_client(tmp_path)
    config = client.get("/viewer/api/config").get_json()
    assert config["basemap"] is None and config["process"] == "water-detection"
    xyz = "https://tiles.example.org/{z}/{x}/{y}.png"
    client, _ = _viewer_client(tmp_path, AQUAMASK__VIEWER__BASEMAP_URL=xyz,
                               AQUAMASK__VIEWER__BASEMAP_ATTRIBUTION="© Example")
    assert client.get("/viewer/api/config").get_json()["basemap"] == {
        "url": xyz, "type": "xyz", "layers": "", "attribution": "© Example"}
    client, _ = _viewer_client(tmp_path,
                               AQUAMASK__VIEWER__BASEMAP_URL="https://maps.example.org/wms",
                               AQUAMASK__VIEWER__BASEMAP_LAYERS="terrain")
    basemap = client.get("/viewer/api/config").get_json()["basemap"]
    assert basemap["type"] == "wms" and basemap["layers"] == "terrain"


def test_scene_index_rereads_a_changed_file_and_forgets_a_removed_one(tmp_path):
    from aquamask.processes.demo import make_demo_scene

    client, settings = _viewer_client(tmp_path)
    settings.ensure_dirs()
    path = make_demo_scene(settings.data_root / "a" / "scene.tif", size=64)
    first = client.get("/viewer/api/scenes").get_json()["scenes"]
    assert [(s["href"], s["width"]) for s in first] == [("a/scene.tif", 64)]
    make_demo_scene(path, size=32)
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert client.get("/viewer/api/scenes").get_json()["scenes"][0]["width"] == 32
    path.unlink()
    assert client.get("/viewer/api/scenes").get_json()["scenes"] == []

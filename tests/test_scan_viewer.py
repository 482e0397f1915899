"""The web viewer (``opendas view``) in a real browser: headless Chromium over the DevTools protocol.

A generated office (its Mask3D-style proposals are the ground-truth instances, so mask j is a known
object) is indexed with the shipped world CLIP; the viewer serves it on 127.0.0.1; Chromium loads the
page, the test types a class name into the query box and takes screenshots. The independent truth for
the pixels is the generator's own ray caster: :func:`render_frame` at the browser canvas' size and the
camera pose the test gives the client says which pixels show which object (occlusion included). The
checks: the typed object's pixels carry the colour of its score on the absolute scale and no other
object's pixels are as high; after the threshold moves above the runner-up only that object stays
coloured; a click on it isolates it (the rest of the scene is no longer drawn); the slider moved in the
page to its maximum leaves nothing listed and nothing coloured.

Skips only when Chromium is absent and neither ``CI=true`` nor ``OPENDAS_REQUIRE_INTEGRATIONS=1`` is set
(then it fails). Chromium needs no fonts beyond Debian's default ``fonts-*`` that its package pulls in.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import numpy as np
import pytest

CHROMIUM = os.environ.get("OPENDAS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("CI", "").lower() == "true" or os.environ.get("OPENDAS_REQUIRE_INTEGRATIONS") == "1"
QUERY = "brown box"          # one object of the generated scene below (seed 0), a unique class there
WIDTH, HEIGHT = 1100, 700    # browser window (CSS px, device scale factor 1)


def _need_viser():
    _need_browser(chromium=False)


def _need_browser(chromium: bool = True):
    missing = []
    if chromium and CHROMIUM is None:
        missing.append("chromium is not installed (apt-get install chromium)")
    try:
        import viser  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        missing.append(f"{exc.name} is not installed (pip install '.[test]')")
    if missing:
        if REQUIRED:
            pytest.fail("; ".join(missing) + " (CI / OPENDAS_REQUIRE_INTEGRATIONS=1: the browser test must run)")
        pytest.skip("; ".join(missing))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (JSON over a websocket)."""

    def __init__(self, url: str, width: int = WIDTH, height: int = HEIGHT):
        from websockets.sync.client import connect

        self.dir = tempfile.mkdtemp(prefix="opendas-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
             "--ignore-gpu-blocklist", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--force-device-scale-factor=1", f"--window-size={width},{height}",
             "--remote-debugging-port=0", f"--user-data-dir={self.dir}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.dir, "DevToolsActivePort")
        port = _wait(lambda: int(open(port_file).read().split()[0]) if os.path.isfile(port_file)
                     and open(port_file).read().strip() else None, 30, "chromium's DevTools port")
        page = _wait(lambda: next((t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                                   if t["type"] == "page"), None), 10, "a page target")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr[:80]}...: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            shutil.rmtree(self.dir, ignore_errors=True)


def _wait(fn, timeout: float, what: str, interval: float = 0.1):
    t0 = time.time()
    while True:
        try:
            value = fn()
        except (OSError, ValueError):
            value = None
        if value is not None and (not isinstance(value, (bool, np.bool_)) or value):
            return value
        if time.time() - t0 > timeout:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """(generated scene, scene folder, index, encoder, {instance: mask id}) with the shipped world CLIP."""
    from opendas_encoder.generated.scene3d import generate_scene, write_openmask3d_layout
    from opendas_encoder.scan.index import load_index
    from opendas_encoder.scan.query_cli import load_query_encoder

    scene = generate_scene(seed=0, num_objects=8)
    d = write_openmask3d_layout(scene, str(tmp_path_factory.mktemp("viewer")))
    encoder = load_query_encoder()
    index = load_index(d, encoder, progress=False)
    # ground truth: which proposal column is which generated object (the proposals are the GT instances)
    mask_of = {}
    for inst in range(int(scene.point_instance.max()) + 1):
        col = np.nonzero((index.masks == (scene.point_instance == inst)[:, None]).all(axis=0))[0]
        assert len(col) == 1
        mask_of[inst] = int(col[0])
    return scene, d, index, encoder, mask_of


def _camera_for(scene, target):
    """A pose (OpenCV cam-to-world) high in the room corner opposite ``target``, looking at it."""
    from opendas_encoder.generated.scannetpp import look_at

    c = target.center
    eye = np.array([-np.sign(c[0]) * 1.7, -np.sign(c[1]) * 1.2, 2.2])
    return look_at(eye, c)


def _object_pixels(scene, pose, fov, width, height, step=2):
    """{instance: bool (H, W)} the pixels where the generator's ray caster sees each object, with a
    camera of vertical field of view ``fov`` (radians) on an image of the canvas' size; cast every
    ``step`` pixels (each ray standing for its step x step block: the regions are eroded before use)."""
    from opendas_encoder.generated.scene3d import render_frame

    h, w = -(-height // step), -(-width // step)
    fy = (height / 2) / np.tan(fov / 2) / step
    K = np.array([[fy, 0, width / 2 / step], [0, fy, height / 2 / step], [0, 0, 1.0]])
    _, depth = render_frame(scene.primitives, pose, K, h, w)
    out = {}
    for p in scene.primitives:
        if p.instance >= 0:
            _, d = render_frame([p], pose, K, h, w)
            seen = (d > 0) & (np.abs(d - depth) < 1e-4)
            out[p.instance] = np.kron(seen, np.ones((step, step), bool))[:height, :width]
    return out


def _levels(pixels: np.ndarray, tol: float = 40.0) -> np.ndarray:
    """Per pixel (P, 3): index (0..255) of the nearest colour-scale entry, -1 where none is within ``tol``."""
    from opendas_encoder.scan.query import colour_table

    table = colour_table().astype(np.float32)
    flat = pixels.reshape(-1, 3).astype(np.float32)
    d2 = ((flat[:, None, :] - table[None]) ** 2).sum(-1)
    best = d2.argmin(1)
    best[d2[np.arange(len(flat)), best] > tol * tol] = -1
    return best


def _erode(mask: np.ndarray, px: int = 3) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=px)


# ---------------------------------------------------------------------------------------- tests
def test_split_texts_and_legend():
    from opendas_encoder.scan.query import colour_table
    from opendas_encoder.scan.viewer import legend_image, split_texts

    assert split_texts(" red box; blue  box ;;") == ["red box", "blue  box"]
    assert split_texts("") == []
    img = legend_image(0.1, 0.4, 0.25)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    # the bar shows both ends of the colour table (matplotlib draws it; the table is the query module's)
    table = colour_table().astype(int)
    flat = img.reshape(-1, 3).astype(int)
    for end in (table[0], table[-1]):
        assert (np.abs(flat - end).max(axis=1) <= 6).any()


def test_default_point_size_closes_a_grid():
    from opendas_encoder.scan.viewer import default_point_size

    g = np.stack(np.meshgrid(*[np.arange(20) * 0.05] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert default_point_size(g) == pytest.approx(1.5 * 0.05, rel=1e-5)   # nearest neighbour: the grid step


def test_pick_point_is_the_first_point_on_the_ray():
    from opendas_encoder.scan.viewer import pick_point

    pts = np.array([[0, 0, 5.0], [0, 0, 2.0], [0.5, 0, 1.0], [0, 0, -1.0]])
    assert pick_point(pts, (0, 0, 0), (0, 0, 1), 0.1) == 1       # nearest in front within the radius
    assert pick_point(pts, (0, 0, 0), (0, 0, 2), 0.6) == 2       # direction need not be unit
    assert pick_point(pts, (0, 0, 0), (1, 0, 0), 0.1) is None


def test_evidence_crops_are_the_full_scene_plan(indexed):
    """The shortcut (the mask's points and its top views only) gives the crops that planning over the whole
    scene and every frame gives (what the feature step encoded)."""
    from opendas_encoder.scan.viewer import evidence_crops
    from opendas_encoder.threed.features import MaskFeatureConfig, plan_crops
    from opendas_encoder.threed.processed import read_processed_scene

    scene, d, index, encoder, mask_of = indexed
    s3d = read_processed_scene(d)
    for m in range(index.num_masks):
        plan = plan_crops(s3d, index.masks[:, [m]], MaskFeatureConfig(top_k=3, num_levels=2))
        rows = sorted(np.nonzero(plan.level == 1)[0],   # plan rows go by frame; the viewer's by view rank
                      key=lambda r: index.views[m].index(int(s3d.frames[int(plan.frame_index[r])].name)))
        full = [np.asarray(s3d.frames[int(plan.frame_index[r])].load_color().crop(tuple(plan.boxes[r])))
                for r in rows]
        fast = evidence_crops(s3d, index, m, max_side=10_000)
        assert len(fast) == len(full) > 0
        for a, b in zip(fast, full):
            np.testing.assert_array_equal(a, b)


def test_viewer_state_threshold_isolate_and_export(indexed, tmp_path):
    """Server state (no browser): ranked list, threshold filter, isolation, evidence, static export."""
    _need_viser()
    from opendas_encoder.scan.viewer import SceneViewer, export_static

    scene, d, index, encoder, mask_of = indexed
    target = next(p for p in scene.primitives if p.label == QUERY)
    v = SceneViewer(index, encoder, port=_free_port())
    try:
        res = v.run_query([QUERY])
        assert res.ranked[0].mask_id == mask_of[target.instance]       # generator truth
        listed = v.state.listed()
        assert [r.mask_id for r in listed] == [r.mask_id for r in res.ranked if r.score >= v.state.threshold]
        # threshold between the best and the runner-up: only the best is listed and coloured
        cut = (res.ranked[0].score + res.ranked[1].score) / 2
        v.set_threshold(cut)
        assert [r.mask_id for r in v.state.listed()] == [mask_of[target.instance]]
        assert v.threshold_slider.value == pytest.approx(round(cut, 3))
        cols = v.colours()
        grey = ~(np.abs(cols.astype(int) - cols[:, :1].astype(int)) > 0).any(axis=1)   # r == g == b
        assert not grey[index.masks[:, mask_of[target.instance]]].any()
        others = index.masks.any(axis=1) & ~index.masks[:, mask_of[target.instance]]
        assert grey[others].all()
        # isolation: the scene cloud is hidden, the isolated cloud holds exactly the mask's points
        v.isolate(mask_of[target.instance])
        assert not v.cloud.visible and v.isolated_cloud is not None
        assert len(v.isolated_cloud.points) == int(index.masks[:, mask_of[target.instance]].sum())
        assert v.evidence_images[0].visible and v.evidence_images[0].image.ndim == 3
        # the evidence shows the object: the generator paints it in its colour times a shade in [0.6, 1]
        # (render_frame), so most crop pixels are a multiple of that colour (JPEG: a few levels off)
        base = np.asarray(target.color, float)
        for crop in v._evidence_cache[mask_of[target.instance]]:
            px = crop.reshape(-1, 3).astype(float)
            shade = px @ base / (base @ base)
            on_object = (np.abs(px - shade[:, None] * base).max(axis=1) <= 12) & (shade > 0.5) & (shade < 1.05)
            assert on_object.mean() > 0.3
        v.isolate(None)
        assert v.cloud.visible and v.isolated_cloud is None
        # a second query resets the isolation and follows the new text; negatives are passed on
        res2 = v.run_query(["pink cylinder"], ["brown box"])
        assert v.state.negatives == ["brown box"] and res2.negatives == ["brown box"]
        out = export_static(v, str(tmp_path / "export"), [[QUERY], ["pink cylinder"]])
    finally:
        v.close()
    files = sorted(os.listdir(out))
    assert files == ["index.html", "query_0_brown_box.html", "query_1_pink_cylinder.html"]
    page = open(os.path.join(out, "query_0_brown_box.html"), encoding="utf-8").read()
    assert "__VISER_EMBED_DATA__" in page and "ws://" not in page.split("__VISER_EMBED_DATA__")[0][-200:]
    index_html = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert "query_0_brown_box.html" in index_html and "data:image/jpeg;base64," in index_html
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-view-")]


def test_viewer_in_chromium_highlights_the_typed_object(indexed):
    _need_browser()
    from opendas_encoder.scan.query import colour_table
    from opendas_encoder.scan.viewer import SceneViewer

    scene, d, index, encoder, mask_of = indexed
    target = next(p for p in scene.primitives if p.label == QUERY)
    tmask = mask_of[target.instance]
    v = SceneViewer(index, encoder, port=_free_port())
    browser = None
    try:
        browser = Browser(f"http://127.0.0.1:{v.port}/")
        client = _wait(lambda: next(iter(v.server.get_clients().values()), None), 30, "the page to connect")
        # viser's notice "software WebGL rendering detected" (SwiftShader) would cover part of the canvas
        browser.eval("document.head.insertAdjacentHTML('beforeend', '<style>.mantine-Notifications-root"
                     "{display:none !important}</style>')")
        # the camera: a pose we choose, so the generator can say which pixel shows which object
        pose = _camera_for(scene, target)
        fov = np.deg2rad(60.0)
        with v.server.atomic():
            client.camera.fov = fov
            client.camera.up_direction = (0.0, 0.0, 1.0)
            client.camera.position = tuple(pose[:3, 3])
            client.camera.look_at = tuple(target.center)
        _wait(lambda: np.allclose(client.camera.position, pose[:3, 3], atol=1e-3), 20, "the camera to move")
        rect = _wait(lambda: browser.eval("(() => { const c = [...document.querySelectorAll('canvas')]"
                                          ".sort((a, b) => b.width * b.height - a.width * a.height)[0];"
                                          " const r = c.getBoundingClientRect();"
                                          " return r.width > 0 ? [r.left, r.top, r.width, r.height] : null })()"),
                     20, "the canvas")
        x0, y0, w, h = (int(round(v_)) for v_ in rect)
        # pixels not covered by the control panel or a notification (elementFromPoint is the canvas)
        s = 8  # sampled every 8 px, each sample standing for its 8x8 block
        free = np.array(browser.eval(
            f"(() => {{ const out = []; for (let y = {y0}; y < {y0 + h}; y += {s}) {{ const row = [];"
            f" for (let x = {x0}; x < {x0 + w}; x += {s})"
            f" row.push(document.elementFromPoint(x + {s // 2}, y + {s // 2})"
            f" instanceof HTMLCanvasElement ? 1 : 0); out.push(row) }} return out }})()"), dtype=bool)
        free = np.kron(free, np.ones((s, s), bool))[:h, :w]
        regions = {i: _erode(m) & free for i, m in _object_pixels(scene, pose, fov, w, h).items()}
        assert regions[target.instance].sum() >= 200, "the chosen view must show the object"
        visible = {i: r for i, r in regions.items() if r.sum() >= 50}

        # type the query into the page's text box
        browser.eval("(() => { const l = [...document.querySelectorAll('label')].find(l => l.textContent === 'Query');"
                     " let e = l; while (!e.querySelector('input')) e = e.parentElement;"
                     " e.querySelector('input').focus(); return true })()")
        browser.call("Input.insertText", text=QUERY)
        _wait(lambda: v.state.result is not None and v.state.texts == [QUERY], 30, "the typed query to run")
        res = v.state.result
        assert res.ranked[0].mask_id == tmask
        assert v.state.threshold == pytest.approx(v.vmin)

        expected = colour_table()[int(np.clip((res.ranked[0].score - v.vmin) / (v.vmax - v.vmin) * 255, 0, 255))]

        def shot():
            return browser.screenshot()[y0:y0 + h, x0:x0 + w]

        def target_lit():
            img = shot()
            px = img[regions[target.instance]].astype(int)
            return img if (np.abs(px - expected).max(axis=1) <= 40).mean() > 0.5 else None

        img = _wait(target_lit, 20, "the typed object to be drawn in its score's colour", 0.3)
        med = {i: np.median(_levels(img[r])) for i, r in visible.items()}
        assert med[target.instance] == max(med.values())
        assert all(m < med[target.instance] for i, m in med.items() if i != target.instance)
        if os.environ.get("OPENDAS_VIEWER_SHOT"):  # the README's picture: docs/viewer.png
            from PIL import Image

            Image.fromarray(img).quantize(256).save(os.environ["OPENDAS_VIEWER_SHOT"], optimize=True)

        # threshold above the runner-up: only the typed object stays coloured on the page
        v.set_threshold((res.ranked[0].score + res.ranked[1].score) / 2)
        assert [r.mask_id for r in v.state.listed()] == [tmask]

        def others_grey():
            img = shot()
            fr = {i: (_levels(img[r]) >= 0).mean() for i, r in visible.items()}
            return fr if fr[target.instance] > 0.5 and all(f < 0.1 for i, f in fr.items()
                                                           if i != target.instance) else None

        _wait(others_grey, 20, "the other objects to turn grey", 0.3)

        # a click on the object isolates it: the other objects are no longer drawn
        v.set_threshold(v.vmin)
        rows, cols = np.nonzero(_erode(regions[target.instance], 4))
        k = len(rows) // 2
        for kind in ("mousePressed", "mouseReleased"):
            browser.call("Input.dispatchMouseEvent", type=kind, x=float(x0 + cols[k]) + 0.5,
                         y=float(y0 + rows[k]) + 0.5, button="left", clickCount=1)
        _wait(lambda: v.state.isolated == tmask, 20, "the click to isolate the object")
        def isolated_drawn():
            img = shot().astype(int)
            colours, counts = np.unique(img[free], axis=0, return_counts=True)
            background = colours[counts.argmax()]          # what most of the canvas shows: the background
            fr = {i: (np.abs(img[r] - background).max(axis=1) <= 10).mean() for i, r in visible.items()}
            return fr if fr[target.instance] < 0.2 and all(f > 0.8 for i, f in fr.items()
                                                           if i != target.instance) else None

        _wait(isolated_drawn, 20, "only the isolated object to be drawn", 0.3)

        # the slider in the page: End moves it to its maximum (1.0): nothing is listed, nothing coloured
        assert browser.eval("(() => { const t = document.querySelector('[role=slider]'); t.focus();"
                            " return document.activeElement === t })()")
        for kind in ("keyDown", "keyUp"):
            browser.call("Input.dispatchKeyEvent", type=kind, key="End", code="End", windowsVirtualKeyCode=35)
        # (the refresh follows the threshold on the server: wait for all of it)
        _wait(lambda: v.state.threshold == pytest.approx(1.0) and v.state.listed() == [] and v.state.isolated is None
              and v.cloud.visible, 20, "the slider to reach the server")

        def nothing_coloured():
            img = shot()
            fr = {i: (_levels(img[r]) >= 0).mean() for i, r in visible.items()}
            return fr if all(f < 0.1 for f in fr.values()) else None

        _wait(nothing_coloured, 20, "every object to turn grey", 0.3)
    finally:
        if browser is not None:
            browser.close()
        v.close()



def test_view_cli_errors_and_export(indexed, tmp_path, capsys):
    _need_viser()
    from opendas_encoder.cli import main

    scene, d, index, encoder, mask_of = indexed
    assert main(["view", str(tmp_path / "missing")]) == 2
    assert "scene folder not found" in capsys.readouterr().err
    assert main(["view", d, "--vmin", "0.5", "--vmax", "0.2"]) == 2
    assert main(["view", d, "--negative", "red box"]) == 2
    out = tmp_path / "shared export ö"
    assert main(["view", d, "--export", str(out), "--query", QUERY, "--quiet", "--port", str(_free_port())]) == 0
    assert sorted(os.listdir(out)) == ["index.html", "query_0_brown_box.html"]


def test_static_export_opens_offline_in_chromium(indexed, tmp_path):
    """The exported page, opened from disk (file://, no server), draws the scene with the query's colours."""
    _need_browser()
    from opendas_encoder.scan.query import colour_table
    from opendas_encoder.scan.viewer import SceneViewer, export_static

    scene, d, index, encoder, mask_of = indexed
    v = SceneViewer(index, encoder, port=_free_port())
    try:
        out = export_static(v, str(tmp_path / "export"), [[QUERY]])
        res = v.state.result
    finally:
        v.close()
    expected = colour_table()[int(np.clip((res.ranked[0].score - v.vmin) / (v.vmax - v.vmin) * 255, 0, 255))]
    n_target = int(index.masks[:, mask_of[next(p for p in scene.primitives if p.label == QUERY).instance]].sum())
    assert n_target > 0
    browser = Browser("file://" + os.path.join(out, "query_0_brown_box.html"))
    try:
        def drawn():
            img = browser.screenshot().reshape(-1, 3).astype(int)
            return (np.abs(img - expected).max(axis=1) <= 30).sum() >= 200
        _wait(drawn, 30, "the exported scene to show the top instance in its score's colour", 0.3)
    finally:
        browser.close()

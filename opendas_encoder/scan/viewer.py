"""``opendas view SCENE``: a local web page to query a scan in free text (viser, MIT; offline client).

The page shows the scene's point cloud coloured by **absolute** similarity to the query (the fixed scale
[vmin, vmax] of :func:`.query.point_colors`, never re-normalised per query, with its legend), a query box and
a negative-query box (several texts separated by ``;``), the ranked instances with their scores, a threshold
slider (instances below it are neither listed nor coloured), a dropdown and a scene click to isolate one
instance, and the crops of the top views that the instance's feature was computed from (the evidence).

:func:`export_static` writes a folder that opens offline from disk, without a server: one self-contained
HTML page per query made by viser's own embedding (``SceneApi.as_html``: the client build that ships in
the viser wheel plus the serialised scene, base64, in one file; its scene-tree panel toggles each ranked
instance) and an ``index.html`` with the legend, the ranked list and the evidence crops beside it. The
GUI itself cannot be exported (viser serialises scene nodes only) and queries need the encoder, so the
export holds the queries given when it is made.

All viser imports are inside functions (``import opendas_encoder`` never imports viser).
"""

from __future__ import annotations

import base64
import html
import io
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..files import atomic_folder
from .index import SceneIndex
from .query import COLORMAP, QueryResult, colour_table, point_colors, query_scene

#: crops of the evidence (top views) shown per instance
EVIDENCE_VIEWS = 3


def split_texts(text: str) -> List[str]:
    """'a; b ;' -> ['a', 'b'] (the query boxes take several texts separated by ';')."""
    return [t.strip() for t in (text or "").split(";") if t.strip()]


def legend_image(vmin: float, vmax: float, threshold: Optional[float] = None, width: int = 300,
                 height: int = 70) -> np.ndarray:
    """The colour legend: uint8 (height, width, 3), the colour table of :data:`.query.COLORMAP` from
    ``vmin`` to ``vmax`` (absolute cosine similarity) with ticks, and the threshold marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.05, 0.5, 0.9, 0.3))
    ax.imshow(colour_table()[None], aspect="auto", extent=(vmin, vmax, 0, 1))
    ax.set_yticks([])
    ticks = np.linspace(vmin, vmax, 5)
    ax.set_xticks(ticks, [f"{t:.2f}" for t in ticks], fontsize=7)
    ax.set_title("cosine similarity (absolute scale)", fontsize=7, pad=2)
    if threshold is not None and vmin <= threshold <= vmax:
        ax.axvline(threshold, color="white", lw=2)
        ax.axvline(threshold, color="black", lw=1)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def evidence_crops(scene, index: SceneIndex, mask_id: int, views: int = EVIDENCE_VIEWS, level: int = 1,
                   max_side: int = 160) -> List[np.ndarray]:
    """The crops behind one instance's feature: uint8 (h, w, 3) images, one per top view (best first),
    the crop level ``level`` of :func:`~opendas_encoder.threed.features.plan_crops` (the same views and
    boxes the feature step encoded), resized to at most ``max_side`` pixels. ``scene``: the index's
    :class:`~opendas_encoder.threed.Scene3D`.

    Only the instance's points and its top views (``index.views``) are projected: visibility is decided by
    each frame's depth map, not by the other points, so the plan is the full scene's for this mask."""
    from PIL import Image

    from ..threed.features import MaskFeatureConfig, plan_crops
    from ..threed.scene import Scene3D

    position = {(int(f.name) if f.name.isdigit() else i): i for i, f in enumerate(scene.frames)}
    frames = [scene.frames[position[int(v)]] for v in index.views[mask_id][:views] if int(v) in position]
    sel = np.asarray(index.masks[:, mask_id], bool)
    sub = Scene3D(scene.name, np.asarray(scene.points)[sel], frames)
    plan = plan_crops(sub, np.ones((int(sel.sum()), 1), bool), MaskFeatureConfig(top_k=views, num_levels=level + 1))
    out = []
    for r in np.nonzero(plan.level == level)[0]:
        img = sub.frames[int(plan.frame_index[r])].load_color().crop(tuple(int(v) for v in plan.boxes[r]))
        img.thumbnail((max_side, max_side), Image.BILINEAR)
        out.append(np.asarray(img))
    return out


def default_point_size(points: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """A point size (metres) that closes the gaps of a cloud: 1.5 x the median distance from a sample of
    points to their nearest neighbour (scikit-learn's KD-tree)."""
    from sklearn.neighbors import NearestNeighbors

    points = np.asarray(points, np.float32)
    if len(points) < 2:
        return 0.02
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(points), min(sample, len(points)), replace=False)
    dist, _ = NearestNeighbors(n_neighbors=2).fit(points).kneighbors(points[pick])
    return float(1.5 * np.median(dist[:, 1])) or 0.02


def pick_point(points: np.ndarray, origin, direction, radius: float) -> Optional[int]:
    """The point a click ray hits first: among points within ``radius`` (metres) of the ray, in front
    of its origin, the nearest to the origin; None if there is none. points (N, 3); origin, direction (3,)."""
    d = np.asarray(direction, np.float64)
    d = d / np.linalg.norm(d)
    rel = np.asarray(points, np.float64) - np.asarray(origin, np.float64)
    t = rel @ d
    dist2 = np.einsum("ij,ij->i", rel, rel) - t * t
    ok = (t > 0) & (dist2 <= radius * radius)
    if not ok.any():
        return None
    cand = np.nonzero(ok)[0]
    return int(cand[np.argmin(t[cand])])


@dataclass
class ViewerState:
    """What the page shows (read by tests): the last query, its result, the threshold, the isolated mask."""

    texts: List[str] = field(default_factory=list)
    negatives: List[str] = field(default_factory=list)
    result: Optional[QueryResult] = None
    threshold: float = 0.0
    isolated: Optional[int] = None
    queries_run: int = 0

    def listed(self) -> list:
        """The ranked instances shown: those scoring at least the threshold, best first."""
        if self.result is None:
            return []
        return [r for r in self.result.ranked if r.score >= self.threshold]


class SceneViewer:
    """The viewer of one :class:`.index.SceneIndex` on a viser server.

    ``encoder`` encodes the query texts (it must be the one the index's features were computed with);
    ``vmin``/``vmax``: the fixed colour scale (cosine similarity); ``threshold``: the slider's start
    (default vmin); ``point_size``: metres (default :func:`default_point_size`).
    Queries from the text boxes run on a worker thread; only the newest pending one runs.
    """

    def __init__(self, index: SceneIndex, encoder, *, host: str = "127.0.0.1", port: int = 8080,
                 vmin: float = 0.1, vmax: float = 0.4, threshold: Optional[float] = None, top_k: int = 10,
                 point_size: Optional[float] = None, scene=None, verbose: bool = False):
        import viser

        if not vmax > vmin:
            raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
        self.index, self.encoder = index, encoder
        self.vmin, self.vmax, self.top_k = float(vmin), float(vmax), int(top_k)
        self.point_size = float(point_size) if point_size else default_point_size(index.points)
        self.state = ViewerState(threshold=float(vmin if threshold is None else threshold))
        self._scene = scene
        self._evidence_cache: Dict[int, List[np.ndarray]] = {}
        self._lock = threading.RLock()
        self._pending = None
        self._wake = threading.Event()
        self._closed = False
        self.server = viser.ViserServer(host=host, port=port, verbose=verbose)
        self.server.scene.set_up_direction("+z")
        self._build_scene()
        self._build_gui()
        self._worker = threading.Thread(target=self._work, name="opendas-view-queries", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ scene and GUI
    @property
    def port(self) -> int:
        return int(self.server.get_port())

    def _scene3d(self):
        if self._scene is None:
            from ..threed.processed import read_processed_scene

            self._scene = read_processed_scene(self.index.scene_dir)
        return self._scene

    def _build_scene(self) -> None:
        idx = self.index
        lo = idx.points.min(axis=0) if len(idx.points) else np.zeros(3)
        hi = idx.points.max(axis=0) if len(idx.points) else np.ones(3)
        c, e = (lo + hi) / 2, hi - lo
        # start inside the scan's box, high near one side, looking down at the far floor: a room's walls and
        # ceiling hide everything from a camera outside it
        ic = self.server.initial_camera
        ic.position = (float(c[0]), float(c[1] - 0.45 * e[1]), float(lo[2] + 0.85 * e[2]))
        ic.look_at = (float(c[0]), float(c[1] + 0.1 * e[1]), float(lo[2] + 0.2 * e[2]))
        ic.up = (0.0, 0.0, 1.0)
        self.cloud = self.server.scene.add_point_cloud("/scene", idx.points, idx.colors, point_size=self.point_size,
                                                       point_shape="square", point_shading="flat",
                                                       precision="float32")
        self.isolated_cloud = None
        self._labels: list = []

        @self.server.scene.on_click()
        def _(event) -> None:
            self.click(event.ray_origin, event.ray_direction)

    def _build_gui(self) -> None:
        gui, idx = self.server.gui, self.index
        name = os.path.basename(os.path.normpath(idx.scene_dir))
        gui.add_markdown(f"**{html.escape(name)}**: {len(idx.points):,} points, {idx.num_masks} instances "
                         f"(proposals: `{idx.proposal_source}`)")
        self.query_box = gui.add_text("Query", initial_value="", hint="free text; several separated by ';'")
        self.negative_box = gui.add_text("Negative", initial_value="", hint="push down instances closer to this")
        self.threshold_slider = gui.add_slider("Threshold", min=-1.0, max=1.0, step=0.005,
                                               initial_value=round(self.state.threshold, 3),
                                               hint="instances scoring below it are neither listed nor coloured")
        self.legend = gui.add_image(legend_image(self.vmin, self.vmax, self.state.threshold), label="legend",
                                    format="png")
        self.ranked_md = gui.add_markdown("_type a query_")
        self.isolate_dropdown = gui.add_dropdown("Isolate", ["(all)"], initial_value="(all)")
        self.show_all_button = gui.add_button("Show all")
        with gui.add_folder("Evidence (top views)"):
            self.evidence_md = gui.add_markdown("")
            blank = np.full((8, 8, 3), 255, np.uint8)
            self.evidence_images = [gui.add_image(blank, label=f"view {i + 1}", visible=False)
                                    for i in range(EVIDENCE_VIEWS)]

        @self.query_box.on_update
        def _(_) -> None:
            self.request(self.query_box.value, self.negative_box.value)

        @self.negative_box.on_update
        def _(_) -> None:
            self.request(self.query_box.value, self.negative_box.value)

        @self.threshold_slider.on_update
        def _(_) -> None:
            self.set_threshold(float(self.threshold_slider.value), from_gui=True)

        @self.isolate_dropdown.on_update
        def _(_) -> None:
            value = self.isolate_dropdown.value
            self.isolate(None if value == "(all)" else self._option_mask.get(value), from_gui=True)

        @self.show_all_button.on_click
        def _(_) -> None:
            self.isolate(None)

        self._option_mask: Dict[str, int] = {}

    # ------------------------------------------------------------------ actions (GUI and tests)
    def request(self, query: str, negative: str = "") -> None:
        """Queue a query from the text boxes (texts split at ';'); the worker runs the newest."""
        with self._lock:
            self._pending = (split_texts(query), split_texts(negative))
        self._wake.set()

    def _work(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            with self._lock:
                job, self._pending = self._pending, None
                self._wake.clear()
            if job is not None:
                try:
                    self.run_query(*job)
                except Exception as exc:  # a bad query must not kill the worker; show it on the page
                    self.ranked_md.content = f"**error:** {html.escape(str(exc))}"

    def run_query(self, texts: Sequence[str], negatives: Sequence[str] = ()) -> Optional[QueryResult]:
        """Run a query now and update the page; empty ``texts`` clears it. Returns the result."""
        texts, negatives = list(texts), list(negatives)
        result = query_scene(self.index, self.encoder, texts, negatives, top_k=self.top_k) if texts else None
        with self._lock:
            self.state.texts, self.state.negatives, self.state.result = texts, negatives, result
            self.state.isolated = None
            self.state.queries_run += 1
            self._refresh()
        return result

    def set_threshold(self, value: float, from_gui: bool = False) -> None:
        """Set the threshold (cosine similarity): the list and the colouring follow."""
        with self._lock:
            self.state.threshold = float(value)
            if not from_gui:
                self.threshold_slider.value = round(float(value), 3)
            self.legend.image = legend_image(self.vmin, self.vmax, self.state.threshold)
            self._refresh()

    def isolate(self, mask_id: Optional[int], from_gui: bool = False) -> None:
        """Show only instance ``mask_id`` (None: the whole scene again) and its evidence."""
        with self._lock:
            self.state.isolated = None if mask_id is None else int(mask_id)
            if not from_gui:
                label = next((k for k, v in self._option_mask.items() if v == mask_id), "(all)")
                if label not in self.isolate_dropdown.options:
                    label = "(all)"
                self.isolate_dropdown.value = label
            self._show_isolated()
            self._show_evidence(self.state.isolated if self.state.isolated is not None else self._top_listed())

    def click(self, ray_origin, ray_direction) -> Optional[int]:
        """Isolate the best-scoring instance under a click ray (no query: the largest one); returns it."""
        p = pick_point(self.index.points, ray_origin, ray_direction, radius=self.point_size)
        if p is None:
            return None
        masks = np.nonzero(self.index.masks[p])[0]
        if len(masks) == 0:
            return None
        res = self.state.result
        if res is not None:
            best = int(masks[np.argmax(res.scores[masks])])
        else:
            best = int(masks[np.argmax(self.index.masks[:, masks].sum(axis=0))])
        self.isolate(best)
        return best

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.server.stop()

    # ------------------------------------------------------------------ drawing
    def colours(self) -> np.ndarray:
        """uint8 (N, 3): what the scene cloud shows now (the scan's colours before any query)."""
        res = self.state.result
        if res is None:
            return self.index.colors
        return point_colors(self.index, res.scores, self.state.threshold, self.vmin, self.vmax)

    def _top_listed(self) -> Optional[int]:
        listed = self.state.listed()
        return listed[0].mask_id if listed else None

    def _refresh(self) -> None:
        listed = self.state.listed()
        with self.server.atomic():
            self.cloud.colors = self.colours()
            for label in self._labels:
                label.remove()
            self._labels = []
            for r, inst in enumerate(listed):
                top = ((inst.box_min[0] + inst.box_max[0]) / 2, (inst.box_min[1] + inst.box_max[1]) / 2,
                       inst.box_max[2])
                self._labels.append(self.server.scene.add_label(f"/labels/rank{r + 1}", f"#{r + 1} {inst.score:.3f}",
                                                                position=top, anchor="bottom-center"))
        res = self.state.result
        if res is None:
            self.ranked_md.content = "_type a query_"
        else:
            rows = [f"| #{r + 1} | {inst.mask_id} | {inst.score:.3f} | {inst.num_points} |"
                    for r, inst in enumerate(listed)]
            head = f"**{html.escape('; '.join(res.texts))}**" + (
                f" not {html.escape('; '.join(res.negatives))}" if res.negatives else "")
            self.ranked_md.content = (head + f" — {len(listed)} of {len(res.ranked)} at or above "
                                      f"{self.state.threshold:.3f}\n\n| rank | mask | score | points |\n"
                                      "|---|---|---|---|\n"
                                      + "\n".join(rows))
        self._option_mask = {f"#{r + 1} mask {inst.mask_id} ({inst.score:.3f})": inst.mask_id
                             for r, inst in enumerate(listed)}
        self.isolate_dropdown.options = ["(all)"] + list(self._option_mask)
        if self.state.isolated is not None and self.state.isolated not in self._option_mask.values():
            self.state.isolated = None
        label = next((k for k, v in self._option_mask.items() if v == self.state.isolated), "(all)")
        self.isolate_dropdown.value = label
        self._show_isolated()
        self._show_evidence(self.state.isolated if self.state.isolated is not None else self._top_listed())

    def _show_isolated(self) -> None:
        m = self.state.isolated
        if self.isolated_cloud is not None:
            self.isolated_cloud.remove()
            self.isolated_cloud = None
        self.cloud.visible = m is None
        if m is not None:
            sel = self.index.masks[:, m]
            self.isolated_cloud = self.server.scene.add_point_cloud(
                "/isolated", self.index.points[sel], self.colours()[sel], point_size=self.point_size,
                point_shape="square", point_shading="flat", precision="float32")

    def _show_evidence(self, mask_id: Optional[int]) -> None:
        if mask_id is None:
            self.evidence_md.content = ""
            for im in self.evidence_images:
                im.visible = False
            return
        crops = self._evidence_cache.get(mask_id)
        if crops is None:
            crops = self._evidence_cache[mask_id] = evidence_crops(self._scene3d(), self.index, mask_id)
        views = self.index.views[mask_id]
        self.evidence_md.content = f"mask {mask_id}: frames {', '.join(str(v) for v in views[:EVIDENCE_VIEWS])}"
        for i, im in enumerate(self.evidence_images):
            if i < len(crops):
                im.image = crops[i]
                im.visible = True
            else:
                im.visible = False


# ---------------------------------------------------------------------------------------- static export
def _png_data_uri(image: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format=fmt)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _slug(texts: Sequence[str]) -> str:
    import re

    s = re.sub(r"[^0-9A-Za-z]+", "_", "+".join(texts)).strip("_")
    return (s or "query")[:60]


def _scene_html(viewer: SceneViewer) -> str:
    """The viewer's current scene (cloud, ranked instances as their own nodes, labels) as one HTML file."""
    res, sc = viewer.state.result, viewer.server.scene
    extra = []
    if res is not None:
        cols = viewer.colours()
        for r, inst in enumerate(viewer.state.listed()):
            sel = viewer.index.masks[:, inst.mask_id]
            extra.append(sc.add_point_cloud(f"/instances/rank{r + 1}_mask{inst.mask_id}", viewer.index.points[sel],
                                            cols[sel], point_size=viewer.point_size, point_shape="square",
                                            point_shading="flat", precision="float32", visible=False))
    try:
        return sc.as_html()
    finally:
        for h in extra:
            h.remove()


def export_static(viewer: SceneViewer, out_dir: str, queries: Sequence[Sequence[str]] = (),
                  negatives: Sequence[str] = ()) -> str:
    """Write an offline copy of the viewer for ``queries`` (each a list of texts) into ``out_dir``:
    ``query_<n>_<text>.html`` per query (or ``scene.html`` without queries) and ``index.html``. Written
    into a temporary folder beside ``out_dir`` and renamed at the end. Returns ``out_dir``."""
    out_dir = os.path.abspath(out_dir)
    idx = viewer.index
    name = os.path.basename(os.path.normpath(idx.scene_dir))
    with atomic_folder(out_dir, prefix=".tmp-view-") as tmp:  # shared: mode 0777 less the umask
        sections = []
        for q, texts in enumerate(queries or [()]):
            if texts:
                viewer.run_query(list(texts), list(negatives))
                page = f"query_{q}_{_slug(texts)}.html"
            else:
                viewer.run_query([])
                page = "scene.html"
            with open(os.path.join(tmp, page), "w", encoding="utf-8") as f:
                f.write(_scene_html(viewer))
            sections.append(_export_section(viewer, page))
        doc = ["<!doctype html><html><head><meta charset='utf-8'><title>",
               html.escape(f"opendas view: {name}"), "</title><style>body{font-family:sans-serif;margin:1em}"
               "table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;vertical-align:top}"
               "iframe{width:100%;height:480px;border:1px solid #ccc}img{margin:2px}</style></head><body>",
               f"<h1>{html.escape(name)}</h1><p>{len(idx.points):,} points, {idx.num_masks} instances (proposals: "
               f"<code>{html.escape(idx.proposal_source)}</code>). Colours: absolute cosine similarity, "
               f"{COLORMAP} from {viewer.vmin:g} to {viewer.vmax:g}; threshold {viewer.state.threshold:g}. "
               "Each 3D view is a self-contained page (viser's offline client); its scene tree (top right) "
               "shows or hides each ranked instance.</p>",
               "<img alt='legend' src='"
               + _png_data_uri(legend_image(viewer.vmin, viewer.vmax, viewer.state.threshold)) + "'>"]
        doc += sections + ["</body></html>"]
        with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as f:
            f.write("".join(doc))
    return out_dir


def _export_section(viewer: SceneViewer, page: str) -> str:
    res = viewer.state.result
    if res is None:
        return f"<h2>scene</h2><p><a href='{page}'>{page}</a></p><iframe src='{page}'></iframe>"
    title = html.escape("; ".join(res.texts)) + (f" (not {html.escape('; '.join(res.negatives))})"
                                                 if res.negatives else "")
    rows = []
    for r, inst in enumerate(viewer.state.listed()):
        crops = "".join(f"<img src='{_png_data_uri(c, 'JPEG')}'>" for c in
                        evidence_crops(viewer._scene3d(), viewer.index, inst.mask_id))
        box = " ".join(f"{v:.2f}" for v in inst.box_min) + " &rarr; " + " ".join(f"{v:.2f}" for v in inst.box_max)
        rows.append(f"<tr><td>#{r + 1}</td><td>{inst.mask_id}</td><td>{inst.score:.3f}</td><td>{inst.num_points}</td>"
                    f"<td>{box}</td><td>{', '.join(str(v) for v in inst.views)}</td><td>{crops}</td></tr>")
    return (f"<h2>{title}</h2><p><a href='{page}'>{page}</a></p><iframe src='{page}'></iframe>"
            "<table><tr><th>rank</th><th>mask</th><th>score</th><th>points</th><th>box (m)</th><th>views</th>"
            "<th>evidence</th></tr>" + "".join(rows) + "</table>")


"""Own-scan query side (issue 23): fallback proposals, the feature cache, scoring, colouring, the query CLI
and the top-1 query rate, against the generated 3D office's ground truth, exact math and library code."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

from opendas_encoder.generated.scene3d import generate_scene, proposals_from_gt, write_openmask3d_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_eval(name):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", os.path.join(ROOT, "eval", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def world_clip():
    import opendas_encoder as oe

    return oe.create_encoder("zeroshot", "opendas-world-vit", "generated-world").eval()


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    scene = generate_scene(seed=0, num_frames=3)
    return scene, write_openmask3d_layout(scene, str(tmp_path_factory.mktemp("scan_query")))


def _index(masks, features, points=None, colors=None):
    from opendas_encoder.scan.index import SceneIndex

    n = masks.shape[0]
    points = np.zeros((n, 3), np.float32) if points is None else points
    colors = np.full((n, 3), 100, np.uint8) if colors is None else colors
    return SceneIndex("x", points, colors, masks, np.asarray(features, np.float32),
                      [[0]] * masks.shape[1], "array", "fp")


# ------------------------------------------------------------------------------------------ proposals
def test_fallback_proposals_recall_on_generated_scenes():
    """Fallback proposals find the generator's instances. Measured (eval/proposal_recall.py, seeds 0-7 and
    100-103): recall 1.000 at IoU 0.5 and 0.25, mean best IoU 0.81; floors a bit below."""
    pytest.importorskip("open3d")
    from opendas_encoder.scan.proposals import fallback_proposals, proposal_recall

    for seed in (0, 1):
        scene = generate_scene(seed=seed, num_frames=1)
        masks = fallback_proposals(scene.points)
        r = proposal_recall(masks, proposals_from_gt(scene.gt_ids))
        assert r[0.5] >= 0.85 and r[0.25] >= 0.9, (seed, r)
        assert r["best_iou"].mean() >= 0.7
        # walls, floor and ceiling (ground truth 0) are removed, not proposed
        assert (masks.any(axis=1) & (scene.gt_ids == 0)).sum() <= 0.02 * (scene.gt_ids == 0).sum()


def test_proposal_recall_is_best_jaccard_per_instance():
    from sklearn.metrics import jaccard_score

    from opendas_encoder.scan.proposals import proposal_recall

    rng = np.random.default_rng(0)
    gt = rng.random((200, 5)) < 0.3
    props = rng.random((200, 7)) < 0.3
    props[:, 0] = gt[:, 2]                               # one exact match
    r = proposal_recall(props, gt, thresholds=(0.5, 0.25))
    best = np.array([max(jaccard_score(gt[:, k], props[:, m]) for m in range(7)) for k in range(5)])
    np.testing.assert_allclose(r["best_iou"], best, rtol=1e-12)
    assert r[0.5] == pytest.approx((best >= 0.5).mean()) and r[0.25] == pytest.approx((best >= 0.25).mean())
    assert r["best_iou"][2] == 1.0


def test_scene_proposals_sources(small_scene, tmp_path):
    from opendas_encoder.scan.proposals import scene_proposals

    scene, d = small_scene
    masks, source = scene_proposals(d, scene.points)                 # the layout's *_masks.pt
    assert source == f"mask3d:{scene.name}_masks.pt"
    np.testing.assert_array_equal(masks, proposals_from_gt(scene.gt_ids))
    with pytest.raises(ValueError, match="num_points"):
        scene_proposals(d, scene.points, np.zeros((3, 2), bool))


# ------------------------------------------------------------------------------------------ index + cache
def test_index_features_equal_direct_computation_and_cache_hit(small_scene, world_clip):
    from opendas_encoder.scan.index import cache_entries, load_index
    from opendas_encoder.threed.features import compute_mask_features
    from opendas_encoder.threed.processed import read_processed_scene

    scene, d = small_scene
    first = load_index(d, world_clip, progress=False)
    masks = proposals_from_gt(scene.gt_ids)
    direct = compute_mask_features(read_processed_scene(d), masks, world_clip)
    np.testing.assert_array_equal(first.masks, masks)
    np.testing.assert_allclose(first.features, direct, atol=1e-6)
    assert not first.from_cache and len(cache_entries(d)) >= 1
    second = load_index(d, world_clip, progress=False)
    assert second.from_cache
    np.testing.assert_array_equal(second.features, first.features)
    assert second.views == first.views and second.encoder_fingerprint == first.encoder_fingerprint
    meta = json.load(open([e for e in cache_entries(d) if first.encoder_fingerprint[:16] in e][0]))
    assert {"visibility", "features", "total"} <= set(meta["timings_s"])
    assert not any(f.endswith((".pt", ".pkl", ".npz")) for f in os.listdir(os.path.join(d, "cache")))


def test_cache_follows_scene_contents(small_scene, world_clip, tmp_path):
    """A byte-identical copy reuses the cache; a changed colour frame or another scene never does."""
    from PIL import Image

    from opendas_encoder.scan.index import load_index

    scene, d = small_scene
    load_index(d, world_clip, progress=False)
    same = shutil.copytree(d, str(tmp_path / "copy" / scene.name))
    assert load_index(same, world_clip, progress=False).from_cache
    changed = shutil.copytree(d, str(tmp_path / "changed" / scene.name))
    img = np.asarray(Image.open(os.path.join(changed, "color", "0.jpg"))).copy()
    img[:, : img.shape[1] // 2] = 255 - img[:, : img.shape[1] // 2]
    Image.fromarray(img).save(os.path.join(changed, "color", "0.jpg"), quality=95)
    idx = load_index(changed, world_clip, progress=False)
    assert not idx.from_cache
    # another scene (same name, same number of points is not required) with A's cache files planted in it
    other_scene = generate_scene(seed=1, num_frames=3)
    other = write_openmask3d_layout(other_scene, str(tmp_path / "other"))
    shutil.copytree(os.path.join(d, "cache"), os.path.join(other, "cache"))
    idx = load_index(other, world_clip, progress=False)
    assert not idx.from_cache and idx.masks.shape[0] == len(other_scene.points)


def test_cache_follows_the_encoder(small_scene, world_clip):
    import opendas_encoder as oe
    from opendas_encoder.core.towers import fingerprint_tensor_names
    from opendas_encoder.scan.index import encoder_fingerprint, load_index

    scene, d = small_scene
    base = load_index(d, world_clip, progress=False)
    other_template = oe.wrap_clip("zeroshot", world_clip.clip, tokenizer=world_clip.tokenizer,
                                  preprocess=world_clip.preprocess, model_name=world_clip.model_name,
                                  pretrained=world_clip.pretrained, template="a {} in a scene").eval()
    assert not load_index(d, other_template, progress=False).from_cache
    # an adapted encoder: its learned tensors are part of the key
    opendas = oe.wrap_clip("opendas", world_clip.clip, tokenizer=world_clip.tokenizer,
                           preprocess=world_clip.preprocess, model_name=world_clip.model_name,
                           pretrained=world_clip.pretrained).eval()
    fp = encoder_fingerprint(opendas)
    with torch.no_grad():
        next(iter(opendas.named_learned_parameters().values())).add_(0.01)
    assert encoder_fingerprint(opendas) != fp
    # other base weights (a perturbed copy of the base model)
    import copy

    clip2 = copy.deepcopy(world_clip.clip)
    params = dict(clip2.named_parameters())
    with torch.no_grad():
        params[fingerprint_tensor_names(params)[-1]].mul_(1.05)
    enc2 = oe.wrap_clip("zeroshot", clip2, tokenizer=world_clip.tokenizer, preprocess=world_clip.preprocess,
                        model_name=world_clip.model_name, pretrained=world_clip.pretrained).eval()
    idx2 = load_index(d, enc2, progress=False)
    assert not idx2.from_cache and idx2.encoder_fingerprint != base.encoder_fingerprint
    assert load_index(d, world_clip, progress=False).from_cache


# ------------------------------------------------------------------------------------------ scoring
def test_score_rule_exact():
    from opendas_encoder.scan.query import score_masks

    masks = np.eye(4, dtype=bool)
    feats = np.array([[1, 0, 0], [0, 2, 0], [0.6, 0.8, 0], [0, 0, 0]], np.float32)   # mask 3 unseen
    idx = _index(masks, feats)
    t = np.array([[1, 0, 0]], np.float32)
    n = np.array([[0, 1, 0]], np.float32)
    np.testing.assert_allclose(score_masks(idx, t), [1, 0, 0.6, 0], atol=1e-7)
    # pos - max(0, neg - pos): mask 1: 0 - (1 - 0) = -1; mask 2: 0.6 - (0.8 - 0.6) = 0.4
    np.testing.assert_allclose(score_masks(idx, t, n), [1, -1, 0.4, 0], atol=1e-6)
    # several texts: the best one counts
    t2 = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    np.testing.assert_allclose(score_masks(idx, t2), [1, 1, 0.8, 0], atol=1e-7)


def test_point_colors_match_a_per_point_loop_and_matplotlib():
    import matplotlib

    from opendas_encoder.scan.query import COLORMAP, point_colors, point_scores, rank

    rng = np.random.default_rng(1)
    n, m = 500, 9
    masks = rng.random((n, m)) < 0.2                   # overlapping proposals
    feats = rng.normal(size=(m, 4)).astype(np.float32)
    feats[4] = 0                                        # unseen mask: never lights a point
    colors = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    idx = _index(masks, feats, rng.normal(size=(n, 3)).astype(np.float32), colors)
    scores = rng.uniform(-0.2, 0.7, m).astype(np.float32)
    expect = np.full(n, -np.inf, np.float32)
    for i in range(n):
        for j in range(m):
            if masks[i, j] and j != 4:
                expect[i] = max(expect[i], scores[j])
    np.testing.assert_array_equal(point_scores(idx, scores), expect)
    out = point_colors(idx, scores, threshold=0.1, vmin=0.0, vmax=0.5)
    lit = expect >= 0.1
    cmap = matplotlib.colormaps[COLORMAP].resampled(256)
    ref = (np.asarray(cmap(np.clip(expect[lit].astype(np.float64) / 0.5, 0, 1)))[:, :3] * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[lit], ref)
    assert (out[~lit] == out[~lit][:, :1]).all()        # the rest: grey
    # absolute scale: a mask's colour depends on its own score only, not on the other masks' scores
    scores2 = scores.copy()
    scores2[scores2 < 0.3] = 0.31
    keep = expect >= 0.31
    np.testing.assert_array_equal(point_colors(idx, scores2, 0.1, 0.0, 0.5)[keep], out[keep])
    ranked = rank(idx, scores, top_k=20)
    assert [r.mask_id for r in ranked] == [j for j in np.argsort(-scores, kind="stable") if j != 4]
    for r in ranked:
        pts = idx.points[masks[:, r.mask_id]]
        assert r.num_points == len(pts)
        np.testing.assert_allclose(r.box_min, pts.min(0)) and np.testing.assert_allclose(r.box_max, pts.max(0))


# ------------------------------------------------------------------------------------------ query + CLI
def test_query_cli_writes_ranked_instances(small_scene, tmp_path, capsys):
    from opendas_encoder.cli import main
    from opendas_encoder.data.ply import read_ply_vertices

    scene, d = small_scene
    out = str(tmp_path / "q")
    target = scene.primitives[6]                       # the first object
    assert main(["query", d, target.label, "--top-k", "3", "--out", out, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "[scan index]" not in quiet.out and "%|" not in quiet.err and "rank" in quiet.out
    doc = json.load(open(os.path.join(out, "result.json")))
    ranked = doc["ranked"]
    assert len(ranked) == 3 and [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    masks = proposals_from_gt(scene.gt_ids)
    for r, name in zip(ranked, doc["instance_files"]):
        v = read_ply_vertices(os.path.join(out, name))
        sel = masks[:, r["mask_id"]]
        assert len(v["points"]) == r["num_points"] == sel.sum()
        np.testing.assert_allclose(v["points"].min(0), r["box_min"], atol=1e-6)
        np.testing.assert_array_equal(v["colors"], scene.point_colors[sel])
        assert r["views"] and all(0 <= f < 3 for f in r["views"])
    assert len(read_ply_vertices(os.path.join(out, "scene.ply"))["points"]) == len(scene.points)
    assert doc["colour_scale"]["vmin"] == 0.1 and doc["texts"] == [target.label]
    # without --quiet: per-stage timings, the features now come from the cache
    assert main(["query", d, target.label, "--top-k", "1", "--out", out]) == 0
    loud = capsys.readouterr().out
    assert "[scan index] scene hash:" in loud and "[scan index] features (cached):" in loud
    assert len(json.load(open(os.path.join(out, "result.json")))["ranked"]) == 1     # replaced whole
    expect = ["result.json", "scene.ply", "instance_00_mask%d.ply" % ranked[0]["mask_id"]]
    assert sorted(os.listdir(out)) == sorted(expect)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


@pytest.mark.parametrize("argv, message", [
    (["query", "/nonexistent/scene", "chair"], "scene folder not found"),
    (["query", "{scene}", "chair", "--vmin", "0.5", "--vmax", "0.2"], "--vmax"),
    (["query", "{scene}", "chair", "--proposals", "/nonexistent/masks.pt"], "proposal file not found"),
])
def test_query_cli_bad_input(small_scene, argv, message, capsys):
    from opendas_encoder.cli import main

    argv = [a.replace("{scene}", small_scene[1]) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_top1_query_rate_world_clip(tmp_path, world_clip):
    """Querying each object's class name with the shipped world CLIP (zero-shot) returns an object of
    that class first. Measured with eval/query_top1.py on seeds 0-7 (53 queries): 0.755 with ground-truth
    proposals, 0.774 with the fallback proposals; on seeds 0-2 (this test, 21 queries) 0.667 with both;
    the floors allow two more misses."""
    pytest.importorskip("open3d")
    top1 = _load_eval("query_top1")
    res = top1.run(3, ["gt", "fallback"], world_clip, str(tmp_path), seed=0, num_frames=6)
    assert res["gt"]["queries"] == res["fallback"]["queries"] == 21
    assert res["gt"]["rate"] >= 0.55, res["gt"]["rate"]
    assert res["fallback"]["rate"] >= 0.55, res["fallback"]["rate"]


def test_corrupt_cache_entry_is_recomputed(small_scene, world_clip, tmp_path):
    from opendas_encoder.scan.index import cache_entries, load_index

    scene, d = small_scene
    d = shutil.copytree(d, str(tmp_path / scene.name))
    good = load_index(d, world_clip, progress=False)
    entry = [e for e in cache_entries(d) if good.encoder_fingerprint[:16] in os.path.basename(e)]
    assert len(entry) == 1
    tensors = entry[0][: -len(".json")] + ".safetensors"
    with open(tensors, "r+b") as f:
        f.truncate(os.path.getsize(tensors) // 2)
    with pytest.warns(UserWarning, match="corrupt cache entry"):
        again = load_index(d, world_clip, progress=False)
    assert not again.from_cache
    np.testing.assert_array_equal(again.features, good.features)
    assert load_index(d, world_clip, progress=False).from_cache      # rewritten whole


def test_query_cli_with_an_adapted_checkpoint(small_scene, world_clip, tmp_path, capsys):
    """--checkpoint: the features come from the adapted encoder (its own cache entry), not the zero-shot one."""
    import opendas_encoder as oe
    from opendas_encoder.cli import main
    from opendas_encoder.scan.index import encoder_fingerprint, load_index
    from opendas_encoder.scan.query import query_scene

    scene, d = small_scene
    d = shutil.copytree(d, str(tmp_path / scene.name))
    adapted = oe.wrap_clip("opendas", world_clip.clip, tokenizer=world_clip.tokenizer, preprocess=world_clip.preprocess,
                           model_name=world_clip.model_name, pretrained=world_clip.pretrained).eval()
    ckpt = oe.save_checkpoint(adapted, str(tmp_path / "ckpt"))
    out = str(tmp_path / "q")
    assert main(["query", d, "blue box", "--checkpoint", ckpt, "--out", out, "--quiet"]) == 0
    doc = json.load(open(os.path.join(out, "result.json")))
    loaded = oe.load_encoder(ckpt).eval()
    assert doc["encoder_fingerprint"] == encoder_fingerprint(loaded) != encoder_fingerprint(world_clip)
    index = load_index(d, loaded, progress=False)
    assert index.from_cache                                   # the CLI's entry, keyed by the checkpoint
    expect = query_scene(index, loaded, ["blue box"])
    assert [r["mask_id"] for r in doc["ranked"]] == [r.mask_id for r in expect.ranked]
    np.testing.assert_allclose([r["score"] for r in doc["ranked"]], [r.score for r in expect.ranked], atol=1e-6)


def test_fallback_proposals_are_cached_with_the_scene(small_scene, world_clip, tmp_path):
    pytest.importorskip("open3d")
    from opendas_encoder.scan.index import load_index
    from opendas_encoder.scan.proposals import fallback_proposals

    scene, d = small_scene
    d = shutil.copytree(d, str(tmp_path / scene.name))
    first = load_index(d, world_clip, proposals="fallback", progress=False)
    assert first.proposal_source == "fallback:planes+dbscan" and "proposals" in first.timings
    np.testing.assert_array_equal(first.masks, fallback_proposals(scene.points))
    second = load_index(d, world_clip, proposals="fallback", progress=False)
    assert "proposals (cached)" in second.timings and second.from_cache
    np.testing.assert_array_equal(second.masks, first.masks)

"""opendas_encoder.threed: projection, visibility, views, crops, batched features, generated scene."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from opendas_encoder.threed import (MaskFeatureConfig, SamRefiner, Scene3D, classify_masks, compute_mask_features,
                                    compute_mask_features_loop, compute_view_stats, expand_box,
                                    multi_level_boxes, plan_crops, project_points, scale_intrinsic, top_k_views,
                                    visible_points)
from opendas_encoder.data.ply import read_ply_vertices, write_ply
from opendas_encoder.generated.scene3d import (generate_scene, proposals_from_gt, write_openmask3d_layout,
                                               write_scannetpp_layout)
from opendas_encoder.threed.views import frame_view_stats

K10 = np.array([[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]])


# ----------------------------------------------------------------------------------- projection
def test_project_points_hand_computed():
    pts = np.array([[0, 0, 1.0], [0.2, 0.1, 1.0], [0, 0, -1.0]])
    uv, depth = project_points(pts, np.eye(4), K10)
    np.testing.assert_allclose(uv[:2], [[5, 5], [7, 6]])
    np.testing.assert_allclose(depth, [1, 1, -1])
    # camera moved 1 m back along -z: the same world point is 2 m deep
    pose = np.eye(4)
    pose[2, 3] = -1.0
    uv, depth = project_points(pts[:1], pose, K10)
    np.testing.assert_allclose(depth, [2.0])


def test_point_behind_another_is_not_visible():
    front, behind = [0.0, 0.0, 1.0], [0.0, 0.0, 2.0]     # same pixel (5, 5)
    side = [0.2, 0.1, 1.0]                                  # pixel (7, 6)
    back_of_camera = [0.0, 0.0, -1.0]
    outside = [1.0, 0.0, 1.0]                               # u = 15 > width
    pts = np.array([front, behind, side, back_of_camera, outside])
    depth_map = np.ones((10, 10), dtype=np.float32)         # the sensor sees the surface at 1 m
    visible, pixels = visible_points(pts, np.eye(4), K10, depth_map, vis_threshold=0.2)
    assert visible.tolist() == [True, False, True, False, False]
    assert pixels[0].tolist() == [5, 5] and pixels[2].tolist() == [7, 6]
    assert (pixels[~visible] == -1).all()
    # a hole in the depth map (0 = no measurement) hides the point
    depth_map[5, 5] = 0
    assert not visible_points(pts, np.eye(4), K10, depth_map)[0][0]


def test_rounding_floor_vs_openmask3d_trunc():
    pt = np.array([[-0.05, 0.0, 1.0]])                     # u = 4.5 - ... -> use K with cx = 0
    K = np.array([[10.0, 0, 0], [0, 10.0, 5], [0, 0, 1]])  # u = -0.5
    depth_map = np.ones((10, 10))
    assert not visible_points(pt, np.eye(4), K, depth_map, rounding="floor")[0][0]
    vis, pix = visible_points(pt, np.eye(4), K, depth_map, rounding="trunc")
    assert vis[0] and pix[0].tolist() == [0, 5]


def test_scale_intrinsic():
    K = np.array([[100.0, 0, 64], [0, 90.0, 48], [0, 0, 1]])
    Ks = scale_intrinsic(K, (96, 128), (48, 32))
    np.testing.assert_allclose(Ks, [[25, 0, 16], [0, 45, 24], [0, 0, 1]])


# ----------------------------------------------------------------------------------- views and boxes
def test_frame_view_stats_counts_distinct_pixels_and_boxes():
    pixels = np.array([[2, 3], [2, 3], [4, 1], [0, 0], [7, 7]])
    visible = np.array([True, True, True, True, False])
    masks = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    counts, boxes = frame_view_stats(pixels, visible, masks, (8, 8))
    assert counts.tolist() == [2, 2, 0]            # two points on pixel (2, 3) count once
    assert boxes.tolist() == [[2, 1, 5, 4], [0, 0, 5, 2], [0, 0, 0, 0]]


def test_top_k_views_order_ties_and_unseen():
    counts = np.array([[5, 0, 1], [9, 0, 1], [5, 0, 0], [1, 0, 1]])
    views = top_k_views(counts, 3)
    assert views[0].tolist() == [1, 0, 2]          # tie 5/5: lower frame first
    assert views[1].tolist() == []                 # never seen
    assert views[2].tolist() == [0, 1, 3]


def test_expand_box_openmask3d_formula():
    box = (10, 20, 30, 60)                          # w = 20, h = 40
    assert expand_box(box, 0, 0.1, 100, 100) == box
    assert expand_box(box, 1, 0.1, 100, 100) == (8, 16, 32, 64)
    assert multi_level_boxes(box, 3, 0.1, 33, 100) == [(10, 20, 30, 60), (8, 16, 32, 64), (6, 12, 33, 68)]
    assert expand_box((1, 1, 4, 4), 2, 0.1, 10, 10) == (1, 1, 4, 4)   # int(3 * 0.1) = 0


def test_classify_masks_exact_and_zero_row():
    queries = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    feats = np.array([[0.1, 2.0, 0], [3.0, 0, 4.0], [0, 0, 0]])
    cls, sim = classify_masks(feats, queries)
    assert cls.tolist() == [1, 0, 0]
    np.testing.assert_allclose(sim, [2.0 / np.hypot(0.1, 2.0), 0.6, 0.0], rtol=1e-6)


# ----------------------------------------------------------------------------------- PLY
def test_ply_binary_round_trip_and_ascii(tmp_path):
    pts = np.array([[0, 1, 2], [3.5, -1, 0.25]], dtype=np.float32)
    cols = np.array([[255, 0, 1], [2, 3, 4]], dtype=np.uint8)
    write_ply(str(tmp_path / "a.ply"), pts, cols)
    d = read_ply_vertices(str(tmp_path / "a.ply"))
    np.testing.assert_array_equal(d["points"], pts)
    np.testing.assert_array_equal(d["colors"], cols)
    (tmp_path / "b.ply").write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                                    "property float z\nelement face 0\nproperty list uchar int vertex_indices\n"
                                    "end_header\n1 2 3\n4 5 6\n")
    np.testing.assert_array_equal(read_ply_vertices(str(tmp_path / "b.ply"))["points"], [[1, 2, 3], [4, 5, 6]])
    (tmp_path / "c.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\n"
                                     b"property float y\nproperty float z\nend_header\n" + b"\0" * 12)
    with pytest.raises(ValueError, match="c.ply.*truncated"):
        read_ply_vertices(str(tmp_path / "c.ply"))
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        read_ply_vertices(str(tmp_path / "missing.ply"))


# ----------------------------------------------------------------------------------- generated scene + features
class MeanColourEncoder(torch.nn.Module):
    """A deterministic stand-in encoder: image -> (mean R, G, B, 1) of a fixed 8x8 resize."""

    embed_dim = 4

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    @staticmethod
    def preprocess(img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    def encode_image(self, x, normalize=False):
        self.calls.append(x.shape[0])
        feats = torch.cat([x.mean(dim=(2, 3)), torch.full((x.shape[0], 1), 0.5)], dim=1) * self.scale
        # a little nonlinearity so that the average of normalised crops is not trivially linear
        return feats ** 2 + 0.01


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen3d")
    scene = generate_scene(seed=3, num_objects=6, num_frames=4, height=60, width=80, spacing=0.05)
    write_openmask3d_layout(scene, str(root / "om3d"))
    write_scannetpp_layout(scene, str(root / "spp"))
    return scene, root


def _processed_scene(root, scene):
    from integrations.openmask3d.readers import read_processed_scene

    return read_processed_scene(str(root / "om3d" / scene.name))


def test_generated_scene_ground_truth_and_frames(generated):
    scene, root = generated
    gt = scene.gt_ids
    inst = np.unique(gt[gt > 0])
    assert len(inst) == 6 and (inst % 1000 >= 1).all()
    assert sorted(inst % 1000) == list(range(1, 7))
    for i in inst:                                   # label id = class index + 1
        prim = next(p for p in scene.primitives if p.instance == i % 1000 - 1)
        assert scene.classes[i // 1000 - 1] == prim.label
        assert (gt == i).sum() >= 100                # ScanNet's min_region_size
    depth = np.asarray(Image.open(root / "om3d" / scene.name / "depth" / "0.png"))
    assert depth.dtype == np.uint16 and depth.shape == (60, 80) and (depth > 0).all()
    s3 = _processed_scene(root, scene)
    stats = compute_view_stats(s3, proposals_from_gt(gt))
    assert (stats.counts.max(axis=0) > 0).all()      # every object seen somewhere


def test_scannetpp_layout_matches_processed_layout(generated):
    from opendas_encoder.threed.scannetpp_scene import read_scannetpp_scene, scannetpp_instance_gt

    scene, root = generated
    spp = read_scannetpp_scene(str(root / "spp"), scene.name)
    om = _processed_scene(root, scene)
    np.testing.assert_allclose(spp.points, om.points, atol=1e-6)
    assert len(spp.frames) == len(om.frames)
    for a, b in zip(spp.frames, om.frames):
        np.testing.assert_allclose(a.cam_to_world, b.cam_to_world, atol=1e-6)
    assert spp.frames[0].load_depth().shape == (30, 40)           # depth at half the RGB resolution
    ids, counts = scannetpp_instance_gt(str(root / "spp"), scene.name,
                                        {c: i + 1 for i, c in enumerate(scene.classes)})
    np.testing.assert_array_equal(ids, scene.gt_ids)
    assert sum(counts.values()) == 6
    # the lower-resolution depth still yields crops inside the RGB image
    plan = plan_crops(spp, proposals_from_gt(scene.gt_ids))
    assert len(plan) > 0 and (plan.boxes[:, 2] <= 80).all() and (plan.boxes[:, 3] <= 60).all()
    assert (plan.boxes[:, 0] < plan.boxes[:, 2]).all() and (plan.boxes[:, 1] < plan.boxes[:, 3]).all()


def test_batched_crops_equal_per_mask_loop_and_unseen_mask_is_zero(generated):
    scene, root = generated
    s3 = _processed_scene(root, scene)
    # one extra point far outside the room, seen by no frame, and a mask made of it; plus an empty mask
    s3 = Scene3D(s3.name, np.vstack([s3.points, [[50.0, 50.0, 50.0]]]), s3.frames)
    masks = proposals_from_gt(np.append(scene.gt_ids, 0))
    unseen = np.zeros((s3.num_points, 1), dtype=bool)
    unseen[-1] = True
    masks = np.hstack([masks[:, :3], unseen, np.zeros((s3.num_points, 1), bool), masks[:, 3:]])
    enc = MeanColourEncoder()
    cfg = MaskFeatureConfig(batch_size=7)
    plan = plan_crops(s3, masks, cfg)
    assert set(plan.mask_index.tolist()) == set(range(masks.shape[1])) - {3, 4}
    assert (plan.frame_index[:-1] <= plan.frame_index[1:]).all()     # sorted by frame
    batched = compute_mask_features(s3, masks, enc, cfg, plan=plan)
    assert max(enc.calls) == 7 and len(enc.calls) == -(-len(plan) // 7)   # crops of several masks per call
    loop = compute_mask_features_loop(s3, plan, enc)
    np.testing.assert_allclose(batched, loop, atol=1e-6)
    assert (batched[3] == 0).all() and (batched[4] == 0).all()
    assert (np.linalg.norm(batched[[0, 1, 2, 5]], axis=1) > 0.5).all()
    # per mask: top-k (5 > 4 frames -> every frame that sees it) x 3 levels
    stats = compute_view_stats(s3, masks)
    for j in range(masks.shape[1]):
        assert (plan.mask_index == j).sum() == 3 * min(5, int((stats.counts[:, j] > 0).sum()))


def test_mean_feature_is_average_of_normalised_crops(generated):
    scene, root = generated
    s3 = _processed_scene(root, scene)
    masks = proposals_from_gt(scene.gt_ids)[:, :1]
    enc = MeanColourEncoder()
    plan = plan_crops(s3, masks, MaskFeatureConfig(top_k=1, num_levels=1))
    assert len(plan) == 1
    img = s3.frames[int(plan.frame_index[0])].load_color().crop(tuple(plan.boxes[0]))
    with torch.no_grad():
        e = enc.encode_image(enc.preprocess(img)[None])[0]
    expected = (e / e.norm()).numpy()
    np.testing.assert_allclose(compute_mask_features(s3, masks, enc, plan=plan)[0], expected, atol=1e-6)


def test_sam_refiner_box_used_for_crops(generated):
    scene, root = generated
    s3 = _processed_scene(root, scene)
    masks = proposals_from_gt(scene.gt_ids)[:, :2]

    class FakePredictor:
        def __init__(self):
            self.points = []

        def set_image(self, image):
            assert image.shape == (60, 80, 3)

        def predict(self, point_coords, point_labels, multimask_output):
            self.points.append(point_coords)
            m = np.zeros((1, 60, 80), dtype=bool)
            m[0, 10:20, 30:45] = True
            return m, np.array([0.9]), None

    fake = FakePredictor()
    plan = plan_crops(s3, masks, MaskFeatureConfig(num_levels=2), refiner=SamRefiner(fake, rounds=2, points=5))
    level0 = plan.boxes[plan.level == 0]
    assert (level0 == [30, 10, 45, 20]).all()
    assert (plan.boxes[plan.level == 1] == [29, 9, 46, 21]).all()   # int(15*0.1)=1, int(10*0.1)=1
    assert all(1 <= len(p) <= 5 for p in fake.points)
    assert len(fake.points) == 2 * int((plan.level == 0).sum())


def test_config_validation():
    with pytest.raises(ValueError):
        MaskFeatureConfig(top_k=0)
    with pytest.raises(ValueError):
        MaskFeatureConfig(pixel_rounding="round")


def test_core_import_does_not_pull_heavy_dependencies(repo_root):
    code = ("import sys, opendas_encoder.threed, opendas_encoder.generated.scene3d, opendas_encoder.data.ply, "
            "opendas_encoder.threed.scannetpp_scene; "
            "bad = [m for m in ('open3d', 'hydra', 'omegaconf', 'plyfile', 'MinkowskiEngine', 'detectron2') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

"""Dataset loaders on tiny fixtures written in the real on-disk layouts."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from opendas_encoder.data import CLIP_MEAN_PIXEL, SegmentError, crop_segment
from opendas_encoder.data.ade20k import ADE20K150, ade20k_150_classes
from opendas_encoder.data.cache import SegmentCache
from opendas_encoder.data.generic import GenericSegmentDataset
from opendas_encoder.data.registry import build_dataset, list_datasets
from opendas_encoder.data.resources import resource_path
from opendas_encoder.data.scannetpp import (ScanNetPPOffices, ScanNetPPScene, offices_split, offices_vocabulary,
                                            qvec_to_rotmat, read_ply_mesh, rotmat_to_qvec)
from opendas_encoder.data.scannetpp.render import open3d_available
from opendas_encoder.generated.datasets import SEQ, write_ade20k, write_generic, write_kitti360
from opendas_encoder.generated.scannetpp import FixtureFrame, box_mesh, look_at, write_scannetpp_scene
from opendas_encoder.vocab import load_negatives, validate_negatives

FILL = tuple(int(round(c)) for c in CLIP_MEAN_PIXEL)
needs_open3d = pytest.mark.skipif(not open3d_available(), reason="needs open3d: pip install open3d (+ libusb-1.0-0)")


def check_crop(seg):
    """crop_segment keeps the pixels of the mask and fills the rest with CLIP's mean pixel."""
    crop = np.asarray(crop_segment(seg.image, seg.mask))
    ys, xs = np.nonzero(seg.mask)
    y0, x0, h, w = ys.min(), xs.min(), ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()
    side = max(h, w)
    assert crop.shape == (side, side, 3)
    oy, ox = (side - h) // 2, (side - w) // 2
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]
    assert tuple(crop[oy + y - y0, ox + x - x0]) == tuple(seg.image[y, x])   # a kept pixel
    if side != h or side != w:  # padding exists: its pixels are the mean pixel
        assert tuple(crop[0, 0]) == FILL or tuple(crop[-1, -1]) == FILL
    return crop


# ---------------------------------------------------------------------------------- generic
def test_generic_segments_labels_and_pixels(tmp_path):
    exp = write_generic(str(tmp_path / "g"))
    ds = GenericSegmentDataset(str(tmp_path / "g"), split="train", progress=False)
    assert ds.classes == ["cat", "dog", "tree"]
    got = [(os.path.basename(ds.frames[r.frame].image), r.label) for r in ds.segments]
    assert got == exp["segments"]
    assert [r.pixels for r in ds.segments] == [100, 60, 40, 30, 64]
    seg = ds[1]  # a.png / tree: 6 x 10 box padded to 10 x 10
    assert seg.label == "tree"
    np.testing.assert_array_equal(seg.mask, exp["masks"][("a.png", "tree")])
    np.testing.assert_array_equal(seg.image, exp["images"]["a"])
    crop = check_crop(seg)
    assert crop.shape == (10, 10, 3) and tuple(crop[0, 0]) == FILL and tuple(crop[9, 5]) == FILL
    np.testing.assert_array_equal(crop[2:8], exp["images"]["a"][15:21, 20:30])
    seg_b = ds[3]
    np.testing.assert_array_equal(seg_b.mask, exp["masks"][("b.png", 2)])
    check_crop(seg_b)


def test_generic_corrupt_image_and_empty_mask_are_skipped_and_counted(tmp_path):
    write_generic(str(tmp_path / "g"))
    ds = GenericSegmentDataset(str(tmp_path / "g"), split="train", progress=False)
    assert ds.enumeration_skips.counts == {"tiny mask": 1, "empty mask": 1, "no annotation": 1}
    assert ds.enumeration_skips.examples["empty mask"] == [os.path.join(str(tmp_path / "g"), "instances", "train", "b.png") + "#3"]
    with pytest.raises(SegmentError, match="c.png.*unreadable image"):
        ds.load(4)
    report = SegmentCache(str(tmp_path / "cache"), ds, image_size=16).build(progress=False)
    assert report.total == 1 and list(report.counts) == ["unreadable image"]


def test_generic_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        GenericSegmentDataset(str(tmp_path / "nowhere"))
    write_generic(str(tmp_path / "g"))
    with pytest.raises(FileNotFoundError, match=r"images[/\\]test"):
        GenericSegmentDataset(str(tmp_path / "g"), split="test")
    with open(tmp_path / "g" / "instances" / "train" / "b.json", "w") as f:
        json.dump({"1": "zebra"}, f)
    with pytest.raises(ValueError, match=r"b\.json.*zebra"):
        GenericSegmentDataset(str(tmp_path / "g"), split="train", progress=False)


def test_index_cache_skips_reading_maps(tmp_path, monkeypatch):
    write_generic(str(tmp_path / "g"))
    index = str(tmp_path / "index.json")
    first = GenericSegmentDataset(str(tmp_path / "g"), split="train", index_cache=index, progress=False)
    assert os.path.isfile(index)

    def fail(self, frame):
        raise AssertionError("label map read again")

    monkeypatch.setattr(GenericSegmentDataset, "read_label_map", fail)
    again = GenericSegmentDataset(str(tmp_path / "g"), split="train", index_cache=index, progress=False)
    assert again.segments == first.segments
    assert again.enumeration_skips.counts == first.enumeration_skips.counts
    monkeypatch.undo()
    sem = np.zeros((24, 32), np.uint8)
    sem[0:8, 0:8] = 2  # rewrite a.png: now a single 64-pixel dog
    from PIL import Image
    path = tmp_path / "g" / "semantic" / "train" / "a.png"
    Image.fromarray(sem).save(path)
    os.utime(path, ns=(1, 1))  # a different mtime invalidates the entry
    changed = GenericSegmentDataset(str(tmp_path / "g"), split="train", index_cache=index, progress=False)
    assert [(r.label, r.pixels) for r in changed.segments][:1] == [("dog", 64)]


# ---------------------------------------------------------------------------------- ADE20K
def test_ade20k_class_names():
    names = ade20k_150_classes()
    assert len(names) == 150 == len(set(names))
    assert (names[0], names[2], names[7], names[82], names[149]) == ("wall", "sky", "bed", "light", "flag")


def test_ade20k_one_segment_per_class_region(tmp_path):
    exp = write_ade20k(str(tmp_path))
    val = ADE20K150(str(tmp_path), split="val", progress=False)   # the parent of ADEChallengeData2016 works too
    assert val.name == "ade20k-150/validation" and len(val.classes) == 150
    assert [(r.label, r.pixels) for r in val.segments] == [("wall", 120), ("flag", 40), ("light", 64)]
    assert val.enumeration_skips.counts == {"tiny mask": 1}  # bed, 5 px
    for i, (stem, value) in enumerate([("ADE_val_00000001", 1), ("ADE_val_00000001", 150), ("ADE_val_00000002", 83)]):
        seg = val[i]
        np.testing.assert_array_equal(seg.mask, exp["masks"][(stem, value)])
        check_crop(seg)
    train = ADE20K150(str(tmp_path / "ADEChallengeData2016"), split="training", progress=False)
    assert train.labels() == ["sky"]
    with pytest.raises(FileNotFoundError, match=r"empty[/\\]images[/\\]validation"):
        ADE20K150(str(tmp_path / "empty"), split="validation")
    import shutil
    shutil.rmtree(tmp_path / "ADEChallengeData2016" / "annotations" / "validation")
    with pytest.raises(FileNotFoundError, match=r"annotations[/\\]validation"):
        ADE20K150(str(tmp_path), split="validation")


# ---------------------------------------------------------------------------------- KITTI-360
def test_kitti360_instances_then_class_regions(tmp_path):
    pytest.importorskip("kitti360scripts", reason="pip install kitti360scripts")
    from opendas_encoder.data.kitti360 import KITTI360, kitti360_classes

    classes = kitti360_classes()
    assert len(classes) == 37 and classes[7] == "road" and classes[26] == "car" and 6 not in classes
    exp = write_kitti360(str(tmp_path))
    train = KITTI360(str(tmp_path), split="train", progress=False)
    assert train.frames[0].label_map.endswith(os.path.join("instance", "0000000000.png"))
    got = {(r.label, r.value): r.pixels for r in train.segments}
    assert got == {("building", 11): 40, ("road", 7): 100, ("car", 26001): 30, ("car", 26002): 24}
    by_value = {r.value: i for i, r in enumerate(train.segments)}
    for key, value in (("road", 7), ("car#1", 26001), ("car#2", 26002), ("building", 11)):
        seg = train[by_value[value]]
        np.testing.assert_array_equal(seg.mask, exp["masks"]["train"][key])
        check_crop(seg)
    import pickle
    assert pickle.loads(pickle.dumps(train)).labels() == train.labels()  # DataLoader workers may pickle it
    val = KITTI360(str(tmp_path), split="val", progress=False)  # no instance map: semantic regions
    assert sorted(val.labels()) == ["car", "sidewalk", "vegetation"]
    for i, r in enumerate(val.segments):
        np.testing.assert_array_equal(val[i].mask, exp["masks"]["val"][r.label])


def test_kitti360_frame_list_naming_a_missing_image(tmp_path):
    pytest.importorskip("kitti360scripts", reason="pip install kitti360scripts")
    from opendas_encoder.data.kitti360 import KITTI360

    write_kitti360(str(tmp_path))
    missing = f"data_2d_raw/{SEQ}/image_00/data_rect/0000000099.png"
    with open(tmp_path / "data_2d_semantics" / "train" / "2013_05_28_drive_val_frames.txt", "a") as f:
        f.write(f"{missing} data_2d_semantics/train/{SEQ}/image_00/semantic/0000000010.png\n")
    with pytest.raises(FileNotFoundError, match="0000000099.png"):
        KITTI360(str(tmp_path), split="val", progress=False)
    with pytest.raises(FileNotFoundError, match="KITTI-360 root"):
        KITTI360(str(tmp_path / "none"), split="val")


# ---------------------------------------------------------------------------------- ScanNet++
W, H = 32, 24
K = np.array([[20.0, 0, 16.0], [0, 20.0, 12.0], [0, 0, 1]])


def two_box_world(rotation_seed=3):
    """Box A (objectId 5) in front of box B (objectId 9), seen by one camera; the whole rig is moved
    by a random rigid transform so that conventions are exercised. Returns the scene parts and the
    expected per-pixel objectId map computed from the geometry in the camera frame."""
    va, fa = box_mesh((-1.0, -0.5, 3.0), (0.2, 0.5, 4.0))
    vb, fb = box_mesh((-0.2, -0.8, 5.0), (1.0, 0.8, 6.0), vertex_offset=8)
    v_cam = np.concatenate([va, vb])
    faces = np.concatenate([fa, fb])
    inst = np.array([5] * 8 + [9] * 8)
    q = np.random.default_rng(rotation_seed).normal(size=4)
    M = np.eye(4)
    M[:3, :3] = qvec_to_rotmat(q / np.linalg.norm(q))
    M[:3, 3] = (1.5, -2.0, 0.7)
    verts = v_cam @ M[:3, :3].T + M[:3, 3]
    cam_to_world = M  # the camera sits at the rig's origin looking along its +z
    # expected: pixel centre rays hit A's front face (z=3) or else B's front face (z=5)
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    sx, sy = (jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1]
    in_a = (3 * sx >= -1.0) & (3 * sx <= 0.2) & (3 * sy >= -0.5) & (3 * sy <= 0.5)
    in_b = (5 * sx >= -0.2) & (5 * sx <= 1.0) & (5 * sy >= -0.8) & (5 * sy <= 0.8)
    expected = np.where(in_a, 5, np.where(in_b, 9, 0))
    colors = np.array([[200, 30, 30]] * 8 + [[30, 30, 200]] * 8, np.uint8)
    return verts, faces, colors, inst, cam_to_world, expected


def write_two_box_scene(root, scene_id="0b031f3119"):
    verts, faces, colors, inst, T, expected = two_box_world()
    rgb = np.random.default_rng(7).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    frames = [FixtureFrame(T, K, W, H, rgb=rgb, depth=np.full((6, 8), 2.5))]
    write_scannetpp_scene(root, scene_id, verts, faces, colors, inst, {5: "Folder Organizer", 9: "monitor"}, frames)
    return expected


def test_offices_split_matches_appendix_e():
    train = ["0b031f3119", "1204e08f17", "260fa55d50", "394a542a19", "39f36da05b", "40b56bf310", "4ba22fa7e4",
             "75d29d69b8", "8b5caf3398", "1366d5ae89", "1a8e0d78c0", "2a496183e1", "30f4a2b44d", "419cbe7c11"]
    test = ["4a1a3a7dc5", "56a0ec536c", "59e3f1ea37", "7cd2ac43b4", "8d563fc2cc", "8e00ac7f59", "98b4ec142f",
            "9b74afd2d2", "9f139a318d", "e91722b5a3", "94ee15e8ba", "07f5b601ee", "2e74812d00", "036bce3393",
            "260db9cf5a", "28a9ee4557"]
    split = offices_split()
    assert split == {"train": train, "test": test}
    assert len(set(train) | set(test)) == 30


def test_quaternion_round_trip():
    q = np.array([0.3, -0.5, 0.2, 0.78])
    q /= np.linalg.norm(q)
    R = qvec_to_rotmat(q)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rotmat_to_qvec(R), q, atol=1e-9)
    # COLMAP order (qw, qx, qy, qz): 90 degrees about z maps x to y; 180 degrees about x flips y and z
    c = np.sqrt(0.5)
    np.testing.assert_allclose(qvec_to_rotmat([c, 0, 0, c]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(qvec_to_rotmat([0, 1, 0, 0]), np.diag([1.0, -1.0, -1.0]), atol=1e-12)
    np.testing.assert_allclose(rotmat_to_qvec(qvec_to_rotmat(-q)), q, atol=1e-9)   # sign fixed: qw >= 0


def test_scannetpp_layout_reader(tmp_path):
    root = str(tmp_path / "scannetpp")
    verts, faces, colors, inst, T, _ = two_box_world()
    write_two_box_scene(root)
    scene = ScanNetPPScene(root, "0b031f3119")
    np.testing.assert_allclose(scene.mesh_vertices(), verts, atol=1e-5)   # float32 in the PLY
    np.testing.assert_array_equal(scene.mesh_faces(), faces)
    np.testing.assert_array_equal(scene.mesh_colors(), colors)
    ids, labels = scene.vertex_instances()
    np.testing.assert_array_equal(ids, inst)
    assert labels == {5: "folder organizer", 9: "monitor"}
    seg = json.load(open(scene.segments_path))["segIndices"]
    assert seg != list(range(len(seg)))  # the segment indirection is exercised
    (fc,) = scene.frames(source="colmap")
    (fj,) = scene.frames(source="pose_json")
    for fr in (fc, fj):
        assert (fr.name, fr.width, fr.height) == ("frame_000000", W, H)
        np.testing.assert_allclose(fr.cam_to_world, T, atol=1e-9)
        np.testing.assert_allclose(fr.intrinsics, K)
        assert fr.rgb_path.endswith(os.path.join("iphone", "rgb", "frame_000000.jpg"))
    from PIL import Image
    depth = np.asarray(Image.open(fc.depth_path))
    assert depth.dtype == np.uint16 and depth.shape == (6, 8) and int(depth[0, 0]) == 2500
    with pytest.raises(FileNotFoundError, match="nope"):
        ScanNetPPScene(root, "nope")
    os.remove(fc.rgb_path)
    with pytest.raises(FileNotFoundError, match="frame_000000.jpg"):
        scene.frames()


def test_scannetpp_frames_stride_and_order(tmp_path):
    v, f = box_mesh((0, 0, 3), (1, 1, 4))
    rgb = np.zeros((H, W, 3), np.uint8)
    eyes = [(0, 0, float(k)) for k in range(5)]
    frames = [FixtureFrame(look_at(e, (0.5, 0.5, 10.0), up=(0, -1, 0)), K, W, H, rgb=rgb, depth=np.ones((2, 2)))
              for e in eyes]
    write_scannetpp_scene(str(tmp_path), "s", v, f, frames=frames)
    scene = ScanNetPPScene(str(tmp_path / "data"), "s")      # the data/ folder itself is accepted
    got = scene.frames(stride=2)
    assert [fr.name for fr in got] == ["frame_000000", "frame_000002", "frame_000004"]
    np.testing.assert_allclose([fr.cam_to_world[:3, 3] for fr in got], [eyes[0], eyes[2], eyes[4]], atol=1e-9)
    assert [fr.name for fr in scene.frames(stride=2, source="pose_json")] == [fr.name for fr in got]
    with pytest.raises(ValueError, match="stride"):
        scene.frames(stride=0)


def test_scannetpp_unaligned_arkit_poses_are_refused_unless_allowed(tmp_path):
    """A pose_intrinsic_imu.json frame with only ARKit's ``pose`` (no ``aligned_pose``) is not in the
    mesh's frame: reading it is an error naming the file, unless the user opts in (issue 13.9)."""
    root = str(tmp_path / "scannetpp")
    write_two_box_scene(root)
    scene = ScanNetPPScene(root, "0b031f3119")
    arkit = np.eye(4)
    arkit[:3, 3] = (10.0, 0.0, 0.0)          # an ARKit pose: a different world frame than the mesh's
    with open(scene.pose_json_path) as f:
        data = json.load(f)
    for entry in data.values():
        del entry["aligned_pose"]
        entry["pose"] = arkit.tolist()
    with open(scene.pose_json_path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=r"pose_intrinsic_imu\.json.*frame_000000.*aligned_pose.*allow_unaligned_poses"):
        scene.frames(source="pose_json")
    for name in ("images.txt", "cameras.txt"):   # without COLMAP, "auto" reads the JSON: refused as well
        os.remove(os.path.join(scene.colmap_dir, name))
    with pytest.raises(ValueError, match="aligned_pose"):
        scene.frames()
    with pytest.raises(ValueError, match=r"pose_intrinsic_imu\.json"):   # before any rendering
        ScanNetPPOffices(root, scene_ids=["0b031f3119"], stride=1, render_dir=str(tmp_path / "r"), progress=False)
    (fr,) = scene.frames(allow_unaligned_poses=True)
    np.testing.assert_array_equal(fr.cam_to_world, arkit)
    for entry in data.values():               # neither pose: an error even when unaligned poses are allowed
        del entry["pose"]
    with open(scene.pose_json_path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="frame_000000 has no 'aligned_pose'"):
        scene.frames(allow_unaligned_poses=True)


def test_ply_mesh_reader_binary_ascii_big_endian(tmp_path):
    """read_ply_mesh gives back the mesh written by write_ply, and the same mesh written by plyfile
    itself as ASCII and as big-endian binary (the formats releases use); non-triangles are refused."""
    import plyfile

    from opendas_encoder.data.ply import write_ply

    verts, faces, colors, *_ = two_box_world()
    path = str(tmp_path / "m.ply")
    write_ply(path, verts, colors, faces)
    mesh = read_ply_mesh(path)
    np.testing.assert_allclose(mesh.vertices, verts, atol=1e-5)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_array_equal(mesh.colors, colors)
    original = plyfile.PlyData.read(path)
    for name, text, order in (("ascii.ply", True, "="), ("big.ply", False, ">")):
        plyfile.PlyData(original.elements, text=text, byte_order=order).write(str(tmp_path / name))
        other = read_ply_mesh(str(tmp_path / name))
        np.testing.assert_allclose(other.vertices, verts, atol=1e-5)
        np.testing.assert_array_equal(other.faces, faces)
        np.testing.assert_array_equal(other.colors, colors)
    quad = np.zeros(1, dtype=[("vertex_indices", "O")])
    quad["vertex_indices"][0] = np.array([0, 1, 2, 3], dtype=np.int32)
    plyfile.PlyData([original["vertex"], plyfile.PlyElement.describe(quad, "face")]).write(str(tmp_path / "quad.ply"))
    with pytest.raises(ValueError, match=r"quad\.ply.*triangle"):
        read_ply_mesh(str(tmp_path / "quad.ply"))
    (tmp_path / "junk.ply").write_bytes(b"not a ply file")
    with pytest.raises(ValueError, match=r"junk\.ply"):
        read_ply_mesh(str(tmp_path / "junk.ply"))


@needs_open3d
def test_renderer_two_boxes_with_occlusion():
    from opendas_encoder.data.scannetpp.render import MeshRaycaster, face_values_from_vertices

    verts, faces, _, inst, T, expected = two_box_world()
    assert (expected == 5).sum() == 48 and (expected == 9).sum() == 18  # B is partly hidden by A
    caster = MeshRaycaster(verts, faces, threads=1)
    got = caster.render_values(face_values_from_vertices(faces, inst), T, K, W, H)
    np.testing.assert_array_equal(got, expected)
    _, depth = caster.cast(T, K, W, H)
    np.testing.assert_allclose(depth[expected == 5], 3.0, atol=1e-4)   # z-depth of A's front face
    np.testing.assert_allclose(depth[expected == 9], 5.0, atol=1e-4)
    assert np.isinf(depth[expected == 0]).all()


@needs_open3d
def test_scannetpp_offices_segments_from_rendered_masks(tmp_path, monkeypatch):
    root, renders = str(tmp_path / "scannetpp"), str(tmp_path / "renders")
    expected = write_two_box_scene(root)
    ds = ScanNetPPOffices(root, scene_ids=["0b031f3119"], stride=1, render_scale=1.0, render_dir=renders,
                          threads=1, progress=False)
    assert ds.classes == ["folder organizer", "monitor"]
    assert sorted(ds.labels()) == ["folder organizer", "monitor"]
    for i, ref in enumerate(ds.segments):
        seg = ds[i]
        np.testing.assert_array_equal(seg.mask, expected == ref.value)
        check_crop(seg)
    # half resolution: masks rendered at 16 x 12, the RGB image resized to match
    half = ScanNetPPOffices(root, scene_ids=["0b031f3119"], stride=1, render_scale=0.5, render_dir=renders,
                            threads=1, progress=False)
    assert half[0].image.shape == (12, 16, 3) and half[0].mask.shape == (12, 16)
    # a second construction reads the cached maps and renders nothing
    import opendas_encoder.data.scannetpp.render as render_mod
    monkeypatch.setattr(render_mod, "MeshRaycaster", None)
    again = ScanNetPPOffices(root, scene_ids=["0b031f3119"], stride=1, render_scale=1.0, render_dir=renders,
                             progress=False)
    assert [(r.value, r.pixels) for r in again.segments] == [(r.value, r.pixels) for r in ds.segments]


def test_scannetpp_vocabulary_counts(tmp_path):
    root = str(tmp_path / "scannetpp")
    v, f = box_mesh((0, 0, 0), (1, 1, 1))
    for sid, labels in (("s1", {1: "chair", 2: "desk", 3: "REMOVE"}), ("s2", {1: "desk", 2: "robot arm", 3: "Chair "})):
        write_scannetpp_scene(root, sid, np.concatenate([v, v + 2, v + 4]), np.concatenate([f, f + 8, f + 16]),
                              instances=np.repeat([1, 2, 3], 8), labels=labels)
    split_file = str(tmp_path / "split.json")
    json.dump({"train": ["s1"], "test": ["s2"]}, open(split_file, "w"))
    vocab = offices_vocabulary(root, split_file)
    assert vocab.base == ["chair", "desk"] and vocab.test == ["chair", "desk", "robot arm"]
    assert vocab.counts() == {"base": 2, "test": 3, "test_base": 2, "novel": 1}
    from opendas_encoder.data.scannetpp.__main__ import main
    out = str(tmp_path / "vocab.json")
    assert main(["vocab", "--root", root, "--split-file", split_file, "--out", out]) == 0
    assert json.load(open(out))["novel"] == ["robot arm"]


# ---------------------------------------------------------------------------------- cache
def test_segment_cache_builds_once_and_rebuilds_corrupt_entries(tmp_path):
    write_generic(str(tmp_path / "g"))
    ds = GenericSegmentDataset(str(tmp_path / "g"), split="train", progress=False)
    cache = SegmentCache(str(tmp_path / "cache"), ds, image_size=20, expand_ratio=0.0)
    first = cache.get(0)
    assert first.size == (20, 20)
    ref = np.asarray(crop_segment(ds[0].image, ds[0].mask).resize((20, 20), 3))  # 3 = BICUBIC
    np.testing.assert_array_equal(np.asarray(first), ref)
    assert cache.build(progress=False).total == 1
    manifest = json.load(open(cache.manifest_path))
    assert list(manifest["skipped"]) == ["4"] and manifest["skipped"]["4"].startswith("unreadable image")

    def fail(i):
        raise AssertionError("decoded again")

    again = SegmentCache(str(tmp_path / "cache"), ds, image_size=20)
    monkey_load, ds.load = ds.load, fail
    np.testing.assert_array_equal(np.asarray(again.get(0)), ref)      # read from disk, no decoding
    with pytest.raises(SegmentError):
        again.get(4)                                                  # recorded as skipped
    assert again.build(progress=False).total == 1
    ds.load = monkey_load
    with open(again.path(1), "wb") as f:
        f.write(b"garbage")
    np.testing.assert_array_equal(np.asarray(again.get(1)), np.asarray(cache.get(1)))  # rebuilt
    other = SegmentCache(str(tmp_path / "cache"), ds, image_size=24)
    assert other.dir != cache.dir


# ---------------------------------------------------------------------------------- registry
def test_registry(tmp_path):
    assert list_datasets() == ["ade20k-150", "generated-world", "generic", "kitti-360", "scannetpp-offices"]
    write_generic(str(tmp_path / "g"))
    ds = build_dataset("generic", str(tmp_path / "g"), "train", progress=False)
    assert len(ds) == 5
    write_ade20k(str(tmp_path / "ade"))
    assert build_dataset("ade20k-150", str(tmp_path / "ade"), "validation", progress=False).labels() == ["wall", "flag", "light"]
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; known: \['ade20k-150', 'generated-world'"):
        build_dataset("imagenet", "x")
    world = build_dataset("generated-world", None, "test", n_scenes=2, seed=0)   # generated: no root
    assert len(world) > 0 and world.name.startswith("generated")
    with pytest.raises(ValueError, match="takes no root"):
        build_dataset("generated-world", "some/folder", "test", n_scenes=2, seed=0)
    with pytest.raises(ValueError, match="'generic' needs a root"):
        build_dataset("generic", None)


def test_registry_takes_a_new_dataset_by_decorator(tmp_path):
    from opendas_encoder.data import registry
    from opendas_encoder.data.generic import GenericSegmentDataset

    @registry.register_dataset("unit-test-generic")
    def build(root, split, **kw):
        return GenericSegmentDataset(root, split=split, **kw)

    try:
        write_generic(str(tmp_path / "g"))
        assert "unit-test-generic" in list_datasets()
        assert len(build_dataset("unit-test-generic", str(tmp_path / "g"), "train", progress=False)) == 5
        with pytest.raises(ValueError, match="'unit-test-generic' is registered twice"):
            registry.register_dataset("unit-test-generic", lambda root, split: None)
    finally:
        registry.DATASETS._entries.pop("unit-test-generic", None)


def test_real_loaders_never_import_generated_code(repo_root):
    """The real dataset modules (and the data layer around them) import without the generated package."""
    code = ("import sys\n"
            "import opendas_encoder.data.registry, opendas_encoder.data.generic, opendas_encoder.data.ade20k\n"
            "import opendas_encoder.data.kitti360, opendas_encoder.data.scannetpp, opendas_encoder.data.cache\n"
            "import opendas_encoder.data.ply, opendas_encoder.metrics, opendas_encoder.vocab\n"
            "bad = [m for m in sys.modules if m.startswith('opendas_encoder.generated')]\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------- negatives
PAPER_EXAMPLES = {
    "wall": ["room divider", "partition", "divider screen", "privacy screen", "decorative panel"],
    "ceiling": ["chandelier", "pendant light", "skylight", "light fixture", "ceiling fan"],
    "folder organizer": ["bedside table", "end table", "chest of drawers", "bar stool", "storage ottoman"],
}


def test_negative_files_are_valid_and_cover_their_classes():
    from opendas_encoder.vocab import read_class_list

    ade = load_negatives(resource_path("negatives_ade20k150.json"), classes=ade20k_150_classes())
    assert len(ade) == 150 and ade["wall"] == PAPER_EXAMPLES["wall"] and ade["ceiling"] == PAPER_EXAMPLES["ceiling"]
    top100 = read_class_list(resource_path("scannetpp_top100_classes.txt"))
    assert len(top100) == 100
    snpp = load_negatives(resource_path("negatives_scannetpp.json"), classes=top100)
    for name, negs in PAPER_EXAMPLES.items():
        assert snpp[name] == negs
    kitti = load_negatives(resource_path("negatives_kitti360.json"))
    assert len(kitti) == 37
    for path in glob.glob(os.path.join(os.path.dirname(resource_path("ade20k_150_classes.txt")), "negatives_*.json")):
        data = json.load(open(path))
        assert validate_negatives(data) == [], path
        for cls, negs in data.items():  # no negative is a sub-phrase variant of another in the same list
            assert len({n.lower() for n in negs}) == 5, (path, cls)


def test_kitti_negatives_match_the_label_table():
    pytest.importorskip("kitti360scripts", reason="pip install kitti360scripts")
    from opendas_encoder.data.kitti360 import kitti360_classes

    load_negatives(resource_path("negatives_kitti360.json"), classes=list(kitti360_classes().values()))


# ---------------------------------------------------------------------------------- configs
def test_experiment_configs_load_and_are_generated(repo_root, tmp_path):
    import importlib.util

    from opendas_encoder.train.config import load_config

    spec = importlib.util.spec_from_file_location("make_configs", os.path.join(repo_root, "configs", "make_configs.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    expected = gen.all_configs()
    paths = sorted(glob.glob(os.path.join(repo_root, "configs", "table*", "**", "*.yaml"), recursive=True))
    assert sorted(os.path.relpath(p, os.path.join(repo_root, "configs")) for p in paths) == sorted(expected)
    # 2 x 5 (Tab. 1) + 3 x 5 (Tab. 2) + 3 x (4 + 4) (Tab. 5) + 3 x 2 (Tab. 6) + 3 x 6 (Tab. 7)
    assert len(paths) == 10 + 15 + 24 + 6 + 18
    methods = set()
    for p in paths:
        rel = os.path.relpath(p, os.path.join(repo_root, "configs"))
        with open(p) as f:
            assert f.read() == gen.render(rel, expected[rel]), f"{rel} is stale: run python configs/make_configs.py"
        cfg = load_config(p)
        for d in (cfg.data.train, cfg.data.test):
            assert d.name in list_datasets(), p
        assert (cfg.model.name, cfg.model.pretrained) == ("ViT-L-14", "openai")
        if cfg.data.negatives:
            assert os.path.isfile(os.path.join(repo_root, cfg.data.negatives)), p
        methods.add(cfg.method)
        if cfg.method == "opendas":
            pc = cfg.prompt_config().resolved(24, 12)
            n = pc.visual_tokens * pc.visual_depth * 1024 + pc.text_tokens * pc.text_depth * 768
            if rel.startswith(("table1", "table2", "table5_setting")) and cfg.setting != "text-only":
                assert n == 233472, p   # the paper's 233K
            if cfg.setting == "text-only":  # issue 13.4: the untrained image tower is CLIP's, no visual tokens
                assert (pc.visual_tokens, n) == (0, 4 * 12 * 768), p
            if rel.startswith("table7") and "kv8_kt4" in rel:
                assert n == 135168, p   # Tab. 7's 135K
    assert methods == {"cocoop", "vpt", "rpo", "maple", "opendas", "wiseft-text", "wiseft-visual"}
    from opendas_encoder.core.registry import get_method

    for rel, cfg in expected.items():  # every option is a field of the method's config
        get_method(cfg["method"]).config_class(**cfg["method_options"])


def test_generated_world_in_the_generic_format_reads_back_as_the_generators_segments(tmp_path):
    """The README's first-run dataset (issue 25.16): the generic loader gives back exactly the generator's
    segments (label, mask, image) and the vocabulary derived from the splits is the domain's base classes."""
    from collections import Counter

    from opendas_encoder.data.generic import GenericSegmentDataset
    from opendas_encoder.data.registry import build_dataset
    from opendas_encoder.generated.world.domains import get_domain
    from opendas_encoder.generated.world_generic import write_world_generic
    from opendas_encoder.train.pipeline import derive_vocabulary

    counts = write_world_generic(str(tmp_path / "toy"), train_scenes=3, test_scenes=2)
    truth = build_dataset("generated-world", None, "train", n_scenes=3, seed=0)
    read = GenericSegmentDataset(str(tmp_path / "toy"), split="train")
    assert counts["train"] == len(truth) == len(read)
    key = lambda s: (s.label, s.mask.tobytes(), s.image.tobytes())  # noqa: E731
    assert Counter(key(read[i]) for i in range(len(read))) == Counter(key(truth[i]) for i in range(len(truth)))
    test = GenericSegmentDataset(str(tmp_path / "toy"), split="test")
    words = get_domain("cast").vocabulary()
    vocab = derive_vocabulary(read, test)  # base: classes with a training segment; novel: the other test classes
    assert set(vocab.base) == set(truth.labels()) and set(vocab.base) <= set(words["base"])
    assert set(vocab.novel) == set(test.labels()) - set(truth.labels())
    assert json.loads((tmp_path / "toy" / "negatives.json").read_text()) == get_domain("cast").negatives()
    assert json.loads((tmp_path / "toy" / "vocabulary.json").read_text()) == {"base": words["base"],
                                                                            "test": words["test"]}

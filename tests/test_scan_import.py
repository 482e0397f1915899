"""Own-scan import (issue 23, step 1 and the generated captures of step 6), checked against the generator's truth.

A generated office is ray-cast (exact depth) and written the way phones write captures (OpenGL
camera-to-world, y-up world, 256x192 depth, 512x384 colour, confidence maps with wrong depth where the
confidence is 0) as a nerfstudio folder and a Record3D .r3d; importing them must give back the
generator's own cameras (OpenCV, z-up), its depth and its surfaces.
"""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from opendas_encoder.data.ply import read_ply_vertices
from opendas_encoder.generated.capture import (render_capture, surface_distance, write_nerfstudio_capture,
                                               write_record3d_capture)
from opendas_encoder.generated.scene3d import generate_scene, write_scannetpp_layout
from opendas_encoder.scan.conventions import OPENGL_TO_OPENCV, UP_TO_Z, estimate_world_up, to_opencv_z_up
from opendas_encoder.scan.errors import ScanInputError
from opendas_encoder.scan.importers import import_scan
from opendas_encoder.threed.processed import read_processed_scene
from opendas_encoder.threed.projection import project_points

VOXEL = 0.03


@pytest.fixture(scope="module")
def rendered():
    scene = generate_scene(name="capture_truth", seed=3, num_objects=6, num_frames=4)
    return render_capture(scene, color_hw=(384, 512), depth_hw=(192, 256), seed=3)


@pytest.fixture(scope="module")
def captures(rendered, tmp_path_factory):
    d = tmp_path_factory.mktemp("captures")
    return {"nerfstudio": os.path.dirname(write_nerfstudio_capture(rendered, str(d / "ns"))),
            "record3d": write_record3d_capture(rendered, str(d / "scan.r3d"))}


def _leftovers(parent, name):
    return [n for n in os.listdir(parent) if n == name or n.startswith(f".{name}.")]


# ------------------------------------------------------------------------------------------ conventions
def test_conventions_are_the_stated_rotations():
    for axis, M in UP_TO_Z.items():
        R = M[:3, :3]
        assert np.allclose(R.T @ R, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)  # proper rotation
        v = np.zeros(3)
        v["xyz".index(axis[1])] = 1.0 if axis[0] == "+" else -1.0
        assert np.allclose(R @ v, [0, 0, 1])
    # a point 2 m straight ahead of an OpenGL camera (camera z = -2) is 2 m ahead in OpenCV (camera z = +2),
    # 0.5 m above the image centre (OpenGL y = +0.5) is OpenCV y = -0.5
    rng = np.random.default_rng(0)
    from scipy.spatial.transform import Rotation

    pose_gl = np.eye(4)
    pose_gl[:3, :3] = Rotation.random(random_state=1).as_matrix()
    pose_gl[:3, 3] = rng.normal(size=3)
    world = pose_gl @ np.array([0.3, 0.5, -2.0, 1.0])
    pose_cv = to_opencv_z_up(pose_gl, "opengl", "+y")
    cam = np.linalg.inv(pose_cv) @ (UP_TO_Z["+y"] @ world)
    assert np.allclose(cam[:3], [0.3, -0.5, 2.0])
    assert np.allclose(OPENGL_TO_OPENCV @ OPENGL_TO_OPENCV, np.eye(4))


def test_world_up_estimate_finds_the_phone_worlds_up(rendered):
    from opendas_encoder.generated.capture import phone_pose

    phone = [phone_pose(p) for p in rendered.poses]
    assert estimate_world_up(phone, "opengl") == "+y"          # phones write y-up worlds
    assert estimate_world_up(rendered.poses, "opencv") == "+z"  # the generator's own world


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("fmt", ["nerfstudio", "record3d"])
def test_imported_frames_reproduce_the_generator_cameras_and_depth(fmt, rendered, captures, tmp_path):
    out = tmp_path / f"scan_{fmt}"
    res = import_scan(captures[fmt], str(out), voxel_size=VOXEL, progress=False)
    assert res.num_frames == len(rendered.poses)
    scene = read_processed_scene(str(out))                     # the layout OpenMask3D reads
    meta = json.loads((out / "scan.json").read_text())
    assert meta["color_hw"] == [384, 512] and meta["depth_hw"] == [192, 256]
    assert meta["generated"] and (out / "GENERATED").is_file()  # generated input stays labelled
    names = {c["name"]: c for c in meta["conversions"]}
    assert names["camera OpenGL -> OpenCV"]["applied"] and names["world up +y -> +z"]["applied"]
    assert np.allclose(np.loadtxt(out / "intrinsic" / "intrinsic_depth.txt")[:3, :3], rendered.K_depth)
    truth = rendered.scene.points  # generator surface samples, z-up world
    for i, frame in enumerate(scene.frames):
        for hw, K_true in ((rendered.color_hw, rendered.K_color), (rendered.depth_hw, rendered.K_depth)):
            uv_true, z_true = project_points(truth, rendered.poses[i], K_true)
            uv, z = project_points(truth, frame.cam_to_world, frame.intrinsic_for(hw))
            front = z_true > 0.1
            # the generator drew each point at uv_true; the imported camera must put it within 0.5 px
            assert np.abs(uv[front] - uv_true[front]).max() < 0.5
            assert np.abs(z[front] - z_true[front]).max() < 1e-3
        # depth: the generator's exact depth, in mm, wherever confidence >= 1 (default); 0 where it was wrong
        depth = frame.load_depth()
        conf_ok = rendered.confidence[i] >= 1
        assert np.abs(depth[conf_ok] - rendered.depth_true[i][conf_ok]).max() <= 0.0005 + 1e-6
        assert (depth[rendered.wrong[i]] == 0).all()
        colour = np.asarray(frame.load_color(), dtype=np.float64)
        assert colour.shape == (384, 512, 3)
        assert np.abs(colour - rendered.rgb[i]).mean() < 3.0  # JPEG quality 95


def test_fused_cloud_lies_on_the_true_surfaces_and_confidence_removes_wrong_depth(rendered, captures, tmp_path):
    out = tmp_path / "fused"
    import_scan(captures["record3d"], str(out), voxel_size=VOXEL, progress=False)
    cloud = read_ply_vertices(str(out / "fused.ply"))
    dist = surface_distance(cloud["points"], rendered.scene.primitives)
    assert dist.max() <= VOXEL  # a voxel mean of surface points stays within one voxel of the surface
    # every object was seen and fused: some fused point within one voxel of each object's surface
    for p in rendered.scene.primitives:
        if p.instance >= 0:
            assert (surface_distance(cloud["points"], [p]) <= VOXEL).sum() > 20, p.label
    meta = json.loads((out / "scan.json").read_text())
    assert meta["depth_pixels"]["low_confidence"] == sum(int(w.sum()) for w in rendered.wrong)
    # without the threshold the wrong depth (50-80 % of the truth) lands in mid-air
    raw = tmp_path / "no_threshold"
    import_scan(captures["record3d"], str(raw), voxel_size=VOXEL, min_confidence=0, progress=False)
    dist0 = surface_distance(read_ply_vertices(str(raw / "no_threshold.ply"))["points"], rendered.scene.primitives)
    assert (dist0 > 0.1).sum() > 100


def test_frame_step_keeps_every_nth_source_frame(rendered, captures, tmp_path):
    out = tmp_path / "step"
    res = import_scan(captures["nerfstudio"], str(out), frame_step=3, voxel_size=0.1, progress=False)
    assert res.num_frames == 2  # frames 0 and 3 of 4
    scene = read_processed_scene(str(out))
    for k, frame in enumerate(scene.frames):
        assert np.allclose(frame.cam_to_world, rendered.poses[3 * k], atol=1e-6)
    meta = json.loads((out / "scan.json").read_text())
    assert [f["index"] for f in meta["source_frames"]] == [0, 1]
    assert meta["source_frames"][1]["name"] == "images/frame_00004.jpg"


def test_float_depth_in_metres_and_the_unit_override(rendered, captures, tmp_path):
    ns = tmp_path / "float"
    shutil.copytree(captures["nerfstudio"], ns)
    meta = json.loads((ns / "transforms.json").read_text())
    for i, fr in enumerate(meta["frames"]):  # 32-bit float TIFF in metres instead of the uint16 mm PNG
        Image.fromarray(rendered.depth[i].astype(np.float32), mode="F").save(ns / f"depth/{i}.tiff")
        fr["depth_file_path"] = f"depth/{i}.tiff"
    (ns / "transforms.json").write_text(json.dumps(meta))
    a = read_processed_scene(import_scan(str(ns), str(tmp_path / "a"), voxel_size=0.1, progress=False).out)
    b = read_processed_scene(import_scan(captures["nerfstudio"], str(tmp_path / "b"), voxel_size=0.1,
                                         progress=False).out)
    for fa, fb in zip(a.frames, b.frames):
        assert np.abs(fa.load_depth() - fb.load_depth()).max() <= 0.001 + 1e-6  # both millimetre-rounded
    # the same float file read as millimetres: depths of 1-5 m become 1-5 mm, every point sits at a camera
    c = import_scan(str(ns), str(tmp_path / "c"), voxel_size=0.001, depth_unit="mm", progress=False)
    pts = read_ply_vertices(os.path.join(c.out, "c.ply"))["points"]
    centres = np.array([p[:3, 3] for p in rendered.poses])
    assert np.linalg.norm(pts[:, None] - centres[None], axis=2).min(axis=1).max() < 0.01


def test_scannetpp_iphone_data_through_the_same_path(tmp_path):
    scene = generate_scene(name="pp_scene", seed=5, num_objects=3, num_frames=3)
    d = write_scannetpp_layout(scene, str(tmp_path / "pp"))
    out = tmp_path / "pp_out"
    import_scan(d, str(out), voxel_size=0.05, progress=False)
    meta = json.loads((out / "scan.json").read_text())
    assert meta["format"] == "scannetpp"
    assert not any(c["applied"] for c in meta["conversions"][:2])  # already OpenCV, z-up
    assert meta["depth_hw"] == [60, 80] and meta["color_hw"] == [120, 160]
    imported = read_processed_scene(str(out))
    for frame, pose in zip(imported.frames, scene.cam_to_world):
        assert np.allclose(frame.cam_to_world, pose, atol=1e-6)
    pts = read_ply_vertices(str(out / "pp_out.ply"))["points"]
    assert surface_distance(pts, scene.primitives).max() <= 0.05


def test_paths_with_spaces_and_non_ascii_names(captures, tmp_path):
    src = tmp_path / "mon scan é"
    shutil.copytree(captures["nerfstudio"], src)
    meta = json.loads((src / "transforms.json").read_text())
    for fr in meta["frames"]:
        for key in ("file_path", "depth_file_path", "confidence_path"):
            new = fr[key].replace("frame_", "Bild ü ")
            os.rename(src / fr[key], src / new)
            fr[key] = new
    (src / "transforms.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    r3d = tmp_path / "Aufnahme ö 1.r3d"
    shutil.copy(captures["record3d"], r3d)
    for s, o in ((src, "out ü 1"), (r3d, "out ü 2")):
        res = import_scan(str(s), str(tmp_path / "ziel ß" / o), voxel_size=0.1, progress=False)
        assert read_processed_scene(res.out).frames and os.path.isfile(os.path.join(res.out, f"{o}.ply"))


# ------------------------------------------------------------------------------------------ bad input
def _ns_copy(captures, tmp_path):
    d = tmp_path / "ns"
    shutil.copytree(captures["nerfstudio"], d)
    return d, json.loads((d / "transforms.json").read_text())


def _edit_ns(edit):
    def make(captures, tmp_path):
        d, meta = _ns_copy(captures, tmp_path)
        expect = edit(d, meta)
        (d / "transforms.json").write_text(json.dumps(meta))
        return str(d), expect
    return make


def _missing_depth(d, meta):
    os.remove(d / meta["frames"][2]["depth_file_path"])
    return "frame_00003.png", "depth file not found"


def _corrupt_depth(d, meta):
    (d / meta["frames"][1]["depth_file_path"]).write_bytes(b"not a png at all")
    return "frame_00002.png", "unreadable depth image"


def _depth_count_mismatch(d, meta):
    del meta["frames"][1]["depth_file_path"]
    return "transforms.json", "3 of 4 frames have 'depth_file_path'"


def _singular_pose(d, meta):
    meta["frames"][2]["transform_matrix"] = [[0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 0, 1]]
    return "transforms.json", "not invertible"


def _nan_pose(d, meta):
    meta["frames"][0]["transform_matrix"][1][2] = float("nan")
    return "transforms.json", "inf/nan"


def _unknown_camera(d, meta):
    meta["camera_model"] = "EQUIRECTANGULAR"
    return "transforms.json", "camera_model 'EQUIRECTANGULAR' is not supported"


def _distortion(d, meta):
    meta["k1"], meta["p2"] = -0.12, 0.001
    return "transforms.json", "non-zero lens distortion (k1=-0.12, p2=0.001)"


def _colour_size(d, meta):
    Image.new("RGB", (256, 192)).save(d / meta["frames"][1]["file_path"])
    return "frame_00002.jpg", "colour image is 256x192, the camera's intrinsics are for 512x384"


def _rewrite_r3d(edit):
    def make(captures, tmp_path):
        path = tmp_path / "bad.r3d"
        with zipfile.ZipFile(captures["record3d"]) as src, zipfile.ZipFile(path, "w") as dst:
            members = {n: src.read(n) for n in src.namelist()}
            expect = edit(members)
            for n, data in members.items():
                dst.writestr(n, data)
        return str(path), expect
    return make


def _r3d_conf_missing(m):
    del m["rgbd/3.conf"]
    return "bad.r3d", "frame count mismatch: 4 poses, 4 rgbd/*.jpg, 4 rgbd/*.depth, 3 rgbd/*.conf"


def _r3d_depth_corrupt(m):
    m["rgbd/1.depth"] = b"\x00" * 64
    return "bad.r3d:rgbd/1.depth", "LZFSE"


def _r3d_pose_zero(m):
    meta = json.loads(m["metadata"])
    meta["poses"][2][:4] = [0, 0, 0, 0]
    m["metadata"] = json.dumps(meta)
    return "bad.r3d:metadata", "pose 2 has a zero quaternion"


def _not_r3d_zip(m):
    m.clear()
    m["readme.txt"] = b"hello"
    return "bad.r3d", "not a Record3D .r3d export"


def _not_a_zip(captures, tmp_path):
    path = tmp_path / "broken.r3d"
    path.write_bytes(b"PK but not really a zip")
    return str(path), ("broken.r3d", "not a zip archive")


def _unknown_folder(captures, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    return str(tmp_path / "photos"), ("photos", "unknown scan format")


def _no_source(captures, tmp_path):
    return str(tmp_path / "nowhere.r3d"), ("nowhere.r3d", "scan source not found")


BAD_INPUTS = {
    "unknown format": _unknown_folder, "missing source": _no_source,
    "missing depth": _edit_ns(_missing_depth), "unreadable depth": _edit_ns(_corrupt_depth),
    "depth count mismatch": _edit_ns(_depth_count_mismatch), "singular pose": _edit_ns(_singular_pose),
    "nan pose": _edit_ns(_nan_pose), "unknown camera model": _edit_ns(_unknown_camera),
    "distortion": _edit_ns(_distortion), "colour size": _edit_ns(_colour_size),
    "r3d conf count mismatch": _rewrite_r3d(_r3d_conf_missing), "r3d corrupt depth": _rewrite_r3d(_r3d_depth_corrupt),
    "r3d zero quaternion": _rewrite_r3d(_r3d_pose_zero), "zip that is not an r3d": _rewrite_r3d(_not_r3d_zip),
    "not a zip": _not_a_zip,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_the_file_and_leaves_no_output(case, captures, tmp_path):
    src, (where, problem) = BAD_INPUTS[case](captures, tmp_path)
    out_parent = tmp_path / "out place"
    out_parent.mkdir()
    with pytest.raises(ScanInputError) as err:
        import_scan(src, str(out_parent / "scan"), voxel_size=0.1, progress=False)
    msg = str(err.value)
    assert where in msg and problem in msg, msg
    assert err.value.path.endswith(where) or where in err.value.path
    assert os.listdir(out_parent) == []  # neither OUT nor the temporary folder


def test_cli_import_and_one_line_error(captures, tmp_path, capsys):
    from opendas_encoder.cli import main

    out = tmp_path / "cli scan"
    assert main(["scan", "import", captures["record3d"], str(out), "--voxel-size", "0.1", "--quiet"]) == 0
    assert "4 frames" in capsys.readouterr().out
    assert (out / "sanity.png").is_file() and (out / "scan.json").is_file()
    assert main(["scan", "import", captures["record3d"], str(out), "--quiet"]) == 2  # exists
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "output exists" in err
    before = (out / "scan.json").stat().st_mtime_ns
    argv = ["scan", "import", captures["record3d"], str(out), "--voxel-size", "0.2", "--quiet", "--overwrite"]
    assert main(argv) == 0
    assert json.loads((out / "scan.json").read_text())["voxel_size"] == 0.2
    assert (out / "scan.json").stat().st_mtime_ns > before
    capsys.readouterr()
    # a depth unit for a format whose unit is fixed is a contradiction, refused before any work
    assert main(["scan", "import", captures["record3d"], str(tmp_path / "z"), "--depth-unit", "mm", "--quiet"]) == 2
    assert "applies to nerfstudio depth images only" in capsys.readouterr().err and not (tmp_path / "z").exists()
    bad = tmp_path / "x.r3d"
    bad.write_bytes(b"nope")
    assert main(["scan", "import", str(bad), str(tmp_path / "y"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "x.r3d: not a zip archive" in err and not (tmp_path / "y").exists()


def test_nerfstudio_masks_remove_depth_at_depth_resolution(rendered, captures, tmp_path):
    d, meta = _ns_copy(captures, tmp_path)
    os.makedirs(d / "masks")
    keep = np.zeros((384, 512), np.uint8)
    keep[:, 256:] = 255  # nerfstudio masks: 0 = ignore; given at colour resolution
    for i, fr in enumerate(meta["frames"]):
        Image.fromarray(keep).save(d / f"masks/{i}.png")
        fr["mask_path"] = f"masks/{i}.png"
    (d / "transforms.json").write_text(json.dumps(meta))
    res = import_scan(str(d), str(tmp_path / "masked"), voxel_size=0.1, progress=False)
    for i, frame in enumerate(read_processed_scene(res.out).frames):
        depth = frame.load_depth()
        assert (depth[:, :128] == 0).all()  # left half of the 256-wide depth map
        ok = rendered.confidence[i][:, 128:] >= 1
        assert np.abs(depth[:, 128:][ok] - rendered.depth_true[i][:, 128:][ok]).max() <= 0.0005 + 1e-6
    assert res.metadata["depth_pixels"]["masked"] > 0


def test_surface_distance_is_exact_for_boxes_and_cylinders():
    from opendas_encoder.generated.scene3d import Primitive

    box = Primitive("box", np.array([0.0, 0, 0]), np.array([2.0, 4, 6]), (0, 0, 0), "b")
    cyl = Primitive("cylinder", np.array([10.0, 0, 0]), np.array([2.0, 2, 4]), (0, 0, 0), "c")
    pts = np.array([[0, 0, 0], [4, 5, 0], [1, 2, 3], [10, 0, 0], [13, 4, 0], [10.5, 0, 3]], dtype=float)
    expect = [1.0, np.hypot(3, 3), 0.0, 1.0, np.hypot(3, 4) - 1, 1.0]  # centre to the nearest face, corner, ...
    assert np.allclose(surface_distance(pts, [box, cyl]), expect)


def test_imported_scan_gives_the_generators_own_ap_through_run_3d(tmp_path):
    """eval/scan_ap.py: the world CLIP classifies ground-truth masks of the imported (r3d) scene exactly as it
    does on the generator's own OpenMask3D layout (same predicted class per mask, same AP)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scan_ap", os.path.join(os.path.dirname(__file__), "..", "eval",
                                                                          "scan_ap.py"))
    scan_ap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scan_ap)
    out = tmp_path / "ap"
    assert scan_ap.main(["--out", str(out), "--num-scenes", "1", "--num-frames", "3", "--color-hw", "192", "256",
                         "--json", str(tmp_path / "ap.json")]) == 0
    res = json.loads((tmp_path / "ap.json").read_text())
    assert res["same_ap"] and res["class_agreement"][0] == res["class_agreement"][1] > 0
    assert res["rows"]["own"]["ap"] == pytest.approx(res["rows"]["imported"]["ap"])


def test_non_finite_depth_is_dropped_and_counted(rendered, captures, tmp_path):
    import lzfse

    depth = rendered.depth[0].copy()
    depth[:10] = np.nan  # Record3D marks missing LiDAR depth with NaN or 0
    depth[10:20] = np.inf

    def edit(members):
        members["rgbd/0.depth"] = lzfse.compress(depth.tobytes())
        return None

    path, _ = _rewrite_r3d(edit)(captures, tmp_path)
    res = import_scan(path, str(tmp_path / "nan"), voxel_size=0.1, progress=False)
    assert res.metadata["depth_pixels"]["nonfinite"] == 20 * 256
    written = read_processed_scene(res.out).frames[0].load_depth()
    assert (written[:20] == 0).all() and (written[20:][rendered.confidence[0][20:] >= 1] > 0).all()

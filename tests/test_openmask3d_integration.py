"""integrations/openmask3d: readers, Hydra override, clip shim, launcher (real OpenMask3D if present)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from integrations.openmask3d.clip_shim import OpenAIClipCallShape, make_clip_module
from integrations.openmask3d.launch import NumpyWithFeatureDim, ProjectedPointsPredictor, projected_points_mask
from integrations.openmask3d.override import OpenDASOverride, split_overrides
from integrations.openmask3d.readers import (ProcessedLayout, find_mask_proposals, read_mask_proposals,
                                             read_processed_scene, read_scannet_gt)
import opendas_encoder as oe
from opendas_encoder.generated.scene3d import generate_scene, write_openmask3d_layout

OPENMASK3D_ROOT = os.environ.get("OPENMASK3D_ROOT")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("om3d")
    scene = generate_scene(seed=5, num_objects=5, num_frames=3, height=60, width=80, spacing=0.05)
    return write_openmask3d_layout(scene, str(root)), scene


# ----------------------------------------------------------------------------------- readers
def test_read_processed_scene(scene_dir):
    d, scene = scene_dir
    s = read_processed_scene(d)
    assert s.name == scene.name and s.num_points == len(scene.points) and len(s.frames) == 3
    np.testing.assert_allclose(s.points, scene.points, atol=1e-6)
    np.testing.assert_allclose(s.frames[2].cam_to_world, scene.cam_to_world[2], atol=1e-7)
    np.testing.assert_allclose(s.frames[0].intrinsic, scene.intrinsic, atol=1e-6)
    depth = s.frames[0].load_depth()
    assert depth.dtype == np.float32 and 0.3 < depth.min() and depth.max() < 6.0
    assert len(read_processed_scene(d, ProcessedLayout(frame_step=2)).frames) == 2
    gt = read_scannet_gt(os.path.join(os.path.dirname(d), "gt", f"{scene.name}.txt"), s.num_points)
    np.testing.assert_array_equal(gt, scene.gt_ids)


def test_read_processed_scene_errors(scene_dir, tmp_path):
    d, scene = scene_dir
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_processed_scene(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no pose files"):
        read_processed_scene(d, ProcessedLayout(poses="missing"))
    bad = tmp_path / "bad"
    (bad / "pose").mkdir(parents=True)
    (bad / "intrinsic").mkdir()
    np.savetxt(bad / "intrinsic" / "intrinsic_color.txt", np.eye(4))
    (bad / "pose" / "0.txt").write_text("nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(ValueError, match=r"0\.txt.*inf/nan"):
        read_processed_scene(str(bad))
    np.savetxt(bad / "pose" / "0.txt", np.eye(4))
    with pytest.raises(FileNotFoundError, match=r"frame 0 has a pose but no image .*0\.jpg"):
        read_processed_scene(str(bad))


def test_mask_proposals_pt_and_npy(scene_dir, tmp_path):
    d, scene = scene_dir
    pt = find_mask_proposals(d)
    assert pt.endswith(f"{scene.name}_masks.pt")
    masks = read_mask_proposals(pt, len(scene.points))
    assert masks.dtype == bool and masks.shape == (len(scene.points), 5)
    np.save(tmp_path / "x_masks.npy", masks.astype(np.float32))
    np.testing.assert_array_equal(read_mask_proposals(str(tmp_path / "x_masks.npy")), masks)
    with pytest.raises(ValueError, match="transpose"):
        read_mask_proposals(str(tmp_path / "x_masks.npy"), 5)
    with pytest.raises(ValueError, match=r"has 3 points|have .* points, the scene has 3"):
        read_mask_proposals(str(tmp_path / "x_masks.npy"), 3)
    torch.save({"masks": torch.zeros(3, 2)}, tmp_path / "d_masks.pt")
    with pytest.raises(ValueError, match=r"d_masks\.pt: expected a tensor"):
        read_mask_proposals(str(tmp_path / "d_masks.pt"))
    (tmp_path / "evil_masks.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="evil_masks.pt"):
        read_mask_proposals(str(tmp_path / "evil_masks.pt"))
    with pytest.raises(FileNotFoundError, match="use --proposals gt"):
        find_mask_proposals(str(tmp_path / "scene_x"))


# ----------------------------------------------------------------------------------- override and shim
def test_split_overrides():
    ov, hydra = split_overrides(["external.clip_backend=opendas", "external.opendas_checkpoint=/c",
                                 "data.masks.masks_path=/m.pt", "+external.sam_backend=none"])
    assert ov == OpenDASOverride(clip_backend="opendas", opendas_checkpoint="/c", sam_backend="none")
    assert hydra == ["+external.clip_backend=opendas", "+external.opendas_checkpoint=/c",
                     "data.masks.masks_path=/m.pt", "+external.sam_backend=none"]
    assert OpenDASOverride().base_model("ViT-L/14@336px") == ("ViT-L-14-336", "openai")
    assert OpenDASOverride(opendas_model="tiny", opendas_pretrained="none").base_model("ViT-L/14") == ("tiny", None)
    with pytest.raises(ValueError, match="clip_backend"):
        split_overrides(["external.clip_backend=openai"])


class _Enc(torch.nn.Module):
    embed_dim = 3
    image_size = (4, 4)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(48, 3)

    def preprocess(self, img):
        return torch.zeros(3, 4, 4)

    def encode_image(self, x, normalize=False):
        return self.w(x.flatten(1))

    @staticmethod
    def tokenizer(texts):
        return torch.tensor([[len(t)] for t in texts])

    def encode_text(self, text, normalize=False):
        return torch.ones(len(text), 3)


def test_clip_shim_call_shape():
    enc = _Enc()
    clip = make_clip_module(lambda name, device: enc)
    with pytest.raises(RuntimeError, match="before clip.load"):
        clip.tokenize(["a"])
    model, preprocess = clip.load("ViT-L/14@336px", "cpu")
    assert isinstance(model, OpenAIClipCallShape) and preprocess == enc.preprocess
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(model.encode_image(x), enc.encode_image(x))
    assert model.embed_dim == 3 and model.visual.input_resolution == 4
    assert clip.tokenize("abc").tolist() == [[3]]


def test_numpy_feature_dim_and_projected_points_mask():
    proxy = NumpyWithFeatureDim(32)
    assert proxy.zeros((4, 768)).shape == (4, 32)
    assert proxy.zeros((4, 7)).shape == (4, 7) and proxy.zeros((2, 768, 3)).shape == (2, 768, 3)
    assert proxy.stack is np.stack
    pred = ProjectedPointsPredictor()
    pred.set_image(np.zeros((5, 6, 3), np.uint8))
    m = projected_points_mask(None, 10, 5, np.array([[1, 2], [4, 5]]), pred)
    assert m.shape == (5, 6) and m.sum() == 2 and m[1, 2] and m[4, 5]


# ----------------------------------------------------------------------------------- real OpenMask3D
def _skip_or_fail(reason):
    """Skip, or fail where the integrations must run (CI sets OPENDAS_REQUIRE_INTEGRATIONS=1)."""
    if os.environ.get("OPENDAS_REQUIRE_INTEGRATIONS"):
        pytest.fail(f"{reason} (OPENDAS_REQUIRE_INTEGRATIONS is set)")
    pytest.skip(reason)


def _needs_openmask3d():
    if not OPENMASK3D_ROOT or not os.path.isdir(os.path.join(OPENMASK3D_ROOT, "openmask3d")):
        _skip_or_fail("set OPENMASK3D_ROOT to an OpenMask3D checkout (git clone OpenMask3D/openmask3d) to run")
    for mod, pkg in (("hydra", "hydra-core"), ("omegaconf", "omegaconf"), ("open3d", "open3d"), ("imageio", "imageio")):
        if importlib.util.find_spec(mod) is None:
            _skip_or_fail(f"OpenMask3D's feature step needs `pip install {pkg}` (extra: opendas_encoder[openmask3d])")


def test_openmask3d_feature_step_with_override(scene_dir, tmp_path, repo_root):
    """OpenMask3D's compute_features_single_scene.py with external.clip_backend=opendas on the generated
    scene, its proposals in Mask3D's own file format (OpenMask3D's bare torch.load refuses them under
    torch >= 2.6 unless the launcher allows NumPy's array globals) and a base model open_clip does not
    know (--opendas-model-config): the feature width follows the encoder (32, not 768) and the
    features equal ours."""
    _needs_openmask3d()
    import json

    import open_clip

    import opendas_encoder as oe
    from conftest import save_weights

    from opendas_encoder.threed import MaskFeatureConfig, compute_mask_features

    d, scene = scene_dir
    cfg_path = tmp_path / "opendas-tiny-om3d-test.json"  # a name open_clip has not seen in the launcher process
    cfg_path.write_text(json.dumps(json.loads(open(os.path.join(repo_root, "opendas_encoder", "model_configs",
                                                                 "opendas-tiny-vit.json")).read())))
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(0)
    base = oe.create_model("opendas-tiny-om3d-test", None)
    save_weights(base.clip, tmp_path / "base.safetensors")
    enc = oe.create_model("opendas-tiny-om3d-test", str(tmp_path / "base.safetensors"))
    with torch.no_grad():
        for p in enc.prompt_parameters():
            p.normal_(0, 0.5)
    oe.save_checkpoint(enc, str(tmp_path / "ckpt"))
    masks = read_mask_proposals(f"{d}/{scene.name}_masks.pt")
    mask3d = tmp_path / "mask3d" / f"{scene.name}_masks.pt"
    mask3d.parent.mkdir()
    _write_like_mask3d(masks.astype(np.float64), mask3d)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "integrations.openmask3d.launch", "--openmask3d-root", OPENMASK3D_ROOT,
            "--opendas-model-config", str(cfg_path),
            "external.clip_backend=opendas", f"external.opendas_checkpoint={tmp_path / 'ckpt'}",
            "external.sam_backend=none",
            f"data.masks.masks_path={mask3d}", f"data.camera.poses_path={d}/pose",
            f"data.camera.intrinsic_path={d}/intrinsic/intrinsic_color.txt",
            "data.camera.intrinsic_resolution=[60,80]", f"data.depths.depths_path={d}/depth",
            f"data.images.images_path={d}/color", f"data.point_cloud_path={d}/{scene.name}.ply",
            f"output.output_directory={out}", "openmask3d.frequency=1"]
    env = dict(os.environ, PYTHONPATH=repo_root, OMP_NUM_THREADS="1")
    r = subprocess.run(args, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    theirs = np.load(out / f"{scene.name}_openmask3d_features.npy")
    assert theirs.shape == (5, 32)
    ours = compute_mask_features(read_processed_scene(d), masks, oe.load_encoder(str(tmp_path / "ckpt")),
                                 MaskFeatureConfig(pixel_rounding="trunc"))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def _load_run_3d(repo_root):
    spec = importlib.util.spec_from_file_location("run_3d", os.path.join(repo_root, "eval", "run_3d.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_3d"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_run_3d_reads_openmask3d_outputs(tmp_path, repo_root):
    """eval/run_3d.py on OpenMask3D's own feature files (the launcher run once with the zero-prompt base
    model, the CLIP column, and once with the checkpoint, the OpenDAS column) gives the same table as
    run_3d computing the features itself with OpenMask3D's pixel rounding on the same proposal files."""
    _needs_openmask3d()
    from integrations.openmask3d.fixture import generate_fixture

    fx = generate_fixture(str(tmp_path / "fx"), num_scenes=1)
    scene_dir = os.path.join(fx["openmask3d"], fx["scenes"][0])
    env = dict(os.environ, PYTHONPATH=repo_root, OMP_NUM_THREADS="1")
    runs = {"clip": [f"external.opendas_model={fx['model_name']}", f"external.opendas_pretrained={fx['base_weights']}"],
            "opendas": [f"external.opendas_checkpoint={fx['opendas_checkpoint']}"]}
    for name, extra in runs.items():
        cmd = [sys.executable, "-m", "integrations.openmask3d.launch", "--openmask3d-root", OPENMASK3D_ROOT,
               "--scene", scene_dir, "external.clip_backend=opendas", *extra, "external.sam_backend=none",
               "openmask3d.frequency=1", f"output.output_directory={tmp_path / 'features' / name}"]
        r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_3d = _load_run_3d(repo_root)
    common = ["--data-root", fx["openmask3d"], "--checkpoint", fx["opendas_checkpoint"], "--proposals", "files"]
    assert run_3d.main(common + ["--openmask3d-features", str(tmp_path / "features" / "clip"),
                                 "--opendas-features", str(tmp_path / "features" / "opendas"),
                                 "--out", str(tmp_path / "a"), "--json", str(tmp_path / "a.json")]) == 0
    assert run_3d.main(common + ["--openmask3d-rounding", "--out", str(tmp_path / "b"),
                                 "--json", str(tmp_path / "b.json")]) == 0
    import json

    a = json.loads((tmp_path / "a.json").read_text())["results"]
    b = json.loads((tmp_path / "b.json").read_text())["results"]
    for name in ("clip", "opendas"):
        assert a[name]["features"].startswith("OpenMask3D feature files") and b[name]["features"] == "computed here"
        assert a[name]["per_class"] == b[name]["per_class"], name


# ----------------------------------------------------------------------------------- shim with real encoders
def _randomise_trainable(encoder, seed=0):
    """Visibly non-zero learned tensors (prompts / context / fine-tuned weights), as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return encoder


@pytest.mark.parametrize("method", oe.method_names())
def test_clip_shim_text_features_equal_the_encoders(method):
    """Issue 13.1: OpenMask3D's ``clip.tokenize`` + ``model.encode_text`` through the shim gives exactly
    the encoder's own text features for bare class names (the learned context inserted once), for
    OpenDAS and every baseline, with a real encoder (not a stand-in that ignores its input)."""
    torch.manual_seed(0)
    encoder = _randomise_trainable(oe.create_encoder(method, "opendas-tiny-vit", None)).eval()
    clip = make_clip_module(lambda name, device: encoder)
    model, _ = clip.load("ViT-L/14@336px", "cpu")
    names = ["red circle", "chair", "door frame"]
    with torch.no_grad():
        want = encoder.encode_text(names)
        got = model.encode_text(clip.tokenize(names))
        single = model.encode_text(clip.tokenize(names[0]))  # OpenAI's tokenize also takes one string
        want_single = encoder.encode_text(names[:1])
    assert (got - want).abs().max().item() <= 1e-6
    assert (single - want_single).abs().max().item() <= 1e-6
    assert torch.equal(clip.tokenize(names), encoder.tokenizer(names))  # the contract: plain tokenizer output


# ----------------------------------------------------------------------------------- Mask3D's proposal files
def _write_like_mask3d(pred_masks: np.ndarray, path) -> None:
    """Exactly OpenMask3D's class_agnostic_mask_computation/trainer/trainer.py (3bc3fc5, line 723):
    ``torch.save(self.preds[...]['pred_masks'].astype(np.float16), <save dir>/<ply stem>_masks.pt)``."""
    torch.save(pred_masks.astype(np.float16), str(path))


def _rename_pickle_global(path, old: bytes, new: bytes) -> None:
    """Rewrite a global's module name inside a torch zip file (a file pickled under NumPy 1.x)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            z.writestr(info, data.replace(old, new) if info.filename.endswith("data.pkl") else data)


def test_mask3d_proposal_file_is_read_without_unpickling_code(tmp_path):
    """Issue 13.8: Mask3D's pickled float16 ndarray is read with torch's weights_only loader."""
    rng = np.random.default_rng(0)
    pred = (rng.random((50, 4)) > 0.6).astype(np.float64)  # Mask3D's pred_masks: (num_points, num_masks)
    path = tmp_path / "mesh_aligned_0.05_masks.pt"
    _write_like_mask3d(pred, path)
    got = read_mask_proposals(str(path), 50)
    assert got.dtype == bool and got.shape == (50, 4)
    np.testing.assert_array_equal(got, pred > 0)
    # the same file as OpenMask3D's own (NumPy 1.x) environment pickles it
    old = tmp_path / "old_masks.pt"
    _write_like_mask3d(pred, old)
    _rename_pickle_global(old, b"numpy._core.multiarray", b"numpy.core.multiarray")
    with open(old, "rb") as f:
        assert b"numpy.core.multiarray" in f.read()
    np.testing.assert_array_equal(read_mask_proposals(str(old), 50), pred > 0)


class _SideEffect:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # unpickling this would create a file


def test_proposal_file_with_other_globals_is_refused(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil2_masks.pt"
    torch.save({"masks": _SideEffect(str(marker))}, str(path))
    with pytest.raises(ValueError, match=r"evil2_masks\.pt.*weights_only"):
        read_mask_proposals(str(path))
    assert not marker.exists()
    torch.save({"masks": np.zeros((3, 2), np.float16)}, str(tmp_path / "dict_masks.pt"))
    with pytest.raises(ValueError, match=r"dict_masks\.pt: expected a tensor or NumPy array"):
        read_mask_proposals(str(tmp_path / "dict_masks.pt"))


def test_per_scene_mask3d_folders_are_found(tmp_path):
    """ScanNet++: every scene's PLY is mesh_aligned_0.05.ply, so Mask3D names every file
    mesh_aligned_0.05_masks.pt; with one mask_save_dir per scene (as the README's command does) each
    scene finds its own file."""
    masks_dir = tmp_path / "masks"
    for i, scene in enumerate(["0a5c013435", "1ada7a0617"]):
        (masks_dir / scene).mkdir(parents=True)
        _write_like_mask3d(np.eye(6, 2 + i), masks_dir / scene / "mesh_aligned_0.05_masks.pt")
    for i, scene in enumerate(["0a5c013435", "1ada7a0617"]):
        path = find_mask_proposals(str(tmp_path / "data" / scene), str(masks_dir))
        assert path == str(masks_dir / scene / "mesh_aligned_0.05_masks.pt")
        assert read_mask_proposals(path, 6).shape == (6, 2 + i)
    flat = tmp_path / "flat"  # the ScanNet layout: <scene>_vh_clean_2_masks.pt side by side
    flat.mkdir()
    _write_like_mask3d(np.eye(5, 3), flat / "scene0011_00_vh_clean_2_masks.pt")
    assert find_mask_proposals(str(tmp_path / "scene0011_00"), str(flat)).endswith("scene0011_00_vh_clean_2_masks.pt")
    _write_like_mask3d(np.eye(6, 2), masks_dir / "0a5c013435" / "other_masks.pt")
    with pytest.raises(ValueError, match="2 mask proposal files"):
        find_mask_proposals(str(tmp_path / "data" / "0a5c013435"), str(masks_dir))
    with pytest.raises(FileNotFoundError, match="nope"):
        find_mask_proposals(str(tmp_path / "data" / "nope"), str(masks_dir))

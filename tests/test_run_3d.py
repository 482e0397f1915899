"""eval/run_3d.py end to end on generated scenes (tiny encoders), resume, and an oracle-encoder AP check."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from opendas_encoder.generated.scene3d import scene_colours

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_run_3d():
    spec = importlib.util.spec_from_file_location("run_3d", os.path.join(ROOT, "eval", "run_3d.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_3d"] = module          # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


run_3d = _load_run_3d()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import opendas_encoder as oe

    from conftest import save_weights

    torch.manual_seed(0)
    d = str(tmp_path_factory.mktemp("ckpt"))
    weights = os.path.join(d, "..", "base.safetensors")  # a base the checkpoint can name (a random one is refused)
    save_weights(oe.create_model("opendas-tiny-vit", None).clip, weights)
    oe.save_checkpoint(oe.create_model("opendas-tiny-vit", os.path.abspath(weights)), d)
    return d


def test_end_to_end_clip_and_opendas_with_resume(tmp_path, tiny_checkpoint, monkeypatch):
    out = tmp_path / "res"
    argv = ["--generate", str(tmp_path / "gen"), "--num-scenes", "1", "--checkpoint", tiny_checkpoint,
            "--out", str(out), "--json", str(tmp_path / "r.json")]
    assert run_3d.main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["results"]) == {"clip", "opendas"}
    assert report["scenes"] == ["generated_office_00"] and report["proposals"] == "gt"
    n_classes = len(report["classes"])
    assert len(report["base"]) == n_classes // 2 and len(report["novel"]) == n_classes - n_classes // 2
    for r in report["results"].values():
        for k in ("ap", "ap50", "ap25"):
            assert 0.0 <= r[k] <= 100.0
        assert set(r["per_class"]) == set(report["classes"])
        assert {"ap", "ap50", "ap25"} <= set(r["base"]) and r["seconds_per_mask"] > 0
    saved = np.load(out / "opendas" / "generated_office_00.npz")
    assert saved["features"].shape[1] == 32 and saved["classes"].min() >= 1

    # a rerun reads the per-scene results instead of recomputing them
    def boom(*a, **k):
        raise AssertionError("recomputed a cached scene")

    monkeypatch.setattr(run_3d, "compute_mask_features", boom)
    argv_rerun = ["--scenes", str(tmp_path / "gen"), "--checkpoint", tiny_checkpoint, "--out", str(out)]
    assert run_3d.main(argv_rerun) == 0
    # ... but a changed setting invalidates the cache
    with pytest.raises(AssertionError, match="recomputed"):
        run_3d.main(argv_rerun + ["--top-k", "2"])


class ColourOracle(torch.nn.Module):
    """Image: histogram of the scene palette over saturated pixels; text: one-hot of the colour word."""

    def __init__(self):
        super().__init__()
        self.palette = scene_colours()
        self.names = list(self.palette)
        self.embed_dim = len(self.names)
        p = np.array([self.palette[n] for n in self.names], dtype=np.float32)
        self.register_buffer("chroma", torch.from_numpy(p / p.max(axis=1, keepdims=True)))

    @staticmethod
    def preprocess(img):
        return torch.from_numpy(np.asarray(img.convert("RGB").resize((24, 24), Image.NEAREST), np.float32)).permute(2, 0, 1)

    def encode_image(self, x, normalize=False):
        px = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 3)
        mx = px.max(dim=-1, keepdim=True).values.clamp(min=1)
        saturated = ((mx - px.min(dim=-1, keepdim=True).values) / mx)[..., 0] > 0.35
        nearest = torch.cdist(px / mx, self.chroma[None].expand(x.shape[0], -1, -1)).argmin(dim=-1)
        onehot = torch.nn.functional.one_hot(nearest, self.embed_dim).float() * saturated[..., None]
        return onehot.sum(dim=1) + 1e-3

    def encode_text(self, names, normalize=False):
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(self.names.index(n.split()[0])),
                                                        self.embed_dim).float() for n in names])


@pytest.mark.parametrize("layout", ["openmask3d", "scannetpp"])
def test_oracle_encoder_gives_the_expected_ap(tmp_path, monkeypatch, layout):
    """With ground-truth proposals and an encoder that sees colour but not shape, every mask is
    classified as "<its colour> box" (the first class of each colour): a box class whose colour has no
    cylinder is perfect (AP 100), every cylinder class gets AP 0 - exact values fixed by the protocol."""
    oracle = ColourOracle()
    monkeypatch.setattr(run_3d, "build_encoders", lambda args, device: {"clip": (oracle, None, "oracle")})
    gen = tmp_path / "gen"
    assert run_3d.main(["--generate", str(gen), "--num-scenes", "2", "--out", str(tmp_path / "a"),
                        "--json", str(tmp_path / "a.json")]) == 0
    if layout == "scannetpp":
        assert run_3d.main(["--data-root", str(gen / "scannetpp"), "--scenes", "generated_office_00",
                            "generated_office_01", "--proposals", "gt", "--out", str(tmp_path / "b"),
                            "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / ("a.json" if layout == "openmask3d" else "b.json")).read_text())
    result = report["results"]["clip"]["per_class"]
    gt_classes = set()
    for scene in ("generated_office_00", "generated_office_01"):
        gt = np.loadtxt(gen / "openmask3d" / "gt" / f"{scene}.txt", dtype=np.int64)
        gt_classes |= {report["classes"][i // 1000 - 1] for i in np.unique(gt[gt > 0])}
    checked = 0
    for cls in sorted(gt_classes):
        colour, shape = cls.split()
        if shape == "cylinder":
            assert result[cls]["ap50"] == 0.0, cls
            checked += 1
        elif f"{colour} cylinder" not in gt_classes:
            assert result[cls]["ap50"] == pytest.approx(100.0), cls
            assert result[cls]["ap"] == pytest.approx(100.0), cls
            checked += 1
    assert checked >= 4
    for cls in set(report["classes"]) - gt_classes:
        assert np.isnan(result[cls]["ap"])          # no ground truth: left out, as ScanNet does


def test_without_checkpoint_it_says_how_to_get_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_3d.main(["--generate", str(tmp_path / "gen"), "--num-scenes", "1", "--model", "opendas-tiny-vit",
                     "--pretrained", "none", "--out", str(tmp_path / "res")])
    msg = str(exc.value)
    assert "--checkpoint" in msg and "opendas train" in msg and "integrations.openmask3d.fixture" in msg
    assert "--clip-only" in msg
    assert run_3d.main(["--scenes", str(tmp_path / "gen"), "--model", "opendas-tiny-vit", "--pretrained", "none",
                        "--clip-only", "--out", str(tmp_path / "res"), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["results"]) == {"clip"} and report["generated"] is True
    assert "GENERATED data" in capsys.readouterr().out


class NameOracle(torch.nn.Module):
    """Text: one-hot of the class name's index (templates allowed); images are never encoded here."""

    def __init__(self, names):
        super().__init__()
        self.names = list(names)
        self.embed_dim = len(self.names)

    def encode_text(self, texts, normalize=False):
        idx = [next(i for i, n in enumerate(self.names) if t == n or t == f"a {n} in a scene") for t in texts]
        return torch.nn.functional.one_hot(torch.tensor(idx), self.embed_dim).float()


def test_reads_openmask3d_feature_files(tmp_path, monkeypatch, capsys):
    """The CLIP and OpenDAS columns from OpenMask3D's *_openmask3d_features.npy on the proposal files:
    features that point at each mask's ground-truth class give AP 100; a mask whose feature row is all
    zero (no view saw it, as OpenMask3D leaves it) is classified as class 0 and counted."""
    from opendas_encoder.generated.openmask3d import generate_openmask3d_fixture

    fx = generate_openmask3d_fixture(str(tmp_path / "fx"), num_scenes=1, num_frames=2, height=40, width=56)
    names = json.loads((tmp_path / "fx" / "classes.json").read_text())["class_names"]
    oracle = NameOracle(names)
    monkeypatch.setattr(run_3d, "build_encoders", lambda args, device: {
        "clip": (oracle, run_3d.OPENMASK3D_TEMPLATE, "o1"), "opendas": (oracle, None, "o2")})
    scene = fx["scenes"][0]
    gt = np.loadtxt(os.path.join(fx["openmask3d"], "gt", f"{scene}.txt"), dtype=np.int64)
    inst = np.unique(gt[gt > 0])
    perfect = np.eye(len(names), dtype=np.float32)[inst // 1000 - 1]  # (num_masks, C): the right class
    (tmp_path / "clip").mkdir()
    (tmp_path / "opendas" / scene).mkdir(parents=True)  # one OpenMask3D output folder per scene also works
    np.save(tmp_path / "clip" / f"{scene}_openmask3d_features.npy", perfect)
    zeroed = perfect.copy()
    zeroed[0] = 0
    np.save(tmp_path / "opendas" / scene / f"{scene}_openmask3d_features.npy", zeroed)
    monkeypatch.setattr(run_3d, "compute_mask_features", lambda *a, **k: pytest.fail("features were recomputed"))
    argv = ["--data-root", fx["openmask3d"], "--proposals", "files", "--checkpoint", "unused",
            "--openmask3d-features", str(tmp_path / "clip"), "--opendas-features", str(tmp_path / "opendas"),
            "--out", str(tmp_path / "res"), "--json", str(tmp_path / "r.json")]
    assert run_3d.main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["scenes"] == [scene] and report["generated"] is True
    clip, opendas = report["results"]["clip"], report["results"]["opendas"]
    present = {names[i // 1000 - 1] for i in inst}
    for cls in present:
        assert clip["per_class"][cls]["ap"] == pytest.approx(100.0)
    assert clip["masks_without_features"] == 0 and opendas["masks_without_features"] == 1
    first = names[inst[0] // 1000 - 1]
    assert opendas["per_class"][first]["ap50"] < 100.0 or first == names[0]
    out = capsys.readouterr().out
    assert "1 mask(s) with all-zero features" in out and "OpenMask3D feature files" in out
    # a feature file made for other proposals is refused, naming the file
    np.save(tmp_path / "clip" / f"{scene}_openmask3d_features.npy", perfect[:-1])
    with pytest.raises(ValueError, match=f"{scene}_openmask3d_features.npy: .* rows"):
        run_3d.main(argv)
    with pytest.raises(SystemExit, match="--proposals files"):
        run_3d.main(argv[:2] + ["--proposals", "gt"] + argv[4:])


def test_scannetpp_per_scene_mask3d_files_equal_gt_proposals(tmp_path, monkeypatch):
    """ScanNet++ layout, Mask3D files in one folder per scene (all named mesh_aligned_0.05_masks.pt):
    --proposals files reads each scene's own file, so the result equals --proposals gt (same masks)."""
    from opendas_encoder.generated.openmask3d import generate_openmask3d_fixture

    fx = generate_openmask3d_fixture(str(tmp_path / "fx"), num_scenes=2, num_frames=3, height=48, width=64)
    oracle = ColourOracle()
    monkeypatch.setattr(run_3d, "build_encoders", lambda args, device: {"clip": (oracle, None, "oracle")})
    common = ["--data-root", fx["scannetpp"], "--scenes", *fx["scenes"]]
    assert run_3d.main(common + ["--proposals", "files", "--masks-dir", fx["scannetpp_masks"],
                                 "--out", str(tmp_path / "a"), "--json", str(tmp_path / "a.json")]) == 0
    assert run_3d.main(common + ["--proposals", "gt", "--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())["results"]["clip"]
    b = json.loads((tmp_path / "b.json").read_text())["results"]["clip"]
    assert a["ap"] == b["ap"] and a["per_class"] == b["per_class"]

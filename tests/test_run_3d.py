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

    torch.manual_seed(0)
    enc = oe.create_model("opendas-tiny-vit", None)
    d = str(tmp_path_factory.mktemp("ckpt"))
    oe.save_checkpoint(enc, d)
    return d


def test_end_to_end_clip_and_opendas_with_resume(tmp_path, tiny_checkpoint, monkeypatch):
    out = tmp_path / "res"
    argv = ["--generate", str(tmp_path / "gen"), "--num-scenes", "1", "--checkpoint", tiny_checkpoint,
            "--pretrained", "none", "--out", str(out), "--json", str(tmp_path / "r.json")]
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
    argv_rerun = ["--scenes", str(tmp_path / "gen"), "--checkpoint", tiny_checkpoint, "--pretrained", "none",
                  "--out", str(out)]
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

"""eval/run_2d.py: the pure-torch 2D path on generated ADE20K-layout data (no Detectron2)."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from eval import run_2d
from integrations.ovseg.adapter import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, RegionClassifier
from opendas_encoder.generated.ovseg import ade20k_class_names, write_ade_image

NAMES = ade20k_class_names()


class ColourEncoder(nn.Module):
    """Image feature = mean normalised colour of the region; text feature = a colour per class."""

    embed_dim = 3
    image_size = (8, 8)

    def __init__(self, class_colours):
        super().__init__()
        mean = torch.tensor(CLIP_PIXEL_MEAN)
        std = torch.tensor(CLIP_PIXEL_STD)
        self.vectors = {n: (torch.tensor(c, dtype=torch.float32) / 255 - mean) / std for n, c in class_colours.items()}
        self.other = torch.ones(3)  # every other class points away from pure red / green / blue

    def encode_image(self, x, normalize=False):
        return x.mean(dim=(2, 3))

    def encode_text(self, names, normalize=False):
        return torch.stack([self.vectors.get(n, self.other) for n in names])


RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def _two_image_case(root):
    """Image 1: label 1 red | label 2 green, top row ignored. Image 2: label 2 green over label 3
    painted blue, and blue is the colour of label 4, so label 3 is predicted as label 4."""
    img1 = np.zeros((16, 16, 3), np.uint8)
    lab1 = np.zeros((16, 16), np.uint8)
    img1[:, :8], img1[:, 8:] = RED, GREEN
    lab1[1:, :8], lab1[1:, 8:] = 1, 2
    img2 = np.zeros((16, 16, 3), np.uint8)
    lab2 = np.zeros((16, 16), np.uint8)
    img2[:8], img2[8:] = GREEN, BLUE
    lab2[:8], lab2[8:] = 2, 3
    write_ade_image(root, "ADE_val_00000001", img1, lab1)
    write_ade_image(root, "ADE_val_00000002", img2, lab2)
    prop = os.path.join(root, "proposals")
    os.makedirs(prop)
    np.savez(os.path.join(prop, "ADE_val_00000001.npz"), masks=np.stack([lab1 == 1, lab1 == 2]))
    np.savez(os.path.join(prop, "ADE_val_00000002.npz"), masks=np.stack([lab2 == 2, lab2 == 3]))
    return prop


def test_hand_computed_two_image_case(tmp_path):
    prop = _two_image_case(str(tmp_path))
    colours = {NAMES[0]: RED, NAMES[1]: GREEN, NAMES[2]: YELLOW, NAMES[3]: BLUE}
    clf = {"colour": RegionClassifier(ColourEncoder(colours))}
    samples = run_2d.ade_validation(str(tmp_path))
    assert [s.stem for s in samples] == ["ADE_val_00000001", "ADE_val_00000002"]
    conf = run_2d.evaluate_with_proposals(samples, NAMES, clf, prop)["colour"]
    # rows = ground truth: label 1 -> 120 px correct; label 2 -> 120 + 128 correct; label 3 -> 128 as label 4
    assert conf.confusion[0, 0] == 120 and conf.confusion[1, 1] == 248 and conf.confusion[2, 3] == 128
    assert conf.confusion.sum() == 496
    split = (NAMES[:2], NAMES[2:4])
    s = run_2d.summarize({"colour": conf}, NAMES, split)["colour"]
    assert s["miou"] == pytest.approx(100 * 2 / 3)  # (1 + 1 + 0) / 3 classes with ground truth
    assert s["macc"] == pytest.approx(100 * 2 / 3)
    assert s["miou_legacy"] == pytest.approx(50.0)  # v0.6 rule also counts predicted label 4 (IoU 0)
    assert s["pacc"] == pytest.approx(100 * 368 / 496)
    assert s["base_miou"] == pytest.approx(100.0) and s["novel_miou"] == pytest.approx(0.0)
    # the ground-truth masks as proposals give the same result here
    gt = run_2d.evaluate_with_proposals(samples, NAMES, clf, None)["colour"]
    np.testing.assert_array_equal(gt.confusion, conf.confusion)


def test_generated_fixture_end_to_end(tmp_path, capsys):
    root = str(tmp_path / "fx")
    run_2d.main(["--generate-fixture", root, "--fixture-images", "2"])
    base = os.path.join(root, "ADEChallengeData2016")
    for sub in ("images", "annotations", "annotations_detectron2"):
        assert len(os.listdir(os.path.join(base, sub, "validation"))) == 2
    from PIL import Image

    ann = np.asarray(Image.open(os.path.join(base, "annotations", "validation", "ADE_val_00000001.png")))
    d2 = np.asarray(Image.open(os.path.join(base, "annotations_detectron2", "validation", "ADE_val_00000001.png")))
    assert ann.min() == 0 and 1 <= ann[ann > 0].min() and ann.max() <= 150
    np.testing.assert_array_equal(d2[ann == 0], 255)
    np.testing.assert_array_equal(d2[ann > 0], ann[ann > 0] - 1)
    out_json = str(tmp_path / "res.json")
    enc = os.path.join(root, "encoder")
    summary = run_2d.main(["--ade-root", root, "--proposals", os.path.join(root, "proposals", "validation"),
                           "--opendas-checkpoint", os.path.join(enc, "opendas"),
                           "--model-config", os.path.join(enc, "model_configs"),
                           "--vocab-split", os.path.join(root, "vocab_split.json"), "--json-out", out_json])
    printed = capsys.readouterr().out
    assert "| OVSeg (original CLIP) |" in printed and "| OVSeg + OpenDAS |" in printed
    assert "| difference |" in printed and "base mIoU" in printed and "novel mIoU" in printed
    assert set(summary) == {run_2d.BASELINE, run_2d.ADAPTED}
    with open(out_json) as f:
        saved = json.load(f)
    assert saved["images"] == 2
    for row in saved["results"].values():
        assert 0.0 <= row["miou"] <= 100.0 and 0.0 <= row["macc"] <= 100.0
        assert len(row["per_class_iou"]) == 150
    # the two encoders differ (learned prompts), so their class scores differ
    b, a = run_2d.build_classifiers(os.path.join(enc, "opendas"), ["a photo of a {}."],
                                    run_2d.RegionConfig()).values()
    assert not torch.allclose(b.class_text_features(NAMES[:3]), a.class_text_features(NAMES[:3]))


def test_bad_inputs_name_the_file(tmp_path):
    prop = _two_image_case(str(tmp_path))
    samples = run_2d.ade_validation(str(tmp_path))
    clf = {"c": RegionClassifier(ColourEncoder({}))}
    os.remove(os.path.join(prop, "ADE_val_00000002.npz"))
    with pytest.raises(FileNotFoundError, match="ADE_val_00000002.npz"):
        run_2d.evaluate_with_proposals(samples, NAMES, clf, prop)
    ann = os.path.join(str(tmp_path), "ADEChallengeData2016", "annotations", "validation", "ADE_val_00000001.png")
    os.remove(ann)
    with pytest.raises(FileNotFoundError, match="ADE_val_00000001.png"):
        run_2d.ade_validation(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_2d.ade_validation(str(tmp_path / "nowhere"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"base": ["wall"], "novel": ["unicorn"]}))
    with pytest.raises(ValueError, match="split.json"):
        run_2d.read_vocab_split(str(split), NAMES)
    bad_label = tmp_path / "bad.png"
    from PIL import Image

    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(bad_label)
    with pytest.raises(ValueError, match="bad.png"):
        run_2d.read_ade_gt(str(bad_label))


def test_table_format():
    table = run_2d.format_table({"a": {"miou": 10.0, "macc": 20.0, "miou_legacy": 9.0, "pacc": 50.0},
                                 "b": {"miou": 12.5, "macc": float("nan"), "miou_legacy": 9.5, "pacc": 55.0}})
    lines = table.strip().splitlines()
    assert lines[2] == "| a | 10.0 | 20.0 | 9.0 | 50.0 |"
    assert lines[3] == "| b | 12.5 | - | 9.5 | 55.0 |"
    assert lines[4] == "| difference | +2.5 | - | +0.5 | +5.0 |"

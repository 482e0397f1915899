"""Tests of opendas_encoder.metrics: hand-computed cases and scikit-learn cross-checks."""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from opendas_encoder.metrics import (
    SCANNET_OVERLAPS,
    SemSegConfusion,
    classification_metrics,
    confusion_matrix,
    format_ap_table,
    instance_ap,
    semseg_metrics,
    split_iou,
)

# ------------------------------------------------------------------ classification


def test_classification_hand_computed():
    # base a, b; novel c. Per class over all samples: a P=R=1/2, b P=R=1, c P=R=1/2.
    y_true = ["a", "a", "b", "c", "c"]
    y_pred = ["a", "c", "b", "c", "a"]
    m = classification_metrics(y_true, y_pred, ["a", "b"], ["c"])
    assert m["acc"] == pytest.approx(60.0)
    assert m["weighted_f1"] == pytest.approx(100 * (2 * 0.5 + 1 * 1.0 + 2 * 0.5) / 5)
    # Base samples [a, a, b] -> [a, c, b]: a P=1 R=1/2 F1=2/3, b F1=1; the a->c error counts.
    assert m["base_f1"] == pytest.approx(100 * (2 * (2 / 3) + 1.0) / 3)
    # Novel samples [c, c] -> [c, a]: c P=1 R=1/2 F1=2/3.
    assert m["novel_f1"] == pytest.approx(100 * 2 / 3)
    assert (m["n"], m["n_base"], m["n_novel"]) == (5, 3, 2)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 50.0, "recall": 50.0, "f1": 50.0, "support": 2}
    )
    assert m["per_class"]["b"]["f1"] == pytest.approx(100.0)


def test_classification_empty_split_is_nan():
    m = classification_metrics(["a", "b"], ["a", "a"], ["a", "b"], ["c"])
    assert math.isnan(m["novel_f1"]) and m["n_novel"] == 0
    assert m["base_f1"] == pytest.approx(100 * (1 * (2 / 3) + 1 * 0.0) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    base, novel = ["b0", "b1", "b2", "b3"], ["n0", "n1", "n2"]
    vocab = base + novel
    y_true = list(rng.choice(vocab, 300))
    y_pred = [t if rng.random() < 0.6 else str(rng.choice(vocab)) for t in y_true]
    m = classification_metrics(y_true, y_pred, base, novel)
    assert m["weighted_f1"] == pytest.approx(100 * f1_score(y_true, y_pred, average="weighted"))
    yt, yp = np.array(y_true), np.array(y_pred)
    for split, members in (("base_f1", base), ("novel_f1", novel)):
        sel = np.isin(yt, members)
        ref = f1_score(yt[sel], yp[sel], labels=vocab, average="weighted", zero_division=0)
        assert m[split] == pytest.approx(100 * ref)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=vocab, zero_division=0)
    for i, name in enumerate(vocab):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (100 * p[i], 100 * r[i], 100 * f[i], s[i])
        )
    assert m["acc"] == pytest.approx(100 * np.mean(yt == yp))


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="outside the test vocabulary"):
        classification_metrics(["a"], ["zebra"], ["a"], ["c"])
    with pytest.raises(ValueError, match="both base and novel"):
        classification_metrics(["a"], ["a"], ["a"], ["a"])
    with pytest.raises(ValueError, match="entries"):
        classification_metrics(["a", "a"], ["a"], ["a"], ["c"])


def test_confusion_matrix_rows_are_ground_truth():
    cm = confusion_matrix(["a", "a", "b", "c"], ["b", "a", "b", "a"], ["a", "b", "c"])
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])


# ------------------------------------------------------------------ semantic segmentation


def test_semseg_absent_class_current_vs_legacy():
    # rows = gt. Class 2 is predicted but absent from the gt; class 3 is absent from both.
    conf = np.array([[6, 2, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m = semseg_metrics(conf)
    iou0, iou1 = 6 / (8 + 6 - 6), 2 / (4 + 4 - 2)
    assert m["miou"] == pytest.approx(100 * (iou0 + iou1) / 2)  # 54.17
    assert m["miou_legacy"] == pytest.approx(100 * (iou0 + iou1 + 0.0) / 3)  # 36.11
    assert m["macc"] == pytest.approx(100 * (6 / 8 + 2 / 4) / 2)
    assert m["pacc"] == pytest.approx(100 * 8 / 12)
    assert m["fwiou"] == pytest.approx(100 * (8 * iou0 + 4 * iou1) / 12)
    np.testing.assert_allclose(m["per_class_iou"], [75.0, 100 / 3, np.nan, np.nan])
    np.testing.assert_allclose(m["per_class_acc"], [75.0, 50.0, np.nan, np.nan])
    np.testing.assert_allclose(m["per_class_iou_legacy"], [75.0, 100 / 3, 0.0, np.nan])


def test_semseg_without_absent_classes_rules_agree():
    conf = np.array([[5, 1], [2, 4]])
    m = semseg_metrics(conf)
    assert m["miou"] == pytest.approx(m["miou_legacy"])
    assert m["miou"] == pytest.approx(100 * (5 / 8 + 4 / 7) / 2)


def test_semseg_rejects_bad_confusion():
    with pytest.raises(ValueError, match="square"):
        semseg_metrics(np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="integer"):
        semseg_metrics(np.zeros((2, 2)))


def test_semseg_confusion_accumulates_and_ignores():
    acc = SemSegConfusion(3, ignore_label=255)
    acc.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [1, 255]]))
    acc.update(np.array([[0, 0]]), np.array([[0, 2]]))
    np.testing.assert_array_equal(acc.confusion, [[2, 0, 0], [0, 1, 1], [1, 0, 0]])
    assert acc.metrics()["pacc"] == pytest.approx(100 * 3 / 5)
    with pytest.raises(ValueError, match="outside"):
        acc.update(np.array([0]), np.array([3]))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((2, 2), dtype=int), np.zeros((2, 3), dtype=int))


def test_split_iou_is_nan_aware():
    iou = np.array([50.0, np.nan, 20.0, 40.0])
    out = split_iou(iou, ["a", "b", "c", "d"], base=["a", "b"], novel=["c", "d"])
    assert out["base_miou"] == pytest.approx(50.0) and out["n_base"] == 1
    assert out["novel_miou"] == pytest.approx(30.0) and out["n_novel"] == 2
    assert math.isnan(split_iou(iou, list("abcd"), ["b"], [])["base_miou"])
    with pytest.raises(ValueError, match="not in class_names"):
        split_iou(iou, list("abcd"), ["zebra"], [])


# ------------------------------------------------------------------ 3D instance AP

A, B, C = 1, 2, 3  # label ids
NAMES = ["a", "b", "c"]


def _pred(masks, scores, classes):
    return {
        "masks": np.stack(masks, axis=1).astype(bool),
        "scores": np.asarray(scores, dtype=float),
        "classes": np.asarray(classes),
    }


def _mask(n, idx):
    m = np.zeros(n, dtype=bool)
    m[idx] = True
    return m


def _two_instance_scene():
    """600 points: a#1 on 0..199, b#1 on 200..399, unannotated 400..599."""
    gt = np.zeros(600, dtype=np.int64)
    gt[:200] = A * 1000 + 1
    gt[200:400] = B * 1000 + 1
    return gt


def test_scannet_overlaps():
    expected = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.25]  # 0.95 not included
    np.testing.assert_allclose(SCANNET_OVERLAPS, expected)


def test_ap_perfect_predictions_give_100():
    gt1 = _two_instance_scene()
    gt2 = np.zeros(300, dtype=np.int64)
    gt2[:150], gt2[150:] = A * 1000 + 1, A * 1000 + 2
    preds = {
        "s1": _pred([gt1 == 1001, gt1 == 2001], [0.9, 0.3], [A, B]),
        "s2": _pred([gt2 == 1001, gt2 == 1002], [0.2, 0.7], [A, A]),
    }
    r = instance_ap(preds, {"s1": gt1, "s2": gt2}, [A, B], ["a", "b"])
    assert (r["ap"], r["ap50"], r["ap25"]) == pytest.approx((100.0, 100.0, 100.0))
    assert r["per_class"]["b"] == pytest.approx({"ap": 100.0, "ap50": 100.0, "ap25": 100.0})


def test_ap_iou_04_counts_for_ap25_only():
    gt = _two_instance_scene()
    # 100 points inside a#1 (200 points) + 50 on b#1: IoU = 100 / 250 = 0.4.
    pa = _mask(600, np.r_[0:100, 200:250])
    preds = {"s": _pred([pa, gt == 2001], [0.9, 0.9], [A, B])}
    r = instance_ap(preds, {"s": gt}, [A, B], ["a", "b"])
    assert r["per_class"]["a"] == pytest.approx({"ap": 0.0, "ap50": 0.0, "ap25": 100.0})
    assert r["ap25"] == pytest.approx(100.0)
    assert r["ap50"] == pytest.approx(50.0)  # mean of a (0) and b (100)


def test_ap_class_without_ground_truth_is_excluded():
    gt = _two_instance_scene()
    # class c has a prediction but no ground truth: nan, left out of the mean.
    masks = [gt == 1001, gt == 2001, _mask(600, np.r_[0:300])]
    preds = {"s": _pred(masks, [0.9, 0.9, 0.99], [A, B, C])}
    r = instance_ap(preds, {"s": gt}, [A, B, C], NAMES)
    assert all(math.isnan(v) for v in r["per_class"]["c"].values())
    assert (r["ap"], r["ap50"], r["ap25"]) == pytest.approx((100.0, 100.0, 100.0))
    # a class with ground truth but no prediction scores 0 and counts.
    r2 = instance_ap({"s": _pred([gt == 1001], [0.9], [A])}, {"s": gt}, [A, B], ["a", "b"])
    assert r2["per_class"]["b"]["ap"] == 0.0 and r2["ap50"] == pytest.approx(50.0)


def test_ap_higher_scored_false_positive_hand_computed():
    gt = _two_instance_scene()
    # class a: FP (score 0.9, lies on b#1) and TP (score 0.5). Sorted by score: thresholds 0.5, 0.9
    # give (P, R) = (1/2, 1) and (0, 0), plus the closing point (1, 0). ScanNet's step widths
    # (r[i-1] - r[i+1]) / 2 with r[-1] = r[0]: 1/2, 1/2, 0 -> AP = 0.5*0.5 + 0*0.5 + 1*0 = 0.25.
    preds = {"s": _pred([gt == 2001, gt == 1001, gt == 2001], [0.9, 0.5, 0.8], [A, A, B])}
    r = instance_ap(preds, {"s": gt}, [A, B], ["a", "b"])
    assert r["per_class"]["a"] == pytest.approx({"ap": 25.0, "ap50": 25.0, "ap25": 25.0})
    assert r["per_class"]["b"]["ap"] == pytest.approx(100.0)
    assert r["ap"] == pytest.approx(62.5)


def test_ap_duplicate_match_keeps_best_score_as_tp():
    gt = _two_instance_scene()
    # Two predictions match a#1; the 0.8 one becomes a FP below the 0.9 TP: AP stays 100.
    near = _mask(600, np.r_[0:190])  # IoU 0.95
    preds = {"s": _pred([near, gt == 1001], [0.8, 0.9], [A, A])}
    r = instance_ap(preds, {"s": gt}, [A], ["a"])
    assert r["ap"] == pytest.approx(100.0)
    # Lower-scored exact mask first, higher-scored worse mask second: ranking has TP on top too.
    preds = {"s": _pred([gt == 1001, near], [0.1, 0.9], [A, A])}
    assert instance_ap(preds, {"s": gt}, [A], ["a"])["ap"] == pytest.approx(100.0)


def test_ap_predictions_on_unannotated_points_are_not_false_positives():
    gt = _two_instance_scene()
    on_void = _mask(600, np.r_[400:600])
    preds = {"s": _pred([on_void, gt == 1001], [0.99, 0.5], [A, A])}
    assert instance_ap(preds, {"s": gt}, [A], ["a"])["ap"] == pytest.approx(100.0)
    # The same mask on annotated points of class b is a false positive (AP 25 as above).
    preds = {"s": _pred([gt == 2001, gt == 1001], [0.99, 0.5], [A, A])}
    r = instance_ap(preds, {"s": gt}, [A, B], ["a", "b"])
    assert r["per_class"]["a"]["ap"] == pytest.approx(25.0)
    # Void means "label not evaluated": with class b left out, its points are void too.
    assert instance_ap(preds, {"s": gt}, [A], ["a"])["ap"] == pytest.approx(100.0)


def test_ap_min_region_size():
    gt = _two_instance_scene()
    gt[400:450] = A * 1000 + 2  # a#2: 50 points, below min_region_size=100
    # a prediction of 99 points on a#1 is dropped at the default size, so class a has no prediction.
    small_pred = _mask(600, np.r_[0:99])
    r = instance_ap({"s": _pred([small_pred], [0.9], [A])}, {"s": gt}, [A], ["a"])
    assert r["per_class"]["a"] == {"ap": 0.0, "ap50": 0.0, "ap25": 0.0}
    # min_region_size=50 keeps it (IoU 99/200 = 0.495) and makes a#2 (50 points) a gt instance.
    preds = {"s": _pred([small_pred], [0.9], [A])}
    r = instance_ap(preds, {"s": gt}, [A], ["a"], min_region_size=50)
    # a#1 matched, a#2 missed: one point (P=1, R=1/2) + closing (1, 0) -> AP25 = 1/4 + 1/4.
    assert r["per_class"]["a"]["ap25"] == pytest.approx(50.0)
    assert r["per_class"]["a"]["ap50"] == 0.0
    # A confident prediction exactly on the small a#2 is ignored (not a FP) at the default size ...
    preds = {"s": _pred([gt == 1002, gt == 1001], [0.99, 0.5], [A, A])}
    assert instance_ap(preds, {"s": gt}, [A], ["a"])["ap"] == pytest.approx(100.0)
    # ... and a class whose only instance is small has no ground truth at all.
    only_small = np.zeros(600, dtype=np.int64)
    only_small[:50] = A * 1000 + 1
    preds = {"s": _pred([only_small > 0], [0.9], [A])}
    r = instance_ap(preds, {"s": only_small}, [A], ["a"], min_region_size=100)
    assert math.isnan(r["ap"])


def test_ap_rejects_bad_input():
    gt = _two_instance_scene()
    good = _pred([gt == 1001], [0.9], [A])
    with pytest.raises(ValueError, match="scenes differ"):
        instance_ap({"s": good}, {"s": gt, "t": gt}, [A], ["a"])
    with pytest.raises(ValueError, match="num_points"):
        instance_ap({"s": _pred([np.ones(10, bool)], [0.9], [A])}, {"s": gt}, [A], ["a"])
    with pytest.raises(ValueError, match="0.5 and 0.25"):
        instance_ap({"s": good}, {"s": gt}, [A], ["a"], overlaps=[0.5])


def test_format_ap_table_with_splits():
    gt = _two_instance_scene()
    preds = {"s": _pred([gt == 2001, gt == 1001, gt == 2001], [0.9, 0.5, 0.8], [A, A, B])}
    r = instance_ap(preds, {"s": gt}, [A, B, C], NAMES)
    table = format_ap_table(r, base=["a", "c"], novel=["b"])
    lines = table.strip().splitlines()
    assert lines[0] == "| class | AP | AP50 | AP25 |"
    assert "| a | 25.0 | 25.0 | 25.0 |" in lines
    assert "| c | - | - | - |" in lines
    assert "| **mean** | 62.5 | 62.5 | 62.5 |" in lines
    assert "| **base mean** | 25.0 | 25.0 | 25.0 |" in lines
    assert "| **novel mean** | 100.0 | 100.0 | 100.0 |" in lines


def test_ap_bare_label_id_is_an_instance_as_in_scannet():
    gt = _two_instance_scene()
    gt[400:600] = A * 1000  # labelled a, no instance: ScanNet still counts it as one instance
    r = instance_ap({"s": _pred([gt == 1001], [0.9], [A])}, {"s": gt}, [A], ["a"])
    # one TP, one missed instance: (P=1, R=1/2) + closing (1, 0) -> AP = 1/4 + 1/4.
    assert r["ap"] == pytest.approx(50.0)


# ------------------------------------------------------------------ against OpenMask3D's evaluation code
#
# OpenMask3D (OpenMask3D/openmask3d @ 3bc3fc5) ships ScanNet's instance evaluation as
# openmask3d/evaluation/eval_semantic_instance.py; it is imported from $OPENMASK3D_ROOT (an unpacked
# shared/upstream/openmask3d.tar.gz), never copied. CI sets OPENMASK3D_ROOT.

OPENMASK3D_ROOT = os.environ.get("OPENMASK3D_ROOT")
OM3D_CLASS_IDS = [3, 5, 8, 12, 40]        # evaluated label ids; 7 and 21 occur in the ground truth as void
OM3D_NAMES = ["cabinet", "chair", "door", "counter", "box"]


@pytest.fixture
def openmask3d_eval(monkeypatch):
    """OpenMask3D's evaluation module, loaded fresh from $OPENMASK3D_ROOT with our class list."""
    if not OPENMASK3D_ROOT:
        pytest.skip("set OPENMASK3D_ROOT to an OpenMask3D tree at 3bc3fc5 (unpack shared/upstream/openmask3d.tar.gz) "
                    "to compare instance_ap with its ScanNet evaluation")
    eval_dir = os.path.join(OPENMASK3D_ROOT, "openmask3d", "evaluation")
    path = os.path.join(eval_dir, "eval_semantic_instance.py")
    assert os.path.isfile(path), f"OPENMASK3D_ROOT={OPENMASK3D_ROOT} has no {path}"
    for name in ("util", "util_3d"):            # its sibling modules are imported by these bare names
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(eval_dir)
    if not hasattr(np, "in1d"):  # NumPy 2.4 removed in1d, which it calls on 1-D arrays (= np.isin there)
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    spec = importlib.util.spec_from_file_location("openmask3d_eval_semantic_instance", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "CLASS_LABELS", list(OM3D_NAMES))
    monkeypatch.setattr(module, "VALID_CLASS_IDS", np.array(OM3D_CLASS_IDS))
    monkeypatch.setattr(module, "ID_TO_LABEL", dict(zip(OM3D_CLASS_IDS, OM3D_NAMES)))
    monkeypatch.setattr(module, "LABEL_TO_ID", dict(zip(OM3D_NAMES, OM3D_CLASS_IDS)))
    return module


def _generated_instance_case(seed: int, n_scenes: int = 3):
    """Random scenes with the cases ScanNet's rules distinguish: void labels, unannotated points, small
    (ignored) instances, a bare ``label * 1000`` id; predictions that are noisy copies of instances,
    duplicates, predictions of void or unevaluated classes, random blobs, small masks, tied scores."""
    rng = np.random.default_rng(seed)
    gts, preds = {}, {}
    for s in range(n_scenes):
        n = int(rng.integers(1500, 3000))
        gt = np.zeros(n, dtype=np.int64)
        order = rng.permutation(n)
        pos, instances = 0, []
        labels = [OM3D_CLASS_IDS[0]] + list(rng.choice(OM3D_CLASS_IDS + [7, 21], size=int(rng.integers(4, 9))))
        for k, label in enumerate(labels):
            size = int(rng.choice([40, 90, 150, 300, 500]) if k else 400)  # the first: a large instance of class 0
            if pos + size > n:
                break
            ids = order[pos:pos + size]
            pos += size
            inst = label * 1000 + (0 if (s == 1 and k == 2) else k + 1)   # one bare label * 1000 id
            gt[ids] = inst
            instances.append((ids, label))
        masks, scores, classes = [], [], []
        for ids, label in instances:
            for _ in range(int(rng.integers(0, 3))):                    # 0-2 noisy copies (duplicates)
                keep = ids[rng.random(len(ids)) < rng.uniform(0.4, 1.0)]     # IoU spreads over 0.2..1
                extra = rng.choice(n, size=int(rng.integers(0, len(ids) // 4 + 1)), replace=False)
                m = np.zeros(n, dtype=bool)
                m[keep] = True
                m[extra] = True
                masks.append(m)
                scores.append(round(float(rng.random()), 1))            # one decimal: ties happen
                classes.append(label if rng.random() < 0.8 else int(rng.choice(OM3D_CLASS_IDS + [9])))
        for _ in range(int(rng.integers(2, 6))):                        # random blobs, some below 100 points
            m = np.zeros(n, dtype=bool)
            m[rng.choice(n, size=int(rng.integers(20, 400)), replace=False)] = True
            masks.append(m)
            scores.append(round(float(rng.random()), 1))
            classes.append(int(rng.choice(OM3D_CLASS_IDS)))
        order_p = rng.permutation(len(masks))
        scene = f"scene{s:04d}_00"
        gts[scene] = gt
        preds[scene] = {"masks": np.stack([masks[i] for i in order_p], axis=1),
                        "scores": np.asarray([scores[i] for i in order_p]),
                        "classes": np.asarray([classes[i] for i in order_p])}
    return gts, preds


@pytest.mark.parametrize("seed", range(6))
def test_instance_ap_matches_openmask3d_scannet_evaluation(openmask3d_eval, tmp_path, seed):
    gts, preds = _generated_instance_case(seed)
    for scene, gt in gts.items():
        np.savetxt(tmp_path / f"{scene}.txt", gt, fmt="%d")           # ScanNet's gt file: one id per line
    theirs_in = {scene: {"pred_masks": p["masks"].astype(np.float32), "pred_scores": p["scores"],
                         "pred_classes": p["classes"]} for scene, p in preds.items()}
    avgs, *_ = openmask3d_eval.evaluate(theirs_in, str(tmp_path), str(tmp_path / "out.txt"), dataset="scannet")
    ours = instance_ap(preds, gts, OM3D_CLASS_IDS, OM3D_NAMES)
    for key, their_key in (("ap", "all_ap"), ("ap50", "all_ap_50%"), ("ap25", "all_ap_25%")):
        assert ours[key] / 100.0 == pytest.approx(float(avgs[their_key]), abs=1e-12, nan_ok=True), key
    for name in OM3D_NAMES:
        theirs = avgs["classes"][name]
        for key, their_key in (("ap", "ap"), ("ap50", "ap50%"), ("ap25", "ap25%")):
            assert ours["per_class"][name][key] / 100.0 == pytest.approx(float(theirs[their_key]), abs=1e-12,
                                                                          nan_ok=True), (name, key)
    assert 0.0 < ours["ap25"] < 100.0   # the case is neither trivial nor hopeless

"""OVSeg with and without OpenDAS on ADE20K-150 validation: mIoU / mAcc side by side.

Metrics come from ``opendas_encoder.metrics`` (Detectron2 ``SemSegEvaluator`` rules; the table
also shows mIoU under the Detectron2 v0.6 rule that OVSeg's published numbers use). With
``--vocab-split`` the per-class IoU is averaged over base and over novel classes as well.

Mask proposals come from one of:

* ``--proposals DIR``: per-image ``<stem>.npz`` files (``masks`` (N, H, W) bool, optional
  ``mask_logits`` (N, C + 1)); pure torch, no Detectron2.
* ``--gt-masks``: the ground-truth masks of each image (segment classification).
* ``--ovseg-config CFG``: OVSeg's own model (MaskFormer proposals, OVSeg's ensemble), built with
  Detectron2 from an OVSeg checkout (``OVSEG_ROOT``); the CLIP branch runs once with OVSeg's
  CLIP and once with the OpenDAS encoder.

Examples::

    python -m integrations.ovseg.fixture runs/fixtures/ovseg      # or: --generate-fixture runs/fixtures/ovseg
    python eval/run_2d.py --ade-root runs/fixtures/ovseg --proposals runs/fixtures/ovseg/proposals/validation \\
        --opendas-checkpoint runs/fixtures/ovseg/encoder/opendas \\
        --model-config runs/fixtures/ovseg/encoder/model_configs --vocab-split runs/fixtures/ovseg/vocab_split.json

Results on generated data (a ``GENERATED`` marker at the data root) are labelled so in the output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from integrations.ovseg.adapter import RegionClassifier, RegionConfig, TemplateTextEncoder  # noqa: E402
from integrations.ovseg.fixture import FixtureSpec, generate_fixture  # noqa: E402
from opendas_encoder.generated.ovseg import ADE_NUM_CLASSES, ade20k_class_names, is_generated  # noqa: E402
from integrations.ovseg.semantic import gt_proposals, load_proposals, segment_image  # noqa: E402
from opendas_encoder.data.segments import read_label_png, read_rgb  # noqa: E402
from opendas_encoder.metrics import SemSegConfusion, split_iou  # noqa: E402

BASELINE = "OVSeg (original CLIP)"
ADAPTED = "OVSeg + OpenDAS"
IGNORE_LABEL = 255


@dataclass
class AdeSample:
    stem: str
    image: str  # .jpg
    annotation: str  # .png, 0 = ignore, 1..150 = classes


def ade_validation(ade_root: str, max_images: Optional[int] = None) -> List[AdeSample]:
    """The validation pairs under ``ade_root`` (the folder holding ADEChallengeData2016, or it)."""
    base = ade_root if os.path.basename(os.path.normpath(ade_root)) == "ADEChallengeData2016" \
        else os.path.join(ade_root, "ADEChallengeData2016")
    image_dir = os.path.join(base, "images", "validation")
    ann_dir = os.path.join(base, "annotations", "validation")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{ade_root}: no ADE20K validation images at {image_dir}")
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.lower().endswith(".jpg"))
    if not stems:
        raise FileNotFoundError(f"{image_dir}: no .jpg images")
    samples = []
    for stem in stems[:max_images] if max_images else stems:
        ann = os.path.join(ann_dir, stem + ".png")
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"annotation missing for {stem}: {ann}")
        samples.append(AdeSample(stem, os.path.join(image_dir, stem + ".jpg"), ann))
    return samples


def read_ade_gt(path: str, num_classes: int = ADE_NUM_CLASSES) -> np.ndarray:
    """ADE20K annotation (0 = ignore, 1..C) -> int64 labels 0..C-1 with 255 = ignore."""
    label = read_label_png(path)
    if label.max(initial=0) > num_classes:
        raise ValueError(f"{path}: label {int(label.max())} > {num_classes} classes")
    gt = label - 1
    gt[label == 0] = IGNORE_LABEL
    return gt


def evaluate_with_proposals(
    samples: Sequence[AdeSample],
    class_names: Sequence[str],
    classifiers: Dict[str, RegionClassifier],
    proposals_dir: Optional[str] = None,
    ensemble_weight: float = 0.7,
) -> Dict[str, SemSegConfusion]:
    """Confusions per method; proposals from ``proposals_dir`` (<stem>.npz) or, if None, the GT masks."""
    conf = {name: SemSegConfusion(len(class_names), IGNORE_LABEL) for name in classifiers}
    for s in tqdm(samples, desc="images", disable=len(samples) < 10):
        image = read_rgb(s.image)
        gt = read_ade_gt(s.annotation, len(class_names))
        if gt.shape != image.shape[:2]:
            raise ValueError(f"{s.annotation}: shape {gt.shape} differs from image {image.shape[:2]} ({s.image})")
        if proposals_dir is None:
            masks, logits = gt_proposals(gt, IGNORE_LABEL), None
        else:
            masks, logits = load_proposals(os.path.join(proposals_dir, s.stem + ".npz"), gt.shape, len(class_names))
        for name, clf in classifiers.items():
            pred = segment_image(clf, image, masks, class_names, logits, ensemble_weight)
            conf[name].update(pred, gt)
    return conf


def evaluate_with_ovseg(
    samples: Sequence[AdeSample],
    class_names: Sequence[str],
    config_file: str,
    opendas_checkpoint: str,
    weights: str = "",
    opts: Sequence[str] = (),
    prompt_names: Optional[Sequence[str]] = None,
) -> Dict[str, SemSegConfusion]:
    """OVSeg's full model (Detectron2) with its own CLIP and with OpenDAS in the CLIP branch.

    ``class_names`` label the results; the model is queried with ``prompt_names`` (same order), by
    default OVSeg's own (Detectron2's ADE20K-150 metadata, e.g. "chest of drawers, chest, bureau").
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import MetadataCatalog
    from detectron2.data import transforms as T

    from integrations.ovseg import modeling

    cfg = modeling.ovseg_config(config_file, list(opts) + [
        "MODEL.CLIP_ADAPTER.CLIP_BACKEND", "opendas", "MODEL.CLIP_ADAPTER.OPENDAS_CHECKPOINT", opendas_checkpoint,
        "MODEL.DEVICE", "cuda" if torch.cuda.is_available() else "cpu"])
    model = modeling.build_ovseg_model(cfg)
    if weights:
        DetectionCheckpointer(model).load(weights)
    model.eval()
    if prompt_names is None:  # OVSeg's own query names: Detectron2's ADE20K-150 metadata
        dataset = "ade20k_sem_seg_val"
        if len(MetadataCatalog.get(dataset).stuff_classes) != len(class_names):
            raise ValueError(f"Detectron2's {dataset} has {len(MetadataCatalog.get(dataset).stuff_classes)} "
                             f"classes, expected {len(class_names)}")
    else:
        dataset = "opendas_run_2d_queries"
        if not hasattr(MetadataCatalog.get(dataset), "stuff_classes"):
            MetadataCatalog.get(dataset).set(stuff_classes=list(prompt_names), ignore_label=IGNORE_LABEL)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    conf = {name: SemSegConfusion(len(class_names), IGNORE_LABEL) for name in (BASELINE, ADAPTED)}
    for s in tqdm(samples, desc="images", disable=len(samples) < 10):
        image = read_rgb(s.image)
        if cfg.INPUT.FORMAT == "BGR":
            image = image[:, :, ::-1]
        gt = read_ade_gt(s.annotation, len(class_names))
        resized = resize.get_transform(image).apply_image(image)
        inputs = [{"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                   "height": image.shape[0], "width": image.shape[1], "meta": {"dataset_name": dataset}}]
        for name, backend in ((BASELINE, "openai"), (ADAPTED, "opendas")):
            model.clip_adapter.clip_backend = backend
            with torch.no_grad():
                sem_seg = model(inputs)[0]["sem_seg"]
            conf[name].update(sem_seg.argmax(dim=0).cpu().numpy().astype(np.int64), gt)
    return conf


def read_vocab_split(path: str, class_names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(base, novel) from JSON ``{"base": [...], "novel": [...]}`` or a Vocabulary (base, test)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary split not found: {path}")
    try:
        with open(path) as f:
            d = json.load(f)
        base = list(d["base"])
        novel = list(d["novel"]) if "novel" in d else [c for c in d["test"] if c not in set(base)]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected JSON with 'base' and 'novel' (or 'test') lists ({exc})") from None
    unknown = [c for c in base + novel if c not in set(class_names)]
    if unknown:
        raise ValueError(f"{path}: classes not in the evaluated vocabulary: {unknown[:10]}")
    return base, novel


def summarize(conf: Dict[str, SemSegConfusion], class_names: Sequence[str],
              split: Optional[Tuple[List[str], List[str]]] = None) -> Dict[str, dict]:
    """Per method: miou, macc, miou_legacy, pacc, fwiou, base/novel mIoU (percent), per-class IoU."""
    out = {}
    for name, c in conf.items():
        m = c.metrics()
        row = {k: m[k] for k in ("miou", "macc", "miou_legacy", "pacc", "fwiou")}
        if split is not None:
            row.update(split_iou(m["per_class_iou"], class_names, split[0], split[1]))
        row["per_class_iou"] = {n: (None if math.isnan(v) else float(v))
                                for n, v in zip(class_names, m["per_class_iou"])}
        out[name] = row
    return out


def format_table(summary: Dict[str, dict]) -> str:
    """Markdown table, one row per method plus the difference of the last two rows."""
    cols = [("mIoU", "miou"), ("mAcc", "macc"), ("mIoU (v0.6 rule)", "miou_legacy"), ("pAcc", "pacc")]
    if any("base_miou" in r for r in summary.values()):
        cols += [("base mIoU", "base_miou"), ("novel mIoU", "novel_miou")]

    def fmt(x, signed=False):
        return "-" if x is None or math.isnan(x) else (f"{x:+.1f}" if signed else f"{x:.1f}")

    lines = ["| method | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in summary.items():
        lines.append(f"| {name} | " + " | ".join(fmt(row.get(k)) for _, k in cols) + " |")
    names = list(summary)
    if len(names) >= 2:
        a, b = summary[names[-2]], summary[names[-1]]
        lines.append("| difference | " + " | ".join(fmt(b[k] - a[k], True) for _, k in cols) + " |")
    return "\n".join(lines) + "\n"


def build_classifiers(opendas_checkpoint: str, templates: Sequence[str], region: RegionConfig,
                      pretrained: Optional[str] = None) -> Dict[str, RegionClassifier]:
    """The baseline (the checkpoint's base CLIP with prompt templates) and the OpenDAS encoder."""
    import open_clip

    import opendas_encoder as oe
    from opendas_encoder.core.checkpoint import read_checkpoint_config
    from opendas_encoder.core.factory import create_base_model_and_transforms

    config = read_checkpoint_config(opendas_checkpoint)
    tag = pretrained or config.get("pretrained")
    base, _, preprocess = create_base_model_and_transforms(config["model_name"], tag)
    baseline = TemplateTextEncoder(base, open_clip.get_tokenizer(config["model_name"]), preprocess, templates)
    adapted = oe.load_encoder(opendas_checkpoint, pretrained=pretrained)
    return {BASELINE: RegionClassifier(baseline, region), ADAPTED: RegionClassifier(adapted, region)}


def read_class_names(path: Optional[str]) -> List[str]:
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"class-name file not found: {path}")
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != ADE_NUM_CLASSES:
            raise ValueError(f"{path}: {len(names)} class names, ADE20K-150 needs {ADE_NUM_CLASSES}")
        return names
    return ade20k_class_names()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="OVSeg with and without OpenDAS on ADE20K-150 validation")
    p.add_argument("--generate-fixture", metavar="DIR", help="write a small ADE20K-layout fixture and exit")
    p.add_argument("--fixture-images", type=int, default=4)
    p.add_argument("--ade-root", help="folder holding ADEChallengeData2016")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--proposals", metavar="DIR", help="per-image <stem>.npz mask proposals")
    src.add_argument("--gt-masks", action="store_true", help="use the ground-truth masks as proposals")
    src.add_argument("--ovseg-config", metavar="YAML", help="run OVSeg's model (needs Detectron2 + OVSEG_ROOT)")
    p.add_argument("--ovseg-weights", default="", help="OVSeg checkpoint (MODEL.WEIGHTS)")
    p.add_argument("--opendas-checkpoint", help="OpenDAS checkpoint folder")
    p.add_argument("--pretrained", default=None, help="override the base-model weights of the checkpoint")
    p.add_argument("--model-config", action="append", default=[],
                   help="open_clip model-config JSON file or folder to register (repeatable)")
    p.add_argument("--class-names", help="150 class names, one per line (default: the package's ADE20K-150 list)")
    p.add_argument("--vocab-split", help="JSON with base / novel class lists")
    p.add_argument("--template", action="append", default=None,
                   help="baseline prompt template with '{}' (repeatable; default 'a photo of a {}.')")
    p.add_argument("--ensemble-weight", type=float, default=0.7, help="OVSeg's CLIP_ENSEMBLE_WEIGHT")
    p.add_argument("--mask-thr", type=float, default=0.5)
    p.add_argument("--expand-ratio", type=float, default=1.0)
    p.add_argument("--pad-square", action="store_true")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--json-out", help="write the summary (with per-class IoU) as JSON")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="Detectron2 config overrides (with --ovseg-config)")
    return p.parse_args(argv)


def main(argv=None) -> Dict[str, dict]:
    torch.set_num_threads(1)
    args = parse_args(argv)
    if args.generate_fixture:
        names = ade20k_class_names()
        out = generate_fixture(args.generate_fixture, FixtureSpec(num_images=args.fixture_images), names)
        print(f"generated fixture written to {args.generate_fixture} ({len(out['stems'])} images, not real data)")
        print("evaluate it with:\n  python eval/run_2d.py --ade-root {0} --proposals {1} --opendas-checkpoint {2} "
              "--model-config {3} --vocab-split {4}".format(
                  args.generate_fixture, out["proposals"], out["opendas_checkpoint"],
                  os.path.dirname(out["model_config"]), out["vocab_split"]))
        return {}
    if not args.ade_root or not args.opendas_checkpoint:
        raise SystemExit("--ade-root and --opendas-checkpoint are required (or --generate-fixture DIR)")
    if not (args.proposals or args.gt_masks or args.ovseg_config):
        raise SystemExit("choose the mask proposals: --proposals DIR, --gt-masks or --ovseg-config YAML")
    import open_clip

    for cfg_path in args.model_config:
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"model config not found: {cfg_path}")
        open_clip.add_model_config(cfg_path)
    class_names = read_class_names(args.class_names)
    split = read_vocab_split(args.vocab_split, class_names) if args.vocab_split else None
    samples = ade_validation(args.ade_root, args.max_images)
    if args.ovseg_config:
        opts = [o for o in args.opts if o != "--"]
        prompts = read_class_names(args.class_names) if args.class_names else None
        conf = evaluate_with_ovseg(samples, class_names, args.ovseg_config, args.opendas_checkpoint,
                                   args.ovseg_weights, opts, prompts)
        source = f"OVSeg model ({args.ovseg_config})"
    else:
        region = RegionConfig(mask_thr=args.mask_thr, expand_ratio=args.expand_ratio, pad_square=args.pad_square)
        classifiers = build_classifiers(args.opendas_checkpoint, args.template or ["a photo of a {}."], region,
                                        args.pretrained)
        conf = evaluate_with_proposals(samples, class_names, classifiers, args.proposals, args.ensemble_weight)
        source = f"proposals {args.proposals}" if args.proposals else "ground-truth masks"
    summary = summarize(conf, class_names, split)
    present = int(next(iter(conf.values())).confusion.sum(axis=1).astype(bool).sum())
    generated = is_generated(args.ade_root)
    kind = "GENERATED ADE20K-layout fixture (not real data)" if generated else "ADE20K-150 validation"
    print(f"{kind}: {len(samples)} images, {present} classes present, masks: {source}")
    print(format_table(summary))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"images": len(samples), "source": source, "generated": generated, "results": summary}, f,
                      indent=2, sort_keys=True)
    return summary


if __name__ == "__main__":
    main()

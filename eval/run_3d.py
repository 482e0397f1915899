"""OpenMask3D-style open-vocabulary 3D instance segmentation: CLIP vs OpenDAS, AP / AP50 / AP25.

For each scene: class-agnostic mask proposals -> multi-view crop features (top-k views, multi-level
crops; ``opendas_encoder.threed``) -> the best text query per mask -> ScanNet instance AP
(``opendas_encoder.metrics.instance_ap``; all masks get score 1.0, as OpenMask3D's evaluation does,
unless ``--scores similarity``). Both encoders run side by side: "clip" is the base model without
prompts queried with OpenMask3D's sentence "a {} in a scene"; "opendas" is ``--checkpoint DIR``
queried with bare class names (its learned context is the template).

Data (``--data-root``; layout detected or ``--layout``):

* ``scannetpp``: a ScanNet++ release (``data/<scene>/scans``, ``iphone``); default scenes = the 16
  ScanNet++ Offices test scenes of the paper (Appendix E); ground truth from segments_anno.json.
* ``openmask3d``: OpenMask3D's processed layout (see ``integrations/openmask3d/readers.py``) with
  ``gt/<scene>.txt`` and ``classes.json``.

Proposals: ``--proposals files`` reads ``<scene>*_masks.pt|.npy`` (Mask3D output; needs CUDA and
MinkowskiEngine to compute, see integrations/openmask3d/README.md) from ``--masks-dir`` or the scene
folder; ``--proposals gt`` uses one mask per ground-truth instance (CPU; classification only).

OpenMask3D's own outputs: ``--openmask3d-features DIR`` reads the ``*_openmask3d_features.npy`` that
OpenMask3D's feature step wrote for the same proposal files (its CLIP column) instead of computing
CLIP features here; ``--opendas-features DIR`` does the same for a run of that step with the OpenDAS
encoder (``python -m integrations.openmask3d.launch ... external.opendas_checkpoint=...``); without it
the OpenDAS features are computed here on the same proposals.

Without ``--checkpoint`` the script says how to get one (``--clip-only`` evaluates the CLIP column
alone). Per-scene predictions are saved under ``--out`` (``<encoder>/<scene>.npz``), so an interrupted
run continues where it stopped. Examples::

    python eval/run_3d.py --generate /tmp/gen3d --checkpoint CKPT
    python eval/run_3d.py --data-root /data/scannetpp --checkpoint checkpoints/scannetpp_offices \\
        --proposals files --masks-dir /data/mask3d_scannetpp --out results/3d
    python eval/run_3d.py --data-root PROCESSED --checkpoint CKPT --proposals files \\
        --openmask3d-features OM3D_OUT --opendas-features OM3D_OPENDAS_OUT
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from integrations.openmask3d.readers import (ProcessedLayout, find_mask_proposals, find_openmask3d_features,  # noqa: E402
                                             read_classes_json, read_mask_proposals, read_openmask3d_features,
                                             read_processed_scene, read_scannet_gt)
from opendas_encoder.data.registry import GENERATED_MARKER, root_is_generated  # noqa: E402
from opendas_encoder.metrics import instance_ap  # noqa: E402
from opendas_encoder.threed import (OPENMASK3D_TEMPLATE, MaskFeatureConfig, SamRefiner, Scene3D,  # noqa: E402
                                    classify_masks, compute_mask_features, encode_queries)
from opendas_encoder.generated.scene3d import generate_dataset, proposals_from_gt  # noqa: E402

CLIP, OPENDAS = "clip", "opendas"

NO_CHECKPOINT_HELP = (
    "no OpenDAS checkpoint given (--checkpoint DIR), so there is no OpenDAS column to compare with CLIP. Get one:\n"
    "  * train it: opendas train CONFIG (README.md, 'Adapt CLIP to your own domain'); its run folder's final/ is the checkpoint;\n"
    "  * or, to check the wiring on generated data, write an example (random prompts, not trained):\n"
    "      python -m integrations.openmask3d.fixture runs/fixtures/om3d   # -> runs/fixtures/om3d/encoder/opendas\n"
    "Pass --clip-only to evaluate the CLIP column alone.")


# ----------------------------------------------------------------------------------- data access
@dataclass
class Vocab:
    """Evaluated classes: names, label ids (ScanNet encoding), and the base subset (may be empty)."""

    names: List[str]
    ids: List[int]
    base: List[str]

    @property
    def novel(self) -> List[str]:
        return [n for n in self.names if n not in set(self.base)] if self.base else []


def default_scenes() -> List[str]:
    """The 16 ScanNet++ Offices test scenes (paper Appendix E)."""
    from opendas_encoder.data.scannetpp import split_scene_ids

    return split_scene_ids("test")


def detect_layout(data_root: str) -> str:
    if os.path.isdir(os.path.join(data_root, "data")) or os.path.isfile(os.path.join(data_root, "scans", "segments_anno.json")):
        return "scannetpp"
    return "openmask3d"


def read_class_file(path: str) -> Tuple[List[str], List[int], List[str]]:
    """classes.json ({class_ids, class_names, base}) or a .txt list (ids 1..C)."""
    if path.endswith(".json"):
        d = read_classes_json(path)
        return list(d["class_names"]), [int(i) for i in d["class_ids"]], list(d.get("base", []))
    from opendas_encoder.vocab import read_class_list

    names = read_class_list(path)
    return names, list(range(1, len(names) + 1)), []


class SceneSource:
    """Scenes, proposals and ground truth of one dataset layout."""

    def __init__(self, args):
        self.args = args
        self.layout = args.layout if args.layout != "auto" else detect_layout(args.data_root)
        self.root = args.data_root

    def vocabulary(self, scenes: Sequence[str]) -> Vocab:
        args = self.args
        base: List[str] = []
        if args.classes:
            names, ids, base = read_class_file(args.classes)
        elif os.path.isfile(os.path.join(self.root, "classes.json")):
            names, ids, base = read_class_file(os.path.join(self.root, "classes.json"))
        elif self.layout == "scannetpp":
            from opendas_encoder.threed.scannetpp_scene import scannetpp_scene_labels

            names = scannetpp_scene_labels(self.root, scenes)
            ids = list(range(1, len(names) + 1))
        else:
            raise FileNotFoundError(f"{self.root}: no classes.json; pass --classes FILE")
        if args.base_classes:
            base = read_class_file(args.base_classes)[0]
        elif not base and self.layout == "scannetpp":
            base = self._scannetpp_train_labels()
        base = [b for b in base if b in set(names)]
        return Vocab(names, ids, base)

    def _scannetpp_train_labels(self) -> List[str]:
        from opendas_encoder.data.scannetpp import resolve_data_root, split_scene_ids
        from opendas_encoder.threed.scannetpp_scene import scannetpp_scene_labels

        train = split_scene_ids("train")
        if not all(os.path.isdir(os.path.join(resolve_data_root(self.root), s)) for s in train):
            return []
        return scannetpp_scene_labels(self.root, train)

    def scene(self, name: str) -> Scene3D:
        if self.layout == "scannetpp":
            from opendas_encoder.threed.scannetpp_scene import read_scannetpp_scene

            return read_scannetpp_scene(self.root, name, frame_step=self.args.frame_step)
        layout = ProcessedLayout(frame_step=self.args.frame_step, depth_scale=self.args.depth_scale)
        return read_processed_scene(os.path.join(self.root, name), layout)

    def ground_truth(self, name: str, num_points: int, vocab: Vocab) -> np.ndarray:
        if self.layout == "scannetpp":
            from opendas_encoder.threed.scannetpp_scene import scannetpp_instance_gt

            ids, _ = scannetpp_instance_gt(self.root, name, dict(zip(vocab.names, vocab.ids)))
            if len(ids) != num_points:
                raise ValueError(f"scene {name}: ground truth has {len(ids)} vertices, mesh has {num_points}")
            return ids
        return read_scannet_gt(os.path.join(self.root, "gt", f"{name}.txt"), num_points)

    def proposal_file(self, name: str) -> str:
        if self.layout == "openmask3d":
            return find_mask_proposals(os.path.join(self.root, name), self.args.masks_dir)
        if self.args.masks_dir:
            return find_mask_proposals(os.path.join(self.args.masks_dir, name), self.args.masks_dir)
        raise SystemExit("--proposals files on ScanNet++ needs --masks-dir (Mask3D outputs) or use --proposals gt")

    def proposals(self, name: str, num_points: int, gt: np.ndarray) -> Tuple[np.ndarray, Optional[str]]:
        """(bool masks (num_points, num_masks), the proposal file or None for ground-truth proposals)."""
        if self.args.proposals == "gt":
            return proposals_from_gt(gt), None
        path = self.proposal_file(name)
        return read_mask_proposals(path, num_points), path

    def is_generated(self) -> bool:
        return root_is_generated(self.root)

    def scene_names(self) -> List[str]:
        """Every scene folder of an OpenMask3D processed layout (those with a pose/ folder)."""
        return sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d, "pose")))


# ----------------------------------------------------------------------------------- encoders
def build_encoders(args, device: str) -> Dict[str, Tuple[object, Optional[str], str]]:
    """name -> (encoder, query template or None, identity string for the cache)."""
    import opendas_encoder as oe

    model, pretrained = args.model, args.pretrained
    encoders = {}
    if not args.checkpoint and not args.clip_only:
        raise SystemExit(NO_CHECKPOINT_HELP)
    if args.checkpoint:
        cfg = oe.read_checkpoint_config(args.checkpoint)
        model = model or cfg["model_name"]
        if pretrained is None:
            pretrained = cfg.get("pretrained")
    if not model:
        raise SystemExit("give --checkpoint DIR (its base model is the CLIP baseline) or --model NAME")
    tag = None if pretrained in (None, "none", "None") else pretrained
    if args.checkpoint:
        # the CLIP baseline is the checkpoint's recorded base model (or the given weights), checked like the
        # encoder's: not enc.clip, which holds interpolated weights for WiSE-FT
        from opendas_encoder.core.checkpoint import load_base_model

        enc = oe.load_encoder(args.checkpoint, device=device, pretrained=tag).eval()
        clip = oe.wrap_clip("zeroshot", load_base_model(args.checkpoint, device=device, pretrained=tag),
                            tokenizer=enc.tokenizer, preprocess=enc.preprocess, model_name=model, pretrained=tag,
                            template=args.template).eval()
        tensors = os.path.join(args.checkpoint, oe.read_checkpoint_config(args.checkpoint)["tensors_file"])
        encoders[OPENDAS] = (enc, None, f"{os.path.abspath(args.checkpoint)}|{os.path.getmtime(tensors)}|{tag}")
    else:
        clip = oe.create_encoder("zeroshot", model, tag, device=device, template=args.template).eval()
    encoders = {CLIP: (clip, None, f"{model}|{tag}|zero-shot|{args.template}"), **encoders}
    return encoders


# ----------------------------------------------------------------------------------- per scene
def cache_key(identity: str, cfg: MaskFeatureConfig, masks: np.ndarray, args) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"encoder": identity, "cfg": asdict(cfg), "proposals": args.proposals,
                         "frame_step": args.frame_step, "sam": args.sam_checkpoint}, sort_keys=True).encode())
    h.update(np.packbits(masks, axis=None).tobytes())
    h.update(str(masks.shape).encode())
    return h.hexdigest()


def scene_predictions(scene: Scene3D, masks: np.ndarray, encoder, queries: np.ndarray, vocab: Vocab,
                      cfg: MaskFeatureConfig, refiner, cache_path: str, key: str) -> dict:
    """Features, classes (label ids) and similarities of one scene, cached in ``cache_path``."""
    if os.path.isfile(cache_path):
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {k: z[k] for k in ("features", "classes", "similarity", "seconds")}
    start = time.perf_counter()
    feats = compute_mask_features(scene, masks, encoder, cfg, refiner=refiner, progress=True)
    seconds = time.perf_counter() - start
    idx, sim = classify_masks(feats, queries)
    out = {"features": feats, "classes": np.asarray(vocab.ids, dtype=np.int64)[idx], "similarity": sim,
           "seconds": np.float64(seconds)}
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    tmp = cache_path + ".tmp.npz"
    np.savez(tmp, key=np.str_(key), **out)
    os.replace(tmp, cache_path)
    return out


def split_means(per_class: dict, members: Sequence[str]) -> dict:
    out = {}
    for k in ("ap", "ap50", "ap25"):
        vals = [per_class[m][k] for m in members if m in per_class and not math.isnan(per_class[m][k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def format_table(results: dict, vocab: Vocab) -> str:
    def f(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"

    names = list(results)
    head = "| | " + " | ".join(f"{n} AP | {n} AP50 | {n} AP25" for n in names) + " |"
    lines = [head, "|---|" + "---:|" * (3 * len(names))]
    rows = [("**all**", {n: results[n] for n in names})]
    if vocab.base:
        rows.append(("**base**", {n: results[n]["base"] for n in names}))
        rows.append(("**novel**", {n: results[n]["novel"] for n in names}))
    rows += [(c, {n: results[n]["per_class"][c] for n in names}) for c in vocab.names]
    for label, r in rows:
        lines.append(f"| {label} | " + " | ".join(" | ".join(f(r[n][k]) for k in ("ap", "ap50", "ap25")) for n in names) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data-root", help="dataset root (ScanNet++ release or OpenMask3D processed scenes)")
    p.add_argument("--layout", choices=["auto", "scannetpp", "openmask3d"], default="auto")
    p.add_argument("--scenes", nargs="+", help="scene ids, a .txt file of ids, or a generated data folder "
                   "(default: the 16 ScanNet++ Offices test scenes)")
    p.add_argument("--generate", metavar="DIR", help="generate scenes into DIR (both layouts) and evaluate them")
    p.add_argument("--num-scenes", type=int, default=2, help="scenes to generate with --generate")
    p.add_argument("--checkpoint", help="OpenDAS checkpoint folder (adapted encoder)")
    p.add_argument("--clip-only", action="store_true", help="no checkpoint: evaluate the CLIP column alone")
    p.add_argument("--model-config", action="append", default=[], metavar="JSON_OR_DIR",
                   help="open_clip model config (file or folder) to register first (repeatable)")
    p.add_argument("--openmask3d-features", metavar="DIR",
                   help="CLIP column from OpenMask3D's *_openmask3d_features.npy in DIR (needs --proposals files)")
    p.add_argument("--opendas-features", metavar="DIR",
                   help="OpenDAS column from the *_openmask3d_features.npy of OpenMask3D's feature step run with "
                        "the checkpoint (integrations.openmask3d.launch); default: computed here")
    p.add_argument("--model", help="open_clip model name of the CLIP baseline (default: the checkpoint's)")
    p.add_argument("--pretrained", help="pretrained tag or weights file ('none' = random; default: the checkpoint's)")
    p.add_argument("--template", default=OPENMASK3D_TEMPLATE, help="query sentence for the CLIP baseline")
    p.add_argument("--proposals", choices=["files", "gt"], default=None,
                   help="mask proposals: Mask3D files or ground-truth instances (default: gt for generated data, else files)")
    p.add_argument("--masks-dir", help="folder with <scene>*_masks.pt|.npy proposal files")
    p.add_argument("--classes", help="class list: classes.json or .txt (default: <data-root>/classes.json or ScanNet++ labels)")
    p.add_argument("--base-classes", help="base (training) classes file; the rest are novel")
    p.add_argument("--scores", choices=["ones", "similarity"], default="ones",
                   help="mask confidence: 1.0 for all (OpenMask3D's evaluation) or the cosine similarity")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--expansion", type=float, default=0.1)
    p.add_argument("--vis-threshold", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--frame-step", type=int, default=1, help="use every n-th frame (OpenMask3D's `frequency`; its configs use 10)")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="depth PNG units per metre (processed layout)")
    p.add_argument("--openmask3d-rounding", action="store_true", help="OpenMask3D's int-cast pixel rounding")
    p.add_argument("--sam-checkpoint", help="SAM weights: refine projected masks with segment_anything")
    p.add_argument("--sam-model", default="vit_h")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="results/3d", help="results folder (per-scene npz + results.json)")
    p.add_argument("--json", help="also write the results JSON here")
    return p.parse_args(argv)


def resolve_scenes(args) -> List[str]:
    if args.generate:
        names = generate_dataset(args.generate, num_scenes=args.num_scenes)
        with open(os.path.join(args.generate, GENERATED_MARKER), "w", encoding="utf-8") as f:
            f.write("generated by eval/run_3d.py --generate; not a real dataset\n")
        args.data_root = args.data_root or os.path.join(args.generate, "openmask3d")
        args.proposals = args.proposals or "gt"
        return names
    if args.scenes and len(args.scenes) == 1 and os.path.isdir(args.scenes[0]):
        folder = args.scenes[0]
        if os.path.isdir(os.path.join(folder, "openmask3d")):
            folder = os.path.join(folder, "openmask3d")
        args.data_root = args.data_root or folder
        args.proposals = args.proposals or "gt"
        if os.path.isdir(os.path.join(folder, "data")):
            return sorted(os.listdir(os.path.join(folder, "data")))
        return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and d != "gt")
    if args.scenes and len(args.scenes) == 1 and args.scenes[0].endswith(".txt"):
        with open(args.scenes[0], encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return list(args.scenes) if args.scenes else default_scenes()


def feature_sources(args) -> Dict[str, Optional[str]]:
    """encoder name -> folder of OpenMask3D feature files to read, or None (computed here)."""
    sources = {CLIP: args.openmask3d_features, OPENDAS: args.opendas_features}
    if any(sources.values()) and args.proposals != "files":
        raise SystemExit("--openmask3d-features / --opendas-features need --proposals files (the mask files the "
                         "features were computed on)")
    for flag, path in (("--openmask3d-features", args.openmask3d_features), ("--opendas-features", args.opendas_features)):
        if path and not os.path.isdir(path):
            raise SystemExit(f"{flag}: folder not found: {path}")
    if args.opendas_features and not args.checkpoint:
        raise SystemExit("--opendas-features needs the checkpoint that computed them (--checkpoint DIR) for the text queries")
    return sources


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OPENDAS_THREADS", "1"))))
    if args.model_config:
        import open_clip

        for path in args.model_config:
            if not os.path.exists(path):
                raise SystemExit(f"--model-config: not found: {path}")
            open_clip.add_model_config(path)
    scenes = resolve_scenes(args)
    if not args.data_root:
        raise SystemExit("--data-root is required (or --generate DIR / --scenes GENERATED_DIR)")
    args.proposals = args.proposals or "files"
    source = SceneSource(args)
    if not args.scenes and not args.generate and source.layout == "openmask3d":
        scenes = source.scene_names()
    sources = feature_sources(args)
    vocab = source.vocabulary(scenes)
    cfg = MaskFeatureConfig(top_k=args.top_k, num_levels=args.levels, expansion_ratio=args.expansion,
                            vis_threshold=args.vis_threshold, batch_size=args.batch_size,
                            pixel_rounding="trunc" if args.openmask3d_rounding else "floor")
    refiner = SamRefiner.from_checkpoint(args.sam_checkpoint, args.sam_model, args.device) if args.sam_checkpoint else None
    encoders = build_encoders(args, args.device)
    queries = {name: encode_queries(enc, vocab.names, template) for name, (enc, template, _) in encoders.items()}

    gts, preds = {}, {name: {} for name in encoders}
    timing = {name: {"seconds": 0.0, "masks": 0} for name in encoders}
    unseen = {name: 0 for name in encoders}
    for name in tqdm(scenes, desc="scenes"):
        scene = source.scene(name)
        gt = source.ground_truth(name, scene.num_points, vocab)
        masks, masks_path = source.proposals(name, scene.num_points, gt)
        gts[name] = gt
        for enc_name, (enc, _, identity) in encoders.items():
            if sources.get(enc_name):
                path = find_openmask3d_features(sources[enc_name], name, masks_path)
                feats = read_openmask3d_features(path, masks.shape[1])
                if feats.shape[1] != queries[enc_name].shape[1]:
                    raise SystemExit(f"{path}: feature width {feats.shape[1]} but the {enc_name} encoder's text "
                                     f"features are {queries[enc_name].shape[1]} wide (another model?)")
                idx, sim = classify_masks(feats, queries[enc_name])
                out = {"classes": np.asarray(vocab.ids, dtype=np.int64)[idx], "similarity": sim, "seconds": None}
                unseen[enc_name] += int((np.abs(feats).sum(axis=1) == 0).sum())
            else:
                out = scene_predictions(scene, masks, enc, queries[enc_name], vocab, cfg, refiner,
                                        os.path.join(args.out, enc_name, f"{name}.npz"), cache_key(identity, cfg, masks, args))
                timing[enc_name]["seconds"] += float(out["seconds"])
                timing[enc_name]["masks"] += int(masks.shape[1])
            scores = np.ones(masks.shape[1]) if args.scores == "ones" else out["similarity"].astype(np.float64)
            preds[enc_name][name] = {"masks": masks, "scores": scores, "classes": out["classes"]}

    results = {}
    for enc_name in encoders:
        r = instance_ap(preds[enc_name], gts, vocab.ids, vocab.names)
        r["base"] = split_means(r["per_class"], vocab.base)
        r["novel"] = split_means(r["per_class"], vocab.novel)
        t = timing[enc_name]
        r["seconds_per_mask"] = t["seconds"] / t["masks"] if t["masks"] else None
        r["features"] = f"OpenMask3D feature files in {sources[enc_name]}" if sources.get(enc_name) else "computed here"
        r["masks_without_features"] = unseen[enc_name]
        results[enc_name] = r
    generated = source.is_generated()
    report = {"scenes": scenes, "layout": source.layout, "proposals": args.proposals, "scores": args.scores,
              "config": asdict(cfg), "classes": vocab.names, "base": vocab.base, "novel": vocab.novel,
              "generated": generated, "results": results}
    os.makedirs(args.out, exist_ok=True)
    for path in [os.path.join(args.out, "results.json")] + ([args.json] if args.json else []):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, sort_keys=True, default=float)
    kind = "GENERATED data (not a real dataset)" if generated else "data"
    print(f"{kind}: {len(scenes)} scene(s) from {args.data_root} ({source.layout} layout), proposals: {args.proposals}")
    for enc_name, r in results.items():
        note = f"; {r['masks_without_features']} mask(s) with all-zero features (no view saw them)" \
            if r["masks_without_features"] else ""
        print(f"  {enc_name}: features {r['features']}{note}")
    print(format_table(results, vocab))
    print(f"results: {os.path.join(args.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

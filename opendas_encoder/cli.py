"""Command line: ``opendas train | eval | demo | negatives | scan | query``.

Also runnable as ``python -m opendas_encoder.cli`` (e.g. under ``torchrun`` for multi-GPU training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import List, Optional


def _kv_options(items: Optional[List[str]]) -> dict:
    """['a=1', 'b=x'] (checked by :func:`_key_value`) -> {'a': 1, 'b': 'x'}; values parsed as YAML."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items or [])}


def cmd_train(args) -> int:
    from .train.config import load_config
    from .train.pipeline import run_experiment

    config = load_config(args.config, args.set)
    if args.output_dir:
        config.output_dir = args.output_dir
    _check_writable(config.output_dir)
    created = _init_distributed(config.runtime.device)
    try:
        results = run_experiment(config, resume=args.resume, progress=not args.quiet, plots=not args.no_plots)
        rank = _rank()
    except KeyboardInterrupt:
        print(f"opendas train: {_interrupted_note(args, config.output_dir)}", file=sys.stderr)
        return 130
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        if results.get("finished_before"):
            print(f"opendas train: {config.output_dir} is a finished run: nothing to resume; its report:",
                  file=sys.stderr)
        with open(os.path.join(config.output_dir, "report.md")) as f:
            print(f.read())
        print(f"checkpoint: {results['checkpoint']}")
    return 0


def _check_writable(folder: str) -> None:
    """Create the run folder and write a probe file in it, before any work: ValueError naming the folder
    and the system's reason (read-only, permission, a file on the path) otherwise."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"output folder {folder}: cannot write there ({exc.strerror or exc})") from None


def _interrupted_note(args, run_dir: str) -> str:
    """One line after Ctrl-C: where the last saved training state is and the command that continues from it."""
    import shlex

    from .train.state import latest_state

    try:
        folder = latest_state(run_dir)
    except (OSError, ValueError):
        folder = None
    if folder is None:
        return (f"interrupted before the first epoch ended: {run_dir} has no saved training state (one is saved "
                "at the end of every epoch), so running the command again starts over")
    command = ["opendas", "train", args.config, "--resume"] + [a for kv in args.set for a in ("--set", kv)] + \
        (["--output-dir", args.output_dir] if args.output_dir else [])
    return (f"interrupted; the last saved training state is {folder} (the end of its epoch): "
            f"`{shlex.join(command)}` continues exactly from there")


def _init_distributed(device: str = "auto") -> bool:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1); True when this call did.

    NCCL when the run's device (``runtime.device``) is CUDA, each rank on GPU ``LOCAL_RANK``; gloo otherwise.
    """
    import torch
    import torch.distributed as dist

    from .train.trainer import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    on_cuda = resolve_device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if on_cuda else "gloo")
    return True


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def cmd_eval(args) -> int:
    from pydantic import ValidationError

    from . import load_encoder
    from .core.checkpoint import load_base_model
    from .plots import format_table, metric_cell
    from .train.config import DataConfig, DatasetSpec, format_validation_error
    from .train.data import prepare_segments
    from .train.evaluate import ZERO_SHOT_TEMPLATE, evaluate, zero_shot_encoder
    from .train.pipeline import METRIC_KEYS, dataset_from_spec, derive_vocabulary, write_plots, zero_shot_note
    from .train.trainer import resolve_device
    from .vocab import Vocabulary

    try:
        spec = DatasetSpec(name=args.dataset, root=args.root, split=args.split, options=_kv_options(args.option))
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, "--dataset/--root/--split/--option")) from None
    device = resolve_device(args.device)
    encoder = load_encoder(args.checkpoint, device=device, pretrained=args.pretrained)
    # zero-shot CLIP is the recorded base model, for every method (WiSE-FT's encoder.clip is interpolated)
    zero_shot = None if args.no_zero_shot else zero_shot_encoder(
        encoder, clip=load_base_model(args.checkpoint, device=device, pretrained=args.pretrained))
    meta = getattr(encoder, "checkpoint_metadata", {}) or {}
    # how segments are cut: the run's (recorded at training) unless overridden here
    cut = {}
    for key, given, default in (("expand_ratio", args.expand_ratio, DataConfig.model_fields["expand_ratio"].default),
                                ("min_pixels", args.min_pixels, DataConfig.model_fields["min_pixels"].default)):
        source = "--" + key.replace("_", "-") if given is not None else "checkpoint" if key in meta else "default"
        cut[key] = (given if given is not None else meta.get(key, default), source)
    dataset = dataset_from_spec(spec, progress=not args.quiet)
    if args.vocabulary:
        vocab = Vocabulary.load(args.vocabulary)
    else:
        test = derive_vocabulary(dataset, dataset).test
        base = meta.get("base_classes")
        if not base:
            print(f"opendas eval: warning: {args.checkpoint} records no base classes, so every test class counts "
                  "as base and N-F1 is empty; pass --vocabulary for a base/novel split", file=sys.stderr)
            base = test
        vocab = Vocabulary(base=list(base), test=test)
    prepared = prepare_segments(dataset, encoder.preprocess, vocab.test, encoder.image_size,
                                expand_ratio=cut["expand_ratio"][0], min_pixels=cut["min_pixels"][0],
                                progress=not args.quiet)
    adapted = evaluate(encoder, prepared, vocab, device, args.batch_size, not args.quiet)
    zs = None if zero_shot is None else evaluate(zero_shot, prepared, vocab, device, args.batch_size, not args.quiet)
    rows = []
    if zs is not None:
        rows.append(["zero-shot CLIP"] + [metric_cell(zs.metrics[k]) for k in METRIC_KEYS])
    rows.append([f"adapted ({getattr(encoder, 'method', 'opendas')})"] +
                [metric_cell(adapted.metrics[k], zs.metrics[k] if zs else None) for k in METRIC_KEYS])
    print(f"{dataset.name}: {len(prepared)} segments, {len(vocab.test)} test classes "
          f"({len(vocab.test_base)} base, {len(vocab.novel)} novel); "
          + ", ".join(f"{k} {v} ({src})" for k, (v, src) in cut.items()))
    print(format_table(rows, ["encoder", "Acc", "W-F1", "B-F1", "N-F1"]))
    print(zero_shot_note())
    print(prepared.skips.summary())
    out = {"adapted": {k: adapted.metrics[k] for k in METRIC_KEYS + ("n", "n_base", "n_novel")},
           "per_class": adapted.metrics["per_class"], "skipped": prepared.skips.to_dict(),
           "checkpoint": args.checkpoint, "dataset": dataset.name, "zero_shot_template": ZERO_SHOT_TEMPLATE,
           "segments": {k: {"value": v, "from": src} for k, (v, src) in cut.items()}}
    if zs is not None:
        out["zero_shot"] = {k: zs.metrics[k] for k in METRIC_KEYS + ("n", "n_base", "n_novel")}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        out["plots"] = write_plots(args.out, vocab, adapted, zs, f"{dataset.name}: {args.checkpoint}",
                                   getattr(encoder, "method", "opendas"))
    json_path = args.json or (os.path.join(args.out, "eval_results.json") if args.out else None)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True, default=float)
        print(f"results: {json_path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoOptions, main_demo

    scale = args.scene_scale
    if args.world_size_deprecated is not None:
        warnings.warn("--world-size is renamed --scene-scale (it scales the number of generated scenes, not a "
                      "process count)", FutureWarning, stacklevel=2)
        if scale is not None and scale != args.world_size_deprecated:
            raise ValueError("--scene-scale and --world-size (its old name) disagree; give only --scene-scale")
        scale = args.world_size_deprecated
    scale = 1.0 if scale is None else scale
    from .generated.world.domains import get_domain

    get_domain(args.domain)  # an unknown domain fails before any work, listing the known ones
    opts = DemoOptions(seeds=args.seeds, out_dir=args.out, device=args.device, progress=not args.quiet,
                       domain=args.domain, held_out=args.held_out,
                       baselines=[m for m in (args.baselines or "").split(",") if m],
                       stage1_epochs=args.epochs[0], stage2_epochs=args.epochs[1],
                       variants=tuple(v for v in args.variants.split(",") if v))
    opts.train_scenes = max(4, int(round(opts.train_scenes * scale)))
    opts.test_scenes = max(4, int(round(opts.test_scenes * scale)))
    main_demo(opts, args.json)
    return 0


def cmd_negatives(args) -> int:
    from .negatives import llm_prompt, mine_negatives
    from .vocab import read_class_list, validate_negatives

    if args.action == "prompt":
        print(llm_prompt(read_class_list(args.classes)))
        return 0
    if args.action == "validate":
        with open(args.file) as f:
            data = json.load(f)
        problems = validate_negatives(data, classes=read_class_list(args.classes) if args.classes else None)
        if problems:
            print(f"{args.file}: {len(problems)} problem(s)")
            for p in problems:
                print("  " + p)
            return 1
        print(f"{args.file}: valid ({len(data)} classes)")
        return 0
    from .core.factory import create_encoder

    print(f"mining with {args.model} ({args.pretrained or 'random weights'})", file=sys.stderr)
    encoder = create_encoder("zeroshot", args.model, args.pretrained or None)
    classes = read_class_list(args.classes)
    exclude = read_class_list(args.exclude) if args.exclude else []
    mined = mine_negatives(encoder, classes, read_class_list(args.candidates), exclude=exclude)
    text = json.dumps(mined, indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"wrote {len(mined)} classes to {args.out}")
    else:
        print(text)
    return 0


def cmd_scan(args) -> int:
    from .scan.importers import import_scan

    try:
        result = import_scan(args.src, args.out, format=args.format, frame_step=args.frame_step,
                             voxel_size=args.voxel_size, min_confidence=args.min_confidence,
                             depth_unit=args.depth_unit, max_depth=args.max_depth, world_up=args.world_up,
                             overwrite=args.overwrite, progress=not args.quiet)
    except ImportError as exc:  # an optional reader dependency (lzfse): one line, exit 2
        raise ValueError(str(exc)) from None
    m = result.metadata
    print(f"imported {m['format']} {m['source']}: {result.num_frames} frames, {result.num_points} points "
          f"(voxel {m['voxel_size']} m) -> {result.out} (scan.json, sanity.png)")
    return 0


def _add_scan_parser(sub) -> None:
    """``opendas scan import SRC OUT [...]`` (issue 23, step 1)."""
    from .scan.conventions import WORLD_UP_CHOICES  # numpy only: the parser stays cheap to build
    from .scan.source import DEPTH_UNITS, FORMATS

    s = sub.add_parser("scan", help="own RGB-D scans: import a phone capture into a processed scene folder")
    ssub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    i = ssub.add_parser("import", help="nerfstudio transforms.json, Record3D .r3d or ScanNet++ iPhone -> "
                        "OpenMask3D processed layout + fused point cloud + scan.json + sanity.png",
                        description="Convert a capture to OpenCV camera-to-world poses in a z-up world, uint16 mm "
                        "depth, colour and depth intrinsics, and a fused, voxel-downsampled cloud; every conversion "
                        "is recorded in OUT/scan.json. Written to a temporary folder and renamed to OUT at the end. "
                        "Conventions, auto rules and refusals: docs/scan_import.md.")
    i.add_argument("src", help="capture: a .r3d file, a nerfstudio folder (or its transforms.json), or a ScanNet++ "
                   "scene folder (<root>/data/<scene_id>)")
    i.add_argument("out", help="output scene folder (its name names the .ply)")
    i.add_argument("--format", choices=FORMATS, default="auto", help="source format (default: detected)")
    i.add_argument("--frame-step", type=int, default=1, metavar="N", help="keep every N-th frame")
    i.add_argument("--voxel-size", type=_positive_float, default=0.02, metavar="M",
                   help="voxel edge of the fused cloud in metres (default 0.02)")
    i.add_argument("--min-confidence", type=int, choices=(0, 1, 2), default=1,
                   help="drop depth pixels whose ARKit confidence is below this (0 low, 1 medium, 2 high; default 1)")
    i.add_argument("--depth-unit", choices=DEPTH_UNITS, default="auto",
                   help="unit of nerfstudio depth images (auto: integer images mm, float images metres)")
    i.add_argument("--max-depth", type=_positive_float, default=None, metavar="M",
                   help="drop depth beyond M metres (default: keep all)")
    i.add_argument("--world-up", choices=("auto",) + WORLD_UP_CHOICES, default="auto",
                   help="the source world's up axis (auto: Record3D +y, ScanNet++ +z, nerfstudio estimated from "
                   "the cameras)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_scan)


def _key_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def _epochs(text: str) -> tuple:
    """'5' (both stages) or '5,3' (stage 1, stage 2) -> (stage1, stage2)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected N (both stages) or S1,S2 (stage 1, stage 2), non-negative "
                                         f"integers, got {text!r}")
    return int(parts[0]), int(parts[-1])


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = argparse.ArgumentParser(prog="opendas", description="OpenDAS: adapt CLIP to a segmentation domain "
                                "with deep visual and text prompts")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                   help="print the package version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train from a YAML/JSON config (two stages for OpenDAS), then evaluate",
                       description="Train and evaluate one configuration; writes the run folder (output_dir).")
    t.add_argument("config", help="training config, YAML or JSON (see opendas_encoder.train.config)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    t.add_argument("--set", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set schedule.lr=0.01; repeat for more")
    t.add_argument("--output-dir", help="run folder (overrides the config's output_dir)")
    t.add_argument("--no-plots", action="store_true", help="do not draw confusion matrices, t-SNE and loss curves")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint against zero-shot CLIP on a segment dataset")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder (a run's final/)")
    e.add_argument("--dataset", required=True, help="registry name: generic, ade20k-150, kitti-360, "
                   "scannetpp-offices, generated-world")
    e.add_argument("--root", help="dataset folder (not for generated-world)")
    e.add_argument("--split", default=None, help="split to evaluate (default: the loader's)")
    e.add_argument("--option", nargs="*", type=_key_value, metavar="KEY=VALUE",
                   help="dataset options, e.g. n_scenes=50 seed=7")
    e.add_argument("--vocabulary", help="JSON {base: [...], test: [...]}; default: base classes from the checkpoint")
    e.add_argument("--pretrained", help="override the base model's pretrained tag / weights file (an open_clip state "
                   "dict, .safetensors or .pt); required for a checkpoint whose base had random weights")
    e.add_argument("--expand-ratio", type=float, default=None,
                   help="grow each segment's crop box by this fraction (default: the run's, from the checkpoint)")
    e.add_argument("--min-pixels", type=int, default=None,
                   help="skip segments with fewer pixels (default: the run's, from the checkpoint)")
    e.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    e.add_argument("--device", default="auto", help="torch device; auto = cuda if available")
    e.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot CLIP row")
    e.add_argument("--out", help="folder for plots and eval_results.json")
    e.add_argument("--json", help="write the results JSON here")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="adapt the shipped small CLIP on the generated world and print the table")
    d.add_argument("--seeds", type=int, default=3, help="runs per method (seeds 0..N-1)")
    d.add_argument("--json", help="results JSON (default: OUT/demo_results.json)")
    d.add_argument("--out", default="runs/demo", help="folder for the runs, checkpoints and plots")
    d.add_argument("--baselines", help="comma-separated baseline methods to run beside OpenDAS, e.g. vpt,maple")
    d.add_argument("--variants", default="opendas,opendas-paper",
                   help="OpenDAS variants: opendas (the library default, preset 'default'), opendas-paper (the "
                        "paper's method exactly, preset 'paper'), opendas-carry (the paper's with deep text prompts "
                        "that start as the frozen model's hidden states)")
    d.add_argument("--scene-scale", type=_positive_float, default=None, metavar="F",
                   help="multiply the number of generated scenes (160 train, 100 test) by F")
    d.add_argument("--world-size", type=_positive_float, default=None, dest="world_size_deprecated",
                   help="deprecated name of --scene-scale")
    d.add_argument("--epochs", type=_epochs, default=(5, 5), metavar="N|S1,S2",
                   help="epochs of stage 1 and stage 2: 'S1,S2', or one number for both (default 5,5 as in the paper)")
    d.add_argument("--domain", default="cast", help="generated target domain: cast (the original world), frames "
                   "(text-side shift), siblings (fine-grained), night (strong visual shift); docs/domains.md")
    d.add_argument("--held-out", action="store_true",
                   help="test on held-out scenes (test seeds 1000000 + s) that no selection or tuning run saw; "
                        "by default the test scenes are those the library default was selected on (seeds 1000 + s)")
    d.add_argument("--device", default="auto", help="torch device; auto = cuda if available")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    n = sub.add_parser("negatives", help="negative-query tools: mine, prompt, validate")
    nsub = n.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = nsub.add_parser("mine", help="propose hard negatives from a candidate list by CLIP text similarity")
    m.add_argument("--classes", required=True, help="class list file (one per line)")
    m.add_argument("--candidates", required=True, help="candidate vocabulary file (one per line)")
    m.add_argument("--exclude", help="names never to propose (e.g. novel test classes)")
    m.add_argument("--model", required=True, help="open_clip model whose text tower ranks the candidates, "
                   "e.g. ViT-L-14 (the generated world's: opendas-world-vit)")
    m.add_argument("--pretrained", required=True, help="its pretrained tag or weights file, e.g. openai "
                   "(generated-world for opendas-world-vit; '' = random weights)")
    m.add_argument("--out", help="write the JSON here (default: print it)")
    pr = nsub.add_parser("prompt", help="print the paper's Appendix C instruction for a language model")
    pr.add_argument("--classes", required=True, help="class list file (one per line)")
    v = nsub.add_parser("validate", help="check a negatives JSON (five per class, distinct, never the class)")
    v.add_argument("file", help="negatives JSON {class: [five negatives]}")
    v.add_argument("--classes", help="class list file: every class must have negatives")
    n.set_defaults(func=cmd_negatives)
    _add_scan_parser(sub)

    from .scan.query_cli import add_query_parser  # `opendas query` (own scans); heavy imports inside

    add_query_parser(sub)

    from .scan.view_cli import add_view_parser  # `opendas view` (web viewer); viser imported inside

    add_view_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .train.trainer import flush_denormal

    try:
        with flush_denormal():  # small-model CPU work slows several-fold on denormals (measured)
            return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"opendas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder or file the command reads or writes: the path and the system's reason
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"opendas {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"opendas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``opendas train | eval | demo | negatives``.

Also runnable as ``python -m opendas_encoder.cli`` (e.g. under ``torchrun`` for multi-GPU training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional


def _kv_options(items: Optional[List[str]]) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"option {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def cmd_train(args) -> int:
    from .train.config import load_config
    from .train.pipeline import run_experiment

    config = load_config(args.config, args.set)
    if args.output_dir:
        config.output_dir = args.output_dir
    created = _init_distributed(config.runtime.device)
    try:
        results = run_experiment(config, resume=args.resume, progress=not args.quiet, plots=not args.no_plots)
        rank = _rank()
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        with open(os.path.join(config.output_dir, "report.md")) as f:
            print(f.read())
        print(f"checkpoint: {results['checkpoint']}")
    return 0


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
    from . import load_encoder
    from .data.registry import build_dataset
    from .plots import format_table, metric_cell
    from .train.data import prepare_segments
    from .train.evaluate import evaluate, zero_shot_encoder
    from .train.pipeline import METRIC_KEYS, derive_vocabulary, write_plots
    from .train.trainer import resolve_device
    from .vocab import Vocabulary

    device = resolve_device(args.device)
    encoder = load_encoder(args.checkpoint, device=device, pretrained=args.pretrained)
    dataset = build_dataset(args.dataset, args.root, args.split, **_kv_options(args.option))
    if args.vocabulary:
        vocab = Vocabulary.load(args.vocabulary)
    else:
        test = derive_vocabulary(dataset, dataset).test
        base = encoder.checkpoint_metadata.get("base_classes") or test
        vocab = Vocabulary(base=list(base), test=test)
    prepared = prepare_segments(dataset, encoder.preprocess, vocab.test, encoder.image_size,
                                expand_ratio=args.expand_ratio, progress=not args.quiet)
    adapted = evaluate(encoder, prepared, vocab, device, args.batch_size, not args.quiet)
    zs = None if args.no_zero_shot else evaluate(zero_shot_encoder(encoder), prepared, vocab, device,
                                                 args.batch_size, not args.quiet)
    rows = []
    if zs is not None:
        rows.append(["zero-shot CLIP"] + [metric_cell(zs.metrics[k]) for k in METRIC_KEYS])
    rows.append([f"adapted ({getattr(encoder, 'method', 'opendas')})"] +
                [metric_cell(adapted.metrics[k], zs.metrics[k] if zs else None) for k in METRIC_KEYS])
    print(f"{dataset.name}: {len(prepared)} segments, {len(vocab.test)} test classes "
          f"({len(vocab.test_base)} base, {len(vocab.novel)} novel)")
    print(format_table(rows, ["encoder", "Acc", "W-F1", "B-F1", "N-F1"]))
    print(prepared.skips.summary())
    out = {"adapted": {k: adapted.metrics[k] for k in METRIC_KEYS + ("n", "n_base", "n_novel")},
           "per_class": adapted.metrics["per_class"], "skipped": prepared.skips.to_dict(),
           "checkpoint": args.checkpoint, "dataset": dataset.name}
    if zs is not None:
        out["zero_shot"] = {k: zs.metrics[k] for k in METRIC_KEYS + ("n", "n_base", "n_novel")}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        out["plots"] = write_plots(args.out, vocab, adapted, zs, f"{dataset.name}: {args.checkpoint}")
    json_path = args.json or (os.path.join(args.out, "eval_results.json") if args.out else None)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True, default=float)
        print(f"results: {json_path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoOptions, main_demo

    epochs = [int(x) for x in args.epochs.split(",")] if args.epochs else [5, 5]
    opts = DemoOptions(seeds=args.seeds, out_dir=args.out, device=args.device, progress=not args.quiet,
                       baselines=[m for m in (args.baselines or "").split(",") if m],
                       stage1_epochs=epochs[0], stage2_epochs=epochs[1],
                       variants=tuple(v for v in args.variants.split(",") if v))
    opts.train_scenes = max(4, int(round(opts.train_scenes * args.world_size)))
    opts.test_scenes = max(4, int(round(opts.test_scenes * args.world_size)))
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

    encoder = create_encoder("zeroshot", args.model, args.pretrained)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opendas", description="OpenDAS: adapt CLIP to a segmentation domain "
                                "with deep visual and text prompts")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="two-stage training from a YAML/JSON config")
    t.add_argument("config")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config values, e.g. schedule.lr=0.01")
    t.add_argument("--output-dir")
    t.add_argument("--no-plots", action="store_true")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint against zero-shot CLIP on a segment dataset")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", required=True, help="registry name: generic, ade20k-150, kitti-360, "
                   "scannetpp-offices, generated-world")
    e.add_argument("--root")
    e.add_argument("--split", default=None)
    e.add_argument("--option", nargs="*", metavar="KEY=VALUE", help="dataset options, e.g. n_scenes=50 seed=7")
    e.add_argument("--vocabulary", help="JSON {base: [...], test: [...]}; default: base classes from the checkpoint")
    e.add_argument("--pretrained", help="override the base model's pretrained tag / weights file")
    e.add_argument("--expand-ratio", type=float, default=0.0)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--device", default="auto")
    e.add_argument("--no-zero-shot", action="store_true")
    e.add_argument("--out", help="folder for plots and eval_results.json")
    e.add_argument("--json")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="adapt the shipped small CLIP on the generated world and print the table")
    d.add_argument("--seeds", type=int, default=3)
    d.add_argument("--json")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--baselines", help="comma-separated baseline methods to run beside OpenDAS")
    d.add_argument("--variants", default="opendas,opendas-carry",
                   help="OpenDAS variants: opendas (the paper's init), opendas-carry (deep text prompts start "
                        "as the frozen model's hidden states)")
    d.add_argument("--world-size", type=float, default=1.0, help="scale the number of generated scenes")
    d.add_argument("--epochs", help="stage1,stage2 epochs (default 5,5 as in the paper)")
    d.add_argument("--device", default="auto")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    n = sub.add_parser("negatives", help="negative-query tools")
    nsub = n.add_subparsers(dest="action", required=True)
    m = nsub.add_parser("mine", help="propose hard negatives from a candidate list by CLIP text similarity")
    m.add_argument("--classes", required=True, help="class list file (one per line)")
    m.add_argument("--candidates", required=True, help="candidate vocabulary file (one per line)")
    m.add_argument("--exclude", help="names never to propose (e.g. novel test classes)")
    m.add_argument("--model", default="opendas-world-vit")
    m.add_argument("--pretrained", default="generated-world")
    m.add_argument("--out")
    pr = nsub.add_parser("prompt", help="print the paper's Appendix C instruction for a language model")
    pr.add_argument("--classes", required=True)
    v = nsub.add_parser("validate", help="check a negatives JSON (five per class, distinct, never the class)")
    v.add_argument("file")
    v.add_argument("--classes")
    n.set_defaults(func=cmd_negatives)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"opendas {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

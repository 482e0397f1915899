"""``opendas query SCENE "text" ["text" ...]``: the query command (parser + handler; heavy imports lazy)."""

from __future__ import annotations

import argparse
import os
import re
import sys

#: The CLI's fixed absolute colour scale (cosine similarity); the same for every query of every scene.
DEFAULT_VMIN = 0.1
DEFAULT_VMAX = 0.4
DEFAULT_MODEL = "opendas-world-vit"
DEFAULT_PRETRAINED = "generated-world"


def add_encoder_options(parser) -> None:
    """--checkpoint / --model / --pretrained / --proposals: which encoder and proposals a scene command uses
    (``opendas query`` and ``opendas view``; read by :func:`load_query_encoder`)."""
    parser.add_argument("--checkpoint",
                        help="adapted encoder checkpoint folder (default: zero-shot --model/--pretrained)")
    parser.add_argument("--model", default=None, help=f"open_clip model for zero-shot queries (default "
                        f"{DEFAULT_MODEL}, the generated world's small CLIP: use e.g. ViT-B-16 --pretrained openai "
                        "for real scans)")
    parser.add_argument("--pretrained", default=None, help=f"its weights tag (default {DEFAULT_PRETRAINED})")
    parser.add_argument("--proposals", default="auto", help="auto (the scene's Mask3D *_masks.pt if any, else the "
                        "CPU fallback), fallback, or a proposal file (.pt/.npy, num_points x num_masks)")


def add_colour_scale_options(parser) -> None:
    """--vmin / --vmax: the absolute colour scale (cosine similarity) of a scene command."""
    parser.add_argument("--vmin", type=float, default=DEFAULT_VMIN, help=f"similarity at the colour scale's low end "
                        f"(default {DEFAULT_VMIN})")
    parser.add_argument("--vmax", type=float, default=DEFAULT_VMAX,
                        help=f"similarity at its high end (default {DEFAULT_VMAX})")


def add_run_options(parser, device_help: str) -> None:
    """--device / --quiet of a scene command."""
    parser.add_argument("--device", default="cpu", help=device_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage timings")


def add_query_parser(sub) -> None:
    """Add the ``query`` subcommand to the CLI's subparsers."""
    q = sub.add_parser("query", help="query a processed scan in free text: ranked instances, coloured PLYs, JSON",
                       description="Rank the instances of a processed scene folder (OpenMask3D's layout, e.g. written "
                       "by `opendas scan import`) for a free-text query. Proposals and mask features are computed "
                       "once and cached under SCENE/cache/.")
    q.add_argument("scene", help="processed scene folder")
    q.add_argument("texts", nargs="+", metavar="TEXT", help="query text(s); a mask matches when it matches any")
    q.add_argument("--negative", action="append", default=[], metavar="TEXT",
                   help="push down masks closer to this text than to the query; repeat for more")
    add_encoder_options(q)
    q.add_argument("--top-k", type=int, default=10, help="instances to return (default 10)")
    q.add_argument("--threshold", type=float, default=None, help="colour only masks scoring at least this")
    add_colour_scale_options(q)
    q.add_argument("--out", help="output folder (default SCENE/queries/<text>)")
    add_run_options(q, "torch device for feature extraction (default cpu)")
    q.set_defaults(func=cmd_query)


def _slug(texts) -> str:
    s = re.sub(r"[^0-9A-Za-z]+", "_", "+".join(texts)).strip("_")
    return (s or "query")[:60]


def load_query_encoder(checkpoint=None, model=None, pretrained=None, device="cpu"):
    """An adapted encoder from ``checkpoint``, else zero-shot ``model`` / ``pretrained`` (default: the
    generated world's CLIP)."""
    import opendas_encoder as oe

    if checkpoint:
        return oe.load_encoder(checkpoint, device=device).eval()
    return oe.create_encoder("zeroshot", model or DEFAULT_MODEL,
                             DEFAULT_PRETRAINED if pretrained is None and not model else pretrained or None,
                             device=device).eval()


def cmd_query(args) -> int:
    from .index import load_index
    from .query import query_scene, write_query_outputs

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.vmax > args.vmin:
        raise ValueError(f"--vmax must be greater than --vmin, got {args.vmin} and {args.vmax}")
    if not os.path.isdir(args.scene):
        raise FileNotFoundError(f"scene folder not found: {args.scene}")
    if args.proposals not in ("auto", "fallback") and not os.path.isfile(args.proposals):
        raise FileNotFoundError(f"proposal file not found: {args.proposals}")
    encoder = load_query_encoder(args.checkpoint, args.model, args.pretrained, args.device)
    index = load_index(args.scene, encoder, proposals=None if args.proposals == "auto" else args.proposals,
                       progress=not args.quiet)
    result = query_scene(index, encoder, args.texts, args.negative, top_k=args.top_k)
    out = args.out or os.path.join(args.scene, "queries", _slug(args.texts))
    write_query_outputs(index, result, out, args.threshold, args.vmin, args.vmax)
    print(f"{len(index.features)} masks ({index.proposal_source}), features "
          f"{'from cache' if index.from_cache else 'computed'}; query {args.texts}"
          + (f" not {args.negative}" if args.negative else ""))
    print(f"{'rank':>4} {'mask':>5} {'score':>7} {'points':>7}  box min -> max (m)  views")
    for r, inst in enumerate(result.ranked):
        box = " ".join(f"{v:.2f}" for v in inst.box_min) + " -> " + " ".join(f"{v:.2f}" for v in inst.box_max)
        print(f"{r:>4} {inst.mask_id:>5} {inst.score:>7.3f} {inst.num_points:>7}  {box}  {inst.views}")
    print(f"wrote {out} (scene.ply coloured on the fixed scale {args.vmin}..{args.vmax}, one PLY per instance, "
          "result.json)")
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience
    p = argparse.ArgumentParser(prog="opendas")
    add_query_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"opendas query: error: {exc}", file=sys.stderr)
        return 2

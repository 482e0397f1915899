"""``opendas view SCENE``: the web viewer command (parser + handler; heavy imports lazy)."""

from __future__ import annotations

import os
import time

from .query_cli import add_colour_scale_options, add_encoder_options, add_run_options, load_query_encoder


def add_view_parser(sub) -> None:
    """Add the ``view`` subcommand to the CLI's subparsers."""
    v = sub.add_parser("view", help="a local web page to query a processed scan in free text (viser)",
                       description="Serve a web page (viser; its client runs offline) with the scene's point cloud "
                       "coloured by absolute similarity to a free-text query, the ranked instances, a threshold "
                       "slider, click-to-isolate and the top views behind each result. --export DIR writes an "
                       "offline copy for the --query texts instead of serving.")
    v.add_argument("scene", help="processed scene folder (OpenMask3D's layout, e.g. written by `opendas scan import`)")
    add_encoder_options(v)
    v.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8080, help="port (default 8080; the next free one if taken)")
    v.add_argument("--query", action="append", default=[], metavar="TEXT",
                   help="a query to show at start; with --export, one exported page per --query")
    v.add_argument("--negative", action="append", default=[], metavar="TEXT", help="negative text for --query")
    v.add_argument("--export", metavar="DIR", help="write an offline copy (index.html + one self-contained page per "
                   "query) to DIR and exit instead of serving")
    v.add_argument("--threshold", type=float, default=None, help="start of the threshold slider (default --vmin)")
    add_colour_scale_options(v)
    v.add_argument("--top-k", type=int, default=10, help="instances listed (default 10)")
    add_run_options(v, "torch device for feature extraction and queries (default cpu)")
    v.set_defaults(func=cmd_view)


def cmd_view(args) -> int:
    from .index import load_index
    from .viewer import SceneViewer, export_static

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.vmax > args.vmin:
        raise ValueError(f"--vmax must be greater than --vmin, got {args.vmin} and {args.vmax}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if not os.path.isdir(args.scene):
        raise FileNotFoundError(f"scene folder not found: {args.scene}")
    if args.proposals not in ("auto", "fallback") and not os.path.isfile(args.proposals):
        raise FileNotFoundError(f"proposal file not found: {args.proposals}")
    if args.negative and not args.query:
        raise ValueError("--negative needs a --query")
    encoder = load_query_encoder(args.checkpoint, args.model, args.pretrained, args.device)
    index = load_index(args.scene, encoder, proposals=None if args.proposals == "auto" else args.proposals,
                       progress=not args.quiet)
    viewer = SceneViewer(index, encoder, host=args.host, port=args.port, vmin=args.vmin, vmax=args.vmax,
                         threshold=args.threshold, top_k=args.top_k, verbose=False)
    try:
        if args.export:
            out = export_static(viewer, args.export, [[q] for q in args.query], args.negative)
            print(f"wrote {out}: open {os.path.join(out, 'index.html')} in a browser (no server needed)")
            return 0
        if args.query:
            viewer.run_query(args.query[:1], args.negative)
            viewer.query_box.value = args.query[0]
            viewer.negative_box.value = "; ".join(args.negative)
        print(f"{len(index.points):,} points, {index.num_masks} instances ({index.proposal_source}); serving "
              f"http://{args.host}:{viewer.port}/ (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    finally:
        viewer.close()

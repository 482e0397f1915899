"""Command line of the ScanNet++ Offices data (the paper's class-vocabulary counts: 156 training,
233 test, 108 base, 125 novel labels)::

    python -m opendas_encoder.data.scannetpp vocab --root <root> --out scannetpp_offices_vocab.json
    python -m opendas_encoder.data.scannetpp render --root <root> --split train --stride 10
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .dataset import ScanNetPPOffices, offices_vocabulary, vocabulary_report


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m opendas_encoder.data.scannetpp", description=__doc__.split("::")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vocab", help="derive base/test/novel vocabularies of the Offices split and print the counts")
    v.add_argument("--root", required=True)
    v.add_argument("--split-file", default=None)
    v.add_argument("--out", default=None, help="write the vocabulary JSON here")
    r = sub.add_parser("render", help="render (cache) the instance maps of a split")
    r.add_argument("--root", required=True)
    r.add_argument("--split", default="train")
    r.add_argument("--stride", type=int, default=10)
    r.add_argument("--scale", type=float, default=0.25)
    r.add_argument("--render-dir", default=None)
    r.add_argument("--allow-unaligned-poses", action="store_true",
                   help="use ARKit's unaligned 'pose' for frames of pose_intrinsic_imu.json without 'aligned_pose' "
                        "(refused by default: those poses are not in the mesh's frame)")
    args = ap.parse_args(argv)
    if args.cmd == "vocab":
        vocab = offices_vocabulary(args.root, args.split_file)
        print(vocabulary_report(vocab))
        if args.out:
            vocab.save(args.out)
            print(f"saved {args.out}")
    else:
        ds = ScanNetPPOffices(args.root, args.split, stride=args.stride, render_scale=args.scale, render_dir=args.render_dir,
                              allow_unaligned_poses=args.allow_unaligned_poses)
        print(f"{ds.name}: {len(ds)} segments, {len(ds.classes)} classes, {len(ds.frames)} frames\n"
              f"{ds.enumeration_skips.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run OVSeg's own ``train_net.py`` (training or ``--eval-only``) with a chosen CLIP backend.

    python -m integrations.ovseg.train_net --clip-backend opendas --opendas-checkpoint DIR \\
        --config-file $OVSEG_ROOT/configs/ovseg_swinB_vitL_bs32_120k.yaml --eval-only \\
        MODEL.WEIGHTS ovseg_swinbase_vitL14_ft_mpt.pth

Our flags (``--clip-backend``, ``--opendas-checkpoint``, ``--opendas-pretrained``,
``--opendas-model-config``, ``--ovseg-root``) are taken out; everything else goes to OVSeg's
script, whose Detectron2 argument parser, ``setup`` and ``main`` run unchanged except that:
its config gets the backend keys (``integrations/ovseg/modeling.py``), ``MODEL.META_ARCHITECTURE``
becomes ``OVSegOpenDAS``, NumPy's removed ``np.int`` alias is restored for its evaluator, and on a
machine without CUDA ``MODEL.DEVICE cpu`` is added unless the command sets ``MODEL.DEVICE`` itself.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import List, Optional


def our_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False,
                                     usage="python -m integrations.ovseg.train_net [our flags] [OVSeg's train_net.py flags] "
                                           "[config overrides]")
    parser.add_argument("--clip-backend", choices=("openai", "opendas"), default="opendas",
                        help="classifier of OVSeg's CLIP branch (default: opendas)")
    parser.add_argument("--opendas-checkpoint", default="", help="OpenDAS checkpoint folder (opendas backend)")
    parser.add_argument("--opendas-pretrained", default="", help="override the checkpoint's base-model weights")
    parser.add_argument("--opendas-model-config", default="",
                        help="open_clip model-config JSON (file or folder) to register before loading")
    parser.add_argument("--ovseg-root", default=None, help="OVSeg checkout (default: $OVSEG_ROOT)")
    return parser


def parse_args(argv: Optional[List[str]] = None):
    parser = our_parser()
    ours, rest = parser.parse_known_args(argv)
    if ours.clip_backend == "opendas" and not ours.opendas_checkpoint and "-h" not in rest and "--help" not in rest:
        parser.error("--clip-backend opendas needs --opendas-checkpoint DIR")
    return ours, rest


def backend_opts(ours) -> List[str]:
    """Config overrides that select the backend (appended after the user's opts)."""
    opts = ["MODEL.META_ARCHITECTURE", "OVSegOpenDAS", "MODEL.CLIP_ADAPTER.CLIP_BACKEND", ours.clip_backend]
    for key, value in (("OPENDAS_CHECKPOINT", ours.opendas_checkpoint),
                       ("OPENDAS_PRETRAINED", ours.opendas_pretrained),
                       ("OPENDAS_MODEL_CONFIG", ours.opendas_model_config)):
        if value:
            opts += [f"MODEL.CLIP_ADAPTER.{key}", value]
    return opts


def device_opts(opts: List[str], cuda_available: Optional[bool] = None) -> List[str]:
    """``["MODEL.DEVICE", "cpu"]`` when CUDA is unavailable and ``opts`` do not set MODEL.DEVICE
    (Detectron2's default "cuda" fails there with "Found no NVIDIA driver")."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if cuda_available or "MODEL.DEVICE" in opts[::2]:
        return []
    return ["MODEL.DEVICE", "cpu"]


def import_ovseg_train_net(root: str):
    """OVSeg's ``train_net.py`` as a module, its config setup extended with the backend keys."""
    import os

    from . import modeling  # registers OVSegOpenDAS; puts OVSeg on sys.path

    path = os.path.join(root, "train_net.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{root}: OVSeg's train_net.py not found at {path}")
    spec = importlib.util.spec_from_file_location("ovseg_train_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ovseg_add_config = module.add_ovseg_config

    def add_config(cfg):
        ovseg_add_config(cfg)
        modeling.add_opendas_config(cfg)

    module.add_ovseg_config = add_config  # train_net.setup() calls it by this global name
    return module


def main(argv: Optional[List[str]] = None):
    from .env import add_ovseg_to_path

    ours, rest = parse_args(argv)
    if "-h" in rest or "--help" in rest:  # our flags first, then OVSeg's (Detectron2's) own
        our_parser().print_help()
        print("\nOVSeg's train_net.py (Detectron2's default_argument_parser):")
    root = add_ovseg_to_path(ours.ovseg_root)
    train_net = import_ovseg_train_net(root)
    from detectron2.engine import default_argument_parser, launch

    args = default_argument_parser().parse_args(rest)
    extra = device_opts(list(args.opts))
    if extra:
        print("CUDA is not available: running OVSeg on the CPU (MODEL.DEVICE cpu)")
    args.opts = list(args.opts) + extra + backend_opts(ours)
    print("Command Line Args:", args)
    return launch(train_net.main, args.num_gpus, num_machines=args.num_machines,
                  machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    main()

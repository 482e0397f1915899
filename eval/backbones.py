"""Which open_clip tower families OpenDAS can serve, and its trainable parameters on each.

Builds each example model on the ``meta`` device (shapes only, no weights, seconds), asks the engine's
tower views whether they can drive it (the same checks ``PromptedCLIP`` runs) and counts the prompt
parameters of the default :class:`~opendas_encoder.PromptConfig` (8 visual tokens x every vision
layer, 4 text tokens x every text layer) on the real module. Prints a markdown table (the README's).

    python eval/backbones.py [--out docs/backbones.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Tuple

import open_clip
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import opendas_encoder as oe  # noqa: E402
from opendas_encoder.core.towers import TextTowerView, VisionTowerView  # noqa: E402

FAMILIES: List[Tuple[str, List[str]]] = [
    ("CLIP ViT (OpenAI, LAION, DataComp)", ["ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14",
                                            "ViT-B-16-quickgelu", "ViT-H-14-378-quickgelu"]),
    ("MetaCLIP 2 worldwide", ["ViT-L-14-worldwide", "ViT-H-14-worldwide"]),
    ("CLIPA", ["ViT-L-14-CLIPA", "ViT-bigG-14-CLIPA-336"]),
    ("SigLIP", ["ViT-B-16-SigLIP", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP"]),
    ("SigLIP 2", ["ViT-B-16-SigLIP2", "ViT-SO400M-16-SigLIP2-384", "ViT-gopt-16-SigLIP2-256"]),
    ("EVA-CLIP", ["EVA02-B-16", "EVA02-L-14"]),
    ("MobileCLIP", ["MobileCLIP-S1", "MobileCLIP-B"]),
    ("CoCa", ["coca_ViT-L-14"]),
    ("Hugging Face text towers", ["xlm-roberta-large-ViT-H-14", "mt5-base-ViT-B-32"]),
    ("ResNet CLIP", ["RN50", "RN101"]),
]


def check(model_name: str) -> Tuple[bool, str, int]:
    """(supported, reason or tower summary, default OpenDAS trainable parameters)."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        return False, "not an open_clip config in this version", 0
    if cfg.get("text_cfg", {}).get("hf_model_name"):
        return False, f"Hugging Face text tower ({cfg['text_cfg']['hf_model_name']}): not an open_clip TextTransformer", 0
    with torch.device("meta"):
        model = open_clip.create_model(model_name, device="meta")
    try:
        vision = VisionTowerView.of(model.visual)
        text = TextTowerView.of(model)
    except oe.UnsupportedModelError as exc:
        return False, str(exc), 0
    prompts = oe.PromptConfig(text_init="")  # the count does not depend on the initialisation
    encoder = oe.PromptedCLIP(model, prompts, tokenizer=open_clip.get_tokenizer("ViT-B-32"), preprocess=lambda x: x)
    count = sum(p.numel() for p in encoder.prompt_parameters())
    tok = cfg.get("text_cfg", {}).get("hf_tokenizer_name") or "CLIP BPE"
    summary = (f"{vision.kind} ViT {vision.layers} x {vision.width}, text {len(text.transformer.resblocks)} x "
               f"{int(text.transformer.width)} ({'bidirectional' if text.attn_mask is None else 'causal'}, pool {text.pool_type}), "
               f"tokenizer {tok}")
    return True, summary, count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="also write the markdown table to this file")
    p.add_argument("--json", help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows, lines = [], ["| family | model | supported | trainable (default prompts) | towers, or why not |",
                       "|---|---|---|---|---|"]
    for family, names in FAMILIES:
        for name in names:
            ok, why, count = check(name)
            rows.append({"family": family, "model": name, "supported": ok, "trainable": count, "detail": why})
            lines.append(f"| {family} | {name} | {'yes' if ok else 'no'} | {f'{count:,}' if ok else '-'} | {why} |")
            print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

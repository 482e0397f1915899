"""Write the experiment configs of the paper's Tables 1, 2, 5, 6 and 7 (one YAML per run).

    python configs/make_configs.py            # rewrites configs/table*/**.yaml

The YAML schema is ``opendas_encoder.train.config.TrainConfig``. Dataset roots are relative to the
working directory (put or link the releases under ``data/``: ``data/ADEChallengeData2016``,
``data/KITTI-360``, ``data/scannetpp``); the negatives files are relative to each config file (the
sets shipped in ``opendas_encoder/resources/``). Facts behind the numbers:

* OpenDAS (233K parameters on ViT-L/14): K_v = 8 visual tokens in all 24 vision layers and K_t = 4
  text tokens in all 12 text layers (8*24*1024 + 4*12*768 = 233,472), text prompts initialised from
  "a photo of a"; SGD, lr 0.0025, cosine, 1 warm-up epoch, batch 16, 5 + 5 epochs; triplet margin
  1.5 with lambda growing from 0 to 5 (Tab. 5 peaks at lambda = 5).
* The ablations of Tab. 5 (lambda) and Tab. 7 (K) list 135K parameters for (K_v, K_t) = (8, 4) and
  172K / 184K for (8, 8) / (12, 4): prompts in 12 vision and 12 text layers
  (8*12*1024 + 4*12*768 = 135,168), so those configs set both depths to 12.
* Baseline options follow from the parameter counts of Tab. 1 on ViT-L/14: VPT-deep 32 tokens x 24
  layers x 1024 = 786K; CoCoOp 4 context tokens + meta-net 768-48-768 = 77K; RPO 24 prompt pairs
  x (768 + 1024) = 43K; MaPLe 2 tokens at depth 24 with its coupling layers = 18,935K. Baselines
  and WiSE-FT train in one stage ("one-stage-ce": every trainable parameter, cross-entropy) for the
  same 10 epochs.
* "No adaptation" rows: the zero-shot CLIP evaluation that every run reports before training.
* Every config pins ``preset: paper``: OpenDAS's training options (triplet, consistency, averaging,
  prompt depth start, deep text init) are the paper's, whatever the library default
  (``preset: default``, chosen on the generated domain suite) is.
* Tab. 5 training settings (the icons of the rows are lost in the text version of the paper):
  "joint-triplet" (visual + text together with the triplet loss, the paper's "Joint + T"), text only,
  visual only, and two-stage (visual, then text + triplet). The tower a setting does not train stays
  exactly CLIP's: text-only has no visual prompt tokens (visual_tokens: 0; 4 x 12 x 768 = 36,864 text
  parameters on ViT-L/14), visual-only carries the zero-shot text ("a photo of a" in the context,
  text_deep_init: carry; its text prompts are not trained).
"""

from __future__ import annotations

import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

ROOTS = {"ade20k-150": "data/ADEChallengeData2016", "kitti-360": "data/KITTI-360", "scannetpp-offices": "data/scannetpp"}
SPLITS = {  # (train split, test split)
    "ade20k-150": ("training", "validation"),
    "kitti-360": ("train", "val"),
    "scannetpp-offices": ("train", "test"),
}
OPTIONS = {"scannetpp-offices": {"stride": 10, "render_scale": 0.25}}
NEGATIVES = {
    "ade20k-150": "opendas_encoder/resources/negatives_ade20k150.json",
    "kitti-360": "opendas_encoder/resources/negatives_kitti360.json",
    "scannetpp-offices": "opendas_encoder/resources/negatives_scannetpp.json",
}
SHORT = {"ade20k-150": "ade20k", "kitti-360": "kitti360", "scannetpp-offices": "snpp_offices"}

OPENDAS_PROMPTS = {"visual_tokens": 8, "visual_depth": None, "text_tokens": 4, "text_depth": None,
                   "text_init": "a photo of a"}
#: option names are the fields of each method's config class (opendas_encoder.methods)
METHOD_OPTIONS = {
    "cocoop": {"n_ctx": 4, "ctx_init": "a photo of a", "meta_reduction": 16},
    "vpt": {"n_tokens": 32, "depth": None},
    "rpo": {"k": 24},
    "maple": {"n_ctx": 2, "ctx_init": "a photo of a", "depth": 24},
    "opendas": {},
}
#: the "No adaptation" rows are the zero-shot CLIP evaluation that every run reports first
METHODS = ["cocoop", "vpt", "rpo", "maple", "opendas"]


def spec(name: str, which: int) -> dict:
    out = {"name": name, "root": ROOTS[name], "split": SPLITS[name][which]}
    if name in OPTIONS:
        out["options"] = dict(OPTIONS[name])
    return out


#: prompt fields that keep the untrained tower of a Tab. 5 setting exactly CLIP's
IDENTITY_PROMPTS = {"visual-only": {"text_deep_init": "carry"}, "text-only": {"visual_tokens": 0}}


def config(table: str, train: str, test: str, method: str = "opendas", setting: str = None,
           prompts: dict = None, lambda_end: float = 5.0, method_options: dict = None, tag: str = None) -> tuple:
    tag = tag or method
    setting = setting or ("two-stage" if method == "opendas" else "one-stage-ce")
    rel = os.path.join(table, f"{SHORT[train]}_to_{SHORT[test]}" if train != test else SHORT[train], f"{tag}.yaml")
    prompts = dict(OPENDAS_PROMPTS if prompts is None else prompts, **IDENTITY_PROMPTS.get(setting, {}))
    negatives = os.path.relpath(os.path.join(REPO, NEGATIVES[train]), os.path.dirname(os.path.join(HERE, rel)))
    cfg = {
        "name": f"{table}/{SHORT[train]}" + (f"_to_{SHORT[test]}" if train != test else "") + f"/{tag}",
        "seed": 0,
        "method": method,
        "setting": setting,
        "preset": "paper",  # the paper's method exactly, whatever the library default becomes
        "method_options": dict(METHOD_OPTIONS.get(method, {}) if method_options is None else method_options),
        "model": {"name": "ViT-L-14", "pretrained": "openai"},
        "prompts": prompts if method == "opendas" else {},
        "data": {
            "train": spec(train, 0),
            "test": spec(test, 1),
            "vocabulary": None,  # base = training labels, test = test labels, novel = test - base
            "negatives": negatives if method == "opendas" else None,  # relative to this file
            "expand_ratio": 0.0,
            "min_pixels": 16,
        },
        "schedule": {"optimizer": "sgd", "lr": 0.0025, "warmup_epochs": 1, "warmup_lr": 1e-5, "batch_size": 16,
                     "stage1_epochs": 5, "stage2_epochs": 5},
        "triplet": {"margin": 1.5, "lambda_start": 0.0, "lambda_end": float(lambda_end)},
        "output_dir": os.path.join("runs", os.path.splitext(rel)[0]),
    }
    return rel, cfg


def all_configs() -> dict:
    out = {}

    def add(item):
        rel, cfg = item
        assert rel not in out, rel
        out[rel] = cfg

    # Table 1: closed vocabulary (train and test on the same queries)
    for ds in ("kitti-360", "ade20k-150"):
        for m in METHODS:
            add(config("table1", ds, ds, m))
    # Table 2: open vocabulary (base / novel); ScanNet++ Offices, and ADE20K-150 -> ScanNet++ / KITTI-360
    for train, test in (("scannetpp-offices", "scannetpp-offices"), ("ade20k-150", "scannetpp-offices"),
                        ("ade20k-150", "kitti-360")):
        for m in METHODS:
            add(config("table2", train, test, m))
    ablation_prompts = dict(OPENDAS_PROMPTS, visual_depth=12, text_depth=12)
    for ds in ("scannetpp-offices", "kitti-360", "ade20k-150"):
        # Table 5 (top): triplet weight lambda
        for lam in (0, 2, 5, 10):
            add(config("table5_lambda", ds, ds, prompts=ablation_prompts, lambda_end=lam, tag=f"lambda{lam}"))
        # Table 5 (bottom): training settings
        for setting in ("joint-triplet", "text-only", "visual-only", "two-stage"):
            add(config("table5_setting", ds, ds, setting=setting, tag=setting))
        # Table 6: WiSE-FT of the text or the visual encoder (OpenDAS row = Tables 1/2)
        for tower in ("text", "visual"):
            add(config("table6_wiseft", ds, ds, f"wiseft-{tower}", method_options={"alpha": 0.5}))
        # Table 7: number of prompt tokens (K_v, K_t)
        for kv, kt in ((8, 4), (8, 8), (8, 12), (12, 4), (12, 8), (12, 12)):
            add(config("table7_tokens", ds, ds, prompts=dict(ablation_prompts, visual_tokens=kv, text_tokens=kt),
                       tag=f"kv{kv}_kt{kt}"))
    return out


def render(rel: str, cfg: dict) -> str:
    header = f"# {cfg['name']} (generated by configs/make_configs.py; edit that script, not this file)\n"
    return header + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=110)


def main(out_dir: str = HERE) -> int:
    cfgs = all_configs()
    for rel, cfg in cfgs.items():
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(rel, cfg))
    print(f"wrote {len(cfgs)} configs under {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

"""Pretrain the generated world's small CLIP on its source domain (CPU, contrastive, from scratch).

    nice -n 5 python eval/pretrain_synthetic_clip.py --seed 0

Builds ``opendas-world-vit`` (open_clip custom config in ``opendas_encoder/generated/world/clip``, real
open_clip BPE tokenizer), trains it on freshly generated captioned source images with a
multi-positive contrastive loss (a caption that leaves out an attribute is a positive for every
image it fits), then measures zero-shot accuracy on the source domain and on the target domain's
test segments (base / novel classes) and writes ``<out>/open_clip_model.safetensors`` (fp16, the
state dict of ``open_clip.create_model(WORLD_MODEL_NAME)``), ``<out>/open_clip_config.json``
(for ``open_clip.create_model("local-dir:<out>")``) and ``<out>/pretrain_info.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import open_clip  # noqa: E402
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from opendas_encoder.generated.world import (  # noqa: E402
    WORLD_LABEL,
    WORLD_MODEL_NAME,
    WORLD_PRETRAINED,
    make_target_domain,
    world_model_config_path,
    world_vocabulary,
)
from opendas_encoder.generated.world.source import caption_matches, sample_source_batch  # noqa: E402
from opendas_encoder.generated.world.zero_shot import source_zero_shot_report, target_zero_shot_report  # noqa: E402


@dataclass
class PretrainConfig:
    seed: int = 0  # seeds the model init and the data stream
    steps: int = 2000  # optimisation steps
    batch_size: int = 256  # images (and captions) per step
    sibling_fraction: float = 0.5  # share of each batch that are one-attribute siblings (hard negatives)
    lr: float = 2e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * min_lr_ratio
    warmup: int = 150  # linear warm-up steps
    weight_decay: float = 0.1  # on weight matrices only (not norms, biases, embeddings, logit scale)
    threads: int = 1  # torch CPU threads (2 threads ran 4x slower on the shared 2-core machine)
    out: str = "opendas_encoder/generated/world/clip"  # output folder (the shipped package data)
    eval_n: int = 2000  # source images for the final zero-shot accuracy
    target_scenes: int = 150  # target test scenes for the final zero-shot accuracy
    log_every: int = 100  # steps between log lines (with a quick source accuracy)
    eval_only: bool = False  # only re-measure the zero-shot accuracies of <out> and update its JSON


def parse_args(argv=None) -> PretrainConfig:
    defaults = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, value in asdict(defaults).items():
        if isinstance(value, bool):
            p.add_argument("--" + name.replace("_", "-"), action="store_true")
        else:
            p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    return PretrainConfig(**vars(p.parse_args(argv)))


def param_groups(model: torch.nn.Module, weight_decay: float):
    """AdamW groups: weight decay on >= 2-D weights except embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, match: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with soft targets spread over all matching pairs.

    img, txt: normalised (B, D); match: bool (B_img, B_txt), True where caption j fits image i
    (the diagonal always does).
    """
    logits = scale * img @ txt.T
    m = match.float()
    i2t = -(F.log_softmax(logits, dim=1) * (m / m.sum(1, keepdim=True))).sum(1).mean()
    t2i = -(F.log_softmax(logits.T, dim=1) * (m.T / m.T.sum(1, keepdim=True))).sum(1).mean()
    return 0.5 * (i2t + t2i)


class BatchStream:
    """Generates source batches in a background thread, in a fixed order (deterministic for a seed)."""

    def __init__(self, seed: int, batch_size: int, image_size: int, tokenizer, n_batches: int,
                 sibling_fraction: float = 0.0, depth: int = 3):
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7EA1]))
        self.batch_size, self.image_size, self.tokenizer = batch_size, image_size, tokenizer
        self.sibling_fraction = sibling_fraction
        self.q: "queue.Queue" = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, args=(n_batches,), daemon=True)
        self.thread.start()

    def _run(self, n: int) -> None:
        mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
        for _ in range(n):
            images, captions, codes, stated = sample_source_batch(
                self.rng, self.batch_size, self.image_size, self.sibling_fraction)
            x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            match = torch.from_numpy(caption_matches(stated, codes))
            self.q.put((x, self.tokenizer(captions), match))

    def get(self):
        return self.q.get()


def save_outputs(model, cfg: PretrainConfig, info: dict) -> None:
    os.makedirs(cfg.out, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(cfg.out, "open_clip_model.safetensors"),
              metadata={"model": WORLD_MODEL_NAME, "pretrained": WORLD_PRETRAINED, "format": "pt"})
    with open(world_model_config_path()) as f:
        model_cfg = json.load(f)
    local_cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    with open(os.path.join(cfg.out, "open_clip_config.json"), "w") as f:
        json.dump(local_cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(cfg.out, "pretrain_info.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")


def evaluate(model, preprocess, tokenizer, cfg: PretrainConfig) -> dict:
    model.eval()
    src = source_zero_shot_report(model, preprocess, tokenizer, n=cfg.eval_n, seed=cfg.seed + 1000)
    vocab = world_vocabulary()
    tgt = {}
    if cfg.target_scenes > 0:
        test = make_target_domain(cfg.target_scenes, seed=cfg.seed + 1000, split="test")
        tgt = target_zero_shot_report(model, preprocess, tokenizer, test, vocab["base"], vocab["novel"])
        tgt["segments"] = len(test)
    return {"source": src, "target_test": tgt}


def reevaluate(cfg: PretrainConfig) -> dict:
    """Re-measure the zero-shot accuracies of the checkpoint in ``cfg.out``; update its JSON."""
    ckpt = os.path.join(cfg.out, "open_clip_model.safetensors")
    info_path = os.path.join(cfg.out, "pretrain_info.json")
    for path in (ckpt, info_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found (run the pretraining first)")
    model, _, preprocess = open_clip.create_model_and_transforms(WORLD_MODEL_NAME, pretrained=ckpt)
    tokenizer = open_clip.get_tokenizer(WORLD_MODEL_NAME)
    with open(info_path) as f:
        info = json.load(f)
    train_cfg = PretrainConfig(**{**info["config"], "eval_n": cfg.eval_n, "target_scenes": cfg.target_scenes})
    info["zero_shot"] = evaluate(model, preprocess, tokenizer, train_cfg)
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps({"zero_shot": info["zero_shot"]}, indent=2))
    return info


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    command = "python eval/pretrain_synthetic_clip.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    if WORLD_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(world_model_config_path())
    if cfg.eval_only:
        return reevaluate(cfg)
    model, _, preprocess = open_clip.create_model_and_transforms(WORLD_MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(WORLD_MODEL_NAME)
    image_size = int(model.visual.image_size[0])
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    stream = BatchStream(cfg.seed, cfg.batch_size, image_size, tokenizer, cfg.steps, cfg.sibling_fraction)

    start = time.time()
    history = []
    running = None
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain (generated world)", mininterval=30, file=sys.stdout)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, tokens, match = stream.get()
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        loss = multi_positive_loss(img, txt, match, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            model.eval()
            quick = source_zero_shot_report(model, preprocess, tokenizer, n=256, seed=cfg.seed + 2000)
            model.train()
            row = {"step": step + 1, "loss": round(running, 4), "lr": lr_at(step, cfg),
                   "scale": round(model.logit_scale.exp().item(), 2), "elapsed_s": round(time.time() - start, 1),
                   "source_acc_quick": round(quick["accuracy"], 1)}
            history.append(row)
            tqdm.write(json.dumps(row), file=sys.stdout)
            sys.stdout.flush()
    train_time = time.time() - start
    results = evaluate(model, preprocess, tokenizer, cfg)
    info = {
        "world": WORLD_LABEL,
        "model": WORLD_MODEL_NAME,
        "pretrained_tag": WORLD_PRETRAINED,
        "command": command,
        "config": asdict(cfg),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "samples_seen": cfg.steps * cfg.batch_size,
        "train_time_s": round(train_time, 1),
        "wall_time_s": round(time.time() - start, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "storage_dtype": "float16",
        "zero_shot": results,
        "history": history,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    save_outputs(model, cfg, info)
    print(json.dumps({"zero_shot": results, "train_time_s": info["train_time_s"]}, indent=2))
    return info


if __name__ == "__main__":
    main()

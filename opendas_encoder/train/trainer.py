"""The training engine: stages of prompt learning over prepared segments (paper Sec. 4.3, 5).

Stage 1 ("visual"): visual prompts learn with cross-entropy over the label space (base classes +
negative queries); the text features are frozen and computed once. Stage 2 ("text"): visual prompts
frozen, image features computed once (no image tower per iteration unless augmentation is on),
text prompts learn with CE + lambda * triplet (hardest negative mined online). Every epoch ends with
an atomic training-state checkpoint; ``resume=True`` continues exactly from the last one; a
non-finite loss stops the run with :class:`TrainingDiverged` and keeps the last good state.

The engine is method-agnostic: it trains whatever parameters have ``requires_grad`` (after
``model.set_trainable(visual=, text=)`` when the model has it), calls ``model.compute_logits`` for
image-conditioned text (CoCoOp) and ``model.finalize()`` at the end when present (WiSE-FT).

Data parallel: under ``torchrun`` (torch.distributed initialised) each rank takes its share of
every global batch and gradients are summed across ranks with ``all_reduce``, so results equal a
single process with the same global batch up to floating-point order; rank 0 logs and checkpoints.
A rank whose share of a (last, short) batch is empty still takes part in the gradient all-reduce.

Speed: autocast (``runtime.amp``) on CUDA, gradients and optimizer state only for the trainable
prompts, text of a causal text tower cut after its last end-of-text token (exact), optional
``torch.compile`` of the encoder's forward functions (``runtime.compile``; eager fallback with a
warning when compilation fails), pinned host memory for batch transfers to CUDA.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.checkpoint import save_checkpoint
from .config import Stage, TrainConfig, stages_for
from .data import PreparedSegments
from .losses import opendas_text_loss
from .schedule import epoch_lr, triplet_weight
from .state import latest_state, load_state, restore_optimizer, save_state


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class FitResult:
    run_dir: str
    final_dir: str
    label_space: List[str]
    seconds: float
    seconds_per_iter: Dict[str, float] = field(default_factory=dict)
    iterations: Dict[str, int] = field(default_factory=dict)
    resumed_from: Optional[str] = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dist_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _amp_context(device: torch.device, amp: str):
    """(autocast context factory, GradScaler or None) for the runtime.amp setting."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext, None
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def _make_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer.lower() == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _CompiledForwards:
    """The model's ``encode_image`` / ``encode_text`` through ``torch.compile`` (instance attributes).

    Compilation happens lazily at the first call (and the backward graph at the first backward);
    any failure there calls :meth:`disable`, which warns once and restores the eager methods.
    """

    NAMES = ("encode_image", "encode_text")

    def __init__(self, model, enabled: bool):
        self.model = model
        self.active = False
        if not enabled:
            return
        try:
            for name in self.NAMES:
                eager = getattr(model, name)
                setattr(model, name, self._guarded(torch.compile(eager), eager))
            self.active = True
        except Exception as exc:  # torch.compile itself refused (unsupported platform or Python)
            self.disable(exc)

    def _guarded(self, compiled: Callable, eager: Callable) -> Callable:
        def call(*args, **kwargs):
            if self.active:
                try:
                    return compiled(*args, **kwargs)
                except Exception as exc:
                    self.disable(exc)
            return eager(*args, **kwargs)

        return call

    def disable(self, exc: BaseException) -> None:
        warnings.warn(f"runtime.compile: torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); "
                      "running the encoder eagerly", RuntimeWarning, stacklevel=3)
        self.restore()

    def restore(self) -> None:
        for name in self.NAMES:
            self.model.__dict__.pop(name, None)
        self.active = False


def _batch_images(images: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """images[idx] on ``device``; through pinned host memory (asynchronous copy) for CUDA."""
    batch = images[idx]
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def augment_batch(images: torch.Tensor, generator: torch.Generator, min_scale: float = 0.7,
                  select: Optional[slice] = None) -> torch.Tensor:
    """Random horizontal flip + random square crop (side ``min_scale``..1 of the image), resized back.

    images: preprocessed (B, 3, S, S); one affine warp (``grid_sample``, bilinear) for the batch.
    Parameters come from ``generator`` (seeded per step), so a resumed run repeats them exactly;
    with ``select`` they are drawn for a larger global batch and this slice of them is used (a
    data-parallel rank's share gets the parameters a single process would give those samples).
    """
    b = images.shape[0] if select is None else select.stop
    scale = torch.empty(b).uniform_(min_scale, 1.0, generator=generator)
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (1 - scale).unsqueeze(1)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    if select is not None:
        theta = theta[select]
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _broadcast_parameters(params: List[torch.nn.Parameter]) -> None:
    """Every rank starts from rank 0's trainable parameters (as DistributedDataParallel does)."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def _all_reduce_gradients(params: List[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks. A rank without a gradient for a parameter (an empty share of the
    batch) contributes zeros, so every rank joins the same collectives."""
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    dist.all_reduce(has_grad, op=dist.ReduceOp.SUM)
    for p, flag in zip(params, has_grad.tolist()):
        if flag == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, device: torch.device, batch_size: int = 64,
                  progress: bool = False, desc: str = "image features") -> torch.Tensor:
    """Normalised image features (N, D) of preprocessed images (N, 3, S, S), in batches, on ``device``."""
    was_training = model.training
    model.eval()
    out = []
    for start in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        out.append(model.encode_image(images[start:start + batch_size].to(device), normalize=True).float())
    model.train(was_training)
    return torch.cat(out)


def _set_stage_trainable(model, stage: Stage) -> List[torch.nn.Parameter]:
    if hasattr(model, "set_trainable"):
        model.set_trainable(visual=stage.visual, text=stage.text)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {stage.name!r}: the model has no trainable parameters for this stage")
    return params


def fit(model, train: PreparedSegments, label_space: List[str], config: TrainConfig, run_dir: str,
        resume: bool = False, progress: bool = True,
        on_epoch_end: Optional[Callable[[int, int], None]] = None, extra_metadata: Optional[dict] = None) -> FitResult:
    """Train ``model`` on ``train`` (labels index the first entries of ``label_space``).

    label_space: base classes followed by negative queries; logits are computed over all of it.
    Writes ``run_dir/state/`` (resumable), ``run_dir/train_log.jsonl`` and ``run_dir/final/``
    (the exported checkpoint). ``on_epoch_end(stage_index, epoch)`` runs after each saved epoch.
    """
    t_start = time.perf_counter()
    rank, world = _dist_info()
    is_main = rank == 0
    device = resolve_device(config.runtime.device)
    model.to(device)
    sched, trip_cfg, rt = config.schedule, config.triplet, config.runtime
    stages = stages_for(config.setting, sched)
    if int(train.labels.max()) >= len(label_space):
        raise ValueError("training labels index beyond the label space")
    param_names = {id(p): n for n, p in model.named_parameters()}
    autocast, scaler = _amp_context(device, rt.amp)
    image_conditioned = bool(getattr(model, "image_conditioned_text", False))
    tokens = model.tokenizer(label_space) if hasattr(model, "tokenizer") and model.tokenizer else None
    text_input = tokens if tokens is not None else label_space
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, "train_log.jsonl")
    metadata = {"run": config.name, "seed": config.seed, "setting": config.setting,
                "label_space_size": len(label_space), "train_segments": len(train), **(extra_metadata or {})}

    start_stage, start_epoch, global_step, resumed_from = 0, 0, 0, None
    opt_tensors, opt_scalars = {}, {}
    if resume:
        folder = latest_state(run_dir)
        if folder is not None:
            prompts, opt_tensors, state = load_state(folder)
            model.load_learned_state_dict({k: v for k, v in prompts.items()}, source=folder)
            counters = state["counters"]
            opt_scalars = state.get("optimizer_scalars", {})
            start_stage, start_epoch = counters["stage_index"], counters["epoch"] + 1
            global_step = counters["global_step"]
            if start_epoch >= stages[start_stage].epochs:
                start_stage, start_epoch, opt_tensors, opt_scalars = start_stage + 1, 0, {}, {}
            resumed_from = folder
            if is_main:
                _truncate_log(log_path, global_step)
    elif is_main and os.path.exists(log_path):
        os.remove(log_path)

    n = len(train)
    bs = sched.batch_size
    steps_per_epoch = math.ceil(n / bs)
    sec_per_iter, iters = {}, {}
    logit_scale = model.logit_scale.exp().detach().float()

    def batch_images(idx: torch.Tensor, step: int, global_size: int) -> torch.Tensor:
        images = _batch_images(train.images, idx, device)
        if rt.augment:
            gen = torch.Generator().manual_seed(config.seed * 7_919 + step)
            images = augment_batch(images, gen, select=slice(rank, global_size, world))
        return images

    def stage_loss(stage: Stage, idx: torch.Tensor, labels: torch.Tensor, lam: float, cached_images, frozen_text,
                   step: int = 0, global_size: int = 0):
        """(loss, ce, triplet) on this rank's share ``idx`` of the batch (means over the share)."""
        with autocast():
            if image_conditioned:
                logits = model.compute_logits(batch_images(idx, step, global_size), text_input).float()
                return (F.cross_entropy(logits, labels),) * 2 + (torch.zeros((), device=device),)
            if cached_images is not None:
                img = cached_images[idx.to(cached_images.device)]
            else:
                img = model.encode_image(batch_images(idx, step, global_size), normalize=True).float()
            txt = frozen_text if frozen_text is not None else model.encode_text(text_input, normalize=True).float()
            if stage.triplet:
                return opendas_text_loss(img, txt, labels, logit_scale, lam, trip_cfg.margin)
            ce = F.cross_entropy(logit_scale * img @ txt.T, labels)
            return ce, ce, torch.zeros((), device=device)

    if world > 1:
        _broadcast_parameters([p for p in model.parameters() if p.requires_grad])
    forwards = _CompiledForwards(model, rt.compile)
    try:
        for si, stage in enumerate(stages):
            if si < start_stage:
                continue
            params = _set_stage_trainable(model, stage)
            optimizer = _make_optimizer(params, sched)
            if si == start_stage and start_epoch > 0 and opt_tensors:
                restore_optimizer(optimizer, param_names, opt_tensors, opt_scalars)
            cached_images = None
            if not stage.visual and rt.cache_features and not rt.augment and not image_conditioned:
                with autocast():
                    cached_images = encode_images(model, train.images, device, rt.eval_batch_size,
                                                  progress and is_main, desc=f"{stage.name}: caching image features")
            frozen_text = None
            if not stage.text and not image_conditioned:
                with torch.no_grad(), autocast():
                    frozen_text = model.encode_text(text_input, normalize=True).float()
            total_steps = steps_per_epoch * stage.epochs
            first_epoch = start_epoch if si == start_stage else 0
            stage_time, stage_iters = 0.0, 0
            for epoch in range(first_epoch, stage.epochs):
                lr = epoch_lr(epoch, stage.epochs, sched.lr, sched.warmup_epochs, sched.warmup_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + si * 1_009 + epoch)
                perm = torch.randperm(n, generator=gen)
                model.train()
                bar = tqdm(range(steps_per_epoch), desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
                           disable=not (progress and is_main), leave=False)
                for b in bar:
                    t0 = time.perf_counter()
                    global_idx = perm[b * bs:(b + 1) * bs]
                    idx = global_idx[rank::world]
                    share = len(idx) / len(global_idx)
                    labels = train.labels[idx].to(device)
                    stage_step = epoch * steps_per_epoch + b
                    lam = triplet_weight(stage_step, total_steps, trip_cfg.lambda_start, trip_cfg.lambda_end) \
                        if stage.triplet else 0.0
                    if len(idx):
                        loss, ce, trip = stage_loss(stage, idx, labels, lam, cached_images, frozen_text,
                                                    global_step, len(global_idx))
                        local_loss = loss.detach() * share
                    else:  # this rank's share of a short last batch is empty; it still joins the collectives
                        loss, local_loss = None, torch.zeros((), device=device)
                    loss_value = _global_loss(local_loss, world)
                    if not math.isfinite(loss_value):
                        last = latest_state(run_dir)
                        raise TrainingDiverged(
                            f"non-finite loss ({loss_value}) in stage {stage.name!r}, epoch {epoch + 1}, step {b + 1} "
                            f"(lr {lr:g}, lambda {lam:g}); last good checkpoint: {last or 'none (first epoch)'}")
                    optimizer.zero_grad(set_to_none=True)
                    if loss is None:
                        if scaler:
                            scaler.scale(torch.zeros((), device=device))  # initialises the scale on this rank
                    else:
                        try:
                            _backward(loss * share, scaler)
                        except Exception as exc:  # a lazily compiled backward graph failed: redo the step eagerly
                            if not forwards.active:
                                raise
                            forwards.disable(exc)
                            optimizer.zero_grad(set_to_none=True)
                            loss, ce, trip = stage_loss(stage, idx, labels, lam, cached_images, frozen_text,
                                                    global_step, len(global_idx))
                            _backward(loss * share, scaler)
                    if world > 1:
                        _all_reduce_gradients(params)
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)  # per-iteration times include the queued GPU work
                    dt = time.perf_counter() - t0
                    stage_time += dt
                    stage_iters += 1
                    global_step += 1
                    if is_main:
                        record = {"stage": stage.name, "epoch": epoch, "step": global_step, "lr": lr, "lambda": lam,
                                  "loss": loss_value, "ce": float(ce.detach()), "triplet": float(trip.detach()),
                                  "seconds": dt}
                        with open(log_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                        bar.set_postfix(loss=f"{loss_value:.3f}")
                counters = {"stage_index": si, "stage": stage.name, "epoch": epoch, "global_step": global_step}
                if is_main:
                    save_state(run_dir, model, optimizer, param_names, counters,
                               dict(metadata, stage=stage.name, epoch=epoch + 1))
                if world > 1:
                    dist.barrier()
                if on_epoch_end is not None:
                    on_epoch_end(si, epoch)
            if stage_iters:
                sec_per_iter[stage.name] = stage_time / stage_iters
                iters[stage.name] = stage_iters
    finally:
        forwards.restore()
    if hasattr(model, "finalize"):
        model.finalize()
    final_dir = os.path.join(run_dir, "final")
    if is_main:
        save_checkpoint(model, final_dir, **dict(metadata, completed=True,
                                                 seconds_per_iter=sec_per_iter))
    return FitResult(run_dir=run_dir, final_dir=final_dir, label_space=list(label_space),
                     seconds=time.perf_counter() - t_start, seconds_per_iter=sec_per_iter,
                     iterations=iters, resumed_from=resumed_from)


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler else loss).backward()


def _global_loss(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone().float()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return float(value)


def _truncate_log(path: str, global_step: int) -> None:
    """Drop log lines written after the state we resume from (the interrupted epoch)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= global_step]
    with open(path, "w") as f:
        f.writelines(lines)


def read_log(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, "train_log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]

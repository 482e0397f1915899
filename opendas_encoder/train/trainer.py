"""The training engine: stages of prompt learning over streamed segments (paper Sec. 4.3, 5).

Stage 1 ("visual"): visual prompts learn with cross-entropy over the label space (base classes +
negative queries); the text features are frozen and computed once. Stage 2 ("text"): visual prompts
frozen, image features computed once (no image tower per iteration unless augmentation is on),
text prompts learn with CE + lambda * triplet (hardest negative mined online). Every epoch ends with
an atomic training-state checkpoint (prompts, optimizer and learning-rate scheduler state);
``resume=True`` continues exactly from the last one; a non-finite loss stops the run with
:class:`TrainingDiverged` and keeps the last good state.

Options beyond the paper (``TrainConfig``; every one off under ``preset: paper``): the triplet
distance (``triplet.distance``); a consistency term toward zero-shot CLIP over the same open_clip
model (``consistency``: its text features of the label space computed once per run, its image
features once per training segment, as the text stage caches image features; per step only with
augmentation); prompt averaging (``averaging``: :class:`~.averaging.PromptAverager` per stage, the
stage's trainable prompts replaced by their average when the stage ends, the average saved with the
training state).

The engine is method-agnostic: it trains whatever parameters have ``requires_grad`` (after
``model.set_trainable(visual=, text=)`` when the model has it), calls ``model.compute_logits`` for
image-conditioned text (CoCoOp) and ``model.finalize()`` at the end when present (WiSE-FT).

:func:`fit` runs :class:`Trainer`'s named steps: ``resume_point`` -> per stage ``setup_stage`` ->
per epoch ``train_epoch`` (``step`` per batch) and ``end_epoch`` -> ``export``.

Data parallel: under ``torchrun`` (torch.distributed initialised) the stage's loss module
(:class:`StageObjective`, which owns the trainable tensors only) is wrapped in
``DistributedDataParallel`` and batches come from :class:`~.data.EpochShardSampler`: each rank takes
its share of every global batch (``schedule.batch_size`` is the global batch, a multiple of the
number of processes), so results equal one process with the same global batch up to floating-point
order; rank 0 logs and checkpoints. A rank whose share of a short last batch is empty takes a
zero-gradient step so that every rank joins the same gradient all-reduce.

Speed: autocast (``runtime.amp``) on CUDA, gradients and optimizer state only for the trainable
prompts, optional ``torch.compile`` of the encoder's forward functions (``runtime.compile``; eager
fallback with a warning when compilation fails), ``runtime.num_workers`` DataLoader workers reading
segments, pinned host memory for batch transfers to CUDA. CPU training runs with denormal floats
flushed to zero (:func:`flush_denormal`, restored afterwards).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader
from tqdm.auto import tqdm

from ..core.checkpoint import atomic_write_bytes, save_checkpoint
from .averaging import PromptAverager
from .config import Stage, TrainConfig, resume_mismatches, resume_record, stages_for
from .data import EpochShardSampler, PreparedSegments
from .losses import consistency_loss, opendas_text_loss
from .schedule import lr_scheduler, triplet_weight
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


# ---------------------------------------------------------------- process-level helpers
def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (a denormal does not survive a multiply)."""
    tiny = torch.tensor([2.0 ** -140], dtype=torch.float32)  # denormal: below float32's 2**-126
    return bool((tiny * 1.0).item() == 0.0)


@contextlib.contextmanager
def flush_denormal() -> Iterator[None]:
    """Flush denormal floats to zero inside the block (``torch.set_flush_denormal``), then restore.

    CPU training of small models slows several-fold on denormals (measured); flushing changes no
    result that matters. The previous state is detected, not assumed, and restored on exit, so
    importing or calling the library never changes a process-wide setting for good. Entry points
    (the CLI, ``fit``) use it; it affects the calling thread, where training runs.
    """
    previous = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dist_info() -> Tuple[int, int]:
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


def _make_optimizer(params, cfg, scales: Optional[Dict[int, float]] = None) -> torch.optim.Optimizer:
    """The schedule's optimizer over ``params``; ``scales`` ({id(param): multiple of cfg.lr}, from a model's
    ``learning_rate_scales``) puts parameters with another rate in groups of their own (first group: scale 1)."""
    params = list(params)
    groups: Dict[float, list] = {}
    for p in params:
        groups.setdefault((scales or {}).get(id(p), 1.0), []).append(p)
    if len(groups) > 1:
        params = [{"params": ps, "lr": cfg.lr * scale} for scale, ps in sorted(groups.items(), key=lambda g: g[0] != 1.0)]
    if cfg.optimizer.lower() == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _CompiledForwards:
    """The model's ``encode_image`` / ``encode_text`` through ``torch.compile`` (instance attributes).

    ``mode`` is ``runtime.compile`` ("off", "default" or a torch.compile mode). Compilation happens
    lazily at the first call (and the backward graph at the first backward); any failure there calls
    :meth:`disable`, which warns once and restores the eager methods. Modes that capture CUDA graphs
    ("reduce-overhead", "max-autotune") replay them from a static memory pool that the next replay
    overwrites: on CUDA their outputs are cloned (one (B, D) copy) and :meth:`begin_step` marks
    each training step's start (``torch.compiler.cudagraph_mark_step_begin``).
    """

    NAMES = ("encode_image", "encode_text")
    CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

    def __init__(self, model, mode: str = "off", device: Optional[torch.device] = None):
        self.model = model
        self.active = False
        self.cuda_graphs = mode in self.CUDA_GRAPH_MODES and device is not None and device.type == "cuda"
        if mode == "off":
            return
        options = {} if mode == "default" else {"mode": mode}
        try:
            for name in self.NAMES:
                eager = getattr(model, name)
                setattr(model, name, self._guarded(torch.compile(eager, **options), eager))
            self.active = True
        except Exception as exc:  # torch.compile itself refused (unsupported platform or Python)
            self.disable(exc)

    def begin_step(self) -> None:
        """Outputs of the previous step's graph replays are dead from here on (CUDA-graph modes)."""
        if self.active and self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def _guarded(self, compiled: Callable, eager: Callable) -> Callable:
        def call(*args, **kwargs):
            if self.active:
                try:
                    out = compiled(*args, **kwargs)
                    return out.clone() if self.cuda_graphs else out
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


@torch.no_grad()
def encode_images(model, data: PreparedSegments, device: torch.device, batch_size: int = 64, num_workers: int = 0,
                  progress: bool = False, desc: str = "image features") -> torch.Tensor:
    """Normalised image features (N, D) of every item of ``data``, in order, on ``device``."""
    was_training = model.training
    model.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    out = [model.encode_image(images.to(device, non_blocking=True), normalize=True).float()
           for images, _ in tqdm(loader, desc=desc, disable=not progress, leave=False)]
    model.train(was_training)
    return torch.cat(out)


class _Indexed(torch.utils.data.Dataset):
    """Items of a dataset with their index: (image, label, i); the cached zero-shot image features of the
    batch are looked up by it (consistency option)."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        image, label = self.data[i]
        return image, label, i


def _set_stage_trainable(model, stage: Stage) -> List[torch.nn.Parameter]:
    if hasattr(model, "set_trainable"):
        model.set_trainable(visual=stage.visual, text=stage.text)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {stage.name!r}: the model has no trainable parameters for this stage")
    return params


# ---------------------------------------------------------------- the loss of a stage, as a module
class StageObjective(nn.Module):
    """One stage's loss as a module whose parameters are exactly the stage's trainable tensors.

    This is what ``DistributedDataParallel`` wraps: its start-up broadcast and gradient buckets hold
    the trainable prompts only; the encoder is referenced, not registered as a submodule, so the
    frozen open_clip weights stay outside DDP.

    ``forward(labels, images=None, features=None, lam=0.0, zero_shot_image=None)`` -> (loss, ce,
    triplet, consistency), means over the batch: ``images`` (B, 3, S, S) go through the image tower,
    ``features`` (B, D) are cached normalised image features, ``zero_shot_image`` (B, D) zero-shot
    CLIP's features of the same images (consistency option). ``forward(None)`` is the zero loss of an
    empty batch share, still connected to every trainable tensor (zero gradients, same collectives as
    the other ranks).

    ``consistency``: None (off, the paper's) or (weights (text, image, logits), distance, KL reduction) with
    ``zero_shot_text`` (Q, D) zero-shot CLIP's features of the label space.
    """

    def __init__(self, model, params: Sequence[nn.Parameter], stage: Stage, text_input, logit_scale: torch.Tensor,
                 margin: float, frozen_text: Optional[torch.Tensor] = None, image_conditioned: bool = False,
                 triplet_distance: str = "euclidean", consistency: Optional[tuple] = None,
                 zero_shot_text: Optional[torch.Tensor] = None):
        super().__init__()
        self.trainable = nn.ParameterList(params)
        object.__setattr__(self, "encoder", model)  # not a submodule: DDP must not see the frozen base
        self.stage = stage
        self.text_input = text_input
        self.logit_scale = logit_scale
        self.margin = margin
        self.frozen_text = frozen_text
        self.image_conditioned = image_conditioned
        self.triplet_distance = triplet_distance
        self.consistency = consistency
        self.zero_shot_text = zero_shot_text

    def forward(self, labels: Optional[torch.Tensor], images: Optional[torch.Tensor] = None,
                features: Optional[torch.Tensor] = None, lam: float = 0.0,
                zero_shot_image: Optional[torch.Tensor] = None):
        if labels is None:
            zero = sum((p * 0).sum() for p in self.trainable)
            return zero, zero.detach(), zero.detach(), zero.detach()
        model = self.encoder
        if self.image_conditioned:
            logits = model.compute_logits(images, self.text_input).float()
            ce = F.cross_entropy(logits, labels)
            zero = torch.zeros((), device=ce.device)
            return ce, ce, zero, zero
        img = features if features is not None else model.encode_image(images, normalize=True).float()
        txt = self.frozen_text if self.frozen_text is not None else \
            model.encode_text(self.text_input, normalize=True).float()
        if self.stage.triplet:
            loss, ce, trip = opendas_text_loss(img, txt, labels, self.logit_scale, lam, self.margin,
                                               self.triplet_distance)
        else:
            ce = F.cross_entropy(self.logit_scale * img @ txt.T, labels)
            loss, trip = ce, torch.zeros((), device=ce.device)
        cons = torch.zeros((), device=ce.device)
        if self.consistency is not None:
            weights, distance, kl_reduction = self.consistency
            cons = consistency_loss(weights, distance, img, txt, self.logit_scale, zero_shot_image,
                                    self.zero_shot_text, kl_reduction)
            loss = loss + cons
        return loss, ce, trip, cons


# ---------------------------------------------------------------- the trainer's named steps
@dataclass
class ResumePoint:
    """Where training (re)starts: stage index, epoch in it, global step, saved optimizer/scheduler state."""

    stage: int = 0
    epoch: int = 0
    global_step: int = 0
    folder: Optional[str] = None
    optimizer_tensors: Dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_scalars: dict = field(default_factory=dict)
    scheduler: Optional[dict] = None
    averaged: Optional[Dict[str, torch.Tensor]] = None  # the stage's running prompt average (averaging option)


@dataclass
class StageRun:
    """Everything one stage trains with (built by :meth:`Trainer.setup_stage`)."""

    index: int
    stage: Stage
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: nn.Module  # StageObjective, or DistributedDataParallel around it
    sampler: EpochShardSampler
    batches: BatchSampler  # this rank's index lists
    loader: Optional[DataLoader]  # image batches; None when the stage runs on cached features
    features: Optional[torch.Tensor]  # cached (N, D) image features
    first_epoch: int
    averager: Optional[PromptAverager] = None  # prompt averaging (averaging option)
    seconds: float = 0.0
    iterations: int = 0


class Trainer:
    """One ``fit`` call: shared settings, then the named steps run by :meth:`run`."""

    def __init__(self, model, train: PreparedSegments, label_space: List[str], config: TrainConfig, run_dir: str,
                 progress: bool = True, on_epoch_end: Optional[Callable[[int, int], None]] = None,
                 extra_metadata: Optional[dict] = None, distiller=None):
        self.model, self.train, self.config, self.run_dir = model, train, config, run_dir
        self.label_space = list(label_space)
        self.on_epoch_end = on_epoch_end
        self.rank, self.world = _dist_info()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.device = resolve_device(config.runtime.device)
        self.stages = stages_for(config.setting, config.schedule)
        self.batch_size = config.schedule.batch_size
        if self.batch_size % self.world:
            raise ValueError(f"schedule.batch_size ({self.batch_size}) is the global batch: it must be a multiple "
                             f"of the number of processes ({self.world})")
        if int(train.labels.max()) >= len(self.label_space):
            raise ValueError("training labels index beyond the label space")
        self.steps_per_epoch = math.ceil(len(train) / self.batch_size)
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.autocast, self.scaler = _amp_context(self.device, config.runtime.amp)
        self.image_conditioned = bool(getattr(model, "image_conditioned_text", False))
        tokenizer = getattr(model, "tokenizer", None)
        self.text_input = tokenizer(self.label_space) if tokenizer else self.label_space
        self.log_path = os.path.join(run_dir, "train_log.jsonl")
        self.metadata = {"run": config.name, "seed": config.seed, "setting": config.setting,
                         "preset": config.preset, "training_options": training_options(config),
                         "label_space_size": len(self.label_space), "train_segments": len(train),
                         **(extra_metadata or {})}
        self.global_step = 0
        model.to(self.device)
        self.logit_scale = model.logit_scale.exp().detach().float()
        self.forwards: Optional[_CompiledForwards] = None
        self.consistency = config.consistency if config.consistency.active else None
        self._zero_shot = None  # (encoder, text features (Q, D), image features (N, D) or None), once per run
        # distillation option (train.distill.Distiller): its term acts in the last stage that trains
        self.distiller = distiller
        self.distill_stage = max((i for i, s in enumerate(self.stages) if s.epochs > 0), default=-1)
        if distiller is not None and self.world > 1:
            raise ValueError("distill: single-process training only (its term is outside the DDP objective)")
        if (distiller is None) != (not config.distill.active):
            raise ValueError("distill: the config's distill.weight and the distiller given to fit disagree "
                             "(run_experiment builds the distiller from the config)")

    # -------------------------------------------------------------- run
    def run(self, resume: bool) -> FitResult:
        t_start = time.perf_counter()
        os.makedirs(self.run_dir, exist_ok=True)
        start = self.resume_point(resume)
        self.global_step = start.global_step
        seconds, iterations = {}, {}
        self.forwards = _CompiledForwards(self.model, self.config.runtime.compile, self.device)
        try:
            for si, stage in enumerate(self.stages):
                if si < start.stage:
                    continue
                sr = self.setup_stage(si, stage, start if si == start.stage else ResumePoint(stage=si))
                if self.distiller is not None and si == self.distill_stage:
                    if sr.first_epoch > 0:
                        raise ValueError(f"{self.run_dir}: cannot resume inside the distillation stage (its teacher "
                                         "is the model as the earlier stages left it); rerun that stage")
                    self.distiller.freeze_teacher(self.model)
                for epoch in range(sr.first_epoch, stage.epochs):
                    self.train_epoch(sr, epoch)
                    self.end_epoch(sr, epoch)
                if sr.iterations:
                    seconds[stage.name] = sr.seconds / sr.iterations
                    iterations[stage.name] = sr.iterations
        finally:
            self.forwards.restore()
        if start.stage >= len(self.stages):  # resumed after the last epoch: keep what the finished run measured
            seconds, iterations = finished_run_timing(self.run_dir)
        final_dir = self.export(seconds)
        return FitResult(run_dir=self.run_dir, final_dir=final_dir, label_space=self.label_space,
                         seconds=time.perf_counter() - t_start, seconds_per_iter=seconds, iterations=iterations,
                         resumed_from=start.folder)

    # -------------------------------------------------------------- step 1: where to start
    def resume_point(self, resume: bool) -> ResumePoint:
        """The last saved state (prompts loaded into the model) when resuming, else a fresh start.

        A fresh start removes an old log; a resumed one drops the log lines of the interrupted epoch.
        """
        folder = latest_state(self.run_dir) if resume else None
        if folder is None:
            if self.is_main and os.path.exists(self.log_path):
                os.remove(self.log_path)
            return ResumePoint()
        prompts, opt_tensors, state = load_state(folder)
        if "scheduler" not in state:
            raise ValueError(f"{folder}: no learning-rate scheduler state (written by an older version); "
                             "start the run again without resuming")
        check_resumable(folder, state, self.config)
        self.model.load_learned_state_dict(dict(prompts), source=folder)
        counters = state["counters"]
        point = ResumePoint(counters["stage_index"], counters["epoch"] + 1, counters["global_step"], folder,
                            opt_tensors, state.get("optimizer_scalars", {}), state["scheduler"],
                            state.get("averaged"))
        if point.scheduler is not None and point.averaged is None and self.config.averaging.mode != "off" and \
                point.epoch < self.stages[point.stage].epochs:
            raise ValueError(f"{folder}: saved without prompt averaging, but this config has averaging.mode: "
                             f"{self.config.averaging.mode}; resume with the run's own config")
        if point.epoch >= self.stages[point.stage].epochs:  # that stage was complete: next one from scratch
            point = ResumePoint(point.stage + 1, 0, point.global_step, folder)
        if self.is_main:
            _truncate_log(self.log_path, point.global_step)
        return point

    # -------------------------------------------------------------- step 2: a stage's optimizer, data, objective
    def setup_stage(self, si: int, stage: Stage, start: ResumePoint) -> StageRun:
        """Trainable tensors, optimizer + scheduler (restored when resuming inside this stage), batch
        order, image-feature cache or image loader, frozen text features, the (DDP-wrapped) objective."""
        cfg, rt = self.config, self.config.runtime
        params = _set_stage_trainable(self.model, stage)
        named = getattr(self.model, "named_learned_parameters", dict)()
        scales = {id(named[n]): s for n, s in getattr(self.model, "learning_rate_scales", dict)().items()}
        optimizer = _make_optimizer(params, cfg.schedule, scales)
        scheduler = lr_scheduler(optimizer, stage.epochs, cfg.schedule.warmup_epochs, cfg.schedule.warmup_lr)
        if start.scheduler is not None:
            restore_optimizer(optimizer, self.param_names, start.optimizer_tensors, start.optimizer_scalars)
            scheduler.load_state_dict(start.scheduler)
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
        sampler = EpochShardSampler(len(self.train), self.world, self.rank, seed=cfg.seed * 1_000_003 + si * 1_009)
        batches = BatchSampler(sampler, self.batch_size // self.world, drop_last=False)
        features = loader = None
        zero_shot_text = self.zero_shot_features()[1] if self.consistency is not None else None
        if not stage.visual and rt.cache_features and not rt.augment and not self.image_conditioned:
            with self.autocast():
                features = encode_images(self.model, self.train, self.device, rt.eval_batch_size, rt.num_workers,
                                         self.progress, desc=f"{stage.name}: caching image features")
        else:
            # with consistency on cached zero-shot image features, items carry their index to look them up
            indexed = self.consistency is not None and self.zero_shot_features()[2] is not None
            loader = DataLoader(_Indexed(self.train) if indexed else self.train, batch_sampler=batches,
                                num_workers=rt.num_workers, pin_memory=self.device.type == "cuda",
                                persistent_workers=rt.num_workers > 0)
        frozen_text = None
        if not stage.text and not self.image_conditioned:
            with torch.no_grad(), self.autocast():
                frozen_text = self.model.encode_text(self.text_input, normalize=True).float()
        consistency = (self.consistency.weights(), self.consistency.distance, self.consistency.kl_reduction) \
            if self.consistency is not None else None
        objective = StageObjective(self.model, params, stage, self.text_input, self.logit_scale, cfg.triplet.margin,
                                   frozen_text, self.image_conditioned, cfg.triplet.distance, consistency,
                                   zero_shot_text)
        if self.world > 1:  # every trainable tensor must reach the loss (DDP names any that does not)
            objective = DistributedDataParallel(objective)
        averager = None
        if cfg.averaging.mode != "off":
            av = cfg.averaging
            averager = PromptAverager(params, [self.param_names[id(p)] for p in params], av.mode, stage.epochs,
                                      av.ema_decay, av.gaussian_mean, av.gaussian_std)
            if start.averaged is not None and start.scheduler is not None:  # resuming inside this stage
                averager.restore(start.averaged, source=start.folder)
        elif start.averaged is not None and start.scheduler is not None:
            raise ValueError(f"{start.folder}: saved with prompt averaging, but this config has averaging.mode: off; "
                             "resume with the run's own config")
        return StageRun(si, stage, optimizer, scheduler, objective, sampler, batches, loader, features,
                        first_epoch=start.epoch, averager=averager)

    def class_descriptions(self) -> Dict[str, List[str]]:
        """``{label: [descriptions]}`` of the phrasing anchor: ``data.descriptions`` (every class with training
        segments must have an entry; a negative query may not, then it keeps its template target), else the
        generated world's own (``DomainSpec.describe`` of every label of the label space)."""
        data = self.config.data
        trained = [self.label_space[i] for i in sorted(set(self.train.labels.tolist()))]
        if data is not None and data.descriptions:
            from ..vocab import load_descriptions

            return load_descriptions(data.descriptions, classes=trained)
        if data is not None and data.train.name == "generated-world":
            from ..generated.world.domains import get_domain

            spec = get_domain(data.train.options.get("domain", "cast"))
            out = {label: spec.describe(label) for label in trained}  # a class it cannot describe: ValueError
            for label in self.label_space:  # a negative query outside the phrasing keeps its template target
                if label not in out:
                    try:
                        out[label] = spec.describe(label)
                    except ValueError:
                        pass
            return out
        raise ValueError("consistency.text_target: descriptions needs data.descriptions (JSON {class: [descriptions]})")

    def zero_shot_features(self) -> tuple:
        """(zero-shot encoder, its normalised text features of the label space (Q, D), its image features of
        every training segment (N, D), or None: when no consistency term uses images, or with
        augmentation, whose crops change every step).

        Zero-shot CLIP is the same open_clip model without prompts (``train.evaluate.zero_shot_encoder``);
        its text features are those of "a photo of a {}." or, with ``consistency.text_target: ensemble``, the
        template ensemble (``train.evaluate.template_ensemble_features``); computed once per run, on the
        first call (consistency option).
        """
        if self._zero_shot is None:
            from .evaluate import description_features, template_ensemble_features, zero_shot_encoder

            rt = self.config.runtime
            encoder = zero_shot_encoder(self.model)
            with torch.no_grad(), self.autocast():
                if self.consistency.text_target == "ensemble":
                    text = template_ensemble_features(encoder, self.label_space).float()
                else:
                    text = encoder.encode_text(self.text_input, normalize=True).float()
                if self.consistency.text_target == "descriptions":
                    text = description_features(encoder, self.label_space, self.class_descriptions(), text)
            image = None
            if self.consistency.uses_images and not rt.augment:
                with self.autocast():
                    image = encode_images(encoder, self.train, self.device, rt.eval_batch_size, rt.num_workers,
                                          self.progress, desc="zero-shot image features")
            self._zero_shot = (encoder, text, image)
        return self._zero_shot

    # -------------------------------------------------------------- step 3: one epoch, one step
    def train_epoch(self, sr: StageRun, epoch: int) -> None:
        """All steps of ``epoch``; rank 0 appends one log line per step."""
        sr.sampler.set_epoch(epoch)
        self.model.train()
        source = iter(sr.loader) if sr.loader is not None else iter(sr.batches)
        bar = tqdm(range(self.steps_per_epoch), desc=f"{sr.stage.name} {epoch + 1}/{sr.stage.epochs}",
                   disable=not self.progress, leave=False)
        for b in bar:
            t0 = time.perf_counter()
            # the global generator (dropout, e.g. the low-rank updates') from the seed and the step alone, so a
            # resumed run draws what the uninterrupted one drew; fit() restores the caller's generator after
            torch.manual_seed(self.config.seed * 7_919 + self.global_step + 104_729 * self.rank)
            record = self.step(sr, epoch, b, next(source, None))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # per-iteration times include the queued GPU work
            record["seconds"] = time.perf_counter() - t0
            sr.seconds += record["seconds"]
            sr.iterations += 1
            self.global_step += 1
            if self.is_main:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(dict(record, step=self.global_step)) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.3f}")

    def _inputs(self, sr: StageRun, item, global_size: int):
        """(labels, images, features, zero-shot image features) of this rank's share of the batch; labels
        None for an empty share; zero-shot features only with the consistency option."""
        if item is None:
            return None, None, None, None
        uses_images = self.consistency is not None and self.consistency.uses_images
        zs_image = self.zero_shot_features()[2] if uses_images else None
        if sr.features is not None:  # item: this rank's indices into the feature cache
            idx = torch.as_tensor(item, dtype=torch.long)
            zs = zs_image[idx.to(zs_image.device)] if zs_image is not None else None
            return self.train.labels[idx].to(self.device), None, sr.features[idx.to(sr.features.device)], zs
        images, labels, *index = item
        images = images.to(self.device, non_blocking=True)
        if self.config.runtime.augment:
            gen = torch.Generator().manual_seed(self.config.seed * 7_919 + self.global_step)
            images = augment_batch(images, gen, select=slice(self.rank, global_size, self.world))
        zs = None
        if uses_images:
            if zs_image is not None:
                zs = zs_image[index[0].to(zs_image.device)]
            else:  # augmented crops: zero-shot features of this very batch (no gradient)
                with torch.no_grad(), self.autocast():
                    zs = self.zero_shot_features()[0].encode_image(images, normalize=True).float()
        return labels.to(self.device), images, None, zs

    def step(self, sr: StageRun, epoch: int, b: int, item) -> dict:
        """One optimizer step on global batch ``b`` (this rank's share ``item``); its log record."""
        global_size = min(self.batch_size, len(self.train) - b * self.batch_size)
        labels, images, features, zs_image = self._inputs(sr, item, global_size)
        share = 0.0 if labels is None else len(labels) / global_size
        lam = triplet_weight(epoch * self.steps_per_epoch + b, self.steps_per_epoch * sr.stage.epochs,
                             self.config.triplet.lambda_start, self.config.triplet.lambda_end) \
            if sr.stage.triplet else 0.0
        lr = sr.optimizer.param_groups[0]["lr"]
        self.forwards.begin_step()
        distilling = self.distiller is not None and sr.index == self.distill_stage and labels is not None

        def total():
            with self.autocast():
                out = sr.objective(labels, images, features, lam, zs_image)
                term = self.distiller.loss(self.model, self.global_step, self.device) if distilling else None
            return (out[0] + term if term is not None else out[0]), out[1], out[2], out[3], term

        loss, ce, trip, cons, distill_term = total()
        sr.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks: weighting each rank's mean by world * share gives the
        # gradient of the global batch mean (one process: weight 1).
        weight = share * self.world
        try:
            _backward(loss * weight, self.scaler)
        except Exception as exc:  # a lazily compiled backward graph failed: redo the step eagerly
            if not self.forwards.active or self.world > 1:  # under DDP the ranks' reductions are out of step
                raise
            self.forwards.disable(exc)
            sr.optimizer.zero_grad(set_to_none=True)
            loss, ce, trip, cons, distill_term = total()
            _backward(loss * weight, self.scaler)
        # the loss reaches the host once the backward is queued (on a GPU: one wait for forward + backward,
        # no idle gap between them); a non-finite loss stops the run before the optimizer touches the prompts
        loss_value = _global_sum(loss.detach() * share, self.world)
        if not math.isfinite(loss_value):
            last = latest_state(self.run_dir) or "none (first epoch)"
            raise TrainingDiverged(
                f"non-finite loss ({loss_value}) in stage {sr.stage.name!r}, epoch {epoch + 1}, step {b + 1} "
                f"(lr {lr:g}, lambda {lam:g}); last good checkpoint: {last}")
        if self.scaler:
            self.scaler.step(sr.optimizer)
            self.scaler.update()
        else:
            sr.optimizer.step()
        if sr.averager is not None:
            sr.averager.after_step()
        ce_value, trip_value, cons_value = torch.stack([t.detach().float() for t in (ce, trip, cons)]).tolist()
        record = {"stage": sr.stage.name, "epoch": epoch, "lr": lr, "lambda": lam, "loss": loss_value,
                  "ce": ce_value, "triplet": trip_value}  # one transfer for the three terms
        if self.consistency is not None:
            record["consistency"] = cons_value
        if distill_term is not None:
            record["distill"] = float(distill_term.detach())
        return record

    # -------------------------------------------------------------- step 4: end of an epoch
    def end_epoch(self, sr: StageRun, epoch: int) -> None:
        """Advance the learning rate, average the prompts (averaging option: at the stage's last epoch
        the average replaces them), save the resumable state (rank 0), wait for all ranks, callback."""
        sr.scheduler.step()
        averaged = None
        if sr.averager is not None:
            sr.averager.after_epoch()
            if epoch == sr.stage.epochs - 1:
                sr.averager.apply()  # the next stage and the export see the average; the saved state too
            else:
                averaged = sr.averager.state()
        counters = {"stage_index": sr.index, "stage": sr.stage.name, "epoch": epoch, "global_step": self.global_step}
        if self.is_main:
            save_state(self.run_dir, self.model, sr.optimizer, self.param_names, counters,
                       dict(self.metadata, stage=sr.stage.name, epoch=epoch + 1), sr.scheduler.state_dict(),
                       averaged=averaged, config=resume_record(self.config))
        if self.world > 1:
            dist.barrier()
        if self.on_epoch_end is not None:
            self.on_epoch_end(sr.index, epoch)

    # -------------------------------------------------------------- step 5: the exported checkpoint
    def export(self, seconds_per_iter: Dict[str, float]) -> str:
        """``model.finalize()`` when the method has it (WiSE-FT), then ``run_dir/final`` (rank 0)."""
        if hasattr(self.model, "finalize"):
            self.model.finalize()
        final_dir = os.path.join(self.run_dir, "final")
        if self.is_main:
            save_checkpoint(self.model, final_dir, **dict(self.metadata, completed=True,
                                                          seconds_per_iter=seconds_per_iter))
        return final_dir


def fit(model, train: PreparedSegments, label_space: List[str], config: TrainConfig, run_dir: str,
        resume: bool = False, progress: bool = True,
        on_epoch_end: Optional[Callable[[int, int], None]] = None, extra_metadata: Optional[dict] = None,
        distiller=None) -> FitResult:
    """Train ``model`` on ``train`` (labels index the first entries of ``label_space``).

    label_space: base classes followed by negative queries; logits are computed over all of it.
    Writes ``run_dir/state/`` (resumable), ``run_dir/train_log.jsonl`` and ``run_dir/final/``
    (the exported checkpoint). ``on_epoch_end(stage_index, epoch)`` runs after each saved epoch.
    ``config.method`` must be ``model``'s method (its settings, options and preset follow it).
    """
    method = getattr(model, "method", None)
    if method is not None and method != config.method:
        raise ValueError(f"fit: the model is a {method!r} encoder but the config's method is {config.method!r}; "
                         f"build the config with method: {method} (its setting, options and preset depend on it)")
    with flush_denormal():
        trainer = Trainer(model, train, label_space, config, run_dir, progress, on_epoch_end, extra_metadata, distiller)
        with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
            return trainer.run(resume)


def finished_run_timing(run_dir: str) -> Tuple[Dict[str, float], Dict[str, int]]:
    """(seconds per iteration, iterations) per stage as the finished run recorded them: its exported
    checkpoint's ``seconds_per_iter`` and its log's step counts ({} when there is no such record)."""
    from ..core.checkpoint import read_checkpoint_config

    try:
        meta = read_checkpoint_config(os.path.join(run_dir, "final")).get("metadata", {})
    except (OSError, ValueError):
        return {}, {}
    counts: Dict[str, int] = {}
    for record in read_log(run_dir):
        counts[record["stage"]] = counts.get(record["stage"], 0) + 1
    seconds = dict(meta.get("seconds_per_iter") or {})
    return seconds, {k: v for k, v in counts.items() if k in seconds}


def check_resumable(folder: str, state: dict, config: TrainConfig) -> None:
    """Refuse to resume the training state in ``folder`` (its ``trainer_state.json`` read as ``state``)
    under a config whose training options differ from the saved run's (``config.resume_record``; the
    keys allowed to differ are ``config.RESUME_MAY_DIFFER``): ValueError naming each key and both values.
    States written before the options were recorded are not compared (averaging is still checked)."""
    saved = state.get("config")
    if saved is None:
        return
    mismatches = resume_mismatches(saved, config)
    if mismatches:
        raise ValueError(f"{folder}: saved by a run with other training options, so --resume would not continue "
                         "it; resume with that run's config or train into a new output_dir. Differences: "
                         + "; ".join(mismatches))


def training_options(config: TrainConfig) -> dict:
    """The training options beyond the schedule that a checkpoint records (with its ``preset``)."""
    options = {"triplet": config.triplet.model_dump(), "consistency": config.consistency.model_dump(),
               "averaging": config.averaging.model_dump()}
    if config.distill.active:  # recorded only when on: checkpoints of runs without it are unchanged
        options["distill"] = dict(config.distill.model_dump(), transductive=config.transductive)
    return options


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler else loss).backward()


def _global_sum(value: torch.Tensor, world: int) -> float:
    """Sum of a scalar over ranks (the global batch's mean loss from the ranks' weighted shares)."""
    if world > 1:
        value = value.clone().float()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return float(value)


def _truncate_log(path: str, global_step: int) -> None:
    """Drop log lines written after the state we resume from (the interrupted epoch)."""
    if not os.path.exists(path):
        return
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for ln in f:
            try:
                record = json.loads(ln)
            except ValueError:
                continue  # a line torn by a kill mid-write
            if isinstance(record, dict) and record.get("step", 0) <= global_step:
                lines.append(ln if ln.endswith("\n") else ln + "\n")
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))  # a kill now leaves the old log or the new one


def read_log(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, "train_log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]

"""Training speed: seconds per iteration of stage 1, stage 2 (with / without cached image features), the
text-tower floor of stage 2, baselines.

Runs the real training engine (:func:`opendas_encoder.train.fit`) on random segments streamed like a
real dataset's (``--steps`` x ``--batch`` random images, labels over the first sixth of a
``--label-space`` of real class names, as with five negative queries per base class) and reads the
per-step times from its log:

* ``stage1``: visual prompts learn, frozen text features computed once (setting ``visual-only``);
* ``stage2``: text prompts learn, image tower run every iteration (``runtime.cache_features: false``);
* ``stage2_cached``: text prompts learn on image features computed once before the loop;
* each baseline (a registered method other than opendas / zeroshot) in its one-stage setting
  (``one-stage-ce``: all its tensors learn) with its own options.

``text_floor_s_per_iter`` is the physical floor of cached stage 2 (issue 18): the text tower forward
+ backward over the whole label space with the same prompts, the same batch of cached image
features and the same loss, and nothing else (no optimizer, data, logging), timed before and after
the stage variants (median of both halves); ``stage2_floor_ratio`` = cached stage 2 / floor. ``fit s`` is
the wall time of the whole ``fit`` call (image-feature
caching and checkpoints included). An unknown or failing baseline stops the run with its error.

Figures are medians over the steps after ``--warmup-steps``. Peak memory per variant: CUDA
``torch.cuda.max_memory_allocated`` above the memory held before the variant; CPU peak resident set
size (``VmHWM``, reset per variant through ``/proc/self/clear_refs``) above the resident size before
it (falls back to the growth of ``ru_maxrss`` where the reset is not allowed; the JSON says which).

    python eval/bench_train.py --json /tmp/train.json
    python eval/bench_train.py --model ViT-B-16 --label-space 900 --variants stage2_cached --baselines none
    python eval/bench_train.py --model ViT-L-14 --device cuda --amp bf16 --batch 16 --baselines none

``--json`` gets ``stage1_s_per_iter``, ``stage2_s_per_iter``, ``stage2_cached_s_per_iter``,
``stage2_cached_speedup`` (stage 1 time / cached stage 2 time), ``text_floor_s_per_iter``,
``stage2_floor_ratio``, ratios, memory and the settings (a variant left out by ``--variants`` is
``null``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional

import torch

EVAL_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(EVAL_DIR)
for path in (ROOT, EVAL_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_encode import (autocast_factory, class_names, environment, resolve, set_threads,  # noqa: E402
                          write_result_json)
from opendas_encoder import PromptConfig, create_model  # noqa: E402
from opendas_encoder.data import ListSegmentDataset, Segment  # noqa: E402
from opendas_encoder.train import (PreparedSegments, ScheduleConfig, TrainConfig, encode_images, fit,  # noqa: E402
                                   flush_denormal, opendas_text_loss, prepare_segments, read_log)
from opendas_encoder.train.config import (AMP_MODES, BASELINE_SETTING, COMPILE_MODES, PRESETS,  # noqa: E402
                                          RuntimeConfig)

VARIANTS = {"stage1": ("visual-only", False), "stage2": ("text-only", False), "stage2_cached": ("text-only", True)}

#: paper, Sec. 5 implementation details (ViT-L-14, batch 16, one A100); quoted by the GPU script
PAPER_A100_S_PER_ITER = 0.53


class PeakMemory:
    """Peak memory of a block above the memory held when it starts, in MiB (``.mib``; ``.how`` says how)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")
        self.how = ""

    @staticmethod
    def _status_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.how = "torch.cuda.max_memory_allocated above the allocation at the start"
            return self
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
            self._start = self._status_kib("VmRSS")
            self.how = "peak RSS (VmHWM, reset via /proc/self/clear_refs) above the RSS at the start"
        except OSError:
            self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.how = "growth of ru_maxrss (process-lifetime peak; 0 when an earlier peak was higher)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2 ** 20
        elif self.how.startswith("peak RSS"):
            self.mib = (self._status_kib("VmHWM") - self._start) / 1024
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._start) / 1024


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``) so that RSS growth shows new memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def random_segments(n: int, model, n_classes: int, seed: int) -> PreparedSegments:
    """``n`` random images at the model's input size (whole-image masks), labels in [0, n_classes),
    prepared and streamed like a real dataset's segments."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = model.image_size
    names = [f"class {i}" for i in range(n_classes)]
    segments = [Segment(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.ones((h, w), bool),
                        names[int(rng.integers(n_classes))], f"random/{i}") for i in range(n)]
    return prepare_segments(ListSegmentDataset(segments, names, name="random"), model.preprocess, names,
                            model.image_size, progress=False)


def bench_config(args, setting: str, cache: bool, out_dir: str, method: str = "opendas") -> TrainConfig:
    """One epoch per trained stage, no warm-up; OpenDAS with ``--preset`` (default: the paper's method,
    whose stage-2 loss is exactly the floor's), a baseline with its own (paper) options."""
    return TrainConfig(name=f"bench {method} {setting}", method=method, setting=setting, preset=args.preset,
                       schedule=ScheduleConfig(batch_size=args.batch, stage1_epochs=1, stage2_epochs=0 if
                                               setting in ("visual-only", BASELINE_SETTING) else 1, warmup_epochs=0),
                       runtime=RuntimeConfig(device=args.device, amp=args.amp, cache_features=cache,
                                             compile=args.compile, eval_batch_size=args.eval_batch),
                       output_dir=out_dir)


#: (row, function name, part of its file's path) of the step parts that --profile reports; the two tower
#: rows are parts of the first (the stage objective's forward: towers + loss)
PROFILE_PARTS = (("forward (towers + loss)", "forward", "trainer.py"),
                 ("of which image tower", "encode_image", "opendas_encoder/methods"),
                 ("of which text tower", "encode_text", "opendas_encoder/methods"),
                 ("backward", "_backward", "trainer.py"),
                 ("optimizer step", "step", "torch/optim"))


@contextlib.contextmanager
def profiled_epochs(into: dict):
    """cProfile of every ``Trainer.train_epoch`` inside the block; ``into`` gets each part's share of the
    epochs' time (cumulative seconds; "everything else" = total - forward - backward - optimizer step:
    batches, the loss to the host, the log line)."""
    import cProfile
    import pstats

    from opendas_encoder.train import trainer

    prof = cProfile.Profile()
    real = trainer.Trainer.train_epoch

    def train_epoch(self, *args, **kwargs):
        prof.enable()
        try:
            return real(self, *args, **kwargs)
        finally:
            prof.disable()

    trainer.Trainer.train_epoch = train_epoch
    try:
        yield
    finally:
        trainer.Trainer.train_epoch = real
        stats = pstats.Stats(prof).stats

        def cumulative(name, where):
            return sum(v[3] for k, v in stats.items() if k[2] == name and where in k[0])

        total = cumulative("train_epoch", "trainer.py")
        parts = {row: cumulative(name, where) for row, name, where in PROFILE_PARTS}
        parts["everything else"] = total - sum(v for k, v in parts.items() if not k.startswith("of which"))
        into.update({"seconds": total, "share": {k: v / total for k, v in parts.items()} if total else {}})


def time_fit(model, data: PreparedSegments, label_space: List[str], config: TrainConfig, device: torch.device,
             warmup_steps: int, profile: bool = False) -> dict:
    """Run ``fit``; median seconds per iteration (after the warm-up steps), wall time, peak memory, and
    with ``profile`` the share of each part of the steps (cProfile; slows the steps slightly)."""
    profile_result: dict = {}
    with PeakMemory(device) as mem, warnings.catch_warnings(record=True) as caught, \
            (profiled_epochs(profile_result) if profile else contextlib.nullcontext()):
        warnings.simplefilter("always", RuntimeWarning)
        start = time.perf_counter()
        fit(model, data, label_space, config, config.output_dir, progress=False)
        wall = time.perf_counter() - start
    fallback = [str(w.message) for w in caught if "runtime.compile" in str(w.message)]
    for w in caught:  # shown as they would have been
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    steps = [r["seconds"] for r in read_log(config.output_dir)]
    timed = steps[warmup_steps:] if len(steps) > warmup_steps else steps
    return {"s_per_iter": statistics.median(timed), "steps": len(steps), "timed_steps": len(timed),
            "first_step_s": steps[0], "fit_seconds": wall, "peak_memory_mib": mem.mib, "memory_measure": mem.how,
            "samples_s": timed, "compile_fallback": fallback[0] if fallback else None,
            "profile": profile_result or None}


def baseline_names(spec: str) -> List[str]:
    """The baselines named by ``spec``; an unknown name stops the benchmark before any work."""
    if spec in ("", "none"):
        return []
    from opendas_encoder.core.registry import method_names

    known = [m for m in method_names() if m not in ("opendas", "zeroshot")]
    names = known if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise SystemExit(f"bench_train: unknown baseline(s) {unknown}; known: {sorted(known)}")
    return names


def variant_names(spec: str) -> List[str]:
    names = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"bench_train: --variants {spec!r}: choose from {list(VARIANTS)}")
    return names


def text_floor(model, data: PreparedSegments, label_space: List[str], args, device: torch.device) -> dict:
    """Seconds of ``--steps`` text tower forward + backward passes over ``label_space`` with ``model``'s
    text prompts and the loss of stage 2 on one batch of cached image features, and nothing else
    (after the warm-up steps)."""
    model.set_trainable(visual=False, text=True)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = autocast_factory(device, "bf16" if args.amp == "auto" else args.amp)
    batch = torch.utils.data.Subset(data, range(min(args.batch, len(data))))
    with flush_denormal():
        with autocast():
            features = encode_images(model, batch, device, args.eval_batch)
        labels = data.labels[:len(batch)].to(device)
        tokens = model.tokenizer(label_space)
        scale = model.logit_scale.exp().detach().float()
        model.train()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            with autocast():
                text = model.encode_text(tokens, normalize=True).float()
                loss = opendas_text_loss(features, text, labels, scale, 2.5)[0]
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            for p in params:
                p.grad = None
    return {"timed_s": times[args.warmup_steps:] if len(times) > args.warmup_steps else times}


def run(args: argparse.Namespace) -> dict:
    device = resolve(args.device)
    args.device = str(device)
    threads = set_threads(args.threads, device)
    baselines = baseline_names(args.baselines)
    wanted = variant_names(args.variants)
    label_space = class_names(args.label_space)
    n_base = max(1, math.ceil(args.label_space / 6))
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = create_model(args.model, args.pretrained, PromptConfig(visual_tokens=args.visual_tokens,
                                                                   text_tokens=args.text_tokens), device=device)
    build_seconds = time.perf_counter() - t0
    data = random_segments(args.batch * args.steps, model, n_base, args.seed)
    variants: Dict[str, dict] = {}
    floor = None
    # the floor is timed before and after the stage variants (machine load drifts; both halves count)
    floor_before = text_floor(model, data, label_space, args, device) if "stage2_cached" in wanted else None
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for name in wanted:
            setting, cache = VARIANTS[name]
            variants[name] = time_fit(model, data, label_space, bench_config(args, setting, cache,
                                                                              os.path.join(tmp, name)),
                                      device, args.warmup_steps, args.profile)
            print(f"  {name}: {variants[name]['s_per_iter']:.4f} s/iter")
        if floor_before is not None:
            after = text_floor(model, data, label_space, args, device)
            samples = floor_before["timed_s"] + after["timed_s"]
            floor = {"s_per_iter": statistics.median(samples), "samples_s": samples}
            print(f"  text floor: {floor['s_per_iter']:.4f} s/iter")
        del model
        for method in baselines:
            from opendas_encoder.core.factory import create_encoder

            torch.manual_seed(args.seed)
            baseline = create_encoder(method, args.model, args.pretrained, device=device)
            cfg = bench_config(args, BASELINE_SETTING, True, os.path.join(tmp, method), method)
            variants[method] = time_fit(baseline, data, label_space, cfg, device, args.warmup_steps, args.profile)
            print(f"  {method}: {variants[method]['s_per_iter']:.4f} s/iter")
            del baseline
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def s_per_iter(name):
        return variants[name]["s_per_iter"] if name in variants else None

    s1, cached = s_per_iter("stage1"), s_per_iter("stage2_cached")
    result = {
        "model": args.model, "pretrained": args.pretrained, "batch": args.batch, "steps": args.steps,
        "warmup_steps": args.warmup_steps, "label_space": args.label_space, "base_classes": n_base,
        "amp": args.amp if device.type == "cuda" else "off", "compile": args.compile, "preset": args.preset,
        "compile_fallback": {k: v["compile_fallback"] for k, v in variants.items() if v["compile_fallback"]},
        "visual_tokens": args.visual_tokens, "text_tokens": args.text_tokens,
        "stage1_s_per_iter": s1,
        "stage2_s_per_iter": s_per_iter("stage2"),
        "stage2_cached_s_per_iter": cached,
        "stage2_cached_speedup": s1 / cached if s1 and cached else None,
        "text_floor_s_per_iter": floor["s_per_iter"] if floor else None,
        "stage2_floor_ratio": cached / floor["s_per_iter"] if floor else None,
        "text_floor_samples_s": floor["samples_s"] if floor else None,
        "stage2_cached_samples_s": variants["stage2_cached"]["samples_s"] if "stage2_cached" in variants else None,
        "ratios_to_stage1": {k: v["s_per_iter"] / s1 for k, v in variants.items()} if s1 else {},
        "baselines_s_per_iter": {k: v["s_per_iter"] for k, v in variants.items() if k not in VARIANTS},
        "peak_memory_mib": {k: v["peak_memory_mib"] for k, v in variants.items()},
        "memory_measure": next(iter(variants.values()))["memory_measure"] if variants else "",
        "variants": variants, "build_seconds": build_seconds,
        "timing": "median of fit's logged per-step seconds after the warm-up steps",
        **environment(device, threads),
    }
    return result


def report(r: dict) -> str:
    lines = [f"bench_train: {r['model']} batch {r['batch']}, label space {r['label_space']}, "
             f"on {r.get('gpu', r['device'])}, {r['threads']} thread(s), amp {r['amp']}, compile {r['compile']}",
             f"  {'variant':<16}{'s/iter':>10}{'x stage 1':>11}{'peak MiB':>11}{'fit s':>9}"]
    for name, v in r["variants"].items():
        ratio = r["ratios_to_stage1"].get(name)
        lines.append(f"  {name:<16}{v['s_per_iter']:>10.4f}{ratio if ratio is not None else float('nan'):>11.3f}"
                     f"{v['peak_memory_mib']:>11.1f}{v['fit_seconds']:>9.2f}")
    if r["stage2_cached_speedup"] is not None:
        lines.append(f"  stage2_cached_speedup (stage 1 / cached stage 2 time per iteration): "
                     f"{r['stage2_cached_speedup']:.2f}")
    if r["text_floor_s_per_iter"] is not None:
        lines.append(f"  text_floor_s_per_iter (text tower forward + backward + loss, nothing else): "
                     f"{r['text_floor_s_per_iter']:.4f}; stage2_floor_ratio (cached stage 2 / floor): "
                     f"{r['stage2_floor_ratio']:.3f}")
    for name, v in r["variants"].items():
        if v.get("profile"):
            shares = ", ".join(f"{k} {100 * x:.2f}%" for k, x in v["profile"]["share"].items())
            lines.append(f"  profile {name} (share of {v['profile']['seconds']:.2f} s of steps): {shares}")
    for name, message in r["compile_fallback"].items():
        lines.append(f"  {name}: runtime.compile fell back to eager: {message}")
    lines.append(f"  memory: {r['memory_measure']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="opendas-world-vit", help="open_clip model name (random weights by default)")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="iterations per variant (one epoch of steps x batch)")
    p.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the median")
    p.add_argument("--label-space", type=int, default=100, help="class names the logits run over")
    p.add_argument("--baselines", default="all", help="'all', 'none' or a comma-separated list of methods")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated stage variants to time (of {', '.join(VARIANTS)})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--amp", default="auto", choices=AMP_MODES,
                   help="runtime.amp (CUDA only; auto = bf16 where supported)")
    p.add_argument("--compile", nargs="?", const="default", default="off", choices=COMPILE_MODES,
                   help="runtime.compile: torch.compile the encoder (bare --compile: torch's default mode; "
                        "reduce-overhead: CUDA graphs on CUDA)")
    p.add_argument("--preset", default="paper", choices=list(PRESETS),
                   help="OpenDAS training options of the stage variants (paper: the floor's loss exactly; default: "
                        "plus the text-consistency term and the prompt EMA)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the training steps: share of text / image forward, backward, loss, optimizer, rest")
    p.add_argument("--eval-batch", type=int, default=64, help="batch of the stage-2 image-feature cache")
    p.add_argument("--visual-tokens", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if min(args.batch, args.steps, args.label_space) < 1 or args.warmup_steps < 0:
        raise SystemExit("bench_train: --batch, --steps and --label-space must be >= 1, --warmup-steps >= 0")
    result = run(args)
    print(report(result))
    if args.json:
        write_result_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

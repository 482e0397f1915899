"""The GPU benchmark run behind ``eval/bench_gpu.sh``: ViT-L-14 (random weights) training and encoding speed.

Phases in the order of issue 18's goals, each writing its JSON into ``--out`` (``summary.json`` is
rewritten after every phase, so a run cut short keeps what it measured):

1. ``train_vitl14.json``: bench_train, ViT-L-14, batch 16, bf16 autocast, stage 1 / stage 2 /
   stage 2 on cached image features and the text-tower floor at 100 labels (eager);
2. ``encode_vitl14.json``: bench_encode, ViT-L-14, batch 64, bf16, prompted vs vanilla open_clip;

then, while the elapsed time is below ``--budget`` seconds, each in a subprocess bounded by the time left:

3. ``aggregate_vitl14_336.json``: bench_aggregate, ViT-L-14-336 bf16, batched crops vs the per-mask loop
   (and OpenMask3D's loop where ``$OPENMASK3D_ROOT`` is set);
4. ``floor900_vitl14.json``: cached stage 2 against its floor at a 900-name label space;
5. ``graphs_vitl14.json``: cached stage 2 with ``runtime.compile: reduce-overhead`` (CUDA graphs) at
   100 labels: the launch-bound step after, phase 1's eager step before (same floor, eager);
6. ``train_vitl14_baselines.json``: the baselines, 4 steps each.

``--device cpu`` with a tiny ``--model`` runs the same phases on the CPU (the test does, so that the
one GPU run does not find a broken script).

    python eval/bench_gpu.py --out /tmp/bench_gpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from typing import List

EVAL_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(EVAL_DIR)
for path in (ROOT, EVAL_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

PAPER_A100_S_PER_ITER = 0.53  # paper: ViT-L-14, batch 16, one A100 (Dassl, per training iteration)


class Run:
    def __init__(self, out: str, budget: float):
        self.out = out
        self.budget = budget
        self.start = time.perf_counter() - float(os.environ.get("BENCH_SETUP_SECONDS", "0"))
        self.summary = {"setup": os.environ.get("BENCH_SETUP", "not run through bench_gpu.sh"),
                        "paper_a100_s_per_iter": PAPER_A100_S_PER_ITER, "phases": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        self.summary["elapsed_s"] = round(self.elapsed(), 1)
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(self.summary, f, indent=1, sort_keys=True)

    def in_process(self, phase: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            fn()
            self.summary["phases"][phase] = f"ok ({time.perf_counter() - t0:.0f} s)"
        except Exception as exc:  # keep going: the other phases still tell something
            traceback.print_exc()
            self.summary["phases"][phase] = f"failed: {type(exc).__name__}: {exc}"
        self.save()

    def subprocess(self, phase: str, argv: List[str], min_seconds: float) -> bool:
        left = self.budget - self.elapsed()
        if left < min_seconds:
            self.summary["phases"][phase] = f"skipped: {left:.0f} s of the {self.budget:.0f} s budget left"
            self.save()
            return False
        print(f"bench_gpu: {phase}: {' '.join(argv)} (timeout {left:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable] + argv, cwd=ROOT, timeout=left)
            status = "ok" if proc.returncode == 0 else f"failed: exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = "timed out"
        self.summary["phases"][phase] = f"{status} ({time.perf_counter() - t0:.0f} s)"
        self.save()
        return status == "ok"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the JSON files")
    p.add_argument("--model", default="ViT-L-14")
    p.add_argument("--aggregate-model", default="ViT-L-14-336", help="encoder of the 3D mask-feature phase")
    p.add_argument("--device", default="cuda", help="cuda (the point of this script) or cpu (a dry run)")
    p.add_argument("--budget", type=float, default=float(os.environ.get("BENCH_BUDGET_S", "270")),
                   help="seconds after which optional phases are not started (setup included)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--encode-batch", type=int, default=64)
    p.add_argument("--label-space", type=int, default=100)
    p.add_argument("--large-label-space", type=int, default=900)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    run = Run(args.out, args.budget)

    import torch

    cuda = args.device.startswith("cuda")
    run.summary.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), device=args.device,
                       model=args.model)
    if cuda and not torch.cuda.is_available():
        run.summary["phases"]["cuda"] = "failed: torch.cuda.is_available() is False"
        run.save()
        print("bench_gpu: no CUDA device visible to torch", file=sys.stderr)
        return 4
    if cuda:
        run.summary["gpu"] = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import bench_encode
    import bench_train

    def out(name):
        return os.path.join(args.out, name)

    amp = ["--amp", "bf16"] if cuda else ["--amp", "off"]
    common = ["--model", args.model, "--device", args.device] + amp
    stage2 = ["--batch", str(args.batch), "--steps", str(args.steps), "--variants", "stage2_cached",
              "--baselines", "none"]

    def train():
        r = bench_train.main(common + ["--batch", str(args.batch), "--steps", str(args.steps), "--label-space",
                                       str(args.label_space), "--baselines", "none",
                                       "--json", out("train_vitl14.json")])
        s1 = r["stage1_s_per_iter"]
        run.summary.update(stage1_s_per_iter=s1, stage2_s_per_iter=r["stage2_s_per_iter"],
                           stage2_cached_s_per_iter=r["stage2_cached_s_per_iter"],
                           text_floor_s_per_iter=r["text_floor_s_per_iter"],
                           stage2_floor_ratio=r["stage2_floor_ratio"],
                           stage2_cached_speedup=r["stage2_cached_speedup"],
                           stage1_speedup_vs_paper_a100=PAPER_A100_S_PER_ITER / s1,
                           peak_memory_mib=r["peak_memory_mib"])

    def encode():
        r = bench_encode.main(common + ["--batch", str(args.encode_batch), "--repeats", "10", "--warmup", "2",
                                        "--json", out("encode_vitl14.json")])
        run.summary.update(encode_ratio_image=r["ratio_image"], encode_ratio_text=r["ratio_text"],
                           encode_ratio_image_rebuilt=r["ratio_image_rebuilt"],
                           encode_ratio_image_paired=r["ratio_image_paired"],
                           encode_ratio_image_rebuilt_paired=r["ratio_image_rebuilt_paired"],
                           encode_images_per_s_prompted=r["images_per_s_prompted"],
                           encode_images_per_s_vanilla=r["images_per_s_vanilla"])

    run.in_process("train_vitl14", train)
    if cuda:
        torch.cuda.empty_cache()
    run.in_process("encode_vitl14", encode)
    if cuda:
        torch.cuda.empty_cache()
    print(f"bench_gpu: required phases done after {run.elapsed():.0f} s", flush=True)

    def read(name):
        with open(out(name)) as f:
            return json.load(f)

    if run.subprocess("aggregate_vitl14_336", ["eval/bench_aggregate.py", "--model", args.aggregate_model,
                                               "--device", args.device, *amp, "--repeats", "3",
                                               "--json", out("aggregate_vitl14_336.json")], min_seconds=60):
        run.summary["aggregate_vitl14_336"] = read("aggregate_vitl14_336.json")
    if run.subprocess("floor900_vitl14", ["eval/bench_train.py"] + common + stage2 + [
            "--label-space", str(args.large_label_space), "--json", out("floor900_vitl14.json")], min_seconds=60):
        r = read("floor900_vitl14.json")
        run.summary.update(stage2_cached_s_per_iter_900=r["stage2_cached_s_per_iter"],
                           text_floor_s_per_iter_900=r["text_floor_s_per_iter"],
                           stage2_floor_ratio_900=r["stage2_floor_ratio"])
    if run.subprocess("graphs_vitl14", ["eval/bench_train.py"] + common + stage2 + [
            "--label-space", str(args.label_space), "--warmup-steps", "3", "--compile", "reduce-overhead",
            "--json", out("graphs_vitl14.json")], min_seconds=90):
        r = read("graphs_vitl14.json")
        run.summary.update(graphs_stage2_cached_s_per_iter=r["stage2_cached_s_per_iter"],
                           graphs_text_floor_s_per_iter=r["text_floor_s_per_iter"],
                           graphs_stage2_floor_ratio=r["stage2_floor_ratio"],
                           graphs_compile_fallback=r["compile_fallback"],
                           graphs_first_fit_s=r["variants"]["stage2_cached"]["fit_seconds"])
    if run.subprocess("baselines_vitl14", ["eval/bench_train.py"] + common + [
            "--batch", str(args.batch), "--steps", "4", "--label-space", str(args.label_space), "--baselines", "all",
            "--variants", "stage1", "--json", out("train_vitl14_baselines.json")], min_seconds=60):
        run.summary["baselines_s_per_iter"] = read("train_vitl14_baselines.json")["baselines_s_per_iter"]
    run.save()
    print(json.dumps(run.summary, indent=1, sort_keys=True))
    failed = [k for k, v in run.summary["phases"].items() if not v.startswith(("ok", "skipped"))]
    if failed:
        print(f"bench_gpu: phases not ok: {failed}", file=sys.stderr)
    return 1 if any(k in ("train_vitl14", "encode_vitl14") for k in failed) else 0


if __name__ == "__main__":
    sys.exit(main())

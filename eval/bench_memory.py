"""Training memory at scale and data-pipeline throughput (issues 13 item 6 and 18): a benchmark, not a test.

1. Peak RSS of ``opendas train`` (a subprocess) on generated datasets in the generic on-disk format
   (``opendas_encoder.data.generic``: JPEG images, 8-bit semantic maps) of ``--sizes`` segments
   (default 2,000 and 20,000) at ``--image-size`` px (default 224), with a tiny random open_clip
   ViT at that input size (``local-dir:`` config, 2 + 2 layers), one epoch per stage, no test split.
   Training runs with ``num_workers: 0``, so the trainer is one process; its peak RSS is the
   ``ru_maxrss`` of the children of a fresh parent process that runs only that command (earlier
   runs do not count). Prints ``ratio`` = peak RSS of the largest size / the smallest; goal
   (issue 13): <= 1.3.
2. Images/s of the training data pipeline with ``--workers`` DataLoader workers (default 0 and 2),
   on the smallest dataset: ``prepare`` (decode, crop, resize, write the segment cache: once per
   run) and ``stream`` (read the cache, to tensor, normalise, batch: every epoch).

    python eval/bench_memory.py --json /tmp/memory.json
    python eval/bench_memory.py --sizes 40 80 --image-size 64 --pipeline-segments 40   # a quick check
    python eval/bench_memory.py --parts pipeline                                         # images/s only

All data is generated (labelled so in the JSON); ``--work-dir`` keeps it (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

EVAL_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(EVAL_DIR)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SEGMENTS_PER_IMAGE = 10
N_CLASSES = 20
#: runs one command and prints the peak RSS (KiB) of its process tree on its last line
_PEAK_RSS_SHIM = ("import json, resource, subprocess, sys\n"
                  "rc = subprocess.call(sys.argv[1:])\n"
                  "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
                  "print(json.dumps({'rc': rc, 'maxrss_kib': peak}))\n")


def write_generic_dataset(root: str, n_segments: int, image_size: int, seed: int = 0) -> int:
    """Generated segments in the generic layout: ``n_segments / 10`` images, each split into a 2 x 5
    grid of cells of 10 different classes (a coloured cell with texture); returns the segment count."""
    rng = np.random.default_rng(seed)
    classes = [f"class {k}" for k in range(N_CLASSES)]
    colours = rng.integers(30, 226, (N_CLASSES + 1, 3))
    os.makedirs(os.path.join(root, "images", "train"), exist_ok=True)
    os.makedirs(os.path.join(root, "semantic", "train"), exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    rows = np.repeat(np.arange(2), -(-image_size // 2))[:image_size]
    cols = np.repeat(np.arange(5), -(-image_size // 5))[:image_size]
    cell = rows[:, None] * 5 + cols[None, :]  # (S, S) cell index 0..9
    n_images = -(-n_segments // SEGMENTS_PER_IMAGE)
    for k in range(n_images):
        ids = rng.choice(N_CLASSES, SEGMENTS_PER_IMAGE, replace=False) + 1  # class ids 1..20
        semantic = ids[cell].astype(np.uint8)
        texture = rng.integers(-25, 26, (image_size, image_size, 1))
        image = np.clip(colours[semantic] + texture, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, "images", "train", f"{k:06d}.jpg"), quality=90)
        Image.fromarray(semantic).save(os.path.join(root, "semantic", "train", f"{k:06d}.png"))
    return n_images * SEGMENTS_PER_IMAGE


def write_model_dir(folder: str, image_size: int) -> str:
    """A tiny random open_clip ViT (2 + 2 layers, width 64, patch 32) at ``image_size`` px, as a
    ``local-dir:`` model folder; returns its model name."""
    os.makedirs(folder, exist_ok=True)
    cfg = {"model_cfg": {"embed_dim": 32,
                         "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32,
                                        "patch_size": 32 if image_size >= 64 else 8},
                         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                                      "layers": 2}},
           "preprocess_cfg": {}}
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return f"local-dir:{folder}"


def write_config(path: str, model: str, data_root: str, out_dir: str, batch: int, workers: int) -> str:
    import yaml

    cfg = {"name": f"bench-memory {os.path.basename(data_root)}", "seed": 0,
           "model": {"name": model, "pretrained": None},
           "prompts": {"visual_tokens": 2, "text_tokens": 4},
           "data": {"train": {"name": "generic", "root": data_root, "split": "train"}, "test": None},
           "schedule": {"batch_size": batch, "stage1_epochs": 1, "stage2_epochs": 1, "warmup_epochs": 0},
           "runtime": {"device": "cpu", "num_workers": workers}, "output_dir": out_dir}
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def peak_rss_of_train(config: str, threads: int) -> dict:
    """Run ``opendas train CONFIG`` in a fresh process tree; its peak RSS and wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "opendas_encoder.cli", "train", config, "--quiet", "--no-plots"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_SHIM, *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"rc": proc.returncode}
    if proc.returncode != 0 or result.get("rc") != 0:
        raise RuntimeError(f"opendas train {config} failed (exit {result.get('rc')}):\n{proc.stderr[-3000:]}")
    return {"peak_rss_mib": result["maxrss_kib"] / 1024, "wall_s": wall, "command": " ".join(cmd)}


def pipeline_throughput(data_root: str, model: str, n_segments: int, workers: int, batch: int, cache_dir: str) -> dict:
    """Images/s of preparing (building the segment cache) and of streaming batches from it."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from opendas_encoder import create_model
    from opendas_encoder.data.generic import GenericSegmentDataset
    from opendas_encoder.train import prepare_segments

    torch.manual_seed(0)
    encoder = create_model(model, None)
    dataset = GenericSegmentDataset(data_root, split="train", progress=False)
    start = time.perf_counter()
    prepared = prepare_segments(dataset, encoder.preprocess, dataset.classes, encoder.image_size, num_workers=workers,
                                progress=False, cache_dir=cache_dir)
    prepare_s = time.perf_counter() - start
    subset = Subset(prepared, range(min(n_segments, len(prepared))))
    loader = DataLoader(subset, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    seen = sum(images.shape[0] for images, _ in loader)
    stream_s = time.perf_counter() - start
    return {"workers": workers, "segments": len(prepared), "prepare_images_per_s": len(prepared) / prepare_s,
            "stream_images_per_s": seen / stream_s, "prepare_s": prepare_s, "stream_s": stream_s}


def run(args: argparse.Namespace) -> dict:
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        return measure(args, args.work_dir)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as work:
        return measure(args, work)


def measure(args: argparse.Namespace, work: str) -> dict:
    model = write_model_dir(os.path.join(work, "model"), args.image_size)
    sizes = args.sizes if "memory" in args.parts else [min(args.sizes)]  # the pipeline uses the smallest
    roots = {size: os.path.join(work, f"data-{size}") for size in sizes}
    runs: Dict[str, dict] = {}
    for size, root in roots.items():
        start = time.perf_counter()
        n = write_generic_dataset(root, size, args.image_size)
        runs[str(size)] = {"segments": n, "generate_s": time.perf_counter() - start}
        if "memory" not in args.parts:
            continue
        config = write_config(os.path.join(work, f"train-{size}.yaml"), model, root, os.path.join(work, f"run-{size}"),
                              args.batch, 0)
        runs[str(size)].update(peak_rss_of_train(config, args.threads))
        print(f"  {n} segments: peak RSS {runs[str(size)]['peak_rss_mib']:.0f} MiB "
              f"(opendas train {runs[str(size)]['wall_s']:.0f} s)")
    result = {"data": "generated (generic on-disk format, JPEG + semantic PNG; tiny random open_clip ViT)",
              "image_size": args.image_size, "batch": args.batch, "runs": runs, "threads": args.threads,
              "ratio_sizes": [min(args.sizes), max(args.sizes)], "goal_ratio": 1.3}
    if "memory" in args.parts:
        small, large = runs[str(min(args.sizes))], runs[str(max(args.sizes))]
        result["ratio"] = large["peak_rss_mib"] / small["peak_rss_mib"]
        result["growth_mib"] = large["peak_rss_mib"] - small["peak_rss_mib"]
    if "pipeline" in args.parts:
        result["pipeline"] = []
        for k, workers in enumerate(args.workers):  # a fresh cache per run: prepare always decodes
            p = pipeline_throughput(roots[min(args.sizes)], model, args.pipeline_segments, workers, args.batch,
                                    os.path.join(work, f"pipeline-cache-{k}"))
            result["pipeline"].append(p)
            print(f"  data pipeline, {workers} workers: prepare {p['prepare_images_per_s']:.0f} images/s, "
                  f"stream {p['stream_images_per_s']:.0f} images/s")
    import torch

    return dict(result, torch=torch.__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
                date=time.strftime("%Y-%m-%d"), work_dir=args.work_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="dataset sizes in segments")
    p.add_argument("--image-size", type=int, default=224, help="image and model input size (px)")
    p.add_argument("--batch", type=int, default=64, help="training batch and data-pipeline batch")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to compare")
    p.add_argument("--pipeline-segments", type=int, default=2000, help="segments streamed per throughput run")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training subprocess")
    p.add_argument("--parts", nargs="+", choices=("memory", "pipeline"), default=["memory", "pipeline"],
                   help="memory: peak RSS of opendas train per size; pipeline: images/s per worker count")
    p.add_argument("--work-dir", help="keep the generated data, configs and runs here")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if len(set(args.sizes)) < 2 or min(args.sizes) < SEGMENTS_PER_IMAGE:
        raise SystemExit(f"bench_memory: --sizes needs two different sizes >= {SEGMENTS_PER_IMAGE}")
    result = run(args)
    if "ratio" in result:
        print(f"bench_memory: peak RSS {result['ratio_sizes'][1]} / {result['ratio_sizes'][0]} segments = "
              f"{result['ratio']:.3f} (goal <= {result['goal_ratio']}; growth {result['growth_mib']:.0f} MiB)")
    if args.json:
        from bench_encode import write_result_json  # imports torch: only after the measured subprocesses

        write_result_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

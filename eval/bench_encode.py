"""Encoding speed of the prompted encoder against vanilla open_clip (same model, process and inputs).

Builds one open_clip model (random weights unless ``--pretrained``), wraps it in
:class:`~opendas_encoder.PromptedCLIP` (``--visual-tokens`` K_v on every vision layer, ``--text-tokens``
K_t on every text layer) and times, at equal batch size, ``encode_image`` of B random images and
``encode_text`` of B class names: vanilla (``clip.encode_image`` / ``clip.encode_text``) and prompted.
Repeats are interleaved A/B, B/A, A/B, ... so that drifts of a shared machine hit both sides
alike; the figures are medians. Prints images/s, texts/s and the ratios prompted time / vanilla
time (1.0 = no overhead); ``--json PATH`` writes them (``ratio_image``, ``ratio_text``, ...).
``ratio_image_rebuilt`` times the prompted image tower once more with the engine rebuilding the token
sequence at every prompted layer (``torch.cat``, as before issue 18) instead of writing the prompts
into the block outputs in place: the saving of the in-place writes, in the same interleaved run.
``*_paired`` ratios are medians of the per-repeat ratios (adjacent calls), steadier under drift.

    python eval/bench_encode.py --model ViT-B-16 --batch 8 --repeats 5 --threads 1 --json /tmp/encode.json

Threads are set explicitly (``--threads``, default 1 on CPU): torch with more threads than free cores
on a shared machine is much slower and noisier.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from opendas_encoder import PromptConfig, PromptedCLIP  # noqa: E402
from opendas_encoder.core import engine  # noqa: E402
from opendas_encoder.core.factory import create_base_model_and_transforms  # noqa: E402
from opendas_encoder.vocab import read_class_list  # noqa: E402

RESOURCES = os.path.join(ROOT, "opendas_encoder", "resources")


def set_threads(threads: Optional[int], device: torch.device) -> int:
    """torch intra-op threads: ``threads``, or 1 on CPU when not given; returns the number in use."""
    if threads is None and device.type == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def class_names(n: int) -> List[str]:
    """``n`` real class names (ADE20K-150 then ScanNet++ top-100, deduplicated; numbered beyond that)."""
    names: List[str] = []
    for file in ("ade20k_150_classes.txt", "scannetpp_top100_classes.txt"):
        for name in read_class_list(os.path.join(RESOURCES, file)):
            if name not in names:
                names.append(name)
    return [names[i] if i < len(names) else f"{names[i % len(names)]} {i // len(names)}" for i in range(n)]


def autocast_factory(device: torch.device, amp: str) -> Callable:
    """A context factory: autocast to bf16/fp16 on CUDA when ``amp`` asks, else a null context."""
    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return lambda: torch.autocast("cuda", dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device,
                        inner: int = 1, samples: Optional[Dict[str, List[float]]] = None) -> Dict[str, float]:
    """Median seconds per call of each function, timed in alternating order (A B, B A, A B, ...).

    ``samples``, when given, receives every timed sample (seconds per call) by function name.
    """
    times: Dict[str, List[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fns[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / inner)
    if samples is not None:
        samples.update(times)
    return {k: statistics.median(v) for k, v in times.items()}


def paired_ratio(samples: Dict[str, List[float]], a: str, b: str) -> float:
    """Median over repeats of ``a``'s time / ``b``'s time in the same repeat (adjacent calls): steadier
    than the ratio of medians when a shared machine drifts between repeats."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b]))


def write_result_json(path: str, result: dict) -> None:
    """A benchmark's result as sorted, indented JSON at ``path`` (folders created); says where (the
    benchmarks of this folder share it)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"  json: {path}")


def environment(device: torch.device, threads: int) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "threads": threads, "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@contextlib.contextmanager
def rebuilt_sequences():
    """The engine as it was before issue 18: a new token sequence (``torch.cat``) at every prompted layer,
    also without autograd (the comparison behind ``ratio_image_rebuilt``; benchmark only)."""
    writable = engine._writable_in_place
    engine._writable_in_place = lambda x, tokens: False
    try:
        yield
    finally:
        engine._writable_in_place = writable


def build_pair(model_name: str, pretrained: Optional[str], device: torch.device, visual_tokens: int,
               text_tokens: int, seed: int):
    """(vanilla open_clip model, PromptedCLIP over that same model), in eval mode on ``device``."""
    torch.manual_seed(seed)
    clip, _, preprocess = create_base_model_and_transforms(model_name, pretrained, device)
    import open_clip

    prompted = PromptedCLIP(clip, PromptConfig(visual_tokens=visual_tokens, text_tokens=text_tokens),
                            tokenizer=open_clip.get_tokenizer(model_name), preprocess=preprocess,
                            model_name=model_name, pretrained=pretrained).to(device).eval()
    return clip.eval(), prompted


def run(args: argparse.Namespace) -> dict:
    device = resolve(args.device)
    threads = set_threads(args.threads, device)
    t_build = time.perf_counter()
    clip, prompted = build_pair(args.model, args.pretrained, device, args.visual_tokens, args.text_tokens, args.seed)
    build_seconds = time.perf_counter() - t_build
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, *prompted.image_size, generator=gen).to(device)
    tokens = prompted.tokenizer(class_names(args.batch)).to(device)
    autocast = autocast_factory(device, args.amp)

    def call(fn):
        def go():
            with torch.inference_mode(), autocast():
                return fn()
        return go

    def rebuilt_image():
        with rebuilt_sequences():
            return prompted.encode_image(images)

    image_fns = {"vanilla": call(lambda: clip.encode_image(images)),
                 "prompted": call(lambda: prompted.encode_image(images)),
                 "prompted_rebuilt": call(rebuilt_image)}
    text_fns = {"vanilla": call(lambda: clip.encode_text(tokens)),
                "prompted": call(lambda: prompted.encode_text(tokens))}
    for fn in list(image_fns.values()) + list(text_fns.values()):
        for _ in range(args.warmup):
            fn()
    image_samples, text_samples = {}, {}
    img = interleaved_medians(image_fns, args.repeats, device, args.inner, image_samples)
    txt = interleaved_medians(text_fns, args.repeats, device, args.inner, text_samples)
    visual = prompted.clip.visual
    n_patch_tokens = int(visual._embeds(images[:1]).shape[1])
    result = {
        "model": args.model, "pretrained": args.pretrained, "batch": args.batch, "repeats": args.repeats,
        "inner": args.inner, "warmup": args.warmup, "amp": args.amp if device.type == "cuda" else "off",
        "visual_tokens": args.visual_tokens, "text_tokens": args.text_tokens,
        "image_tokens_vanilla": n_patch_tokens, "image_tokens_prompted": n_patch_tokens + args.visual_tokens,
        "text_context_length": int(tokens.shape[1]),
        "vanilla_image_s": img["vanilla"], "prompted_image_s": img["prompted"],
        "vanilla_text_s": txt["vanilla"], "prompted_text_s": txt["prompted"],
        "images_per_s_vanilla": args.batch / img["vanilla"], "images_per_s_prompted": args.batch / img["prompted"],
        "texts_per_s_vanilla": args.batch / txt["vanilla"], "texts_per_s_prompted": args.batch / txt["prompted"],
        "ratio_image": img["prompted"] / img["vanilla"], "ratio_text": txt["prompted"] / txt["vanilla"],
        "prompted_rebuilt_image_s": img["prompted_rebuilt"],
        "ratio_image_rebuilt": img["prompted_rebuilt"] / img["vanilla"],
        "ratio_image_paired": paired_ratio(image_samples, "prompted", "vanilla"),
        "ratio_image_rebuilt_paired": paired_ratio(image_samples, "prompted_rebuilt", "vanilla"),
        "ratio_text_paired": paired_ratio(text_samples, "prompted", "vanilla"),
        "image_samples_s": image_samples, "text_samples_s": text_samples, "build_seconds": build_seconds,
        "timing": "median of interleaved repeats (A B, B A, ...), seconds per call",
        **environment(device, threads),
    }
    return result


def report(r: dict) -> str:
    lines = [f"bench_encode: {r['model']} batch {r['batch']} on {r.get('gpu', r['device'])}, {r['threads']} thread(s), "
             f"amp {r['amp']}, median of {r['repeats']} interleaved repeats",
             f"  image tokens: {r['image_tokens_vanilla']} vanilla, {r['image_tokens_prompted']} prompted "
             f"(+{(r['image_tokens_prompted'] / r['image_tokens_vanilla'] - 1) * 100:.1f}%)",
             f"  images/s: vanilla {r['images_per_s_vanilla']:.2f}, prompted {r['images_per_s_prompted']:.2f}, "
             f"ratio (prompted / vanilla time) {r['ratio_image']:.3f}; with a new token sequence per layer "
             f"(before issue 18) {r['ratio_image_rebuilt']:.3f}",
             f"  paired (median of per-repeat ratios): image {r['ratio_image_paired']:.3f}, rebuilt "
             f"{r['ratio_image_rebuilt_paired']:.3f}, text {r['ratio_text_paired']:.3f}",
             f"  texts/s:  vanilla {r['texts_per_s_vanilla']:.2f}, prompted {r['texts_per_s_prompted']:.2f}, "
             f"ratio (prompted / vanilla time) {r['ratio_text']:.3f}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or weights file (default: random weights)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side (interleaved); medians reported")
    p.add_argument("--inner", type=int, default=1, help="calls per timed sample (for very fast tiny models)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="autocast on CUDA")
    p.add_argument("--visual-tokens", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.inner < 1:
        raise SystemExit("bench_encode: --batch, --repeats and --inner must be >= 1")
    result = run(args)
    print(report(result))
    if args.json:
        write_result_json(args.json, result)
    if not all(math.isfinite(result[k]) and result[k] > 0 for k in ("ratio_image", "ratio_text")):
        raise SystemExit("bench_encode: non-finite timing")
    return result


if __name__ == "__main__":
    main()

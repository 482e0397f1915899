"""One experiment end to end: datasets -> vocabularies -> negatives -> zero-shot eval -> training -> eval.

Used by ``opendas train``, ``opendas demo`` and ``eval/run_cls.py``. Writes into the run folder:
``config.json``, ``train_log.jsonl``, ``state/``, ``final/`` (the adapted checkpoint),
``results.json``, ``report.md`` and plots (confusion matrices, t-SNE of text embeddings, loss curves).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

import torch

from ..core.tokens import ZERO_SHOT_TEMPLATE, phrase_ids
from ..data.registry import build_dataset, dataset_is_generated
from ..metrics.intervals import mean_std  # noqa: F401  (re-exported: the demo and eval/ tables use it)
from ..data.segments import SegmentDataset
from ..vocab import NegativeQueries, Vocabulary, load_negatives, select_negative_queries
from .config import DatasetSpec, TrainConfig
from .data import PreparedSegments, prepare_segments
from .evaluate import EvalResult, evaluate, zero_shot_encoder
from .holdout import TooFewToHoldOut, choose_options, recorded_choice
from .shots import SHOTS_FILE, few_shot_segments, short_classes_note, shots_summary
from .state import latest_state
from .trainer import check_resumable, fit, read_log, resolve_device

METRIC_KEYS = ("acc", "weighted_f1", "base_f1", "novel_f1")


def build_model(config: TrainConfig, device=None):
    """The trainable encoder of ``config.method`` over the configured open_clip model.

    For OpenDAS the prompts are :meth:`TrainConfig.prompt_config`: a tower the setting does not
    train is exactly CLIP's (visual-only: carried zero-shot text prompts; text-only: no visual tokens).
    """
    torch.manual_seed(config.seed)
    from ..core.factory import create_encoder

    if config.method == "opendas":
        model = create_encoder("opendas", config.model.name, config.model.pretrained, device=device,
                               config=config.prompt_config())
        _check_identity_text(model, config)
        return model
    return create_encoder(config.method, config.model.name, config.model.pretrained, device=device,
                          **dict(config.method_options))


def _carries_deep_text(prompts) -> bool:
    """True when deep text prompts replace hidden states (layers ``max(text_start, 1) .. text_depth - 1``)."""
    return prompts.text_tokens > 0 and prompts.text_depth > max(prompts.text_start, 1)


def _check_identity_text(model, config: TrainConfig) -> None:
    """visual-only: the carried text context is the template's words only if they fill all K_t slots, and
    it reproduces zero-shot text exactly only in a causal text tower (warned by name otherwise); without
    text tokens the text side is the bare class name (warned)."""
    prompts = model.config
    if config.setting != "visual-only":
        return
    if not prompts.text_tokens:
        warnings.warn("setting 'visual-only' with prompts.text_tokens: 0 encodes the bare class name ('{}.'), not "
                      f"zero-shot CLIP's template {ZERO_SHOT_TEMPLATE!r}", UserWarning, stacklevel=3)
        return
    words = phrase_ids(model.tokenizer, prompts.text_init)
    n_words = 0 if words is None else len(words)
    if n_words != prompts.text_tokens:
        raise ValueError(f"setting 'visual-only' keeps the text tower at zero-shot CLIP ({ZERO_SHOT_TEMPLATE!r}), "
                         f"whose words {prompts.text_init!r} are {n_words} tokens: set prompts.text_tokens: "
                         f"{n_words} (got {prompts.text_tokens})")
    if _carries_deep_text(prompts) and not model.text_view.causal:
        warnings.warn(f"setting 'visual-only' on {config.model.name!r}: its text tower is bidirectional (no causal "
                      "mask), so the carried deep text prompts see no class name and the text features only "
                      "approximate zero-shot CLIP's; set prompts.text_depth: 1 (the template's words at layer 0 "
                      "only) to keep them exactly zero-shot", UserWarning, stacklevel=3)


def identity_towers(config: TrainConfig, model=None) -> dict:
    """{tower: how it is kept CLIP's} for the towers the run's setting does not train (checkpoint metadata);
    ``model`` (the run's encoder) tells whether carried text is exact (causal text tower) or approximate."""
    if config.method != "opendas":
        return {}
    text = "text_deep_init=carry (zero-shot text)"
    if model is not None and not model.config.text_tokens:
        text = "text_tokens=0 (the bare class name, not zero-shot text)"
    elif model is not None and _carries_deep_text(model.config) and not model.text_view.causal:
        text = "text_deep_init=carry (approximately zero-shot text: bidirectional text tower)"
    return {"visual-only": {"text": text},
            "text-only": {"visual": "visual_tokens=0 (CLIP image tower)"}}.get(config.setting, {})


#: Loaders that show progress bars and take ``progress`` (``--quiet`` turns them off). The registry has no
#: common keyword for it (the generated world has no bar), so the real loaders are named here.
_LOADERS_WITH_PROGRESS = ("generic", "ade20k-150", "kitti-360", "scannetpp-offices")


def dataset_from_spec(spec: DatasetSpec, progress: bool = True) -> SegmentDataset:
    options = dict(spec.options)
    if spec.name in _LOADERS_WITH_PROGRESS:
        options.setdefault("progress", progress)
    return build_dataset(spec.name, spec.root, spec.split, **options)


def derive_vocabulary(train: SegmentDataset, test: Optional[SegmentDataset], name: str = "") -> Vocabulary:
    """base = labels present in the training segments, test = labels present in the test segments.

    Both keep the datasets' class order (``classes``), so tables and plots are stable.
    """
    def present(ds):
        labels = set(ds.labels())
        ordered = [c for c in ds.classes if c in labels]
        return ordered + sorted(labels - set(ordered))

    base = present(train)
    return Vocabulary(base=base, test=present(test) if test is not None else list(base), name=name)


@dataclass
class ExperimentData:
    train: PreparedSegments
    test: Optional[PreparedSegments]
    vocab: Vocabulary
    negatives: NegativeQueries
    label_space: List[str] = field(default_factory=list)


def prepare_experiment(config: TrainConfig, model, progress: bool = True, train_ds: Optional[SegmentDataset] = None,
                       test_ds: Optional[SegmentDataset] = None, vocab: Optional[Vocabulary] = None,
                       negatives: Optional[dict] = None) -> ExperimentData:
    """Datasets, vocabularies, negative queries and prepared (cropped, preprocessed) segments."""
    if config.data is None:
        raise ValueError(f"{config.name}: the config has no data section (data.train is required)")
    train_ds = train_ds if train_ds is not None else dataset_from_spec(config.data.train, progress)
    if test_ds is None and config.data.test is not None:
        test_ds = dataset_from_spec(config.data.test, progress)
    if vocab is None:
        vocab = Vocabulary.load(config.data.vocabulary) if config.data.vocabulary else \
            derive_vocabulary(train_ds, test_ds, config.name)
    if negatives is None and config.data.negatives:
        negatives = load_negatives(config.data.negatives)
    neg = select_negative_queries(negatives or {}, vocab.base, vocab.novel, config.data.drop_novel_negatives)
    common = dict(image_size=model.image_size, expand_ratio=config.data.expand_ratio,
                  min_pixels=config.data.min_pixels, num_workers=config.runtime.num_workers, progress=progress,
                  cache_dir=os.path.join(config.output_dir, "segments"))
    train = prepare_segments(train_ds, model.preprocess, vocab.base, desc="train segments", **common)
    test = prepare_segments(test_ds, model.preprocess, vocab.test, desc="test segments", **common) \
        if test_ds is not None else None
    return ExperimentData(train, test, vocab, neg, list(vocab.base) + neg.queries)


def apply_shots(config: TrainConfig, data: ExperimentData, run_dir: Optional[str] = None
                ) -> Tuple[ExperimentData, Optional[dict]]:
    """``data`` with the K-shot training set of ``config.data.shots`` at ``config.seed`` (the same for every
    method), and its record; written to ``run_dir/shots.json`` when given. ``"all"``: ``data`` unchanged, no record.
    Classes with fewer than K usable segments keep all of theirs (a warning names them)."""
    shots = config.data.shots if config.data is not None else "all"
    if shots == "all":
        return data, None
    train, record = few_shot_segments(data.train, shots, config.seed)
    if record["short_classes"]:
        warnings.warn(f"{config.name}: {short_classes_note(record)}", UserWarning, stacklevel=2)
    if run_dir is not None:
        from ..core.checkpoint import atomic_write_bytes

        atomic_write_bytes(os.path.join(run_dir, SHOTS_FILE), json.dumps(record, indent=1).encode("utf-8"))
    return replace(data, train=train), record


def _summary(result: EvalResult) -> dict:
    return {k: result.metrics[k] for k in METRIC_KEYS} | {"n": result.metrics["n"], "n_base": result.metrics["n_base"],
                                                          "n_novel": result.metrics["n_novel"]}


def run_experiment(config: TrainConfig, resume: bool = False, progress: bool = True, plots: bool = True,
                   data: Optional[ExperimentData] = None, model=None, zero_shot: bool = True) -> dict:
    """Train and evaluate one configuration; returns (and writes) the results dictionary.

    results = {"zero_shot": {acc, weighted_f1, base_f1, novel_f1, ...}, "adapted": {...},
    "seconds": total, "seconds_per_iter": {stage: s}, "skipped": {...}, "vocabulary": counts,
    "negatives": {...}, "run_dir": ..., "checkpoint": ...,
    "test_predictions": {"y_true", "adapted", "zero_shot"}: class names per test segment (paired analyses)}
    """
    t0 = time.perf_counter()
    run_dir = config.output_dir
    is_main = _is_main_process()
    os.makedirs(run_dir, exist_ok=True)
    chosen = recorded_choice(config, run_dir) if resume else None
    trained_config = config.with_choice(chosen) if chosen is not None else config  # what the final run trains
    if resume:  # a mismatched config is refused before any work, and before config.json is rewritten
        folder = latest_state(run_dir)
        if folder is not None:
            with open(os.path.join(folder, "trainer_state.json")) as f:
                state = json.load(f)
            check_resumable(folder, state, trained_config)
            finished = finished_results(run_dir, trained_config, state)
            if finished is not None:
                return finished
    if is_main:
        config.save(os.path.join(run_dir, "config.json"))
    device = resolve_device(config.runtime.device)
    model = model if model is not None else build_model(config)
    data = data if data is not None else prepare_experiment(config, model, progress)
    data, shots = apply_shots(config, data, run_dir if is_main else None)
    results = {"run": config.name, "method": config.method, "setting": config.setting, "seed": config.seed,
               "vocabulary": data.vocab.counts(),
               "negatives": {"queries": len(data.negatives.queries),
                             "dropped": [list(d) for d in data.negatives.dropped]},
               "skipped": {"train": data.train.skips.to_dict(),
                           "test": data.test.skips.to_dict() if data.test is not None else None}}
    if shots is not None:
        results["shots"] = {k: shots[k] for k in ("shots", "seed", "segments", "available", "short_classes")} | \
            {"file": os.path.join(run_dir, SHOTS_FILE) if is_main else None, "summary": shots_summary(shots)}
    if config.selection.options:  # options chosen on held-out base classes, then the run trains with them
        selection = choose_options(config, data, device, run_dir, progress)
        config = config.with_choice(selection["options"])
        model = build_model(config)
        results["selection"] = {k: selection[k] for k in ("options", "candidates", "held_out", "segments")}
    zs = None
    if data.test is not None and zero_shot:
        zs = evaluate(zero_shot_encoder(model), data.test, data.vocab, device, config.runtime.eval_batch_size,
                      progress)
        results["zero_shot"] = _summary(zs)
        model.to(device)
    results["transductive"] = config.transductive  # distillation over the test vocabulary: never beside inductive rows
    distiller = prepare_distiller(config, data, model, progress) if config.distill.active else None
    fit_result = fit(model, data.train, data.label_space, config, run_dir, resume=resume, progress=progress,
                     extra_metadata=run_metadata(config, data, model), distiller=distiller)
    results["seconds_per_iter"] = fit_result.seconds_per_iter
    results["checkpoint"] = fit_result.final_dir
    if config.method == "opendas" and model.config.lowrank_rank:
        results["lowrank_selection"] = choose_lowrank_merge(config, data, model, device, fit_result.final_dir,
                                                            run_dir, progress, is_main)
    results["run_dir"] = run_dir
    if data.test is not None:
        adapted = evaluate(model, data.test, data.vocab, device, config.runtime.eval_batch_size, progress)
        results["adapted"] = _summary(adapted)
        results["test_predictions"] = {"y_true": list(adapted.y_true), "adapted": list(adapted.y_pred),
                                       "zero_shot": list(zs.y_pred) if zs is not None else None}
        results["per_class"] = {"adapted": adapted.metrics["per_class"],
                                "zero_shot": zs.metrics["per_class"] if zs is not None else None}
        if plots and is_main:
            results["plots"] = write_plots(run_dir, data.vocab, adapted, zs, run_title(config), config.method)
    results["seconds"] = time.perf_counter() - t0
    if not is_main:
        return results
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True, default=float)
    with open(os.path.join(run_dir, "report.md"), "w") as f:
        f.write(format_report(results, data))
    return results


def prepare_distiller(config: TrainConfig, data: ExperimentData, model, progress: bool = True):
    """The distillation option's :class:`~.distill.Distiller`: crops of ``distill.unlabelled`` (images and masks
    only) and the text of its classes (``test``: the run's test vocabulary, transductive; ``label-space``: the
    training label space)."""
    from .distill import Distiller, unlabelled_crops

    d = config.distill
    images = unlabelled_crops(dataset_from_spec(d.unlabelled, progress), model.preprocess, config.data.expand_ratio,
                              config.data.min_pixels, progress)
    classes = list(data.vocab.test) if d.classes == "test" else list(data.label_space)
    tokenizer = getattr(model, "tokenizer", None)
    return Distiller(images=images, text_input=tokenizer(classes) if tokenizer else classes, classes=classes,
                     weight=d.weight, temperature=d.temperature, batch_size=d.batch_size,
                     logit_scale=model.logit_scale.exp().detach().float())


def finished_results(run_dir: str, config: TrainConfig, state: dict) -> Optional[dict]:
    """The saved ``results.json`` of a run that finished (its newest training state is the last epoch of
    its last stage, its exported checkpoint is complete), marked ``"finished_before": True`` (not written
    back); None when the run has more to do. Resuming a finished run trains, evaluates and rewrites nothing."""
    from ..core.checkpoint import read_checkpoint_config
    from .config import stages_for

    path = os.path.join(run_dir, "results.json")
    stages = stages_for(config.setting, config.schedule)
    counters = state.get("counters", {})
    if not stages or not os.path.isfile(path) or \
            (counters.get("stage_index"), counters.get("epoch")) != (len(stages) - 1, stages[-1].epochs - 1):
        return None
    try:
        completed = read_checkpoint_config(os.path.join(run_dir, "final")).get("metadata", {}).get("completed")
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    if not completed or not isinstance(results, dict):
        return None
    return dict(results, finished_before=True)


def choose_lowrank_merge(config: TrainConfig, data: ExperimentData, model, device, final_dir: str, run_dir: str,
                         progress: bool, is_main: bool) -> dict:
    """OpenDAS's low-rank option: merge coefficients chosen on held-out base classes (``train.lowrank``), set on
    ``model`` and written into its exported checkpoint (config and metadata); returns the selection's summary."""
    from ..core.checkpoint import read_checkpoint_config, save_checkpoint
    from .lowrank import apply_merge, select_lowrank_merge

    try:
        selection = select_lowrank_merge(config, data, device, run_dir, progress)
    except TooFewToHoldOut as e:  # nothing to choose on: the zero-shot weights (c = 0), the prompts as trained
        warnings.warn(f"{e}; the low-rank updates are merged with coefficient 0 (the zero-shot weights)", UserWarning,
                      stacklevel=2)
        selection = {"visual": 0.0, "text": 0.0, "held_out": [], "segments": {}, "best": None, "skipped": str(e)}
    apply_merge(model, selection["visual"], selection["text"])
    summary = {k: selection[k] for k in ("visual", "text", "held_out", "segments", "best", "skipped") if k in selection}
    if is_main:
        metadata = read_checkpoint_config(final_dir).get("metadata", {})
        save_checkpoint(model, final_dir, **dict(metadata, lowrank_selection=summary))
    model.to(device)
    return summary


def run_title(config: TrainConfig) -> str:
    """How plots name a run: its name and its training data (the generated world says so)."""
    if config.data is None:
        return config.name
    return f"{config.name} (data: {config.data.train.name})"


def trains_on_generated_data(config: TrainConfig) -> bool:
    """Whether the run's training data is generated (from its dataset spec: a generated registry entry or
    a root with the generated marker), which model cards and reports then say."""
    return config.data is not None and dataset_is_generated(config.data.train.name, config.data.train.root)


def run_metadata(config: TrainConfig, data: ExperimentData, model=None) -> dict:
    """What the checkpoint records about the run beyond the encoder: vocabulary, how segments were cut
    (``opendas eval`` reuses ``expand_ratio`` / ``min_pixels``), towers kept CLIP's, the zero-shot template."""
    return {"base_classes": list(data.vocab.base), "negative_queries": data.negatives.queries,
            "dataset": config.data.train.name if config.data is not None else None,
            "generated_data": trains_on_generated_data(config), "method": config.method,
            "expand_ratio": config.data.expand_ratio if config.data is not None else 0.0,
            "min_pixels": config.data.min_pixels if config.data is not None else None,
            "identity_towers": identity_towers(config, model), "zero_shot_template": ZERO_SHOT_TEMPLATE}


def write_plots(run_dir: str, vocab: Vocabulary, adapted: EvalResult, zero_shot: Optional[EvalResult],
                title: str = "", method: str = "OpenDAS") -> dict:
    """Confusion matrices, t-SNE of the test vocabulary's text embeddings, loss curves; ``title`` names the run."""
    from ..plots import plot_confusion, plot_loss_curves, plot_text_tsne

    out = {}
    for tag, res in (("adapted", adapted), ("zero_shot", zero_shot)):
        if res is None:
            continue
        out[f"confusion_{tag}"] = plot_confusion(res.y_true, res.y_pred, res.class_names,
                                                 os.path.join(run_dir, f"confusion_{tag}.png"),
                                                 f"{title} - {tag} (rows: ground truth; novel in red)",
                                                 novel=vocab.novel)
    if zero_shot is not None and adapted.text_features.numel() and len(vocab.test) >= 5:
        out["tsne"] = plot_text_tsne({"zero-shot CLIP": zero_shot.text_features.numpy(),
                                      f"adapted ({method})": adapted.text_features.numpy()},
                                     vocab.test, vocab.novel, os.path.join(run_dir, "tsne_text_embeddings.png"),
                                     f"{title} - text embeddings of the test vocabulary")
    log = read_log(run_dir)
    if log:
        out["loss_curves"] = plot_loss_curves(log, os.path.join(run_dir, "loss_curves.png"), f"{title} - training loss")
    return out


def format_report(results: dict, data: ExperimentData) -> str:
    from ..plots import format_table, metric_cell

    mark = ", TRANSDUCTIVE: trained on unlabelled target images over the test vocabulary" \
        if results.get("transductive") else ""
    lines = [f"# {results['run']} ({results['method']}, {results['setting']}, seed {results['seed']}{mark})", ""]
    if "adapted" in results:
        zs = results.get("zero_shot", {})
        rows = []
        if zs:
            rows.append(["zero-shot CLIP"] + [metric_cell(zs[k]) for k in METRIC_KEYS])
        rows.append([results["method"]] + [metric_cell(results["adapted"][k], zs.get(k)) for k in METRIC_KEYS])
        lines.append(format_table(rows, ["encoder", "Acc", "W-F1", "B-F1", "N-F1"]))
        lines += ["", zero_shot_note()]
    c = results["vocabulary"]
    lines += ["", f"vocabulary: {c['base']} base, {c['test']} test, {c['novel']} novel; "
                  f"{data.negatives.summary()}",
              f"train: {data.train.skips.summary()}"]
    if "shots" in results:
        lines.append(results["shots"]["summary"])
    if data.test is not None:
        lines.append(f"test: {data.test.skips.summary()}")
    lines += selection_lines(results)
    lines.append(f"seconds per iteration: {json.dumps({k: round(v, 4) for k, v in results['seconds_per_iter'].items()})}")
    return "\n".join(lines) + "\n"


def selection_lines(results: dict) -> List[str]:
    """What the run chose on held-out base classes (options, low-rank merge coefficients), one line each; none
    when it chose nothing."""
    lines = []
    chosen = results.get("selection")
    if chosen:
        scores = ", ".join(f"{json.dumps(c['options'], sort_keys=True)} HM {c['hm']:.1f}" for c in chosen["candidates"])
        lines.append(f"options chosen on held-out base classes {chosen['held_out']}: "
                     f"{json.dumps(chosen['options'], sort_keys=True)} ({scores})")
    merge = results.get("lowrank_selection")
    if merge:
        how = (f"not chosen ({merge['skipped']})" if "skipped" in merge else
               f"chosen on held-out base classes {merge['held_out']}, HM {merge['best']['hm']:.1f}")
        lines.append(f"low-rank merge coefficients: image {merge['visual']:g}, text {merge['text']:g} "
                     f"(0 = zero-shot weights; {how})")
    return lines


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def zero_shot_note() -> str:
    """The line under every results table that says how zero-shot CLIP encodes a class name."""
    return f"zero-shot CLIP encodes each class name in the template \"{ZERO_SHOT_TEMPLATE}\" (every method's)."

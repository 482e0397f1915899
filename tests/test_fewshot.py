"""Few-shot adaptation (issue 17.1): ``data.shots: K`` and ``eval/run_fewshot.py``.

The sources of truth: the dataset's own labels, sources and crop checks (``Segment.validate``), the
segments the trainer actually reads from the crop cache during ``fit``, and the learned tensors of
``fit`` called directly (the engine without the sampling hook) on the segments ``shots.json`` names.
"""

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from opendas_encoder.data.segments import SegmentError, SubsetSegmentDataset
from opendas_encoder.generated.world import make_target_domain, world_vocabulary
from opendas_encoder.train import pipeline
from opendas_encoder.train.config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig, ScheduleConfig,
                                          TrainConfig, config_from_dict, load_config)
from opendas_encoder.train.data import prepare_segments
from opendas_encoder.train.shots import sample_shots
from opendas_encoder.train.trainer import fit

TRAIN_SCENES = 8
BASE = world_vocabulary()["base"]


def world_config(tmp_path, name, method="opendas", shots=2, seed=0, min_pixels=16):
    return TrainConfig(name=name, seed=seed, method=method, model=ModelSpec(name="opendas-tiny-vit", pretrained=None),
                       data=DataConfig(train=DatasetSpec(name="generated-world", split="train",
                                                         options={"n_scenes": TRAIN_SCENES, "seed": 0}),
                                       test=DatasetSpec(name="generated-world", split="test",
                                                        options={"n_scenes": 2, "seed": 1}),
                                       shots=shots, min_pixels=min_pixels),
                       schedule=ScheduleConfig(stage1_epochs=1, stage2_epochs=1, batch_size=8, warmup_epochs=0),
                       runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path / name))


def world_train():
    return make_target_domain(TRAIN_SCENES, 0, "train")


def usable(ds, min_pixels):
    """Indices of the segments that pass the library's crop check (``Segment.validate``)."""
    out = []
    for i in range(len(ds)):
        try:
            ds.load(i).validate(min_pixels)
        except SegmentError:
            continue
        out.append(i)
    return out


@pytest.fixture
def trained_reads(monkeypatch):
    """{run_dir: set of (dataset name, dataset index)} that ``fit`` read from the crop cache."""
    from opendas_encoder.data.cache import SegmentCache

    reads, current = {}, []
    real_get, real_fit = SegmentCache.get, pipeline.fit

    def get(self, index):
        if current:
            reads[current[-1]].add((self.dataset.name, int(index)))
        return real_get(self, index)

    def spy_fit(model, train, label_space, config, run_dir, **kw):
        current.append(run_dir)
        reads[run_dir] = set()
        try:
            return real_fit(model, train, label_space, config, run_dir, **kw)
        finally:
            current.pop()

    monkeypatch.setattr(SegmentCache, "get", get)
    monkeypatch.setattr(pipeline, "fit", spy_fit)
    return reads


def run(config):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline.run_experiment(config, progress=False, plots=False)


def shots_file(config):
    with open(os.path.join(config.output_dir, "shots.json")) as f:
        return json.load(f)


def listed(record):
    return {s for c in record["classes"].values() for s in c["sources"]}


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("value", [0, -3, "ALL", "some", "4", True, 2.5, None])
def test_bad_shots_are_refused_with_the_file_before_any_work(tmp_path, value, monkeypatch):
    built = []
    monkeypatch.setattr(pipeline, "build_dataset", lambda *a, **k: built.append(a))
    path = tmp_path / "run.yaml"
    out = tmp_path / "out"
    path.write_text(yaml.safe_dump({"data": {"train": {"name": "generated-world", "split": "train"}, "shots": value},
                                    "output_dir": str(out)}))
    with pytest.raises(ValueError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert msg.startswith(str(path)) and "data.shots" in msg and repr(value) in msg
    from opendas_encoder.cli import main

    assert main(["train", str(path), "--quiet"]) == 2  # the CLI stops there: nothing read, nothing written
    assert not built and not out.exists()


def test_shots_default_all_and_overrides(tmp_path):
    data = {"data": {"train": {"name": "generated-world", "split": "train"}}}
    assert config_from_dict(data).data.shots == "all"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(str(path), ["data.shots=8"]).data.shots == 8
    assert load_config(str(path), ["data.shots=all"]).data.shots == "all"
    with pytest.raises(ValueError, match="data.shots: must be a positive integer"):
        load_config(str(path), ["data.shots=0"])


# ------------------------------------------------------------------------------------------- sampling
def test_exactly_min_k_usable_segments_per_class_and_short_classes_reported(tmp_path):
    min_pixels = 60  # leaves some of the world's segments unusable: the sample is drawn among usable ones
    config = world_config(tmp_path, "k", min_pixels=min_pixels)
    data = pipeline.prepare_experiment(config, pipeline.build_model(config), progress=False)
    ds = world_train()
    ok = usable(ds, min_pixels)
    assert len(ok) < len(ds)
    available = Counter(ds.label(i) for i in ok)
    base = data.vocab.base  # the run's base classes (here: those present in the training scenes)
    assert set(base) <= set(BASE)
    for k in (1, 2, 3, 5):
        cfg = config.updated(data=dict(config.data, shots=k), output_dir=str(tmp_path / f"k{k}"))
        os.makedirs(cfg.output_dir)
        with pytest.warns(UserWarning, match="fewer than") if any(available[c] < k for c in base) else \
                _no_warning():
            few, record = pipeline.apply_shots(cfg, data, cfg.output_dir)
        got = Counter(few.train.label_strings())
        assert got == Counter({c: min(k, available[c]) for c in base if available[c]}), k
        assert record["short_classes"] == {c: available[c] for c in base if available[c] < k}
        assert shots_file(cfg)["short_classes"] == record["short_classes"]
        assert {c: e["available"] for c, e in record["classes"].items()} == {c: available[c] for c in base}
        for c, entry in record["classes"].items():  # every listed segment is usable and of its class
            assert all(i in ok and ds.label(i) == c for i in entry["indices"])
            assert entry["sources"] == [ds.source(i) for i in entry["indices"]]


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def test_sample_is_nested_over_k_and_per_class():
    labels = np.repeat(np.arange(4), [3, 10, 7, 1])
    names = ["a", "b", "c", "d"]
    previous = set()
    for k in (1, 2, 4, 8, 16):
        chosen = set(sample_shots(labels, names, k, seed=3).tolist())
        assert previous <= chosen and Counter(labels[list(chosen)]) == {c: min(k, n) for c, n in
                                                                         enumerate((3, 10, 7, 1))}
        previous = chosen
    # a class's sample does not depend on the other classes present
    full = set(sample_shots(labels, names, 2, seed=3).tolist())
    only_b = sample_shots(labels[labels == 1], ["a", "b", "c", "d"], 2, seed=3) + 3  # b starts at position 3
    assert set(only_b.tolist()) == {p for p in full if labels[p] == 1}
    assert list(sample_shots(labels, names, "all", seed=0)) == list(range(labels.size))


# ------------------------------------------------------------------------------------------- pipeline
def test_same_set_for_every_method_at_a_seed_other_seeds_other_sets(tmp_path, trained_reads):
    ds = world_train()
    records = {}
    for method, seed in (("opendas", 0), ("vpt", 0), ("cocoop", 0), ("opendas", 1)):
        config = world_config(tmp_path, f"{method}{seed}", method=method, seed=seed)
        results = run(config)
        record = shots_file(config)
        records[method, seed] = record["classes"]
        assert record["shots"] == 2 and record["seed"] == seed
        # the file lists exactly the segments the trainer read, and the results point at it
        read = trained_reads[config.output_dir]
        assert {name for name, _ in read} == {ds.name}
        assert {ds.source(i) for _, i in read} == listed(record)
        assert results["shots"]["segments"] == len(read) == record["segments"]
        assert results["shots"]["file"] == os.path.join(config.output_dir, "shots.json")
        assert "shots: 2 per base class (seed %d)" % seed in open(os.path.join(config.output_dir, "report.md")).read()
    assert records["opendas", 0] == records["vpt", 0] == records["cocoop", 0]
    assert records["opendas", 1] != records["opendas", 0]


def _learned(model):
    return {k: v.detach().clone() for k, v in model.learned_state_dict().items()}


def test_shots_file_reproduces_the_training_and_all_is_unchanged(tmp_path, trained_reads):
    """fit() on the segments named in shots.json (prepared on their own) learns exactly what the run learned;
    with shots 'all' the run reads every usable segment and learns what fit() on all of them learns."""
    ds = world_train()
    for shots in (3, "all"):
        config = world_config(tmp_path, f"run{shots}", shots=shots)
        model = pipeline.build_model(config)
        pipeline.run_experiment(config, progress=False, plots=False, model=model)
        if shots == "all":
            assert not os.path.exists(os.path.join(config.output_dir, "shots.json"))
            indices = usable(ds, config.data.min_pixels)
            assert {i for _, i in trained_reads[config.output_dir]} == set(indices)
        else:
            indices = sorted(i for c in shots_file(config)["classes"].values() for i in c["indices"])
        with open(os.path.join(config.output_dir, "final", "opendas_config.json")) as f:
            meta = json.load(f)["metadata"]  # the run's label space: its base classes, then its negative queries
        reference = pipeline.build_model(config)
        segments = prepare_segments(SubsetSegmentDataset(ds, indices, name=ds.name), reference.preprocess,
                                    meta["base_classes"], image_size=reference.image_size, progress=False)
        fit(reference, segments, meta["base_classes"] + meta["negative_queries"], config,
            str(tmp_path / f"direct{shots}"), progress=False)
        got, want = _learned(model), _learned(reference)
        assert got.keys() == want.keys()
        for key in got:
            assert torch.equal(got[key], want[key]), (shots, key)


# ------------------------------------------------------------------------------------------- eval/run_fewshot.py
TINY = ["--model", "opendas-tiny-vit", "--pretrained", "", "--world-scenes", "6", "3", "--epochs", "1", "1",
        "--min-steps", "2", "--device", "cpu", "--threads", "1", "--quiet"]


def test_run_fewshot_tiny_curves_table_plot_and_resume(tmp_path, monkeypatch, capsys):
    from eval import run_fewshot

    out = tmp_path / "fs"
    argv = ["--shots", "1", "all", "--seeds", "2", "--methods", "opendas", "opendas-paper", "vpt", "--out", str(out)]
    result = run_fewshot.main(argv + TINY)
    printed = capsys.readouterr().out
    domains = run_fewshot.domain_names()
    assert set(result["domains"]) == set(domains) and "cast" in domains
    meta = result["meta"]
    assert meta["shots"] == [1, "all"] and meta["seeds"] == 2 and meta["methods"] == ["opendas", "opendas-paper", "vpt"]
    d = result["domains"][domains[0]]
    for key in ("opendas", "opendas-paper", "vpt"):
        for k in ("1", "all"):
            point = d["curves"][key][k]
            assert len(point["per_seed"]) == 2
            for metric in ("base_f1", "novel_f1"):
                values = [r[metric] for r in point["per_seed"]]
                assert point[metric] == pytest.approx(np.mean(values)) and point[metric + "_std"] == \
                    pytest.approx(np.std(values, ddof=1))
    from opendas_encoder.train.config import PRESETS, preset_prompts
    same_presets = PRESETS["paper"] == PRESETS["default"] and preset_prompts("paper") == preset_prompts("default")
    if same_presets:  # the default is the paper's method: trained once, reported under both names
        assert d["trained_as"] == {"opendas-paper": "opendas"}
        assert d["curves"]["opendas-paper"] == d["curves"]["opendas"]
    else:
        assert d["trained_as"] == {}
    # one K-shot set per seed for every method, and it is what each run's shots.json lists
    for seed in (0, 1):
        sets = [json.loads((out / domains[0] / "K1" / m / f"seed{seed}" / "shots.json").read_text())["classes"]
                for m in ("opendas", "vpt")]
        assert sets[0] == sets[1]
        assert all(len(c["indices"]) == min(1, c["available"]) for c in sets[0].values())
    assert not (out / domains[0] / "Kall" / "opendas" / "seed0" / "shots.json").exists()
    seg = d["curves"]["vpt"]["1"]["per_seed"][0]["segments"]
    assert seg == json.loads((out / domains[0] / "K1" / "vpt" / "seed0" / "shots.json").read_text())["segments"]
    # the smallest K, recomputed from the stored per-seed numbers by the rule
    zs = d["zero_shot"]["per_seed"]
    expected = None
    for k in ("1", "all"):
        runs = d["curves"]["opendas"][k]["per_seed"]
        gain = np.mean([r["base_f1"] - z["base_f1"] for r, z in zip(runs, zs)])
        change = np.mean([r["novel_f1"] - z["novel_f1"] for r, z in zip(runs, zs)])
        if gain >= 10 and change >= 0:
            expected = 1 if k == "1" else "all"
            break
    assert d["smallest_k"]["opendas"]["k"] == expected
    # outputs: JSON, markdown (B-F1 and N-F1, every method, labelled generated), PNG
    on_disk = json.loads((out / "fewshot.json").read_text())
    assert on_disk["domains"][domains[0]]["smallest_k"]["opendas"]["k"] == expected
    md = (out / "fewshot.md").read_text()
    assert "**B-F1**" in md and "**N-F1**" in md and "generated" in md and "not real datasets" in md
    assert "| zero-shot CLIP" in md and "| VPT" in md and "K=1" in md and "Smallest K" in md
    assert (out / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "smallest K (OpenDAS (default), every domain)" in printed
    n_trained = meta["counts"]["trained"]
    # domains x seeds x K x (opendas, vpt[, opendas-paper where it differs from the default])
    assert n_trained == len(domains) * 2 * 2 * (2 if same_presets else 3)

    # resume: nothing is trained again
    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(run_fewshot, "run_experiment", no_training)
    again = run_fewshot.main(argv + TINY)
    assert again["meta"]["counts"]["resumed"] == n_trained and again["meta"]["counts"]["trained"] == 0
    assert again["domains"][domains[0]]["curves"] == d["curves"]
    # a run whose config changed is trained again (its old results are not read as the new run's)
    with pytest.raises(AssertionError, match="trained again"):
        run_fewshot.main(argv + TINY + ["--min-steps", "3"])  # K = 1 runs: 3 epochs of 1 step instead of 2


def test_run_fewshot_refuses_bad_input_before_any_work(tmp_path, capsys):
    from eval import run_fewshot

    out = tmp_path / "never"
    for bad in (["--shots", "0"], ["--shots", "-2"], ["--shots", "ALL"], ["--shots", "2.5"]):
        with pytest.raises(SystemExit) as err:
            run_fewshot.main(bad + ["--out", str(out)] + TINY)
        assert err.value.code == 2
        assert "K must be a positive integer or 'all'" in capsys.readouterr().err
    cases = {("--methods", "nosuch"): "unknown method 'nosuch'",
             ("--methods", "zeroshot"): "zeroshot is always measured",
             ("--methods", "x=opendas@prompts.visual_token=4"): "unknown keys ['visual_token']",
             ("--methods", "x=vpt@data.shots=0"): "data.shots",
             ("--domains", "nowhere"): "unknown domain",
             ("--seeds", "0"): "--seeds must be >= 1"}
    for args, message in cases.items():
        with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
            run_fewshot.main(list(args) + ["--out", str(out)] + TINY)
    assert not out.exists()


def test_run_fewshot_variants_and_epochs_plan():
    from eval import run_fewshot
    from opendas_encoder.train.config import ModelSpec

    specs = [run_fewshot.resolve_method(m) for m in
             ("opendas", "opendas-paper", "cocoop", "opendas-carry=opendas@prompts.text_deep_init=carry")]
    sizes = run_fewshot.Sizes(10, 5, 5, 5, batch_size=16, min_steps=100)
    runs = run_fewshot.plan_runs(specs, ["cast"], [1, 8, "all"], 1, sizes, "/tmp/never", ModelSpec(), "cpu")
    by = {(r.shots, r.spec.key): r for r in runs}
    carry = by[1, "opendas-carry"].config
    assert carry.method == "opendas" and carry.prompt_config().text_deep_init == "carry"
    assert by[1, "opendas-carry"].trained_as is None and by[1, "cocoop"].config.setting == "one-stage-ce"
    assert by[1, "cocoop"].config.method_options["n_ctx"] == 4
    n_base = len(BASE)
    for k in (1, 8):  # every K-shot stage trains at least min_steps steps on K x C segments
        cfg = by[k, "opendas"].config
        steps = -(-k * n_base // 16)
        assert cfg.schedule.stage1_epochs * steps >= 100 and (cfg.schedule.stage1_epochs - 1) * steps < 100
        assert cfg.data.shots == k and cfg.schedule.stage2_epochs == cfg.schedule.stage1_epochs
    assert (by["all", "opendas"].config.schedule.stage1_epochs, by["all", "opendas"].config.schedule.stage2_epochs) \
        == (5, 5)
    assert by["all", "cocoop"].config.data.shots == "all"

"""Training engine: losses, schedules, stage semantics, resume, divergence, skipped segments."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import opendas_encoder as oe
from conftest import make_square_segments
from opendas_encoder.data import Segment
from opendas_encoder.train import (ScheduleConfig, TrainConfig, TrainingDiverged, evaluate, fit,
                                   hardest_negatives, lr_scheduler, opendas_text_loss, prepare_segments, read_log,
                                   triplet_loss, triplet_weight, zero_shot_encoder)
from opendas_encoder.train.config import RuntimeConfig, config_from_dict, stages_for

make_segments = make_square_segments


def tiny_model(seed=0, **prompts):
    torch.manual_seed(seed)
    return oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig(**prompts) if prompts else oe.PromptConfig())


def small_config(tmp_path, epochs=(1, 1), batch=4, **kw):
    return TrainConfig(schedule=ScheduleConfig(batch_size=batch, stage1_epochs=epochs[0], stage2_epochs=epochs[1],
                                               lr=0.01, warmup_epochs=0),
                       runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path), **kw)


def prepared(model, ds, labels):
    return prepare_segments(ds, model.preprocess, labels, model.image_size, progress=False)


# ---------------------------------------------------------------- losses and schedules
def test_hardest_negative_and_triplet_value_on_hand_made_case():
    s = 1 / math.sqrt(2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [-1.0, 0.0]])  # class 0, class 1, 2 negatives
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    neg = hardest_negatives(anchors, text, labels)
    assert neg.tolist() == [2, 2]  # the diagonal query is closest to both anchors
    d_pos = 0.0
    d_neg = math.sqrt(2 - 2 * s)  # distance between unit vectors at 45 degrees
    expected = max(0.0, d_pos - d_neg + 1.5)
    loss = triplet_loss(anchors, text[labels], text[neg], margin=1.5)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    ref = torch.nn.TripletMarginLoss(margin=1.5)(anchors, text[labels], text[neg])
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


def test_stage2_loss_is_ce_plus_lambda_triplet():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(5, 8), dim=-1)
    txt = F.normalize(torch.randn(7, 8), dim=-1)
    labels = torch.tensor([0, 1, 2, 1, 0])
    total, ce, trip = opendas_text_loss(img, txt, labels, torch.tensor(10.0), 2.5)
    assert ce.item() == pytest.approx(F.cross_entropy(10 * img @ txt.T, labels).item(), abs=1e-6)
    assert total.item() == pytest.approx(ce.item() + 2.5 * trip.item(), abs=1e-5)


def test_lambda_ramps_linearly_from_zero_to_five():
    assert [triplet_weight(t, 5) for t in range(5)] == [0.0, 1.25, 2.5, 3.75, 5.0]
    assert triplet_weight(0, 1) == 5.0


#: Issue 13: the paper's schedule (Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=5)), 5 epochs,
#: base 0.0025, one warm-up epoch at 1e-5 (values as quoted there, 3 significant digits).
PAPER_LRS_5_EPOCHS = [1e-5, 0.0025, 0.00226, 0.00164, 0.00086]


def epoch_lrs(scheduler_factory, epochs=5, lr=0.0025):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_learning_rate_schedule_gives_the_papers_values():
    lrs = epoch_lrs(lambda opt: lr_scheduler(opt, 5, warmup_epochs=1, warmup_lr=1e-5))
    assert lrs == pytest.approx(PAPER_LRS_5_EPOCHS, abs=5e-6)
    assert lrs[:2] == pytest.approx([1e-5, 0.0025], rel=1e-12)  # warm-up, then the full base rate
    with pytest.raises(ValueError, match=r"warmup_lr .* must be > 0 and <= schedule.lr"):
        lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-6), 5, 1, 1e-5)


def paper_schedule_config(tmp_path, epochs=5):
    """visual-only, ``epochs`` epochs of one step each (6 segments, batch 8), the paper's lr settings."""
    return TrainConfig(setting="visual-only",
                       schedule=ScheduleConfig(batch_size=8, stage1_epochs=epochs, lr=0.0025, warmup_epochs=1,
                                               warmup_lr=1e-5),
                       runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path))


def test_training_log_has_the_papers_learning_rate_per_epoch(tmp_path):
    base = ["red square", "green square", "blue square"]
    model = tiny_model(6)
    fit(model, prepared(model, make_segments(n_per_class=2), base), base, paper_schedule_config(tmp_path),
        str(tmp_path / "run"), progress=False)
    log = read_log(str(tmp_path / "run"))
    assert [r["epoch"] for r in log] == [0, 1, 2, 3, 4]
    assert [r["lr"] for r in log] == pytest.approx(PAPER_LRS_5_EPOCHS, abs=5e-6)


def test_resume_inside_a_stage_continues_the_same_learning_rates(tmp_path):
    import json

    base = ["red square", "green square", "blue square"]
    ref_model = tiny_model(7)
    train = prepared(ref_model, make_segments(n_per_class=2), base)
    cfg = paper_schedule_config(tmp_path)
    fit(ref_model, train, base, cfg, str(tmp_path / "ref"), progress=False)

    class Killed(Exception):
        pass

    def kill(stage, epoch):
        if epoch == 1:
            raise Killed

    model = tiny_model(7)
    with pytest.raises(Killed):
        fit(model, train, base, cfg, str(tmp_path / "run"), progress=False, on_epoch_end=kill)
    state = json.load(open(tmp_path / "run" / "state" / "s0-epoch-0001" / "trainer_state.json"))
    assert state["scheduler"]["last_epoch"] == 2  # the scheduler's own state_dict, as JSON
    resumed = tiny_model(7)
    with torch.no_grad():
        resumed.visual_prompts.zero_()
    result = fit(resumed, train, base, cfg, str(tmp_path / "run"), resume=True, progress=False)
    assert "s0-epoch-0001" in result.resumed_from
    log = read_log(str(tmp_path / "run"))
    assert [r["lr"] for r in log] == pytest.approx(PAPER_LRS_5_EPOCHS, abs=5e-6)
    assert [r["lr"] for r in log] == [r["lr"] for r in read_log(str(tmp_path / "ref"))]
    assert torch.allclose(resumed.visual_prompts, ref_model.visual_prompts, atol=1e-7)


def test_paper_defaults():
    cfg = TrainConfig()
    s = cfg.schedule
    assert (s.optimizer, s.lr, s.warmup_epochs, s.warmup_lr, s.batch_size, s.stage1_epochs, s.stage2_epochs) == \
        ("sgd", 0.0025, 1, 1e-5, 16, 5, 5)
    assert (cfg.triplet.margin, cfg.triplet.lambda_start, cfg.triplet.lambda_end) == (1.5, 0.0, 5.0)
    assert [(st.name, st.visual, st.text, st.triplet) for st in stages_for("two-stage", s)] == \
        [("visual", True, False, False), ("text", False, True, True)]


def test_config_unknown_key_is_refused():
    with pytest.raises(ValueError, match=r"schedule: unknown keys \['lr_typo'\]"):
        config_from_dict({"schedule": {"lr_typo": 1}})


# ---------------------------------------------------------------- end-to-end training
def test_two_stage_training_changes_each_group_only_in_its_stage(tmp_path):
    model = tiny_model()
    base = ["red square", "green square", "blue square"]
    label_space = base + ["orange square", "purple circle"]
    train = prepared(model, make_segments(), base)
    v0, t0 = model.visual_prompts.detach().clone(), model.text_prompts.detach().clone()
    snapshots = {}

    def on_epoch_end(stage, epoch):
        snapshots[stage] = (model.visual_prompts.detach().clone(), model.text_prompts.detach().clone())

    result = fit(model, train, label_space, small_config(tmp_path), str(tmp_path / "run"), progress=False,
                 on_epoch_end=on_epoch_end)
    v1, t1 = snapshots[0]
    v2, t2 = snapshots[1]
    assert not torch.equal(v1, v0) and torch.equal(t1, t0)  # stage 1: visual only
    assert torch.equal(v2, v1) and not torch.equal(t2, t1)  # stage 2: text only
    assert set(result.seconds_per_iter) == {"visual", "text"}
    log = read_log(str(tmp_path / "run"))
    assert len(log) == 2 * 5 and log[-1]["lambda"] == 5.0 and log[5]["lambda"] == 0.0
    loaded = oe.load_encoder(result.final_dir, model=model.clip)
    assert torch.equal(loaded.text_prompts, model.text_prompts)
    # evaluation end to end (zero-shot and adapted)
    test = prepared(model, make_segments(seed=1, classes=base + ["yellow square"]),
                    base + ["yellow square"])
    vocab = oe.Vocabulary(base=base, test=base + ["yellow square"])
    for enc in (zero_shot_encoder(model), model):
        res = evaluate(enc, test, vocab)
        assert res.metrics["n"] == 24 and res.metrics["n_novel"] == 6
        assert 0 <= res.metrics["acc"] <= 100


def test_stage2_cached_features_equal_uncached(tmp_path):
    base = ["red square", "green square", "blue square"]
    results = []
    for cache in (True, False):
        model = tiny_model(1)
        cfg = small_config(tmp_path, epochs=(1, 1))
        cfg.runtime.cache_features = cache
        train = prepared(model, make_segments(), base)
        fit(model, train, base, cfg, str(tmp_path / f"run{cache}"), progress=False)
        results.append(model.text_prompts.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-5)


@pytest.mark.parametrize("prompts,kill_at", [({}, (1, 0)), ({"lowrank_rank": 2}, (0, 0))], ids=["prompts", "lowrank"])
def test_interrupted_run_resumes_exactly_whatever_the_callers_generator(tmp_path, prompts, kill_at):
    """A run killed after an epoch and resumed in a "fresh process" (learned tensors zeroed, the global generator
    elsewhere) learns what the uninterrupted run learned; the low-rank updates' dropout (0.25) draws from the
    global generator, which fit() leaves as it found it (same process: equal up to float32 order, 1e-6)."""
    base = ["red square", "green square", "blue square"]
    label_space = base + ["pink square"]
    ref_model = tiny_model(2, **prompts)
    cfg = small_config(tmp_path, epochs=(2, 2))
    train = prepared(ref_model, make_segments(), base)
    before = torch.get_rng_state()
    fit(ref_model, train, label_space, cfg, str(tmp_path / "ref"), progress=False)
    assert torch.equal(torch.get_rng_state(), before)

    class Killed(Exception):
        pass

    def kill(stage, epoch):
        if (stage, epoch) == kill_at:
            raise Killed

    with pytest.raises(Killed):
        fit(tiny_model(2, **prompts), train, label_space, cfg, str(tmp_path / "run"), progress=False, on_epoch_end=kill)
    torch.manual_seed(12345)
    resumed = tiny_model(2, **prompts)
    learned = list(resumed.learned_state_dict())
    with torch.no_grad():
        for name in learned:
            getattr(resumed, name).zero_()
    result = fit(resumed, train, label_space, cfg, str(tmp_path / "run"), resume=True, progress=False)
    assert result.resumed_from is not None and "s%d-epoch-0000" % kill_at[0] in result.resumed_from
    got, want = resumed.learned_state_dict(), ref_model.learned_state_dict()
    for name in learned:
        assert torch.allclose(got[name], want[name], atol=1e-6), name
    assert len(read_log(str(tmp_path / "run"))) == len(read_log(str(tmp_path / "ref")))
    if prompts:
        assert ref_model.visual_lowrank_B.abs().max() > 0  # the updates trained (with dropout)


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path):
    base = ["red square", "green square", "blue square"]
    model = tiny_model(3)
    train = prepared(model, make_segments(), base)
    cfg = small_config(tmp_path, epochs=(1, 1))

    def poison(stage, epoch):
        with torch.no_grad():
            model.text_prompts.fill_(float("nan"))

    with pytest.raises(TrainingDiverged,
                       match=r"non-finite loss .* stage 'text'.*last good checkpoint: .*s0-epoch-0000"):
        fit(model, train, base, cfg, str(tmp_path / "run"), progress=False, on_epoch_end=poison)
    state = os.path.join(tmp_path, "run", "state", "s0-epoch-0000")
    assert os.path.isfile(os.path.join(state, "prompts.safetensors"))


def test_corrupt_image_and_empty_mask_are_skipped_and_reported(tmp_path):
    from opendas_encoder.data.segments import SegmentDataset, SegmentError

    good = make_segments(n_per_class=2)

    class WithBadOnes(SegmentDataset):
        name = "with-bad"
        classes = good.classes

        def __len__(self):
            return len(good) + 2

        def label(self, i):
            return good.label(i) if i < len(good) else "red square"

        def load(self, i):
            if i == len(good):
                raise SegmentError("images/broken.jpg", "unreadable image (OSError: truncated)")
            if i == len(good) + 1:
                s = good.load(0)
                return Segment(s.image, np.zeros_like(s.mask), "red square", "masks/empty.png")
            return good.load(i)

    model = tiny_model()
    prep = prepare_segments(WithBadOnes(), model.preprocess, ["red square", "green square", "blue square"],
                            model.image_size, progress=False)
    assert len(prep) == len(good)
    assert prep.skips.total == 2
    summary = prep.skips.summary()
    assert "images/broken.jpg" in summary and "masks/empty.png" in summary
    fit(model, prep, ["red square", "green square", "blue square"], small_config(tmp_path), str(tmp_path / "r"),
        progress=False)


def test_augmentation_flips_and_crops_deterministically():
    from opendas_encoder.train.trainer import augment_batch

    images = torch.randn(6, 3, 8, 8)
    out = augment_batch(images, torch.Generator().manual_seed(0), min_scale=1.0)
    for a, b in zip(images, out):  # scale 1: each image is kept or mirrored, exactly
        assert torch.allclose(b, a, atol=1e-5) or torch.allclose(b, a.flip(-1), atol=1e-5)
    assert not torch.allclose(out, images)  # with 6 images some are mirrored (seed 0)
    again = augment_batch(images, torch.Generator().manual_seed(0), min_scale=0.5)
    assert torch.equal(again, augment_batch(images, torch.Generator().manual_seed(0), min_scale=0.5))
    # a rank's share gets the parameters of the same samples in the global batch
    share = augment_batch(images[1::2], torch.Generator().manual_seed(3), 0.5, select=slice(1, 6, 2))
    assert torch.allclose(share, augment_batch(images, torch.Generator().manual_seed(3), 0.5)[1::2], atol=1e-6)


def test_augmented_training_runs_the_image_tower_in_stage_two(tmp_path):
    base = ["red square", "green square", "blue square"]
    model = tiny_model(4)
    cfg = small_config(tmp_path, epochs=(1, 1))
    cfg.runtime.augment = True
    train = prepared(model, make_segments(), base)
    calls = []
    original = model.encode_image

    def counting(images, normalize=False):
        calls.append(images.shape[0])
        return original(images, normalize)

    model.encode_image = counting
    fit(model, train, base, cfg, str(tmp_path / "aug"), progress=False)
    assert len(calls) == 2 * 5  # every step of both stages encodes its (augmented) batch; nothing cached


# ---------------------------------------------------------------- streamed segments
def test_streamed_items_equal_the_models_preprocessing_exactly():
    from opendas_encoder.data import crop_segment

    base = ["red square", "green square", "blue square"]
    model = tiny_model()
    ds = make_segments()
    prep = prepared(model, ds, base)
    assert len(prep) == len(ds) and isinstance(prep, torch.utils.data.Dataset)
    for i in (0, 7, len(ds) - 1):
        seg = ds.load(i)
        image, label = prep[i]
        assert torch.equal(image, model.preprocess(crop_segment(seg.image, seg.mask)))  # the cache is lossless
        assert base[label] == seg.label
    assert prep.images.shape == (len(ds), 3, 32, 32)
    assert torch.equal(prep.images[2:5], torch.stack([prep[i][0] for i in (2, 3, 4)]))
    folder = prep.cache.dir
    assert os.path.isfile(prep.cache.path(0))
    del prep
    import gc

    gc.collect()
    assert not os.path.exists(folder)  # a temporary cache goes with its segments


def test_training_with_loader_workers_equals_the_main_process(tmp_path):
    base = ["red square", "green square", "blue square"]
    results = []
    for workers in (0, 2):
        model = tiny_model(5)
        cfg = small_config(tmp_path)
        cfg.runtime.num_workers = workers
        cfg.runtime.augment = True  # both stages read images through the loader, augmented per step
        train = prepare_segments(make_segments(), model.preprocess, base, model.image_size, progress=False,
                                 num_workers=workers)
        fit(model, train, base, cfg, str(tmp_path / f"w{workers}"), progress=False)
        results.append(model.learned_state_dict())
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


def test_segment_cache_is_reused_by_a_second_preparation(tmp_path):
    base = ["red square", "green square", "blue square"]
    model = tiny_model()
    ds = make_segments()
    first = prepare_segments(ds, model.preprocess, base, model.image_size, progress=False,
                             cache_dir=str(tmp_path / "c"))

    def no_decoding(i):
        raise AssertionError("decoded again")

    ds.load = no_decoding
    again = prepare_segments(ds, model.preprocess, base, model.image_size, progress=False,
                             cache_dir=str(tmp_path / "c"))
    assert torch.equal(again.images[0:4], first.images[0:4])


# ---------------------------------------------------------------- process-wide settings
def test_import_leaves_denormals_alone_and_training_scope_restores_them():
    import subprocess
    import sys

    code = (
        "import torch\n"
        "import opendas_encoder\n"
        "from opendas_encoder.train import flush_denormal\n"
        "survives = lambda: bool((torch.tensor([1e-40]) * 1.0).item() != 0)\n"
        "out = [survives()]\n"
        "with flush_denormal():\n"
        "    out.append(survives())\n"
        "out.append(survives())\n"
        "torch.set_flush_denormal(True)\n"
        "with flush_denormal():\n"
        "    pass\n"
        "out.append(survives())\n"
        "print(out)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # after import: denormals survive; inside the scope: flushed; after: restored (also a flushed state)
    assert proc.stdout.strip().splitlines()[-1] == "[True, False, True, False]"


def test_fit_refuses_a_config_of_another_method(tmp_path):
    """A baseline encoder trained under an OpenDAS config would take OpenDAS's preset (the default preset's
    consistency term on RPO's K x D ensemble features failed deep in the loss): refused up front, by name."""
    from opendas_encoder.core.factory import create_encoder

    torch.manual_seed(0)
    rpo = create_encoder("rpo", "opendas-tiny-vit", None)
    base = ["red square", "green square"]
    train = prepared(rpo, make_segments(n_per_class=1), base)
    with pytest.raises(ValueError, match="the model is a 'rpo' encoder but the config's method is 'opendas'"):
        fit(rpo, train, base, small_config(tmp_path), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()  # refused before any work
    result = fit(rpo, train, base, small_config(tmp_path, method="rpo"), str(tmp_path / "rpo"), progress=False)
    assert result.iterations


def test_a_non_finite_loss_stops_before_the_optimizer_touches_the_prompts(tmp_path, monkeypatch):
    """The loss is read after the backward is queued (no GPU stall between forward and backward), but the
    check still comes before the optimizer step: the text prompts keep their values, no NaN reaches them."""
    from opendas_encoder.train import trainer as trainer_module

    real = trainer_module.opendas_text_loss

    def nan_loss(*args, **kwargs):
        loss, ce, trip = real(*args, **kwargs)
        return loss * float("nan"), ce, trip

    monkeypatch.setattr(trainer_module, "opendas_text_loss", nan_loss)  # stage 2's loss only
    base = ["red square", "green square", "blue square"]
    torch.manual_seed(0)
    model = oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4))
    before = model.text_prompts.detach().clone()
    with pytest.raises(TrainingDiverged, match=r"non-finite loss \(nan\) in stage 'text', epoch 1, step 1"):
        fit(model, prepared(model, make_segments(), base), base, small_config(tmp_path), str(tmp_path / "run"),
            progress=False)
    assert torch.equal(model.text_prompts.detach(), before)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_and_state_files_get_the_mode_open_gives_other_files(tmp_path, umask):
    """Issue 25.17c: checkpoint and state files were written 0600 (mkstemp's mode) while every other file of a
    run was 0644. The truth: the mode of a file made by open() in the same folder under the same umask."""
    import stat

    previous = os.umask(umask)
    try:
        base = ["red square", "green square", "blue square"]
        model = tiny_model(3)
        run = tmp_path / "run"
        fit(model, prepared(model, make_segments(), base), base, small_config(tmp_path), str(run), progress=False)
        (run / "plain.txt").write_text("x")
        expected = stat.S_IMODE(os.stat(run / "plain.txt").st_mode)
    finally:
        os.umask(previous)
    assert expected == 0o666 & ~umask
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in run.rglob("*") if p.is_file()}
    names = {p.name for p in modes}
    assert {"prompts.safetensors", "opendas_config.json", "optimizer.safetensors", "trainer_state.json", "LATEST",
            "README.md"} <= names, names
    assert {str(p): m for p, m in modes.items() if m != expected} == {}

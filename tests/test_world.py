"""The generated two-domain world: determinism, masks, vocabularies, negatives, shipped CLIP."""

import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from opendas_encoder.data.segments import Segment, SegmentDataset, crop_segment
from opendas_encoder.generated.world import (
    BASE_CLASSES,
    COLOURS,
    NOVEL_CLASSES,
    SHAPES,
    STYLES,
    WORLD_MODEL_NAME,
    WORLD_PRETRAINED,
    ObjectKind,
    TargetRendering,
    make_source_domain,
    make_target_domain,
    source_zero_shot_accuracy,
    world_checkpoint_path,
    world_model_config_path,
    world_negatives,
    world_vocabulary,
)
from opendas_encoder.generated.world.render import pattern_colour
from opendas_encoder.generated.world.source import caption_matches, make_caption, render_source_sample

SOURCE_WORDS = set(STYLES) | set(COLOURS) | set(SHAPES)

#: Target rendering with every domain effect switched off: pixels show nominal colours.
CLEAN = TargetRendering(
    cast=(1.0, 1.0, 1.0), cast_jitter=0.0, brightness=(1.0, 1.0), light_gradient=0.0, shade=(0.0, 0.0),
    colour_jitter=0.0, grain=0.0, blur_sigma=(0.0, 0.0), noise_sigma=(0.0, 0.0),
)


# ----------------------------------------------------------------------------- determinism

def test_source_domain_is_deterministic_per_seed():
    a = make_source_domain(12, seed=3)
    b = make_source_domain(12, seed=3)
    c = make_source_domain(12, seed=4)
    assert [cap for _, cap in a] == [cap for _, cap in b]
    for (ia, _), (ib, _) in zip(a, b):
        assert ia.dtype == np.uint8 and ia.shape == (32, 32, 3)
        assert ia.tobytes() == ib.tobytes()
    assert any(ia.tobytes() != ic.tobytes() for (ia, _), (ic, _) in zip(a, c))
    assert make_source_domain(2, seed=0, image_size=48)[0][0].shape == (48, 48, 3)


def test_target_domain_is_deterministic_and_scene_k_does_not_depend_on_n():
    a = make_target_domain(4, seed=7, split="test")
    b = make_target_domain(4, seed=7, split="test")
    short = make_target_domain(2, seed=7, split="test")
    other = make_target_domain(4, seed=8, split="test")
    for sa, sb in zip(a.scenes, b.scenes):
        assert sa.image.tobytes() == sb.image.tobytes()
        assert sa.instance_map.tobytes() == sb.instance_map.tobytes()
    for sa, ss in zip(a.scenes, short.scenes):
        assert sa.image.tobytes() == ss.image.tobytes()
    assert a.labels() == b.labels()
    assert a.scenes[0].image.tobytes() != other.scenes[0].image.tobytes()


# ----------------------------------------------------------------------------- source captions

def test_caption_matches_hand_case():
    # codes: style, colour, shape, size, count (-1 = not stated)
    images = np.array([[1, 0, 0, 1, 0],    # striped red circle, large, one
                       [1, 0, 2, 1, 0],    # striped red triangle
                       [0, 0, 0, 0, 0]])   # plain red circle, small
    captions = np.array([[1, 0, 0, -1, 0],  # "a striped red circle"
                         [1, -1, -1, -1, 0],  # "a striped shape"
                         [0, 0, 0, 0, 0]])  # "a small red circle"
    expected = np.array([[True, True, False],
                         [False, True, False],
                         [False, False, True]])
    np.testing.assert_array_equal(caption_matches(captions, images), expected)


def test_captions_state_exactly_the_stated_attributes():
    rng = np.random.default_rng(0)
    for _ in range(150):
        sample = render_source_sample(rng)
        caption, stated = make_caption(sample, rng)
        words = set(caption.rstrip(".").replace("crosses", "cross").split())
        words |= {w[:-1] for w in words if w.endswith("s")}  # plurals
        assert caption_matches(stated[None], sample.codes()[None])[0, 0]
        assert (sample.kind.colour in words) == (stated[1] >= 0)
        assert (sample.kind.shape in words) == (stated[2] >= 0)
        if sample.kind.style != "plain":
            assert sample.kind.style in words
        assert not (words & (set(STYLES) - {"plain", sample.kind.style}))
        assert not (words & (set(COLOURS) - {sample.kind.colour}))


# ----------------------------------------------------------------------------- target masks

def _segments_by_scene(ds):
    out = {}
    for i in range(len(ds)):
        k, inst = ds._instance(i)
        out.setdefault(k, []).append((i, inst))
    return out


def test_target_segments_follow_the_segment_contract():
    ds = make_target_domain(6, seed=1, split="test")
    assert isinstance(ds, SegmentDataset) and len(ds) > 10
    assert ds.classes == BASE_CLASSES + NOVEL_CLASSES
    for i in range(len(ds)):
        seg = ds.load(i)
        assert isinstance(seg, Segment)
        assert seg.image.dtype == np.uint8 and seg.image.shape == (96, 96, 3)
        assert seg.mask.dtype == bool and seg.mask.shape == (96, 96)
        assert seg.label == ds.label(i)
        assert seg.source.startswith("generated-world/target/test/scene_0000")
        assert "#" in seg.source
        assert crop_segment(seg.image, seg.mask).size[0] >= 5
    with pytest.raises(IndexError, match="out of range"):
        ds.load(len(ds))
    with pytest.raises(ValueError, match="split"):
        make_target_domain(1, seed=0, split="validation")


def test_instance_masks_are_disjoint_nonempty_and_mostly_visible():
    ds = make_target_domain(12, seed=2, split="test")
    for k, segs in _segments_by_scene(ds).items():
        masks = [ds.load(i).mask for i, _ in segs]
        for (i, inst), m in zip(segs, masks):
            assert m.sum() == inst.visible >= ds.rendering.min_pixels
            assert inst.visible_fraction >= ds.rendering.min_visible
        total = np.sum(masks, axis=0)
        assert total.max() <= 1, f"overlapping instance masks in scene {k}"
    # occlusion happens: some labelled objects are partly hidden by others or by clutter
    assert sum(inst.visible_fraction < 0.8 for _, segs in _segments_by_scene(ds).items() for _, inst in segs) >= 3


def test_pixels_under_a_mask_carry_that_objects_rendering():
    ds = make_target_domain(12, seed=5, split="test", rendering=CLEAN)
    checked = {"plain": 0, "pattern": 0, "outlined": 0}
    for i in range(len(ds)):
        seg = ds.load(i)
        kind = ObjectKind.parse(seg.label)
        nominal = np.array(COLOURS[kind.colour])
        pixels = seg.image[seg.mask].astype(int)
        inner = seg.image[binary_erosion(seg.mask)].astype(int)
        if kind.style == "plain" and len(inner):
            exact = (inner == nominal).all(axis=1).mean()
            assert exact >= 0.9, f"{seg.source}: only {exact:.2f} of interior pixels are {kind.colour}"
            checked["plain"] += 1
        elif kind.style in ("striped", "dotted") and len(inner):
            pat = np.array(pattern_colour(kind.colour))
            lo, hi = np.minimum(nominal, pat) - 9, np.maximum(nominal, pat) + 9
            inside = ((inner >= lo) & (inner <= hi)).all(axis=1).mean()
            assert inside >= 0.9, f"{seg.source}: interior is not a {kind.colour}/pattern blend"
            checked["pattern"] += 1
        elif kind.style == "outlined":
            values, counts = np.unique(pixels, axis=0, return_counts=True)
            assert (values[counts.argmax()] == nominal).all(), f"{seg.source}: outline is not {kind.colour}"
            checked["outlined"] += 1
    assert min(checked.values()) >= 3, checked


def test_domain_shift_changes_colours_but_not_geometry():
    clean = make_target_domain(3, seed=9, split="test", rendering=CLEAN)
    shifted = make_target_domain(3, seed=9, split="test")
    assert clean.labels() == shifted.labels()
    # same layout, different look: the default rendering applies a warm, dim cast
    for c, s in zip(clean.scenes, shifted.scenes):
        m = c.instance_map >= 0
        ratio_c = c.image[m][:, 2].mean() / c.image[m][:, 0].mean()
        ratio_s = s.image[m][:, 2].mean() / s.image[m][:, 0].mean()
        assert ratio_s < 0.85 * ratio_c
        assert s.image[m].mean() < c.image[m].mean()


# ----------------------------------------------------------------------------- vocabularies

def test_vocabularies_are_disjoint_and_built_from_source_words():
    v = world_vocabulary()
    assert v["test"] == v["base"] + v["novel"]
    assert not set(v["base"]) & set(v["novel"])
    assert len(set(v["test"])) == len(v["test"])
    for name in v["test"]:
        assert set(name.split()) <= SOURCE_WORDS, name
        assert ObjectKind.parse(name).name == name

    def twins(a, b):  # same colour and shape, different style
        return [(x, y) for x in a for y in b if x != y and ObjectKind.parse(x).colour == ObjectKind.parse(y).colour
                and ObjectKind.parse(x).shape == ObjectKind.parse(y).shape]

    assert twins(v["base"], v["base"]) and twins(v["novel"], v["novel"]) and twins(v["base"], v["novel"])
    assert ("blue square", "outlined blue square") in twins(v["base"], v["base"])  # door and door frame


def test_train_split_never_contains_novel_objects():
    train = make_target_domain(25, seed=0, split="train")
    assert train.classes == BASE_CLASSES
    drawn = {inst.label for s in train.scenes for inst in s.instances}
    assert drawn <= set(BASE_CLASSES) and not drawn & set(NOVEL_CLASSES)
    assert set(train.labels()) <= set(BASE_CLASSES)
    test = make_target_domain(25, seed=0, split="test")
    assert set(test.labels()) & set(NOVEL_CLASSES) and set(test.labels()) & set(BASE_CLASSES)


def test_negatives_are_valid_and_hard():
    negs = world_negatives()
    assert json.loads(json.dumps(negs)) == negs
    assert list(negs) == BASE_CLASSES
    taken = set(BASE_CLASSES) | set(NOVEL_CLASSES)
    for cls, ns in negs.items():
        assert len(ns) == 5 and len(set(ns)) == 5, cls
        assert cls not in ns and not set(ns) & taken, cls
        k = ObjectKind.parse(cls)
        for n in ns:
            assert set(n.split()) <= SOURCE_WORDS
            o = ObjectKind.parse(n)
            changed = (o.style != k.style) + (o.colour != k.colour) + (o.shape != k.shape)
            assert changed == 1, f"{n!r} should differ from {cls!r} in exactly one attribute"
    assert negs["red circle"] == ["red hexagon", "dotted red circle", "pink circle", "red crescent", "brown circle"]


# ----------------------------------------------------------------------------- shipped CLIP

CKPT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "opendas_encoder", "generated", "world",
                        "clip")
CKPT = os.path.join(CKPT_DIR, "open_clip_model.safetensors")


def test_checkpoint_path_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENDAS_CHECKPOINTS", raising=False)
    assert world_checkpoint_path() == CKPT
    monkeypatch.setenv("OPENDAS_CHECKPOINTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "clip_generated_world")):
        world_checkpoint_path()


def test_world_clip_configs_agree():
    """The open_clip config registered by name and the local-dir: config describe the same model."""
    with open(world_model_config_path()) as f:
        by_name = json.load(f)
    with open(os.path.join(CKPT_DIR, "open_clip_config.json")) as f:
        local_dir = json.load(f)
    assert by_name == local_dir["model_cfg"]


def test_world_tag_resolves_through_the_entry_point_in_a_fresh_process(repo_root):
    """The core factory knows nothing of the world: ``import opendas_encoder`` loads no generated code, and
    ``create_model("opendas-world-vit", "generated-world")`` finds the shipped weights through the
    ``opendas_encoder.pretrained`` entry point (so it also works from a wheel, run outside the repository)."""
    code = (
        "import sys, torch, opendas_encoder as oe\n"
        "from safetensors.torch import load_file\n"
        "assert not [m for m in sys.modules if m.startswith('opendas_encoder.generated')], 'generated code imported'\n"
        "m = oe.create_model('opendas-world-vit', 'generated-world')\n"
        "from opendas_encoder.generated.world import world_checkpoint_path\n"
        "assert oe.resolve_pretrained('opendas-world-vit', 'generated-world') == world_checkpoint_path()\n"
        "ref = load_file(world_checkpoint_path())\n"
        "sd = m.clip.state_dict()\n"
        "assert set(ref) == set(sd) and all(torch.equal(sd[k], ref[k].to(sd[k].dtype)) for k in ref)\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENDAS_CHECKPOINTS"}
    r = subprocess.run([sys.executable, "-c", code], cwd=str(tempfile.gettempdir()), env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


@pytest.fixture(scope="module")
def built_wheel(repo_root, tmp_path_factory):
    """The project's wheel, ``pip wheel --no-deps .`` (what ``pip install .`` installs)."""
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), repo_root], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("opendas_encoder-*.whl")
    return wheel


def test_wheel_ships_the_world_clip_and_the_entry_points(built_wheel):
    """``pip wheel .`` holds everything ``opendas demo`` needs (issue 13.7: a non-editable install must run it)."""
    wheel = built_wheel
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        shipped = z.read("opendas_encoder/generated/world/clip/open_clip_model.safetensors")
    for name in ("open_clip_config.json", "pretrain_info.json"):
        assert f"opendas_encoder/generated/world/clip/{name}" in names
    assert "opendas_encoder/model_configs/opendas-world-vit.json" in names
    with open(CKPT, "rb") as f:
        assert shipped == f.read()
    assert "generated-world = opendas_encoder.generated.world.clip" in entry_points
    assert "generated-world = opendas_encoder.generated.world.target" in entry_points


def test_wheel_install_runs_the_demo_outside_the_checkout(built_wheel, tmp_path):
    """Issue 13.7: the wheel installed into its own venv (torch and the other dependencies from this
    interpreter's site-packages) imports from the venv, not from the checkout, and ``opendas demo`` runs
    from a folder outside the repository: the shipped world CLIP and entry points are enough."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(built_wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENDAS_CHECKPOINTS")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import opendas_encoder, os; print(os.path.dirname(opendas_encoder.__file__))"],
                           cwd=str(tmp_path), env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), f"the wheel venv imports opendas_encoder from {where}"
    r = subprocess.run([str(venv / "bin" / "opendas"), "demo", "--seeds", "1", "--epochs", "1,1", "--variants",
                        "opendas", "--scene-scale", "0.1", "--quiet", "--device", "cpu", "--out", str(tmp_path / "demo"),
                        "--json", str(tmp_path / "demo.json")], cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads((tmp_path / "demo.json").read_text())
    assert set(result["opendas"]) >= {"acc", "base_f1", "novel_f1"} and "not a real dataset" in r.stdout


@pytest.fixture(scope="module")
def world_clip():
    open_clip = pytest.importorskip("open_clip", reason="pip install open_clip_torch")
    if WORLD_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(world_model_config_path())
    model, _, preprocess = open_clip.create_model_and_transforms(WORLD_MODEL_NAME, pretrained=CKPT)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(WORLD_MODEL_NAME)


def test_checkpoint_is_fp16_safetensors_with_open_clip_keys():
    open_clip = pytest.importorskip("open_clip", reason="pip install open_clip_torch")
    from safetensors import safe_open

    assert os.path.getsize(CKPT) <= 20 * 2 ** 20
    with open(CKPT, "rb") as f:  # safetensors: u64 header length, then a JSON header (no pickle)
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    assert header["__metadata__"]["pretrained"] == WORLD_PRETRAINED
    if WORLD_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(world_model_config_path())
    ref = open_clip.create_model(WORLD_MODEL_NAME).state_dict()
    with safe_open(CKPT, framework="pt") as f:
        keys = set(f.keys())
        assert keys == set(ref)
        for k in keys:
            t = f.get_tensor(k)
            assert t.dtype == torch.float16 and t.shape == ref[k].shape, k
    with open(os.path.join(CKPT_DIR, "pretrain_info.json")) as f:
        info = json.load(f)
    assert info["model"] == WORLD_MODEL_NAME and info["seed"] == 0 and info["steps"] > 0
    assert info["zero_shot"]["source"]["accuracy"] > 50.0


def test_shipped_clip_beats_chance_zero_shot(world_clip):
    model, preprocess, tokenizer = world_clip
    acc = source_zero_shot_accuracy(model, preprocess, tokenizer, n=64, seed=123)
    assert acc >= 35.0, f"source zero-shot {acc:.1f}% (chance 0.4% over 256 names)"


def test_shipped_clip_recognises_target_crops_above_chance(world_clip):
    from opendas_encoder.generated.world import target_zero_shot_report

    model, preprocess, tokenizer = world_clip
    v = world_vocabulary()
    test = make_target_domain(6, seed=11, split="test")
    rep = target_zero_shot_report(model, preprocess, tokenizer, test, v["base"], v["novel"])
    assert rep["accuracy"] >= 6 * rep["chance"], rep  # chance 4 %; crops stay recognisable

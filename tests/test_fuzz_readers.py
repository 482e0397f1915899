"""Property-based fuzzing of every reader a user's file reaches (docs/reliability.md).

Each reader starts from a valid file written by the project's own writers (generated datasets,
``write_ply``, ``save_checkpoint`` of the tiny model, ...) and gets it back mutated: truncated, bits
flipped, bytes overwritten or inserted, emptied, or (for text formats) with values of the wrong type,
non-finite, huge or negative. The property: a valid result, or the project's own error type
(:class:`opendas_encoder.errors.InputError`; :class:`SegmentError` for one segment of a dataset) whose
message names the file, within a few seconds. Anything else (a raw numpy/PIL/torch exception, a hang,
a huge allocation) fails the test with hypothesis's shrunk example.

Deterministic (``derandomize=True``, no example database). ``OPENDAS_FUZZ_EXAMPLES=N`` sets the
examples per reader (default 300; ``OPENDAS_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz_readers.py``
for a long run).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendas_encoder.data.segments import SegmentError
from opendas_encoder.errors import InputError

EXAMPLES = int(os.environ.get("OPENDAS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
#: Wall-clock bound of one reader call on a file of a few kB (a hang or a 10^12-element loop fails it).
SECONDS_PER_CALL = 10.0


# ---------------------------------------------------------------- mutations
@st.composite
def mutated(draw, original: bytes) -> bytes:
    """``original`` truncated, with bits flipped, a range overwritten, bytes inserted, or emptied."""
    data = bytearray(original)
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "empty", "flip+truncate"]))
    if kind == "empty":
        return b""
    if kind in ("flip", "flip+truncate"):
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    if kind in ("truncate", "flip+truncate"):
        data = data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "overwrite":
        i = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=16))
        data[i:i + len(chunk)] = chunk
    if kind == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


#: JSON values of every type, including the non-finite and huge numbers Python's json writes.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([float("nan"), float("inf"), -1e308])
    | st.floats(allow_nan=True, allow_subnormal=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@st.composite
def json_mutated(draw, obj) -> bytes:
    """``obj`` with one value somewhere replaced by a value of any type, serialised; or raw byte mutations."""
    if draw(st.booleans()):
        return draw(mutated(json.dumps(obj).encode()))
    obj = json.loads(json.dumps(obj))
    node, steps = obj, draw(st.integers(0, 4))
    parent, key = None, None
    for _ in range(steps):
        if isinstance(node, dict) and node:
            k = draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            k = draw(st.integers(0, len(node) - 1))
        else:
            break
        parent, key, node = node, k, node[k]
    value = draw(json_values)
    if parent is None:
        obj = value
    else:
        parent[key] = value
    return json.dumps(obj).encode()


@st.composite
def text_mutated(draw, text: str) -> bytes:
    """Whitespace-separated numeric text with a token replaced (nan, inf, huge, negative, words, non-UTF-8)."""
    if draw(st.booleans()):
        return draw(mutated(text.encode()))
    tokens = text.split(" ")
    i = draw(st.integers(0, len(tokens) - 1))
    tokens[i] = draw(st.sampled_from(["nan", "inf", "-inf", "1e400", "-1", "0", "99999999999999999999", "x",
                                      "\xff", "", "1.5", "-0"]))
    out = " ".join(tokens).encode("utf-8")
    if draw(st.booleans()):
        out = out.replace(b"\xc3\xbf", b"\xff")  # a raw non-UTF-8 byte
    return out


# ---------------------------------------------------------------- the property
def call_reader(fn, path: str, *allowed: type):
    """``fn(path)``: its result, or None when it raised InputError (or ``allowed``) naming ``path``."""
    t0 = time.perf_counter()
    try:
        return fn(path)
    except (InputError, *allowed) as exc:
        assert os.path.basename(path) in str(exc), f"error does not name the file {path}: {exc}"
        if isinstance(exc, InputError):
            assert exc.path and exc.path in str(exc)
        return None
    finally:
        assert time.perf_counter() - t0 < SECONDS_PER_CALL, f"{fn.__name__} took > {SECONDS_PER_CALL} s"


def write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


# ---------------------------------------------------------------- vocabularies, class lists, negatives
def _vocab_bytes():
    from opendas_encoder.generated.world import world_negatives
    from opendas_encoder.vocab import Vocabulary
    negs = world_negatives()
    base = sorted(negs)[:4]
    vocab = Vocabulary(base=base, test=base + ["teal circle"], name="fuzz")
    return json.dumps(vocab.to_dict()).encode(), negs


@FUZZ
@given(st.data())
def test_vocabulary_json(tmp_path, data):
    from opendas_encoder.vocab import Vocabulary
    raw, _ = _vocab_bytes()
    path = write(tmp_path / "vocab.json", data.draw(json_mutated(json.loads(raw))))
    v = call_reader(Vocabulary.load, path)
    if v is not None:
        assert all(isinstance(n, str) and n.strip() for n in v.base + v.test)


@FUZZ
@given(st.data())
def test_negatives_json(tmp_path, data):
    from opendas_encoder.vocab import load_negatives
    _, negs = _vocab_bytes()
    path = write(tmp_path / "negatives.json", data.draw(json_mutated(negs)))
    out = call_reader(load_negatives, path)
    if out is not None:
        assert all(isinstance(k, str) and all(isinstance(n, str) for n in v) for k, v in out.items())


@FUZZ
@given(st.data())
def test_class_list(tmp_path, data):
    from opendas_encoder.vocab import read_class_list
    raw = "# classes\ncat\ndog\ntree\n".encode()
    path = write(tmp_path / "classes.txt", data.draw(mutated(raw) | text_mutated(raw.decode())))
    out = call_reader(read_class_list, path)
    if out is not None:
        assert out and all(isinstance(n, str) and n for n in out)


# ---------------------------------------------------------------- the generic dataset format
@pytest.fixture(scope="module")
def generic_root(tmp_path_factory):
    from opendas_encoder.generated.datasets import write_generic
    root = str(tmp_path_factory.mktemp("generic") / "ds")
    write_generic(root, "train")
    return root


GENERIC_FILES = ["classes.txt", "images/train/a.png", "semantic/train/a.png", "instances/train/b.png",
                 "instances/train/b.json"]


def _read_generic_dataset(root: str):
    """Build the dataset and decode every segment: each is a Segment or a SegmentError (skipped, counted)."""
    from opendas_encoder.data.generic import GenericSegmentDataset
    ds = GenericSegmentDataset(root, split="train", progress=False)
    for i in range(len(ds)):
        try:
            seg = ds[i]
            assert seg.image.dtype == np.uint8 and seg.mask.shape == seg.image.shape[:2]
        except SegmentError as exc:
            assert exc.source and root in exc.source
    return ds


def fresh_copy(src: str, dst: str, name: str):
    """A fresh copy of the folder ``src`` at ``dst`` (hypothesis reuses tmp_path across examples):
    (path of ``name`` in it, its bytes)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    path = os.path.join(dst, name)
    with open(path, "rb") as f:
        return path, f.read()


@FUZZ
@given(which=st.sampled_from(GENERIC_FILES), data=st.data())
def test_generic_dataset_files(tmp_path, generic_root, which, data):
    root = str(tmp_path / "ds")
    path, raw = fresh_copy(generic_root, root, which)
    if which.endswith(".json"):
        new = data.draw(json_mutated(json.loads(raw)))
    elif which.endswith(".txt"):
        new = data.draw(mutated(raw) | text_mutated(raw.decode()))
    else:
        new = data.draw(mutated(raw))
    write(path, new)
    call_reader(lambda _p: _read_generic_dataset(root), path)


# ---------------------------------------------------------------- YAML training configs
def _config_text(tmp_path) -> str:
    import yaml
    cfg = {"name": "fuzz", "seed": 0, "model": {"name": "opendas-tiny-vit", "pretrained": None},
           "prompts": {"visual_tokens": 2, "text_tokens": 4},
           "data": {"train": {"name": "generic", "root": "toy", "split": "train"}},
           "schedule": {"batch_size": 16, "stage1_epochs": 1, "stage2_epochs": 1, "warmup_epochs": 0, "lr": 0.0025},
           "runtime": {"device": "cpu"}, "output_dir": "runs/fuzz"}
    return yaml.safe_dump(cfg)


@st.composite
def yaml_mutated(draw, text: str) -> bytes:
    """The YAML with one value replaced by a YAML scalar of another type, or raw byte mutations."""
    if draw(st.booleans()):
        return draw(mutated(text.encode()))
    lines = text.splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    key = lines[i].split(":")[0]
    value = draw(st.sampled_from([".nan", ".inf", "-.inf", "-1", "0", "1e400", "99999999999999999999", "[]", "{}",
                                  "null", "yes", "'x'", "[1, 2]", "!!binary aGk=", "*undefined", "&a [*a]"]))
    lines[i] = f"{key}: {value}"
    return "\n".join(lines).encode()


@FUZZ
@given(data=st.data())
def test_yaml_config(tmp_path, data):
    from opendas_encoder.train.config import load_config
    path = write(tmp_path / "config.yaml", data.draw(yaml_mutated(_config_text(tmp_path))))
    cfg = call_reader(load_config, path)
    if cfg is not None:
        s = cfg.schedule
        assert s.lr > 0 and np.isfinite(s.lr) and s.batch_size >= 1 and s.stage1_epochs >= 0


# ---------------------------------------------------------------- PLY
def _ply_seed(path: str, text: bool = False) -> bytes:
    from opendas_encoder.data.ply import write_ply
    rng = np.random.default_rng(0)
    points = rng.normal(size=(12, 3))
    colors = rng.integers(0, 256, size=(12, 3))
    faces = np.array([[0, 1, 2], [2, 3, 4], [5, 6, 7], [9, 10, 11]])
    write_ply(path, points, colors, faces)
    if text:
        import plyfile
        ply = plyfile.PlyData.read(path, mmap=False)  # never write over a file mapped in memory
        ply.text = True
        ply.write(path)
    with open(path, "rb") as f:
        return f.read()


def _read_ply_both(path: str):
    from opendas_encoder.data.ply import read_ply_mesh, read_ply_vertices
    mesh = read_ply_mesh(path)
    n = len(mesh.vertices)
    assert mesh.vertices.shape == (n, 3) and np.isfinite(mesh.vertices).all()
    assert mesh.faces.ndim == 2 and mesh.faces.shape[1] == 3
    assert (mesh.faces >= 0).all() and (mesh.faces < n).all()
    read_ply_vertices(path)
    return mesh


@FUZZ
@given(text=st.booleans(), data=st.data())
def test_ply(tmp_path, text, data):
    raw = _ply_seed(str(tmp_path / "seed.ply"), text)
    if text and data.draw(st.booleans()):
        new = data.draw(text_mutated(raw.decode()))
    else:
        new = data.draw(mutated(raw))
    call_reader(_read_ply_both, write(tmp_path / "scene.ply", new))


# ---------------------------------------------------------------- OpenMask3D layout
@FUZZ
@given(kind=st.sampled_from(["pt", "npy", "features"]), data=st.data())
def test_openmask3d_proposals_and_features(tmp_path, kind, data):
    from opendas_encoder.generated.openmask3d import write_mask3d_proposals
    from opendas_encoder.threed.processed import read_mask_proposals, read_openmask3d_features
    rng = np.random.default_rng(0)
    seed = str(tmp_path / f"seed.{'pt' if kind == 'pt' else 'npy'}")
    if kind == "pt":
        write_mask3d_proposals(rng.random((20, 3)) > 0.5, seed)
    elif kind == "npy":
        np.save(seed, (rng.random((20, 3)) > 0.5))
    else:
        np.save(seed, rng.normal(size=(3, 8)).astype(np.float32))
    with open(seed, "rb") as f:
        raw = f.read()
    path = write(tmp_path / (f"scene_masks.{'pt' if kind == 'pt' else 'npy'}" if kind != "features"
                             else "scene_openmask3d_features.npy"), data.draw(mutated(raw)))
    if kind == "features":
        out = call_reader(lambda p: read_openmask3d_features(p, num_masks=3), path)
        if out is not None:
            assert out.dtype == np.float32 and out.shape[0] == 3 and np.isfinite(out).all()
    else:
        out = call_reader(lambda p: read_mask_proposals(p, num_points=20), path)
        if out is not None:
            assert out.dtype == bool and out.ndim == 2 and out.shape[0] == 20


@FUZZ
@given(kind=st.sampled_from(["pose", "intrinsic", "gt", "classes"]), data=st.data())
def test_openmask3d_text_files(tmp_path, kind, data):
    from opendas_encoder.threed.processed import read_classes_json, read_matrix, read_scannet_gt
    if kind == "classes":
        obj = {"class_ids": [1, 2, 3], "class_names": ["chair", "table", "lamp"], "base": ["chair"]}
        path = write(tmp_path / "classes.json", data.draw(json_mutated(obj)))
        out = call_reader(read_classes_json, path)
        if out is not None:
            assert len(out["class_ids"]) == len(out["class_names"])
            assert all(isinstance(n, str) for n in out["class_names"])
        return
    if kind == "gt":
        text = "\n".join(str(v) for v in [0, 0, 1001, 1001, 2002, 3003])
        path = write(tmp_path / "scene0000_00.txt", data.draw(text_mutated(text.replace("\n", " \n "))))
        out = call_reader(lambda p: read_scannet_gt(p, num_points=6), path)
        if out is not None:
            assert out.dtype == np.int64 and out.shape == (6,)
        return
    m = np.eye(4) if kind == "pose" else np.array([[500.0, 0, 320, 0], [0, 500, 240, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    text = "\n".join(" ".join(repr(float(x)) for x in row) for row in m)
    path = write(tmp_path / f"{kind}.txt", data.draw(text_mutated(text)))
    shape = (4, 4) if kind == "pose" else (3, 3)
    out = call_reader(lambda p: read_matrix(p, shape), path)
    if out is not None:
        assert out.shape == shape and np.isfinite(out).all()


# ---------------------------------------------------------------- ScanNet++ scene files
@pytest.fixture(scope="module")
def scannetpp_root(tmp_path_factory):
    from opendas_encoder.generated.scannetpp import FixtureFrame, box_mesh, look_at, write_scannetpp_scene
    root = str(tmp_path_factory.mktemp("scannetpp"))
    v, f = box_mesh((0, 0, 0), (1, 1, 1))
    inst = np.zeros(len(v), np.int64)
    inst[:4] = 1
    K = np.array([[40.0, 0, 16], [0, 40, 12], [0, 0, 1]])
    frames = [FixtureFrame(look_at((3, 0.5 + k, 1), (0.5, 0.5, 0.5)), K, 32, 24,
                           rgb=np.full((24, 32, 3), 100, np.uint8), depth=np.ones((24, 32))) for k in range(2)]
    write_scannetpp_scene(root, "scene0", v, f, instances=inst, labels={1: "chair"}, frames=frames)
    return root


SCANNETPP_FILES = ["iphone/colmap/cameras.txt", "iphone/colmap/images.txt", "iphone/pose_intrinsic_imu.json",
                   "scans/segments.json", "scans/segments_anno.json", "scans/mesh_aligned_0.05.ply"]


def _read_scannetpp(root: str, which: str):
    from opendas_encoder.data.scannetpp.scene import ScanNetPPScene
    scene = ScanNetPPScene(root, "scene0")
    if which.startswith("iphone"):
        source = "pose_json" if which.endswith(".json") else "colmap"
        for fr in scene.frames(source=source, check_files=False):
            assert fr.cam_to_world.shape == (4, 4) and np.isfinite(fr.cam_to_world).all()
            assert fr.intrinsics.shape == (3, 3) and np.isfinite(fr.intrinsics).all()
        return
    ids, labels = scene.vertex_instances()
    assert ids.shape == (len(scene.mesh_vertices()),) or which != "scans/mesh_aligned_0.05.ply"
    assert all(isinstance(n, str) for n in labels.values())


@FUZZ
@given(which=st.sampled_from(SCANNETPP_FILES), data=st.data())
def test_scannetpp_files(tmp_path, scannetpp_root, which, data):
    root = str(tmp_path / "release")
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(scannetpp_root, root)
    path = os.path.join(root, "data", "scene0", which)
    with open(path, "rb") as f:
        raw = f.read()
    if which.endswith(".json"):
        new = data.draw(json_mutated(json.loads(raw)))
    elif which.endswith(".txt"):
        new = data.draw(text_mutated(raw.decode()))
    else:
        new = data.draw(mutated(raw))
    write(path, new)
    call_reader(lambda _p: _read_scannetpp(root, which), path)


# ---------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import opendas_encoder as oe
    torch.manual_seed(0)
    model = oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4))
    directory = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    oe.save_checkpoint(model, directory, dataset="fuzz")
    return directory, model


def _load_checkpoint(directory: str, model):
    import warnings

    from opendas_encoder.core.checkpoint import load_encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = load_encoder(directory, model=model.clip)
    for p in enc.learned_parameters():
        assert torch.isfinite(p).all()
    return enc


@FUZZ
@given(which=st.sampled_from(["opendas_config.json", "prompts.safetensors"]), data=st.data())
def test_checkpoint_files(tmp_path, tiny_checkpoint, which, data):
    src, model = tiny_checkpoint
    directory = str(tmp_path / "ckpt")
    path, raw = fresh_copy(src, directory, which)
    if which.endswith(".json"):
        new = data.draw(json_mutated(json.loads(raw)))
    else:
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        if data.draw(st.booleans()):  # a structurally valid file whose header lies: dtype, shape, offsets
            name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
            field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            header[name][field] = data.draw({
                "dtype": st.sampled_from(["F16", "I64", "BOOL", "U8", "F64", "XX", 3]),
                "shape": st.lists(st.integers(-2, 2**40), max_size=4),
                "data_offsets": st.lists(st.integers(-2, 2**40), min_size=0, max_size=3)}[field])
            body = json.dumps(header).encode()
            new = struct.pack("<Q", len(body)) + body + raw[8 + n:]
        else:
            new = data.draw(mutated(raw))
    write(path, new)
    call_reader(lambda _p: _load_checkpoint(directory, model), directory)  # errors name the checkpoint folder


def test_the_unmutated_seed_files_read(tmp_path, generic_root, scannetpp_root, tiny_checkpoint):
    """The property is not met vacuously: every seed file gives a result, not an error."""
    from opendas_encoder.generated.openmask3d import write_mask3d_proposals
    from opendas_encoder.threed.processed import read_mask_proposals, read_openmask3d_features
    masks = np.random.default_rng(0).random((20, 3)) > 0.5
    write_mask3d_proposals(masks, str(tmp_path / "a_masks.pt"))
    np.save(tmp_path / "b_masks.npy", masks)
    np.save(tmp_path / "f.npy", np.ones((3, 8), np.float32))
    assert (read_mask_proposals(str(tmp_path / "a_masks.pt"), 20) == masks).all()
    assert (read_mask_proposals(str(tmp_path / "b_masks.npy"), 20) == masks).all()
    assert read_openmask3d_features(str(tmp_path / "f.npy"), 3).shape == (3, 8)
    for text in (False, True):
        _ply_seed(str(tmp_path / "s.ply"), text)
        assert len(_read_ply_both(str(tmp_path / "s.ply")).faces) == 4
    assert len(_read_generic_dataset(generic_root)) == 5
    for which in SCANNETPP_FILES:
        _read_scannetpp(scannetpp_root, which)
    _load_checkpoint(*tiny_checkpoint)


# ---------------------------------------------------------------- sizes that must not allocate
def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_ply_header_claiming_1e12_vertices_is_refused_without_allocating(tmp_path, fmt):
    from opendas_encoder.data.ply import read_ply_vertices
    path = str(tmp_path / "huge.ply")
    body = b"0 0 0\n" * 3 if fmt == "ascii" else np.zeros((3, 3), "<f4").tobytes()
    write(path, f"ply\nformat {fmt} 1.0\nelement vertex 1000000000000\nproperty float x\nproperty float y\n"
                f"property float z\nend_header\n".encode() + body)
    with pytest.raises(InputError, match="truncated or header corrupt"):
        assert _peak_mib(lambda: read_ply_vertices(path)) < 50


def test_npy_header_claiming_a_huge_shape_is_refused_without_allocating(tmp_path):
    from opendas_encoder.threed.processed import read_mask_proposals, read_openmask3d_features
    path = str(tmp_path / "scene_masks.npy")
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (99999999999, 2)})
        f.write(np.zeros((4, 2), "<f4").tobytes())
    for reader in (read_mask_proposals, read_openmask3d_features):
        with pytest.raises(InputError, match="truncated"):
            assert _peak_mib(lambda: reader(path)) < 50


def _png(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG whose header claims (width, height) but whose image data is one short row (valid CRCs)."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_png_claiming_a_huge_size_is_skipped_and_counted_without_allocating(tmp_path, generic_root):
    from opendas_encoder.data.generic import GenericSegmentDataset
    root = str(tmp_path / "ds")
    shutil.copytree(generic_root, root)
    write(os.path.join(root, "semantic/train/a.png"), _png(60000, 60000))
    write(os.path.join(root, "instances/train/b.png"), _png(100000, 10, 16))
    ds = []
    assert _peak_mib(lambda: ds.append(GenericSegmentDataset(root, split="train", progress=False))) < 50
    summary = ds[0].enumeration_skips.summary()
    assert "unreadable label map" in summary and "a.png" in summary, summary

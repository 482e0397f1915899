"""Tiny generated datasets in the real on-disk layouts of the 2D loaders (generic, ADE20K-150, KITTI-360).

Each writer places hand-chosen regions on random images and returns what a loader must find, so
tests compare the real loaders (:mod:`opendas_encoder.data`) against known masks. The ScanNet++
layout writer is :mod:`.scannetpp`.
"""

from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np
from PIL import Image


def _rng_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(path: str, arr: np.ndarray, **kw) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def write_generic(root: str, split: str = "train") -> Dict:
    """classes cat/dog/tree; 4 images: a semantic map, an instance map + JSON, a corrupt image,
    an image without annotation.

    Expected segments (min_pixels=16): a.png -> cat (100 px), tree (60 px) [dog has 3 px: tiny];
    b.png -> instance 1 dog (40 px), instance 2 dog (30 px) [instance 3 cat absent: empty];
    c.png (corrupt RGB) -> cat (64 px) enumerated, fails on load; d.png -> no annotation.
    """
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("# generic fixture\ncat\ndog\ntree\n")
    img_dir, sem_dir, inst_dir = (os.path.join(root, k, split) for k in ("images", "semantic", "instances"))
    images = {}
    # a: semantic
    images["a"] = _rng_image(24, 32, 0)
    _save(os.path.join(img_dir, "a.png"), images["a"])
    sem = np.zeros((24, 32), np.uint8)
    sem[2:12, 3:13] = 1          # cat 100 px
    sem[15:21, 20:30] = 3        # tree 60 px
    sem[0, 29:32] = 2            # dog 3 px (tiny)
    _save(os.path.join(sem_dir, "a.png"), sem)
    # b: instances (16-bit)
    images["b"] = _rng_image(20, 20, 1)
    _save(os.path.join(img_dir, "b.png"), images["b"])
    inst = np.zeros((20, 20), np.uint16)
    inst[0:5, 0:8] = 1           # 40 px
    inst[10:16, 10:15] = 2       # 30 px
    _save(os.path.join(inst_dir, "b.png"), inst)
    with open(os.path.join(inst_dir, "b.json"), "w") as f:
        json.dump({"1": "dog", "2": "dog", "3": "cat"}, f)
    # c: corrupt image, valid annotation
    os.makedirs(img_dir, exist_ok=True)
    with open(os.path.join(img_dir, "c.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nthis is not a png")
    sem_c = np.zeros((16, 16), np.uint8)
    sem_c[4:12, 4:12] = 1
    _save(os.path.join(sem_dir, "c.png"), sem_c)
    # d: no annotation
    _save(os.path.join(img_dir, "d.png"), _rng_image(8, 8, 2))
    return {
        "images": images,
        "masks": {("a.png", "cat"): sem == 1, ("a.png", "tree"): sem == 3,
                  ("b.png", 1): inst == 1, ("b.png", 2): inst == 2},
        "segments": [("a.png", "cat"), ("a.png", "tree"), ("b.png", "dog"), ("b.png", "dog"), ("c.png", "cat")],
    }


def write_ade20k(root: str) -> Dict:
    """``ADEChallengeData2016`` with 2 validation images and 1 training image.

    val 1: wall (value 1, 120 px), flag (150, 40 px), other (0), bed (8, 5 px: tiny).
    val 2: light (83, 64 px). train 1: sky (3, 48 px).
    """
    base = os.path.join(root, "ADEChallengeData2016")
    out = {"masks": {}}
    specs = {
        ("validation", "ADE_val_00000001"): [(1, (slice(0, 10), slice(0, 12))), (150, (slice(12, 16), slice(20, 30))),
                                             (8, (slice(20, 21), slice(0, 5)))],
        ("validation", "ADE_val_00000002"): [(83, (slice(4, 12), slice(4, 12)))],
        ("training", "ADE_train_00000001"): [(3, (slice(0, 6), slice(0, 8)))],
    }
    for k, ((split, stem), regions) in enumerate(specs.items()):
        img = _rng_image(24, 32, 10 + k)
        ann = np.zeros((24, 32), np.uint8)
        for value, sl in regions:
            ann[sl] = value
        for value, _ in regions:
            out["masks"][(stem, value)] = ann == value
        _save(os.path.join(base, "images", split, stem + ".jpg"), img, quality=100)
        _save(os.path.join(base, "annotations", split, stem + ".png"), ann)
    return out


SEQ = "2013_05_28_drive_0000_sync"


def write_kitti360(root: str) -> Dict:
    """KITTI-360 with two frames: 0000000000 (train, semantic + instance maps) and 0000000010
    (val, semantic map only).

    train: road (id 7, 100 px), cars 26001 (30 px) and 26002 (24 px), building 11 (40 px),
    ground (id 6, not one of the 37: ignored), unlabeled 0.
    val: sidewalk (8, 50 px), vegetation (21, 36 px), car (26, 20 px).
    """
    def paths(frame):
        rgb = f"data_2d_raw/{SEQ}/image_00/data_rect/{frame}.png"
        sem = f"data_2d_semantics/train/{SEQ}/image_00/semantic/{frame}.png"
        inst = f"data_2d_semantics/train/{SEQ}/image_00/instance/{frame}.png"
        return rgb, sem, inst

    out = {"masks": {}}
    h, w = 24, 40
    # train frame
    rgb, sem_p, inst_p = paths("0000000000")
    sem = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.uint16)
    sem[14:24, 0:10] = 7
    inst[14:24, 0:10] = 7
    sem[2:8, 20:25] = 26
    inst[2:8, 20:25] = 26001
    sem[10:14, 30:36] = 26
    inst[10:14, 30:36] = 26002
    sem[0:4, 0:10] = 11
    inst[0:4, 0:10] = 11
    sem[20:24, 30:40] = 6
    inst[20:24, 30:40] = 6
    _save(os.path.join(root, rgb), _rng_image(h, w, 20))
    _save(os.path.join(root, sem_p), sem)
    _save(os.path.join(root, inst_p), inst)
    out["masks"]["train"] = {"road": inst == 7, "car#1": inst == 26001, "car#2": inst == 26002, "building": inst == 11}
    # val frame: semantic only
    rgb_v, sem_v, _ = paths("0000000010")
    semv = np.zeros((h, w), np.uint8)
    semv[0:5, 0:10] = 8
    semv[10:16, 10:16] = 21
    semv[18:22, 30:35] = 26
    _save(os.path.join(root, rgb_v), _rng_image(h, w, 21))
    _save(os.path.join(root, sem_v), semv)
    out["masks"]["val"] = {"sidewalk": semv == 8, "vegetation": semv == 21, "car": semv == 26}
    lists = os.path.join(root, "data_2d_semantics", "train")
    with open(os.path.join(lists, "2013_05_28_drive_train_frames.txt"), "w") as f:
        f.write(f"{rgb} {sem_p}\n")
    with open(os.path.join(lists, "2013_05_28_drive_val_frames.txt"), "w") as f:
        f.write(f"{rgb_v} {sem_v}\n")
    return out

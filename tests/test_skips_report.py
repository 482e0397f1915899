"""Issue 25 item 9: every file a dataset drops reaches report.md and results.json, each file named once."""

import json
import os

import numpy as np
from PIL import Image

from opendas_encoder.cli import main
from opendas_encoder.generated.datasets import write_generic
from test_cli import write_config


def broken_generic(root):
    """write_generic's fixture (c.png: corrupt RGB with one segment; d.png: no annotation) plus e.png, whose
    instance map is not a PNG, and f.png, a corrupt RGB whose semantic map holds two segments."""
    write_generic(str(root), "train")
    images, semantic, instances = (root / kind / "train" for kind in ("images", "semantic", "instances"))
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(images / "e.png")
    (instances / "e.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (instances / "e.json").write_text(json.dumps({"1": "cat"}))
    (images / "f.png").write_bytes(b"not an image at all")
    sem = np.zeros((16, 16), np.uint8)
    sem[0:8, 0:8] = 1  # cat, 64 px
    sem[8:16, 8:16] = 3  # tree, 64 px
    Image.fromarray(sem).save(semantic / "f.png")
    return {"unreadable label map": [str(instances / "e.png")], "no annotation": [str(images / "d.png")],
            "unreadable image": [str(images / "c.png"), str(images / "f.png")]}


def test_files_the_dataset_drops_reach_the_report_and_results(tmp_path):
    root = tmp_path / "generic"
    dropped = broken_generic(root)
    spec = {"name": "generic", "root": str(root), "split": "train"}
    config = write_config(tmp_path, data={"train": spec, "test": spec},
                          schedule={"batch_size": 16, "stage1_epochs": 1, "stage2_epochs": 1, "warmup_epochs": 0})
    assert main(["train", str(config), "--quiet", "--no-plots"]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    report = (run / "report.md").read_text()
    for split in ("train", "test"):
        skipped = results["skipped"][split]
        assert skipped["counts"]["unreadable label map"] == 1 and skipped["counts"]["no annotation"] == 1
        assert skipped["counts"]["unreadable image"] == 3  # c.png: 1 segment, f.png: 2 segments
        for reason, files in dropped.items():
            assert skipped["examples"][reason] == files, (split, reason)  # each file once, in order
        assert skipped["total"] == sum(skipped["counts"].values())
    line = next(line for line in report.splitlines() if line.startswith("train: skipped segments:"))
    assert line != "train: skipped segments: none"
    for reason, files in dropped.items():
        assert f"  {reason}: {len(files) if reason != 'unreadable image' else 3} (first: {', '.join(files)})" in report

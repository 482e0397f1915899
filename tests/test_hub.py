"""Checkpoints on the Hugging Face Hub, offline (issue 17 part 3), and model cards.

The Hub is simulated by a local cache that the test writes in huggingface_hub's own layout
(``models--ORG--REPO/refs/main`` + ``snapshots/<commit>/``) and read with ``HF_HUB_OFFLINE=1``:
``snapshot_download`` and open_clip's ``hf-hub:`` loader run for real. Only the *upload* call of
``push_to_hub`` is replaced by a local stand-in (no network here), which copies the folder into that cache.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import opendas_encoder as oe

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_snapshot(cache, repo):
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(COMMIT)
    snap = os.path.join(root, "snapshots", COMMIT)
    os.makedirs(snap, exist_ok=True)
    return snap


def write_open_clip_repo(cache, repo, repo_root):
    """An open_clip model repo (open_clip_config.json + open_clip_model.safetensors), as open_clip pushes them."""
    import open_clip
    from conftest import save_weights

    cfg = json.load(open(os.path.join(repo_root, "opendas_encoder", "model_configs", "opendas-tiny-vit.json")))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    snap = cache_snapshot(cache, repo)
    with open(os.path.join(snap, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.481, 0.458, 0.408], "std": [0.269, 0.261, 0.276]}}, f)
    save_weights(model, os.path.join(snap, "open_clip_model.safetensors"))


DRIVER = r"""
import json, os, shutil, sys, torch
import opendas_encoder as oe
from huggingface_hub import HfApi
mode, cache, out = sys.argv[1:4]
images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
if mode == "push":
    calls = []
    def create_repo(self, repo_id, **kw):  # stand-in: no network
        calls.append(("create_repo", repo_id))
    def upload_folder(self, *, repo_id, folder_path, **kw):  # stand-in: copy into the local Hub cache
        calls.append(("upload_folder", repo_id))
        root = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
        os.makedirs(os.path.join(root, "refs"), exist_ok=True)
        open(os.path.join(root, "refs", "main"), "w").write(%r)
        shutil.copytree(folder_path, os.path.join(root, "snapshots", %r))
    HfApi.create_repo, HfApi.upload_folder = create_repo, upload_folder
    model = oe.create_model("hf-hub:test-org/tiny-clip", prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4))
    with torch.no_grad():
        for p in model.prompt_parameters():
            p.normal_()
        feats = {"image": model.encode_image(images).tolist(), "text": model.encode_text(["chair"]).tolist()}
    oe.save_checkpoint(model, os.path.join(out, "ckpt"), push_to_hub="test-org/tiny-opendas", dataset="unit test")
    json.dump({"calls": calls, "features": feats}, open(os.path.join(out, "push.json"), "w"))
else:
    enc = oe.load_encoder("hf-hub:test-org/tiny-opendas")
    with torch.no_grad():
        feats = {"image": enc.encode_image(images).tolist(), "text": enc.encode_text(["chair"]).tolist()}
    json.dump({"features": feats, "model_name": enc.model_name}, open(os.path.join(out, "load.json"), "w"))
""" % (COMMIT, COMMIT)


def run_driver(mode, cache, out):
    env = dict(os.environ, HF_HUB_CACHE=cache, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    result = subprocess.run([sys.executable, "-c", DRIVER, mode, cache, out], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def test_push_then_load_from_the_hub_offline(tmp_path, repo_root):
    cache = str(tmp_path / "hub")
    write_open_clip_repo(cache, "test-org/tiny-clip", repo_root)
    run_driver("push", cache, str(tmp_path))
    pushed = json.loads((tmp_path / "push.json").read_text())
    assert pushed["calls"] == [("create_repo", "test-org/tiny-opendas"), ("upload_folder", "test-org/tiny-opendas")] \
        or pushed["calls"] == [["create_repo", "test-org/tiny-opendas"], ["upload_folder", "test-org/tiny-opendas"]]
    run_driver("load", cache, str(tmp_path))  # a fresh process: base model and prompts both from the cache
    loaded = json.loads((tmp_path / "load.json").read_text())
    assert loaded["model_name"] == "hf-hub:test-org/tiny-clip"
    for key in ("image", "text"):
        assert torch.allclose(torch.tensor(loaded["features"][key]), torch.tensor(pushed["features"][key]), atol=1e-6)


def test_missing_hub_checkpoint_offline_is_a_clear_error(tmp_path):
    code = ("import opendas_encoder as oe\ntry:\n    oe.load_encoder('hf-hub:nobody/nothing')\n"
            "except FileNotFoundError as e:\n    print('OK', e)\n")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.stdout.startswith("OK hf-hub:nobody/nothing: not in the local Hugging Face cache"), \
        result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize("spec", ["hf-hub:org", "hf-hub:/repo", "hf-hub:a/b/c"])
def test_malformed_hub_names_are_refused(spec):
    with pytest.raises(ValueError, match="hf-hub:ORG/REPO"):
        oe.load_encoder(spec)


def test_every_checkpoint_gets_a_model_card(tmp_path):
    from conftest import make_tiny_clip

    model = oe.wrap_clip("vpt", make_tiny_clip(), model_name="tiny", n_tokens=2)
    folder = oe.save_checkpoint(model, str(tmp_path / "c"), dataset="generated-world", generated_data=True, seed=1,
                                base_classes=["a", "b"], command="opendas train cfg.yaml")
    card = open(os.path.join(folder, "README.md")).read()
    assert card.startswith("---\nlibrary_name: opendas_encoder")
    assert "`vpt` with 288 learned values in `prompts.safetensors`" in card  # 2 tokens x 3 layers x width 48
    assert '"n_tokens": 2' in card and "opendas train cfg.yaml" in card
    assert re.search(r"\| base_classes\s*\| 2 entries\s*\|", card)
    assert "generated data" in card
    from opendas_encoder.core.checkpoint import update_checkpoint_metadata

    update_checkpoint_metadata(folder, results={"zero-shot CLIP": {"acc": 40.0}, "vpt": {"acc": 61.5}})
    card = open(os.path.join(folder, "README.md")).read()
    results = card.split("## Results of its run")[1].split("##")[0]
    assert "zero-shot CLIP" in results and "61.5" in results and "40" in results
    shutil.rmtree(folder)


def test_the_card_says_generated_from_the_dataset_spec_not_from_words_in_the_metadata(tmp_path):
    """Issue 25 item 6: a real dataset whose metadata holds the word "generated" (a negative query
    "generated report") is not labelled generated data; the generated world, or generated data written in a
    real layout (the GENERATED marker), is - decided from the run's dataset spec."""
    from conftest import make_tiny_clip
    from opendas_encoder.data.registry import GENERATED_MARKER
    from opendas_encoder.train.config import DataConfig, DatasetSpec, TrainConfig
    from opendas_encoder.train.pipeline import trains_on_generated_data

    model = oe.wrap_clip("vpt", make_tiny_clip(), model_name="tiny", n_tokens=2)
    folder = oe.save_checkpoint(model, str(tmp_path / "real"), dataset="generic", generated_data=False,
                                negative_queries=["generated report", "chair"], run="generated-looking name")
    assert "generated data" not in open(os.path.join(folder, "README.md")).read()

    def config(name, root=None):
        return TrainConfig(data=DataConfig(train=DatasetSpec(name=name, root=root, split="train")))

    (tmp_path / "mine").mkdir()
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / GENERATED_MARKER).write_text("generated")
    assert trains_on_generated_data(config("generated-world"))
    assert not trains_on_generated_data(config("generic", str(tmp_path / "mine")))
    assert trains_on_generated_data(config("generic", str(tmp_path / "made")))


@pytest.mark.parametrize("pretrained", [None, "generated-world"])
def test_the_cards_use_block_loads_the_checkpoint_it_describes(tmp_path, pretrained):
    """The card's Python block, with its placeholders filled, loads the checkpoint and gives the saved encoder's
    text features (truth: the encoder that was saved). A random base (no pretrained tag) needs its weights."""
    from conftest import save_weights

    torch.manual_seed(0)
    model = oe.create_model("opendas-world-vit", pretrained=pretrained,
                            prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4))
    with torch.no_grad():
        model.text_prompts.add_(0.1)
    folder = oe.save_checkpoint(model, str(tmp_path / "ckpt"))
    weights = str(tmp_path / "base.safetensors")
    save_weights(model.clip, weights)
    card = open(os.path.join(folder, "README.md")).read()
    code = card.split("## Use")[1].split("```python")[1].split("```")[0]
    assert ("pretrained=" in code) == (pretrained is None)
    code = code.replace("<this folder or hf-hub:ORG/REPO>", folder).replace("<base weights .safetensors>", weights)
    scope = {}
    exec(code, scope)
    with torch.no_grad():
        want = model.encode_text(["chair", "door frame"], normalize=True)
    assert torch.allclose(scope["features"], want, atol=1e-6)

"""OVSeg's real model (Detectron2, OVSeg checkout) with the OpenDAS backend, on CPU.

Needs Detectron2 and an OVSeg checkout named by OVSEG_ROOT (integrations/ovseg/README.md); OVSeg's
CLIP gets random weights from a file (no download) and its MaskFormer is randomly initialised.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from integrations.ovseg.env import ENABLE_HINT

OVSEG_ROOT = os.environ.get("OVSEG_ROOT", "")


def _skip_or_fail(reason):
    """Skip, or fail where the integrations must run (CI sets OPENDAS_REQUIRE_INTEGRATIONS=1)."""
    if os.environ.get("OPENDAS_REQUIRE_INTEGRATIONS"):
        pytest.fail(f"{reason} (OPENDAS_REQUIRE_INTEGRATIONS is set)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if not os.path.isfile(os.path.join(OVSEG_ROOT, "open_vocab_seg", "ovseg_model.py")):
    _skip_or_fail(f"OVSEG_ROOT is not set to an OVSeg checkout: {ENABLE_HINT}")
if importlib.util.find_spec("detectron2") is None:
    _skip_or_fail(f"Detectron2 is not installed: {ENABLE_HINT}")

from integrations.ovseg.fixture import FixtureSpec, generate_fixture, write_ovseg_random_clip  # noqa: E402

CONFIG = os.path.join(OVSEG_ROOT, "configs", "ovseg_R101c_vitB_bs32_120k.yaml")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import open_clip

    from integrations.ovseg import modeling

    d = tmp_path_factory.mktemp("ovseg")
    fx = generate_fixture(str(d / "data"), FixtureSpec(num_images=1), class_names=None)
    open_clip.add_model_config(fx["model_config"])
    clip_path = str(d / "ovseg_clip_random.pt")
    dim = write_ovseg_random_clip(clip_path)
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.CLIP_ADAPTER.CLIP_MODEL_NAME", clip_path,
            "MODEL.SEM_SEG_HEAD.EMBEDDING_DIM", str(dim), "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
            "MODEL.CLIP_ADAPTER.CLIP_BACKEND", "opendas", "MODEL.CLIP_ADAPTER.OPENDAS_CHECKPOINT", fx["opendas_checkpoint"]]
    cfg = modeling.ovseg_config(CONFIG, opts)
    torch.manual_seed(0)
    model = modeling.build_ovseg_model(cfg).eval()
    return {"model": model, "cfg": cfg, "fixture": fx, "clip_path": clip_path, "dim": dim, "dir": d}


def _inputs(fx, cfg):
    from detectron2.data import transforms as T
    from PIL import Image

    path = os.path.join(fx["root"], "ADEChallengeData2016", "images", "validation", fx["stems"][0] + ".jpg")
    img = np.asarray(Image.open(path).convert("RGB"))
    r = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST).get_transform(img).apply_image(img)
    return img, [{"image": torch.as_tensor(np.ascontiguousarray(r.transpose(2, 0, 1))), "height": img.shape[0],
                  "width": img.shape[1], "meta": {"dataset_name": "ade20k_sem_seg_val"}}]


def test_ovseg_model_runs_one_image_with_opendas(setup):
    from integrations.ovseg.adapter import RegionClassifier
    from integrations.ovseg.modeling import OpenDASMaskFormerClipAdapter, OVSegOpenDAS

    model, cfg = setup["model"], setup["cfg"]
    assert isinstance(model, OVSegOpenDAS)
    assert isinstance(model.clip_adapter, OpenDASMaskFormerClipAdapter)
    assert isinstance(model.clip_adapter.opendas, RegionClassifier)
    assert model.clip_adapter.clip_backend == "opendas"
    assert not any(p.requires_grad for p in model.clip_adapter.opendas.parameters())
    calls = []
    hook = model.clip_adapter.opendas.register_forward_hook(lambda m, i, o: calls.append(int(o[2].sum())))
    img, inputs = _inputs(setup["fixture"], cfg)
    try:
        with torch.no_grad():
            out = model(inputs)[0]["sem_seg"]
    finally:
        hook.remove()
    assert out.shape == (150, img.shape[0], img.shape[1]) and torch.isfinite(out).all()
    assert len(calls) == 1 and calls[0] > 0  # the CLIP branch ran on the OpenDAS encoder
    model.clip_adapter.clip_backend = "openai"
    try:
        with torch.no_grad():
            base = model(inputs)[0]["sem_seg"]
    finally:
        model.clip_adapter.clip_backend = "opendas"
    assert base.shape == out.shape and not torch.allclose(base, out)


def test_openai_backend_equals_ovseg_adapter(setup):
    from open_vocab_seg.modeling.clip_adapter import MaskFormerClipAdapter

    adapter = setup["model"].clip_adapter
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 40, 56), generator=g).float()
    masks = torch.rand(4, 40, 56, generator=g) * 0.55  # some pixels above 0.5, some masks empty
    masks[2] = 0.1
    names = ["wall", "floor", "bed"]
    adapter.clip_backend = "openai"
    try:
        with torch.no_grad():
            ours = adapter(image, names, masks)
            theirs = MaskFormerClipAdapter.forward(adapter, image, names, masks)
    finally:
        adapter.clip_backend = "opendas"
    assert ours[2].tolist() == theirs[2].tolist() and ours[2].tolist()[2] is False
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])


@pytest.mark.parametrize("backend", ["opendas", "openai"])
@pytest.mark.parametrize("n_valid", [0, 1])
def test_semantic_inference_with_zero_or_one_valid_mask(setup, backend, n_valid):
    model = setup["model"]
    names = [c.strip() for c in model.get_class_name_list("ade20k_sem_seg_val")]
    g = torch.Generator().manual_seed(2)
    q, h, w = 5, 24, 32
    mask_cls = torch.randn(q, len(names) + 1, generator=g)
    mask_pred = torch.full((q, h, w), -5.0)  # sigmoid < threshold: no valid mask
    if n_valid:
        mask_pred[3, 4:12, 6:20] = 5.0
    image = torch.randint(0, 256, (3, h, w), generator=g).to(torch.uint8)
    model.clip_adapter.clip_backend = backend
    try:
        with torch.no_grad():
            semseg, _ = model.semantic_inference(mask_cls, mask_pred, image, names)
            clip_cls, _, valid = model.clip_adapter(image, names, mask_pred.sigmoid())
    finally:
        model.clip_adapter.clip_backend = "opendas"
    assert semseg.shape == (len(names), h, w) and torch.isfinite(semseg).all()
    assert int(valid.sum()) == n_valid and (clip_cls is None) == (n_valid == 0)
    w_clip = model.clip_ensemble_weight
    probs = torch.softmax(mask_cls, -1)[:, :-1] ** (1 - w_clip)  # CLIP probability 1 for invalid masks
    if n_valid:
        assert clip_cls.shape == (1, len(names) + 1)
        probs[valid] = probs[valid] * torch.softmax(clip_cls[:, :-1], -1) ** w_clip
    torch.testing.assert_close(semseg, torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid()))


def test_weights_loader_leaves_encoder_untouched(setup, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    model = setup["model"]
    enc = model.clip_adapter.opendas
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    sd = model.state_dict()
    assert not any(k.startswith("clip_adapter.opendas.") for k in sd)  # never saved
    assert any(k.startswith("clip_adapter.clip_model.") for k in sd)  # OVSeg's CLIP keeps its names
    for k, v in before.items():  # a checkpoint that does carry encoder tensors: all zeros
        sd["clip_adapter.opendas." + k] = torch.zeros_like(v)
    key = "clip_adapter.non_object_embedding"
    sd[key] = torch.full_like(sd[key], 0.5)
    path = str(tmp_path / "ckpt.pth")
    torch.save({"model": sd}, path)
    DetectionCheckpointer(model).load(path)  # OVSeg's weights loader (fvcore, strict=False)
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and len(before) > 10
    assert torch.equal(model.clip_adapter.non_object_embedding, torch.full_like(sd[key], 0.5))  # OVSeg's keys load
    incompatible = model.load_state_dict(sd, strict=False)
    assert not any("opendas" in k for k in incompatible.missing_keys + incompatible.unexpected_keys)
    assert all(torch.equal(before[k], enc.state_dict()[k]) for k in before)


@pytest.mark.slow
def test_launcher_eval_only_runs_ovseg_train_net(setup, tmp_path):
    """OVSeg's own train_net.py --eval-only (its evaluator, np.int on NumPy >= 1.24) via our launcher."""
    from detectron2.checkpoint import DetectionCheckpointer

    weights_dir = tmp_path / "w"
    weights_dir.mkdir()
    DetectionCheckpointer(setup["model"], save_dir=str(weights_dir)).save("ovseg_random")
    fx = setup["fixture"]
    cmd = [sys.executable, "-m", "integrations.ovseg.train_net", "--clip-backend", "opendas",
           "--opendas-checkpoint", fx["opendas_checkpoint"], "--opendas-model-config", fx["model_config"],
           "--config-file", CONFIG, "--eval-only",
           "MODEL.WEIGHTS", str(weights_dir / "ovseg_random.pth"), "MODEL.DEVICE", "cpu",
           "MODEL.CLIP_ADAPTER.CLIP_MODEL_NAME", setup["clip_path"], "MODEL.SEM_SEG_HEAD.EMBEDDING_DIM",
           str(setup["dim"]), "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
           "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out")]
    env = dict(os.environ, DETECTRON2_DATASETS=fx["root"], OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "OVSegOpenDAS" in log and "OpenDASMaskFormerClipAdapter" in log
    assert "copypaste: mIoU,fwIoU,mACC,pACC" in log  # OVSeg's evaluator finished
    assert (tmp_path / "out" / "inference" / "sem_seg_evaluation.pth").is_file()


def test_run_2d_with_ovseg_model(setup):
    """eval/run_2d.py's Detectron2 path: OVSeg's model, its CLIP branch on both backends."""
    from eval import run_2d

    fx = setup["fixture"]
    samples = run_2d.ade_validation(fx["root"])
    opts = ["MODEL.CLIP_ADAPTER.CLIP_MODEL_NAME", setup["clip_path"], "MODEL.SEM_SEG_HEAD.EMBEDDING_DIM",
            str(setup["dim"]), "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256", "MODEL.WEIGHTS", ""]
    names = run_2d.ade20k_class_names()
    conf = run_2d.evaluate_with_ovseg(samples, names, CONFIG, fx["opendas_checkpoint"], opts=opts)
    gt = run_2d.read_ade_gt(samples[0].annotation)
    assert set(conf) == {run_2d.BASELINE, run_2d.ADAPTED}
    for c in conf.values():
        assert c.confusion.sum() == int((gt != 255).sum())
    table = run_2d.format_table(run_2d.summarize(conf, names))
    assert run_2d.ADAPTED in table and run_2d.BASELINE in table


def _l_shaped_masks(h=40, w=56):
    """Three masks whose boxes leave whole CLIP patches empty (an L, a ring corner, a diagonal pair)."""
    m = torch.zeros(3, h, w)
    m[0, :, :12] = 0.9
    m[0, 30:, :] = 0.9                     # L: the box is the whole image, its upper right is empty
    m[1, 5:10, 5:50] = 0.8
    m[1, 5:35, 45:50] = 0.8                # a corner of a ring
    m[2, 0:8, 0:8] = 0.7
    m[2, 32:40, 48:56] = 0.7               # two far apart blobs
    return m


def test_openai_backend_equals_ovseg_adapter_with_mask_prompts(setup):
    """OVSeg's mask-prompt path (MASK_PROMPT_FWD True, depth 3, learned mask embeddings): on masks that
    leave whole patches of the 224 px region empty, the openai backend gives OVSeg's own adapter's
    logits exactly."""
    from open_vocab_seg.modeling.clip_adapter import MaskFormerClipAdapter

    adapter = setup["model"].clip_adapter
    assert adapter.mask_prompt_fwd and adapter.clip_model.visual.mask_prompt_depth == 3
    emb = adapter.clip_model.visual.mask_embedding
    saved = emb.detach().clone()
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 40, 56), generator=g).float()
    masks = _l_shaped_masks()
    names = ["wall", "floor", "bed", "lamp"]
    adapter.clip_backend = "openai"
    try:
        with torch.no_grad():
            emb.copy_(torch.randn(emb.shape, generator=g))  # trained mask prompts are not zero
            (regions, _), region_masks, _ = MaskFormerClipAdapter._preprocess_image(adapter, image, masks)
            ours = adapter(image, names, masks)
            theirs = MaskFormerClipAdapter.forward(adapter, image, names, masks)
            plain = adapter.get_sim_logits(adapter.get_text_features(names),
                                           adapter.get_image_features(regions))
    finally:
        adapter.clip_backend = "opendas"
        with torch.no_grad():
            emb.copy_(saved)
    patch = adapter.clip_model.visual.conv1.kernel_size[0]
    cover = torch.nn.functional.avg_pool2d(region_masks.float(), patch)  # per-patch mask coverage
    assert ((cover == 0).flatten(1).sum(1) >= 4).all()  # every region has whole patches without mask
    assert ours[2].tolist() == theirs[2].tolist() == [True, True, True]
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert not torch.allclose(ours[0], plain)  # the mask prompts did change the scores


def test_zero_prompt_opendas_equals_ovseg_clip_scores(setup, tmp_path):
    """An OpenDAS encoder with zero prompts built in one call from OVSeg's CLIP weights (file or module)
    gives OVSeg's CLIP class scores (MASK_PROMPT_FWD False) for OVSeg's template "{}." : OpenDAS encodes
    "<context> <name>." and the context is empty here."""
    from open_vocab_seg.modeling.clip_adapter import MaskFormerClipAdapter
    from open_vocab_seg.modeling.clip_adapter.text_template import PredefinedPromptExtractor

    from integrations.ovseg.adapter import RegionClassifier, RegionConfig
    from integrations.ovseg.clip_weights import ovseg_clip_encoder, register_ovseg_clip

    theirs_adapter = MaskFormerClipAdapter(setup["clip_path"], PredefinedPromptExtractor(["{}."]),
                                           mask_prompt_depth=3, mask_prompt_fwd=False).eval()
    g = torch.Generator().manual_seed(4)
    image = torch.randint(0, 256, (3, 40, 56), generator=g).float()
    masks = torch.cat([_l_shaped_masks(), (torch.rand(2, 40, 56, generator=g) > 0.5).float()])
    names = ["wall", "floor", "bed", "lamp", "chest of drawers"]
    encoder = ovseg_clip_encoder(setup["clip_path"], str(tmp_path / "from_file"))
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == 0
    ours_clf = RegionClassifier(encoder, RegionConfig())
    with torch.no_grad():
        theirs = theirs_adapter(image, names, masks)
        ours = ours_clf(image, names, masks)
    assert ours[2].tolist() == theirs[2].tolist()
    diff = (ours[0][:, :-1] - theirs[0][:, :-1]).abs().max().item()  # the void column is each side's own
    assert diff <= 1e-4, diff  # logits are 100 x cosine: <= 1e-6 in cosine (measured 1.5e-5)
    assert (ours[0][:, :-1].argmax(1) == theirs[0][:, :-1].argmax(1)).all()
    # the same encoder from OVSeg's CLIP module and from a Detectron2 checkpoint's clip_adapter.clip_model.*
    ckpt = tmp_path / "ovseg_model.pth"
    torch.save({"model": {"clip_adapter.clip_model." + k: v for k, v in theirs_adapter.clip_model.state_dict().items()}},
               str(ckpt))
    a = register_ovseg_clip(theirs_adapter.clip_model, str(tmp_path / "from_module"))
    b = register_ovseg_clip(str(ckpt), str(tmp_path / "from_ckpt"))
    c = register_ovseg_clip(setup["clip_path"], str(tmp_path / "from_file2"))
    assert a["model_name"] == b["model_name"] == c["model_name"]  # named by the weights' content
    from safetensors.torch import load_file

    wa, wb, wc = load_file(a["weights"]), load_file(b["weights"]), load_file(c["weights"])
    # the file is read as OVSeg's clip.load reads it (float16 rounding): the weights OVSeg runs with
    assert wa.keys() == wb.keys() == wc.keys() and all(torch.equal(wa[k], wb[k]) and torch.equal(wa[k], wc[k]) for k in wa)
    assert "visual.mask_embedding" not in wa

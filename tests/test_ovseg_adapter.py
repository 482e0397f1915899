"""OVSeg adapter logic (pure torch, no Detectron2) against a tiny OpenDAS encoder."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from integrations.ovseg.adapter import (
    CLIP_PIXEL_MEAN,
    CLIP_PIXEL_STD,
    OVSEG_TEMPERATURE,
    RegionClassifier,
    RegionConfig,
    TemplateTextEncoder,
    ensemble_class_probs,
    mask_boxes,
    masks_to_regions,
    scaled_box,
    semantic_scores,
)
from opendas_encoder.generated.ovseg import TINY_MODEL_CONFIG, TINY_MODEL_NAME
from integrations.ovseg.semantic import gt_proposals, load_proposals, segment_image
from opendas_encoder.data.segments import CLIP_MEAN_PIXEL

NAMES = ["wall", "floor", "ceiling", "bed"]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    import open_clip

    import opendas_encoder as oe

    path = tmp_path_factory.mktemp("cfg") / f"{TINY_MODEL_NAME}.json"
    path.write_text(json.dumps(TINY_MODEL_CONFIG))
    open_clip.add_model_config(str(path))
    torch.manual_seed(0)
    enc = oe.create_model(TINY_MODEL_NAME, prompts=oe.PromptConfig(visual_tokens=2, text_tokens=2, text_init=""))
    return enc.eval()


def _image(h=20, w=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def test_scaled_box_is_ovseg_centre_scaling():
    assert scaled_box((10, 10, 20, 20), 1.0, 100, 100) == (10, 10, 20, 20)
    assert scaled_box((10, 10, 20, 20), 2.0, 100, 100) == (5, 5, 25, 25)
    assert scaled_box((0, 4, 10, 8), 2.0, 9, 8) == (0, 2, 8, 9)  # clipped to the image
    assert scaled_box((1, 1, 4, 4), 1.5, 50, 50) == (0, 0, 4, 4)  # int() truncation: 0.25 -> 0, 4.75 -> 4


def test_mask_boxes_exclusive_end():
    m = torch.zeros(1, 6, 8, dtype=torch.bool)
    m[0, 2:4, 3:7] = True
    assert mask_boxes(m).tolist() == [[3.0, 2.0, 7.0, 4.0]]


def test_regions_fill_crop_and_normalisation_exact():
    image = _image(12, 12)
    masks = torch.zeros(2, 12, 12)
    masks[0, 2:8, 3:9] = 1.0  # 6 x 6 box
    masks[0, 2, 3] = 0.0  # one pixel of the box outside the mask -> mean fill
    masks[1, 0, 0] = 0.3  # below the threshold: invalid
    r = masks_to_regions(image, masks, RegionConfig(mask_thr=0.5), size=(6, 6))
    assert r.valid.tolist() == [True, False]
    assert r.regions.shape == (1, 3, 6, 6) and r.region_masks.shape == (1, 1, 6, 6)
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(3, 1) * 255
    std = torch.tensor(CLIP_PIXEL_STD).view(3, 1) * 255
    # same size -> bicubic is the identity; the crop is the image box, normalised
    expected = (image[:, 2:8, 3:9].reshape(3, -1) - mean) / std
    expected[:, 0] = (torch.tensor(CLIP_MEAN_PIXEL) - mean[:, 0]) / std[:, 0]  # filled pixel
    torch.testing.assert_close(r.regions[0].reshape(3, -1), expected, atol=1e-4, rtol=1e-5)
    assert torch.allclose(r.unnorm_regions[0, :, 0, 0], torch.tensor(CLIP_MEAN_PIXEL), atol=1e-4)
    assert r.region_masks[0, 0, 0, 0] == 0 and r.region_masks[0, 0].sum() == 35


def test_regions_resize_expand_and_pad_square():
    image = _image(20, 30)
    masks = torch.zeros(1, 20, 30, dtype=torch.bool)
    masks[0, 5:9, 10:20] = True  # 4 x 10 box
    plain = masks_to_regions(image, masks, RegionConfig(), size=(16, 16))
    assert plain.regions.shape == (1, 3, 16, 16)
    wide = masks_to_regions(image, masks, RegionConfig(expand_ratio=2.0), size=(16, 16))
    assert not torch.allclose(plain.regions, wide.regions)
    sq = masks_to_regions(image, masks, RegionConfig(pad_square=True), size=(10, 10))
    # padded 10 x 10 canvas: rows 0-2 and 7-9 are fill (normalised fill = CLIP mean -> ~0)
    assert sq.regions[0, :, :3].abs().max() < 1e-3 and sq.regions[0, :, 7:].abs().max() < 1e-3
    assert sq.regions[0, :, 3:7].abs().max() > 0.1


def test_zero_fill_and_bad_inputs():
    with pytest.raises(ValueError, match="mask_fill"):
        RegionConfig(mask_fill="blur")
    with pytest.raises(ValueError, match="masks must be"):
        masks_to_regions(_image(), torch.zeros(2, 5, 5), RegionConfig())
    r = masks_to_regions(_image(), torch.zeros(0, 20, 30), RegionConfig())
    assert r.regions is None and r.valid.shape == (0,)


def test_text_features_void_row_and_temperature(tiny_encoder):
    clf = RegionClassifier(tiny_encoder)
    text = clf.get_text_features(NAMES)
    assert text.shape == (len(NAMES) + 1, tiny_encoder.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(len(NAMES) + 1))
    torch.testing.assert_close(text[-1:], clf.void_embedding)
    # bare class names go to the encoder, which adds its learned context
    torch.testing.assert_close(text[:-1], F.normalize(tiny_encoder.encode_text(NAMES), dim=-1), atol=1e-5, rtol=1e-5)
    img = F.normalize(torch.randn(3, tiny_encoder.embed_dim), dim=-1)
    torch.testing.assert_close(clf.get_sim_logits(text, img), OVSEG_TEMPERATURE * img @ text.T)
    assert OVSEG_TEMPERATURE == 100.0
    clf10 = RegionClassifier(tiny_encoder, RegionConfig(temperature=10.0))
    torch.testing.assert_close(clf10.get_sim_logits(text, img), 10.0 * img @ text.T)


def test_forward_matches_encoder_math(tiny_encoder):
    clf = RegionClassifier(tiny_encoder)
    image = _image(24, 24)
    masks = torch.zeros(3, 24, 24)
    masks[0, :12] = 0.9
    masks[2, 12:, 4:20] = 0.8
    logits, regions, valid = clf(image, NAMES, masks)
    assert valid.tolist() == [True, False, True]
    assert logits.shape == (2, len(NAMES) + 1) and regions.shape == (2, 3, 32, 32)
    r = masks_to_regions(image, masks, RegionConfig(), size=tiny_encoder.image_size)
    with torch.no_grad():
        img = F.normalize(tiny_encoder.encode_image(r.regions), dim=-1)
        txt = torch.cat([F.normalize(tiny_encoder.encode_text(NAMES), dim=-1), clf.void_embedding])
    torch.testing.assert_close(logits, 100.0 * img @ txt.T, atol=1e-4, rtol=1e-4)
    assert logits.abs().max() <= 100.0 + 1e-3


def test_zero_and_one_valid_mask(tiny_encoder):
    clf = RegionClassifier(tiny_encoder)
    image = _image()
    logits, regions, valid = clf(image, NAMES, torch.zeros(2, 20, 30))
    assert logits is None and regions is None and valid.tolist() == [False, False]
    one = torch.zeros(2, 20, 30)
    one[1, 3:9, 4:12] = 1.0
    logits, regions, valid = clf(image, NAMES, one)
    assert valid.tolist() == [False, True] and logits.shape == (1, len(NAMES) + 1)
    # painting: zero valid masks -> all class 0, one mask -> its argmax class on its pixels only
    img = image.permute(1, 2, 0).numpy().astype(np.uint8)
    assert (segment_image(clf, img, np.zeros((2, 20, 30), bool), NAMES) == 0).all()
    pred = segment_image(clf, img, one.numpy() > 0, NAMES)
    cls = int(clf(torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1), NAMES, one)[0][0, :-1].argmax())
    assert (pred[3:9, 4:12] == cls).all() and (pred[:3] == 0).all()


def test_ensemble_math_hand_case():
    # MaskFormer probabilities (with no-object column) given as log-probabilities
    p_mf = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    clip = torch.log(torch.tensor([[0.2, 0.8, 0.5], [0.5, 0.5, 0.1]]))  # void column is dropped
    valid = torch.tensor([True, False, True])
    out = ensemble_class_probs(torch.log(p_mf), clip, valid, weight=0.5)
    expected = torch.tensor([
        [math.sqrt(0.5 * 0.2), math.sqrt(0.25 * 0.8)],
        [math.sqrt(0.2), math.sqrt(0.6)],  # invalid mask: CLIP probability 1
        [math.sqrt(0.1 * 0.5), math.sqrt(0.1 * 0.5)],
    ])
    torch.testing.assert_close(out, expected)
    # weight 0.7 as in OVSeg's configs
    out7 = ensemble_class_probs(torch.log(p_mf), clip, valid, weight=0.7)
    torch.testing.assert_close(out7[0], torch.tensor([0.5 ** 0.3 * 0.2 ** 0.7, 0.25 ** 0.3 * 0.8 ** 0.7]))
    # no valid mask at all: CLIP table is empty, every row keeps p_mf ** (1 - w)
    none = ensemble_class_probs(torch.log(p_mf), None, torch.zeros(3, dtype=torch.bool), weight=0.7)
    torch.testing.assert_close(none, p_mf[:, :2] ** 0.3)
    with pytest.raises(ValueError, match="clip_logits"):
        ensemble_class_probs(torch.log(p_mf), clip[:1], valid, weight=0.5)


def test_semantic_scores_paint():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    masks = torch.zeros(2, 2, 3)
    masks[0, :, :2] = 1.0
    masks[1, :, 1:] = 0.5
    s = semantic_scores(probs, masks)
    assert s.shape == (2, 2, 3)
    torch.testing.assert_close(s[:, 0, 1], torch.tensor([0.9 + 0.1, 0.1 + 0.4]))
    assert s.argmax(0).tolist() == [[0, 0, 1], [0, 0, 1]]


def test_template_encoder_averages_normalised_templates(tiny_encoder):
    import open_clip

    base = tiny_encoder.clip
    tok = open_clip.get_tokenizer(TINY_MODEL_NAME)
    enc = TemplateTextEncoder(base, tok, templates=["a photo of a {}.", "a {} in a room."])
    with torch.no_grad():
        got = enc.encode_text(["bed"])
        a = F.normalize(base.encode_text(tok(["a photo of a bed."])), dim=-1)
        b = F.normalize(base.encode_text(tok(["a bed in a room."])), dim=-1)
    torch.testing.assert_close(got, (a + b) / 2)
    with pytest.raises(ValueError, match="placeholder"):
        TemplateTextEncoder(base, tok, templates=["no slot"])


def test_proposal_files(tmp_path):
    gt = np.array([[0, 0, 1], [255, 1, 1]])
    masks = gt_proposals(gt)
    assert masks.shape == (2, 2, 3) and masks[1].sum() == 3
    good = tmp_path / "a.npz"
    np.savez(good, masks=masks)
    m, logits = load_proposals(str(good), (2, 3))
    assert m.shape == (2, 2, 3) and logits is None
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_proposals(str(tmp_path / "missing.npz"), (2, 3))
    with pytest.raises(ValueError, match="a.npz"):
        load_proposals(str(good), (4, 4))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_proposals(str(bad), (2, 3))
    nomask = tmp_path / "nomask.npz"
    np.savez(nomask, other=masks)
    with pytest.raises(ValueError, match="no 'masks'"):
        load_proposals(str(nomask), (2, 3))


def test_segment_image_with_maskformer_logits(tiny_encoder):
    clf = RegionClassifier(tiny_encoder)
    img = _image(16, 16).permute(1, 2, 0).numpy().astype(np.uint8)
    masks = np.zeros((2, 16, 16), bool)
    masks[0, :, :8] = True
    masks[1, :, 8:] = True
    logits = np.full((2, len(NAMES) + 1), -10.0, np.float32)
    logits[0, 2] = logits[1, 3] = 10.0  # MaskFormer is sure: ceiling | bed
    pred = segment_image(clf, img, masks, NAMES, logits, ensemble_weight=0.0)
    assert (pred[:, :8] == 2).all() and (pred[:, 8:] == 3).all()
    # weight 0.7: the painted map is the argmax of OVSeg's ensemble computed by hand
    clip_logits, _, valid = clf(torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1), NAMES,
                                torch.from_numpy(masks).float())
    p = torch.softmax(torch.from_numpy(logits), -1)[:, :-1] ** 0.3 * torch.softmax(clip_logits[:, :-1], -1) ** 0.7
    expected = torch.einsum("qc,qhw->chw", p, torch.from_numpy(masks).float()).argmax(0).numpy()
    np.testing.assert_array_equal(segment_image(clf, img, masks, NAMES, logits, ensemble_weight=0.7), expected)
    with pytest.raises(ValueError, match="mask_logits"):
        segment_image(clf, img, masks, NAMES, logits[:, :3])


@pytest.mark.parametrize("method,options", [("cliplora", {}), ("opendas", dict(visual_tokens=2, text_tokens=2,
                                                                               text_init="", lowrank_rank=2))])
def test_low_rank_encoders_go_through_the_adapter_unchanged(tiny_encoder, method, options):
    """Issue 24: encoders with low-rank weight updates (CLIP-LoRA, OpenDAS's low-rank option) classify OVSeg's
    regions through the same adapter: its logits are the encoder's own features, and the updates act."""
    import opendas_encoder as oe

    torch.manual_seed(1)
    enc = oe.create_encoder(method, TINY_MODEL_NAME, **options).eval()
    with torch.no_grad():
        for name, p in enc.named_learned_parameters().items():
            if "_B" in name:
                p.normal_(std=0.2)
    clf = RegionClassifier(enc)
    image = _image(24, 24, seed=3)
    masks = torch.zeros(2, 24, 24)
    masks[0, :12] = 0.9
    masks[1, 12:, 4:20] = 0.8
    logits, _, _ = clf(image, NAMES, masks)
    r = masks_to_regions(image, masks, RegionConfig(), size=enc.image_size)
    with torch.no_grad():
        img = F.normalize(enc.encode_image(r.regions), dim=-1)
        txt = torch.cat([F.normalize(enc.encode_text(NAMES), dim=-1), clf.void_embedding])
        plain = F.normalize(enc.clip.encode_image(r.regions), dim=-1)
    torch.testing.assert_close(logits, 100.0 * img @ txt.T, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(img, plain, atol=1e-3)

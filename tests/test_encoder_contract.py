"""The encoder contract every method serves (issue 13 items 1, 3, 5, 15): token input, the ln_pre
convention of layer-0 visual prompts, the one zero-shot template, and refusals by name."""

import open_clip
import pytest
import torch

import opendas_encoder as oe
from conftest import make_tiny_clip
from opendas_encoder.train.evaluate import zero_shot_encoder

NAMES = ["chair", "office swivel chair", "lamp"]
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
SMALL = {"opendas": dict(visual_tokens=2, text_tokens=4), "vpt": dict(n_tokens=2), "rpo": dict(k=2),
         "maple": dict(), "cocoop": dict(), "wiseft-text": dict(), "wiseft-visual": dict(), "wiseft-both": dict(), "zeroshot": dict(),
         "cliplora": dict(), "promptsrc": dict(visual_tokens=2)}


def randomise(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.learned_parameters():
            if p.numel() < 100_000:  # prompts and small nets; leave WiSE-FT's towers as they are
                p.copy_(torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------- item 1: token input means one thing
@pytest.mark.parametrize("method", sorted(SMALL))
def test_tokenizer_ids_and_names_give_the_same_text_features(method):
    """encode_text(tokenizer(names)) == encode_text(names) for every method, with trained-looking tensors."""
    model = randomise(oe.wrap_clip(method, make_tiny_clip(1), **SMALL[method]))
    assert not hasattr(model, "tokenize"), "no public tokenize with context slots: its ids were not encode_text input"
    with torch.no_grad():
        from_names = model.encode_text(NAMES)
        from_ids = model.encode_text(model.tokenizer(NAMES))
    assert (from_names - from_ids).abs().max() <= 1e-6


# ---------------------------------------------------------------- item 3: layer-0 prompts through ln_pre
def _scale_layer0(model, factor):
    with torch.no_grad():
        if model.method == "maple":  # coupled prompts: scale the coupling of layer 0
            model.coupling_weight[0] *= factor
            model.coupling_bias[0] *= factor
        else:
            (model.visual_prompts if model.method in ("opendas", "promptsrc") else model.prompts)[0] *= factor


@pytest.mark.parametrize("method,kwargs", [("opendas", dict(visual_tokens=3, visual_depth=1, text_tokens=0)),
                                           ("vpt", dict(n_tokens=3, depth=1)), ("maple", dict(depth=1)),
                                           ("promptsrc", dict(visual_tokens=3, visual_depth=1, text_tokens=0))])
def test_layer0_visual_prompts_pass_ln_pre_for_every_method(method, kwargs):
    """LayerNorm is scale invariant: through ln_pre, prompts P and 3P give the same image features;
    entered after ln_pre (OpenDAS before format 2) they do not."""
    clip = make_tiny_clip(2)
    model = randomise(oe.wrap_clip(method, clip, **kwargs))
    with torch.no_grad():
        before = model.encode_image(IMAGES)
        _scale_layer0(model, 3.0)
        after = model.encode_image(IMAGES)
        vanilla = clip.encode_image(IMAGES)
    assert torch.allclose(before, after, atol=1e-5)
    assert not torch.allclose(before, vanilla, atol=1e-3)  # the prompts do act


def test_the_ln_pre_test_tells_the_two_conventions_apart():
    model = randomise(oe.wrap_clip("opendas", make_tiny_clip(2), visual_tokens=3, visual_depth=1, text_tokens=0,
                                   legacy_conventions=True))
    with torch.no_grad():
        before = model.encode_image(IMAGES)
        _scale_layer0(model, 3.0)
        assert not torch.allclose(before, model.encode_image(IMAGES), atol=1e-3)


# ---------------------------------------------------------------- item 5: one zero-shot template
def test_zero_shot_template_is_one_string_for_every_method():
    assert oe.ZERO_SHOT_TEMPLATE == "a photo of a {}."
    clip = make_tiny_clip(3)
    reference = clip.encode_text(open_clip.tokenize([oe.ZERO_SHOT_TEMPLATE.format(n) for n in NAMES]))
    untrained = {
        "zeroshot": oe.wrap_clip("zeroshot", clip),
        "zero-shot evaluator": zero_shot_encoder(oe.wrap_clip("vpt", clip)),
        "vpt": oe.wrap_clip("vpt", clip, n_tokens=0),
        "wiseft-visual": oe.wrap_clip("wiseft-visual", clip),
        "cocoop": oe.wrap_clip("cocoop", clip),
        "opendas carry": oe.wrap_clip("opendas", clip, visual_tokens=0, text_tokens=4, text_deep_init="carry"),
        "cliplora": oe.wrap_clip("cliplora", clip),  # B starts at zero: CLIP exactly
    }
    with torch.no_grad():
        for name, model in untrained.items():
            assert torch.allclose(model.encode_text(NAMES), reference, atol=1e-5), name


# ---------------------------------------------------------------- item 15: what is refused, by name
class WordPieceStyleTokenizer:
    """Ids laid out like BERT/SigLIP tokenizers ([CLS] text [SEP] pad): end-of-text is not the largest id."""

    def __call__(self, texts):
        out = torch.zeros(len(texts), 77, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [101] + [2000 + len(w) for w in t.split()] + [102]
            out[i, :len(ids)] = torch.tensor(ids)
        return out


def test_tokenizers_without_clip_layout_are_refused_by_name():
    with pytest.raises(oe.UnsupportedModelError, match="WordPieceStyleTokenizer"):
        oe.wrap_clip("opendas", make_tiny_clip(), tokenizer=WordPieceStyleTokenizer())


def test_text_towers_pooling_elsewhere_are_refused_by_name():
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(embed_dim=24, vision_cfg=dict(image_size=32, layers=1, width=48, head_width=16,
                                                                   patch_size=8),
                                     text_cfg=dict(width=40, heads=4, layers=1, pool_type="first"))
    with pytest.raises(oe.UnsupportedModelError, match="pool type 'first'"):
        oe.wrap_clip("opendas", model)


# ---------------------------------------------------------------- issue 18: prompts written in place
@pytest.mark.parametrize("method,deep", [("opendas", True), ("vpt", True), ("maple", True), ("cocoop", False),
                                         ("rpo", False), ("promptsrc", True)])
def test_prompts_written_in_place_give_the_features_of_the_rebuilt_sequence(method, deep, monkeypatch):
    """Without autograd the engine writes each layer's prompts into the block output instead of building a
    new sequence (torch.cat) per layer; the features are bit-identical to the rebuilt sequence's, which
    autograd needs (prompts requiring grad), and for deep prompts the rebuilding is gone (CoCoOp's and
    RPO's tokens enter at layer 0 only: nothing to save)."""
    model = randomise(oe.wrap_clip(method, make_tiny_clip(1), **SMALL[method]))
    real_cat, calls = torch.cat, []

    def counting_cat(*args, **kwargs):
        calls.append(1)
        return real_cat(*args, **kwargs)

    monkeypatch.setattr(torch, "cat", counting_cat)
    model.set_trainable(visual=True, text=True)
    with torch.no_grad():
        start = len(calls)
        in_place = (model.encode_image(IMAGES), model.encode_text(NAMES))
        cats_in_place = len(calls) - start
    start = len(calls)
    rebuilt = [f.detach() for f in (model.encode_image(IMAGES), model.encode_text(NAMES))]
    cats_rebuilt = len(calls) - start
    assert torch.equal(in_place[0], rebuilt[0]) and torch.equal(in_place[1], rebuilt[1])
    assert cats_in_place < cats_rebuilt if deep else cats_in_place <= cats_rebuilt

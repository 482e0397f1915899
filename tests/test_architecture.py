"""The package's layering and its method registry (issue 15)."""

import subprocess
import sys
from dataclasses import dataclass

import open_clip
import pytest
import torch

import opendas_encoder as oe
from conftest import make_tiny_clip
from opendas_encoder.core import engine
from opendas_encoder.core.encoder import AdaptedCLIP, MethodConfig
from opendas_encoder.core.registry import METHODS, register_method


def test_import_layers_hold(repo_root):
    """import-linter checks the contracts in pyproject.toml: core <- methods <- train <- cli, and more."""
    pytest.importorskip("importlinter", reason="pip install import-linter (the test extra)")
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                             "lint_imports_command()"], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") >= 3


@pytest.mark.parametrize("layer", ["opendas_encoder.core.checkpoint", "opendas_encoder.core.engine",
                                   "opendas_encoder.methods.vpt", "opendas_encoder.train.trainer"])
def test_each_layer_imports_alone(layer):
    """A fresh interpreter imports the layer without importing anything above it."""
    above = {"opendas_encoder.core": ("opendas_encoder.train", "opendas_encoder.cli"),
             "opendas_encoder.methods": ("opendas_encoder.train", "opendas_encoder.cli"),
             "opendas_encoder.train": ("opendas_encoder.cli", "opendas_encoder.demo")}
    forbidden = next(v for k, v in above.items() if layer.startswith(k))
    code = (f"import sys, importlib; importlib.import_module({layer!r}); "
            f"bad = [m for m in sys.modules if m.startswith({forbidden!r})]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_built_in_method_is_registered_through_its_entry_point():
    names = oe.method_names()
    assert names[0] == "opendas"
    assert set(names) >= {"opendas", "vpt", "maple", "rpo", "cocoop", "wiseft-text", "wiseft-visual", "zeroshot"}
    for name in names:
        assert METHODS.get(name).method == name


# ---------------------------------------------------------------- a new method is one module, no core edit
@dataclass(frozen=True)
class ShallowVPTConfig(MethodConfig):
    n_tokens: int = 2


@register_method
class ShallowVPT(AdaptedCLIP):
    """Layer-0 visual prompts only (VPT-shallow): the whole method, to show what a new method needs."""

    method = "test-shallow-vpt"
    config_class = ShallowVPTConfig
    learned_towers = {"prompts": "visual"}

    def __init__(self, clip_model, config=ShallowVPTConfig(), **kwargs):
        super().__init__(clip_model, config, **kwargs)
        self.prompts = torch.nn.Parameter(torch.randn(config.n_tokens, self.vision_width) * 0.02)
        from opendas_encoder.core.tokens import ZERO_SHOT_TEMPLATE, TemplateTokenizer, split_template

        self.template = TemplateTokenizer(self.tokenizer, *split_template(ZERO_SHOT_TEMPLATE, "ShallowVPT"))

    def encode_image(self, images, normalize=False):
        features = engine.encode_image(self.clip.visual, images, lambda i: self.prompts if i == 0 else None)
        return self._maybe_normalize(features, normalize)

    def encode_text(self, text, normalize=False):
        return self._maybe_normalize(engine.encode_text(self.text_view, self.template(text)), normalize)


def test_a_method_defined_outside_the_package_builds_saves_and_loads(tmp_path):
    clip = make_tiny_clip(3)
    model = oe.wrap_clip("test-shallow-vpt", clip, model_name="tiny", n_tokens=3)
    with torch.no_grad():
        model.prompts.normal_()
    oe.save_checkpoint(model, str(tmp_path / "c"))
    loaded = oe.load_encoder(str(tmp_path / "c"), model=clip)
    images = torch.randn(2, 3, 32, 32)
    assert type(loaded) is ShallowVPT and loaded.config == ShallowVPTConfig(3)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        ref = clip.encode_text(open_clip.tokenize(["a photo of a chair."]))
        assert torch.allclose(loaded.encode_text(["chair"]), ref, atol=1e-6)


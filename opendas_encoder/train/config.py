"""Training configuration: pydantic models read from YAML or JSON and validated before any work.

Example (YAML)::

    name: offices
    seed: 0
    model: {name: ViT-L-14, pretrained: openai}      # omitted: ViT-L-14 / openai (the paper's)
    prompts: {visual_tokens: 8, text_tokens: 4}      # omitted keys: the paper's (PromptConfig)
    data:                                            # required: data.train (name, root, split)
      train: {name: generic, root: /data/offices, split: train}
      test: {name: generic, root: /data/offices, split: test}
      negatives: negatives.json                      # relative to this file
      shots: 8                                       # few-shot: 8 segments per base class (default: all)
    schedule: {lr: 0.0025, batch_size: 16, stage1_epochs: 5, stage2_epochs: 5}
    output_dir: runs/offices
    preset: paper                                    # omitted: "default" (see below)

Every section is a pydantic model with ``extra="forbid"``: unknown keys, wrong types and values out
of range are refused by :func:`load_config` with one message that names the file and every bad key,
before any dataset is read. Numbers are coerced the way pydantic does it (PyYAML reads ``1e-5`` as
the string ``"1e-5"``; it becomes the float 1e-05); integers and booleans must be written as such.
Omitted keys take the paper's defaults, except ``data.train``, which has none: a config file must say
which data it trains on (the generated world too: ``{name: generated-world, split: train, ...}``),
and OpenDAS's training options (``prompts``, ``triplet``, ``consistency``, ``averaging``), which come
from the ``preset``: ``paper`` is the paper's method exactly (every option off); ``default`` (when
omitted) is the library default chosen by measurement on the generated domain suite
(docs/selection.md, :data:`PRESETS`, :data:`PRESET_PROMPTS`). A key written in the config wins over its preset.

The training setting defaults per method (``opendas``: ``two-stage``; every baseline: ``one-stage-ce``,
its single training stage) and a method/setting pair that cannot train is refused here. A setting that
leaves a tower untrained keeps that tower exactly CLIP's (see :meth:`TrainConfig.prompt_config`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from ..errors import InputError
from ..methods.opendas import PromptConfig

#: Training settings (paper Tab. 5 and the baselines' single stage). Each names what it does:
#: ``two-stage``: visual prompts (CE), then text prompts (CE + triplet), OpenDAS;
#: ``joint-triplet``: visual and text prompts together with CE + triplet (Tab. 5 "Joint + T");
#: ``visual-only`` / ``text-only``: one of the two OpenDAS stages alone;
#: ``one-stage-ce``: every trainable parameter of the method at once, cross-entropy only (the baselines).
SETTINGS = ("two-stage", "joint-triplet", "visual-only", "text-only", "one-stage-ce")
#: Old setting names, still read (with a FutureWarning).
SETTING_ALIASES = {"joint": "joint-triplet", "single": "one-stage-ce"}
#: Settings each method can train with; a method not listed trains in one stage only.
METHOD_SETTINGS = {"opendas": SETTINGS, "zeroshot": ()}
#: The setting a method gets when the config does not name one.
DEFAULT_SETTING = {"opendas": "two-stage"}
BASELINE_SETTING = "one-stage-ce"
AMP_MODES = ("auto", "off", "bf16", "fp16")
#: runtime.compile values: off, torch.compile's default mode, and its named modes
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Numbers: pydantic's float coercion (a numeric string such as YAML's "1e-5" becomes a float), finite.
Float = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


def normalize_setting(setting: str, warn: bool = True) -> str:
    """The current name of ``setting`` (old names ``joint`` / ``single`` are read with a FutureWarning)."""
    if setting in SETTING_ALIASES:
        new = SETTING_ALIASES[setting]
        if warn:
            warnings.warn(f"setting {setting!r} is renamed {new!r}; the old name will stop working",
                          FutureWarning, stacklevel=3)
        return new
    return setting


def method_settings(method: str) -> tuple:
    """The settings ``method`` can train with (the first is its default; none: it trains nothing)."""
    allowed = METHOD_SETTINGS.get(method, (BASELINE_SETTING,))
    default = DEFAULT_SETTING.get(method, BASELINE_SETTING)
    return tuple(sorted(allowed, key=lambda s: s != default))


class DatasetSpec(_Section):
    """A dataset from the registry (``opendas_encoder.data.registry``): name, root, split, options."""

    name: StrictStr  # registry name: generic, ade20k-150, kitti-360, scannetpp-offices, generated-world
    root: Optional[StrictStr] = None  # dataset folder (relative to the working directory); generated-world: none
    split: Optional[StrictStr]  # required: the split to read (null = the dataset has no split folders)
    options: Dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments of the dataset's loader

    @model_validator(mode="after")
    def _known_dataset(self):
        from ..data.registry import DATASETS

        entry = DATASETS.get(self.name)  # an unknown name is refused with the known ones listed
        if self.root is None and entry.needs_root:
            raise ValueError(f"dataset {self.name!r} needs a root folder (key 'root')")
        return self


class DataConfig(_Section):
    train: DatasetSpec  # required: the segments prompts learn from
    test: Optional[DatasetSpec] = None  # evaluated before and after training; None = no evaluation
    vocabulary: Optional[StrictStr] = None  # JSON {"base": [...], "test": [...]}; None: the datasets' labels
    negatives: Optional[StrictStr] = None  # JSON {class: [five negatives]}; None = no negative queries
    # JSON {class: [descriptions]}: the phrasing anchor's targets (consistency.text_target: descriptions); None: the
    # generated world's own (DomainSpec.describe), any other dataset must give the file
    descriptions: Optional[StrictStr] = None
    drop_novel_negatives: StrictBool = True  # drop negatives equal to a novel test class
    expand_ratio: NonNegFloat = 0.0  # grow each segment's crop box by this fraction
    min_pixels: PositiveInt = 16  # segments with fewer pixels are skipped
    # few-shot: train on K usable segments per base class, sampled per class with the run's seed (the same set
    # for every method at a seed; opendas_encoder.train.shots); "all" = every segment
    shots: Union[Literal["all"], StrictInt] = "all"

    @field_validator("shots", mode="before")
    @classmethod
    def _shots(cls, value):
        if (isinstance(value, str) and value == "all") or \
                (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be a positive integer (segments per base class) or 'all', got {value!r}")

    @field_validator("vocabulary", "negatives", "descriptions")
    @classmethod
    def _file_exists(cls, value):
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"file not found: {os.path.abspath(value)} (a relative path in a config file is "
                             "relative to that file)")
        return value

    @field_validator("vocabulary")
    @classmethod
    def _vocabulary_reads(cls, value):
        """The vocabulary is read (and refused, naming the file and the problem) before any work."""
        if value is not None:
            from ..vocab import Vocabulary

            Vocabulary.load(value)
        return value


class ModelSpec(_Section):
    name: StrictStr = "ViT-L-14"  # open_clip model name (the paper's)
    pretrained: Optional[StrictStr] = "openai"  # open_clip pretrained tag or weights file; None = random


class ScheduleConfig(_Section):
    """The paper's defaults: SGD, lr 0.0025, cosine, 1 warm-up epoch at 1e-5, batch 16, 5 + 5 epochs."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.0025
    momentum: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.9
    weight_decay: NonNegFloat = 5e-4
    warmup_epochs: NonNegInt = 1
    warmup_lr: NonNegFloat = 1e-5
    batch_size: PositiveInt = 16
    stage1_epochs: NonNegInt = 5
    stage2_epochs: NonNegInt = 5

    @field_validator("optimizer", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value


class TripletConfig(_Section):
    """The triplet term of the text stage (paper Eq. 3-4); field defaults are the paper's."""

    margin: NonNegFloat = 1.5
    lambda_start: NonNegFloat = 0.0  # triplet weight at the first step of the text stage
    lambda_end: NonNegFloat = 5.0  # ... and at its last step (linear in between; equal: a constant weight)
    distance: Literal["euclidean", "cosine"] = "euclidean"  # euclidean: the paper's; cosine: 1 - cos


class ConsistencyConfig(_Section):
    """Pull toward the frozen CLIP (PromptSRC / KgCoOp); every weight 0 = off (the paper's).

    The frozen side is zero-shot CLIP over the same open_clip model (``train.evaluate.zero_shot_encoder``):
    its text features of the label space are computed once per run, its image features once per
    training segment (per step only with ``runtime.augment``, whose crops change every step).
    PromptSRC's weights are text 25, image 10, logits 1 with the L1 distance.
    """

    text: NonNegFloat = 0.0  # weight of d(adapted, zero-shot) text features of the label space
    image: NonNegFloat = 0.0  # weight of d(adapted, zero-shot) image features of the batch
    logits: NonNegFloat = 0.0  # weight of KL(zero-shot || adapted) class distribution over the label space
    distance: Literal["l1", "cosine"] = "l1"  # feature distance: mean |a - f| (PromptSRC) or mean 1 - cos
    # KL per sample ("batchmean", the KL divergence proper) or per logit (summed / (batch x classes), PromptSRC's)
    kl_reduction: Literal["batchmean", "per-logit"] = "batchmean"
    # the frozen text side: zero-shot CLIP's "a photo of a {}." ("template") or the normalised mean of its features
    # over OpenAI's ImageNet templates ("ensemble": PromptSRC's textual diversity; the frozen logits use it too)
    # "descriptions": the phrasing anchor (issue 24 2c): the normalised mean of its normalised features of each class's
    # descriptions (data.descriptions), so a name CLIP never read is pulled toward what the class is, not toward
    # its own zero-shot embedding; a negative query without descriptions keeps "template"
    text_target: Literal["template", "ensemble", "descriptions"] = "template"

    @property
    def active(self) -> bool:
        return bool(self.text or self.image or self.logits)

    @property
    def uses_images(self) -> bool:
        """Whether a term needs zero-shot CLIP's image features (image distance or logits KL; the text
        term needs only the label space's text features)."""
        return bool(self.image or self.logits)

    def weights(self) -> tuple:
        return (self.text, self.image, self.logits)


#: keys ``selection.options`` may not choose (they name the run, not a training option)
SELECTION_FIXED_KEYS = ("name", "seed", "output_dir", "method", "preset", "selection", "data", "runtime")
#: most combinations a choice may train (each one is a training run of its own)
SELECTION_MAX_CHOICES = 16


class SelectionConfig(_Section):
    """Options chosen on held-out BASE classes before the run trains (:mod:`opendas_encoder.train.holdout`).

    ``options``: {dotted config key: [candidate values]} (``method_options.visual_lr_scale: [1, 5]``); every
    combination trains on three quarters of the base classes and is scored on the held-out quarter and on
    held-out segments (harmonic mean of the two accuracies); the best is the run's config (ties: the
    earlier combination, so list the preferred value first). Empty (the default): nothing is chosen.
    Novel classes are never looked at.
    """

    options: Dict[StrictStr, List[Any]] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _options(cls, value: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        n = 1
        for key, values in value.items():
            if key.split(".")[0] in SELECTION_FIXED_KEYS:
                raise ValueError(f"{key!r}: a choice may not change {', '.join(SELECTION_FIXED_KEYS)}")
            if not values:
                raise ValueError(f"{key!r}: give at least one candidate value")
            n *= len(values)
        if n > SELECTION_MAX_CHOICES:
            raise ValueError(f"{n} combinations; at most {SELECTION_MAX_CHOICES} (each trains a run of its own)")
        return value


class DistillConfig(_Section):
    """Distillation on unlabelled target images (issue 24 2b; weight 0 = off, the paper's and the default's).

    In the last training stage, a frozen copy of the model as the earlier stages left it (``teacher:
    previous-stage``; with a one-stage setting, the untrained model) gives soft labels over ``classes`` on
    crops of ``unlabelled`` (only images and masks are read, never labels); the student adds ``weight *
    T^2 KL(teacher || student)`` at temperature ``temperature`` (``losses.distillation_loss``). With
    ``classes: test`` (the run's test vocabulary: base + novel names) the run is **transductive**: its
    results are marked so (``results.json`` ``transductive``) and never reported beside inductive numbers.
    """

    weight: NonNegFloat = 0.0
    temperature: PositiveFloat = 2.0
    teacher: Literal["previous-stage"] = "previous-stage"
    classes: Literal["test", "label-space"] = "test"  # the soft labels' classes: test vocabulary or training labels
    batch_size: PositiveInt = 32  # unlabelled crops per step
    unlabelled: Optional[DatasetSpec] = None  # required when weight > 0

    @model_validator(mode="after")
    def _needs_images(self):
        if self.weight and self.unlabelled is None:
            raise ValueError("distill.weight > 0 needs distill.unlabelled (name, root, split of the unlabelled "
                             "target images)")
        return self

    @property
    def active(self) -> bool:
        return bool(self.weight)


class AveragingConfig(_Section):
    """Prompt averaging over each stage (off = the paper's: the last iterate is kept).

    ``ema``: after every optimizer step, the exponentially weighted mean of the iterates so far,
    ``sum_s d^(t-s) p_s / sum_s d^(t-s)`` (bias-corrected, so a short stage is not pulled toward its
    start); ``gaussian``: PromptSRC's Gaussian-weighted aggregation, one snapshot per epoch weighted
    ``exp(-(e - mu)^2 / (2 sigma^2))`` (epochs e = 1..E, ``mu = gaussian_mean * E``, ``sigma =
    gaussian_std`` epochs). At the end of each stage the stage's trainable prompts are replaced by
    their average (the next stage trains on it; the exported checkpoint holds it); the running average
    is part of the resumable training state.
    """

    mode: Literal["off", "ema", "gaussian"] = "off"
    ema_decay: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.9  # per optimizer step
    gaussian_mean: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.75  # PromptSRC: epoch 15 of 20
    gaussian_std: PositiveFloat = 1.0  # in epochs (PromptSRC: 1)


class RuntimeConfig(_Section):
    device: StrictStr = "auto"  # "auto" = cuda if available, else a torch device string
    amp: Literal[AMP_MODES] = "auto"  # "auto": bf16/fp16 on CUDA, off on CPU
    cache_features: StrictBool = True  # text stage on cached image features (no image tower) when augment is off
    augment: StrictBool = False  # random flip + random square crop (scale 0.7-1) of each training segment
    num_workers: NonNegInt = 0  # DataLoader workers that crop and preprocess segments
    # torch.compile of the encoder's forward functions (eager fallback with a warning): false / "off", true /
    # "default", or a torch.compile mode; "reduce-overhead" and "max-autotune" capture CUDA graphs on CUDA
    compile: Literal[COMPILE_MODES] = "off"
    eval_batch_size: PositiveInt = 64

    @model_validator(mode="before")
    @classmethod
    def _drop_log_every(cls, data):
        if isinstance(data, dict) and "log_every" in data:  # written by configs of 0.1.0; it was never read
            warnings.warn("runtime.log_every is ignored (every iteration is logged) and will stop being accepted",
                          FutureWarning, stacklevel=2)
            data = {k: v for k, v in data.items() if k != "log_every"}
        return data

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, value):
        return "off" if value is False else value  # YAML 1.1 reads an unquoted off as false

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, value):
        if isinstance(value, bool):  # the boolean form of 0.1-0.2 configs and YAML's on / off
            return "default" if value else "off"
        if not isinstance(value, str) or value not in COMPILE_MODES:
            raise ValueError(f"must be true, false or a torch.compile mode ({', '.join(COMPILE_MODES[1:])}), "
                             f"got {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "auto":
            import torch

            try:
                torch.device(value)
            except RuntimeError:
                raise ValueError(f"not a torch device: {value!r} (use auto, cpu, cuda, cuda:1, ...)") from None
        return value


def _method_config_class(method: str):
    from ..core.registry import get_method

    return get_method(method).config_class


@lru_cache(maxsize=None)
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def _validate_dataclass(cls, options: dict, where: str):
    """``cls(**options)`` with pydantic's type checks and the dataclass's own ``__post_init__`` checks."""
    # pydantic ignores unknown keys of a stdlib dataclass and cannot be told otherwise (TypeAdapter refuses a
    # config for dataclasses), so the one check it lacks is written here
    unknown = sorted(set(options) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(f.name for f in fields(cls))})")
    try:
        return _adapter(cls).validate_python(options)
    except ValidationError as exc:
        raise ValueError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors())) from None


class TrainConfig(_Section):
    """One training run. ``data`` may be omitted only in Python (e.g. for :func:`~.trainer.fit`, which
    takes prepared segments); a config file must name ``data.train`` (:func:`config_from_dict`)."""

    name: StrictStr = "opendas"
    seed: NonNegInt = 0
    method: StrictStr = "opendas"  # a registered method (opendas_encoder.core.registry.method_names())
    setting: Optional[StrictStr] = None  # None: the method's default (method_settings(method)[0])
    method_options: Dict[str, Any] = Field(default_factory=dict)  # a baseline's config fields
    model: ModelSpec = Field(default_factory=ModelSpec)
    prompts: Dict[str, Any] = Field(default_factory=dict)  # OpenDAS PromptConfig fields
    preset: Literal["default", "paper"] = "default"  # OpenDAS options not written here: the preset's
    data: Optional[DataConfig] = None
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    triplet: TripletConfig = Field(default_factory=TripletConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    averaging: AveragingConfig = Field(default_factory=AveragingConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)  # off unless distill.weight > 0 (transductive)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)  # options chosen on held-out base classes
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    output_dir: StrictStr = "runs/opendas"

    @property
    def transductive(self) -> bool:
        """Whether training sees target images of the test label space (distillation over the test vocabulary):
        such results are reported in their own rows, never beside inductive ones."""
        return self.distill.active and self.distill.classes == "test"

    @model_validator(mode="before")
    @classmethod
    def _setting_name(cls, data, info):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("setting"), str):
            data["setting"] = normalize_setting(data["setting"])
        if info.context and info.context.get("require_data") and data.get("data") is None:
            data["data"] = {}  # so that pydantic reports the missing key by its name: data.train
        return _apply_preset(data)

    @model_validator(mode="after")
    def _method_and_setting(self):
        from ..core.registry import method_names

        if self.method not in method_names():
            raise ValueError(f"unknown method {self.method!r}; known: {method_names()}")
        allowed = method_settings(self.method)
        if not allowed:
            raise ValueError(f"method {self.method!r} has nothing to train (it is the zero-shot reference that "
                             "every run reports first)")
        if self.setting is None:
            # not an assignment: validate_assignment would re-run this validator
            object.__setattr__(self, "setting", allowed[0])
        setting = normalize_setting(self.setting)
        if setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; known: {list(SETTINGS)}")
        if setting != self.setting:
            object.__setattr__(self, "setting", setting)
        if setting not in allowed:
            raise ValueError(f"method {self.method!r} cannot train with setting {setting!r}: "
                             f"{self.method} trains with {' or '.join(repr(s) for s in allowed)}")
        if self.consistency.active and self.consistency.text_target == "descriptions" and self.data is not None \
                and self.data.descriptions is None and self.data.train.name != "generated-world":
            raise ValueError("consistency.text_target: descriptions needs data.descriptions (JSON {class: "
                             "[descriptions]}); only the generated world describes its classes itself")
        if self.distill.active and self.method != "opendas":
            raise ValueError(f"distill: an OpenDAS option; {self.method} trains without it")
        if self.method == "opendas":
            if self.method_options:
                raise ValueError(f"method_options {sorted(self.method_options)}: OpenDAS takes its options "
                                 "from 'prompts'")
            self.prompt_config()  # validates, and warns about values the setting overrides
        else:
            if self.prompts:
                raise ValueError(f"prompts {sorted(self.prompts)}: only OpenDAS has prompts; "
                                 f"{self.method} takes its options from 'method_options'")
            if self.consistency.active and "consistency" not in method_training_defaults(self.method):
                raise ValueError(f"consistency: an OpenDAS option (the frozen CLIP is the prompt-free model); "
                                 f"{self.method} trains without it")
            _validate_dataclass(_method_config_class(self.method), self.method_options, "method_options")
        _check_stages_train(setting, self.schedule)
        for choice in self.selection_choices() if self.selection.options else ():
            try:  # every combination is validated before any work
                self.with_choice(choice)
            except (ValidationError, ValueError) as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in choice.items())
                detail = "; ".join(_describe(e) for e in exc.errors()) if isinstance(exc, ValidationError) else exc
                raise ValueError(f"selection.options: the combination {shown} is not a valid config: {detail}") from None
        return self

    def selection_choices(self) -> List[Dict[str, Any]]:
        """Every combination of ``selection.options`` ({dotted key: value}), in order (the first key varies slowest)."""
        import itertools

        keys = list(self.selection.options)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.selection.options[k] for k in keys))]

    def with_choice(self, choice: Dict[str, Any]) -> "TrainConfig":
        """This config with ``choice`` ({dotted key: value}) written in and nothing left to choose; validated."""
        data = self.model_dump(mode="json")
        data["selection"] = {}
        for key, value in choice.items():
            set_dotted(data, key, value)
        return type(self).model_validate(data)

    def prompt_config(self) -> PromptConfig:
        """OpenDAS's prompts for this run: ``prompts`` over the preset's, with the setting's identity.

        A tower the setting does not train stays exactly CLIP's: ``visual-only`` sets the deep text
        prompts to ``text_deep_init="carry"`` from the zero-shot template's words (the text side is
        zero-shot CLIP exactly in a causal text tower such as CLIP's; only approximately, warned by name,
        in a bidirectional one such as SigLIP's or CLIPA's); ``text-only`` has no visual prompt tokens
        (``visual_tokens=0``, the image tower is open_clip's). A written value that contradicts this is
        replaced, with a warning.
        """
        prompts = dict(self.prompts)
        for key, value in identity_prompts(self.setting).items():
            if key in prompts and prompts[key] != value:
                warnings.warn(f"setting {self.setting!r} does not train that tower, which stays CLIP's: "
                              f"prompts.{key} {prompts[key]!r} -> {value!r}", UserWarning, stacklevel=2)
            prompts[key] = value
        return _validate_dataclass(PromptConfig, {**preset_prompts(self.preset), **prompts}, "prompts")

    def updated(self, **changes) -> "TrainConfig":
        """A validated copy with ``changes`` (sections as models or dicts).

        A section given as a dict is merged onto this config's section, key by key (``updated(triplet=
        {"margin": 1})`` keeps this config's other triplet values); given as a model it replaces the
        section. ``prompts``, ``method_options`` and plain values are replaced. Changing ``method``
        without a ``setting`` gives the new method's default setting; changing ``preset`` or ``method``
        re-derives the preset's sections (``triplet``, ``consistency``, ``averaging``) from the new
        preset, with a dict given for one of them merged onto the preset's values (a baseline gets the
        sections' defaults: every OpenDAS option off).
        """
        if "method" in changes and "setting" not in changes:
            changes["setting"] = None
        current = dict(self)
        rederive = "preset" in changes or changes.get("method", self.method) != self.method
        if rederive:
            for section in PRESET_SECTIONS:
                current.pop(section)
        for key, value in changes.items():
            own = current.get(key)
            if isinstance(value, dict) and isinstance(own, BaseModel):
                changes[key] = {**own.model_dump(), **value}
        return type(self).model_validate({**current, **changes})

    def to_dict(self) -> dict:
        """Plain JSON-able dictionary (for OpenDAS, ``prompts`` are the full prompt config that trains)."""
        out = self.model_dump(mode="json")
        if self.method == "opendas":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["prompts"] = self.prompt_config().to_dict()
        return out

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)


# ---------------------------------------------------------------------------------------------- resume
#: Config keys a resumed run may change: how the run is named, stored and executed, not what it learns
#: (``preset`` is resolved: the sections and prompts it gives are compared instead; ``data.test`` is only
#: evaluated; ``runtime.cache_features`` computes the same stage-2 features once instead of every step;
#: ``device`` / ``amp`` / ``compile`` change float rounding only). Every other key must be the saved run's.
RESUME_MAY_DIFFER = ("name", "output_dir", "preset", "data.test", "runtime.device", "runtime.amp",
                     "runtime.compile", "runtime.num_workers", "runtime.eval_batch_size", "runtime.cache_features")


def resume_record(config: TrainConfig) -> Dict[str, Any]:
    """The config's training options as {dotted key: JSON value}, every key but :data:`RESUME_MAY_DIFFER`
    (saved with each training state; a resumed run must give the same record: :func:`resume_mismatches`)."""
    def flat(value, prefix):
        if isinstance(value, dict) and value and prefix not in RESUME_MAY_DIFFER:
            out = {}
            for k, v in value.items():
                out.update(flat(v, f"{prefix}.{k}" if prefix else k))
            return out
        return {} if prefix in RESUME_MAY_DIFFER else {prefix: value}

    record = flat(config.to_dict(), "")
    if record.get("selection.options") == {}:  # nothing chosen: the record of runs saved before 0.4 (no such key)
        del record["selection.options"]
    return json.loads(json.dumps(record))  # JSON's values: what the state file reads back


def resume_mismatches(saved: Dict[str, Any], config: TrainConfig) -> List[str]:
    """``key: saved X, this config Y`` for every training option that differs from the saved run's."""
    now = resume_record(config)

    def shown(record: dict, key: str) -> str:
        return repr(record[key]) if key in record else "(not set)"

    return [f"{k}: saved {shown(saved, k)}, this config {shown(now, k)}" for k in sorted(set(saved) | set(now))
            if k not in saved or k not in now or saved[k] != now[k]]


# ---------------------------------------------------------------------------------------------- presets
#: Sections a preset fills (OpenDAS's training options); ``prompts`` are PromptConfig fields.
PRESET_SECTIONS = ("triplet", "consistency", "averaging")

#: The OpenDAS training options of each preset, per section. "paper": the paper's method exactly (Sec. 4,
#: 5; every option off). "default": the library default, the variant chosen by measurement on the
#: generated domain suite (docs/ablations.md, docs/selection.md). Its prompts are ``PromptConfig()`` with
#: :data:`PRESET_PROMPTS`, the paper's ``PromptConfig.paper()``.
PRESETS: Dict[str, Dict[str, dict]] = {
    "paper": {"triplet": {"margin": 1.5, "lambda_start": 0.0, "lambda_end": 5.0, "distance": "euclidean"},
              "consistency": {"text": 0.0, "image": 0.0, "logits": 0.0, "distance": "l1"},
              "averaging": {"mode": "off"}},
    # chosen on the suite (docs/ablations.md, eval/run_ablations.py): the paper's method plus an L1 pull of the
    # label space's text features toward zero-shot CLIP's (weight 10) and the bias-corrected EMA of the
    # prompts (decay 0.9 per step); same mean B-F1 as the paper's over the four domains, +2.9 mean N-F1
    "default": {"triplet": {"margin": 1.5, "lambda_start": 0.0, "lambda_end": 5.0, "distance": "euclidean"},
                "consistency": {"text": 10.0, "image": 0.0, "logits": 0.0, "distance": "l1"},
                "averaging": {"mode": "ema", "ema_decay": 0.9}},
}


#: PromptConfig fields a preset sets beyond ``PromptConfig()`` (the plain prompted encoder). "default": rank-2
#: low-rank q/k/v updates per tower with merge coefficients chosen on held-out base classes, the pick of the
#: committed selection rule at its own sizes (docs/selection.md, "The rule at its own sizes: full mode": total
#: shortfall 71.6 against 73.2 for the prompt-only default on the four selection domains, generated data).
PRESET_PROMPTS: Dict[str, dict] = {"paper": {}, "default": {"lowrank_rank": 2}}


def preset_prompts(preset: str) -> dict:
    """PromptConfig fields of a preset (legacy_conventions is no choice of a preset)."""
    base = PromptConfig.paper() if preset == "paper" else PromptConfig()
    cfg = replace(base, **PRESET_PROMPTS.get(preset, {}))
    return {k: v for k, v in cfg.to_dict().items() if k != "legacy_conventions"}


#: Sections a method's ``training_defaults`` may fill (PromptSRC: consistency and averaging; CLIP-LoRA: schedule).
METHOD_DEFAULT_SECTIONS = ("schedule", "consistency", "averaging")


def method_training_defaults(method: str) -> Dict[str, dict]:
    """The training options a baseline's encoder class declares (``training_defaults``; none: {})."""
    from ..core.registry import METHODS

    if method == "opendas" or not isinstance(method, str) or method not in METHODS:
        return {}
    defaults = getattr(METHODS.get(method), "training_defaults", {}) or {}
    unknown = sorted(set(defaults) - set(METHOD_DEFAULT_SECTIONS))
    if unknown:
        raise ValueError(f"method {method!r} declares training_defaults for {unknown}; a method may default only "
                         f"{list(METHOD_DEFAULT_SECTIONS)}")
    return defaults


def _apply_method_defaults(data: dict) -> dict:
    """A baseline's ``training_defaults`` under every key of those sections the config does not set (a section
    given as a model instance keeps the fields it was built with: pydantic's ``model_fields_set``)."""
    for section, values in method_training_defaults(data.get("method", "opendas")).items():
        given = data.get(section)
        if given is None:
            data[section] = dict(values)
        elif isinstance(given, dict):
            data[section] = {**values, **given}
        elif isinstance(given, BaseModel):
            data[section] = {**values, **given.model_dump(include=given.model_fields_set)}
    return data


def _apply_preset(data: dict) -> dict:
    """Raw config keys with the preset's values under every preset section key the config does not write.

    OpenDAS only (a baseline keeps the sections' field defaults, every option off, except what its
    encoder class declares in ``training_defaults``: :func:`_apply_method_defaults`). A section given as
    a model instance counts as written in full; an unknown preset is left for pydantic to report.
    """
    preset = data.get("preset", "default")
    if data.get("method", "opendas") != "opendas":
        return _apply_method_defaults(data)
    if preset not in PRESETS:
        return data
    for section, values in PRESETS[preset].items():
        given = data.get(section)
        if given is None:
            data[section] = dict(values)
        elif isinstance(given, dict):
            data[section] = {**values, **given}
    return data


def identity_prompts(setting: str) -> dict:
    """Prompt fields that keep the tower a setting does not train exactly CLIP's (see prompt_config)."""
    if setting == "visual-only":
        from ..core.tokens import ZERO_SHOT_TEMPLATE

        return {"text_deep_init": "carry", "text_init": ZERO_SHOT_TEMPLATE.split("{}")[0].strip()}
    if setting == "text-only":
        return {"visual_tokens": 0}
    return {}


def _describe(error: dict) -> str:
    """One line per pydantic error: dotted key, what is wrong, the value given."""
    loc = ".".join(str(p) for p in error["loc"])
    kind, given = error["type"], error.get("input")
    if kind == "missing":
        return f"{loc}: missing (required, no default)"
    if kind == "literal_error":
        return f"{loc} must be one of {error['ctx']['expected']}, got {given!r}"
    if kind == "bool_type":
        return f"{loc} must be true or false, got {given!r}"
    msg = error["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{loc}: {msg}" if loc else msg
    return f"{loc}: {msg}, got {given!r}"


def format_validation_error(exc: ValidationError, source: str, overrides: Optional[List[str]] = None) -> str:
    """``source: invalid config`` and one line per problem; unknown keys grouped per section. A problem at
    (or inside) a key set by one of ``overrides`` (``key=value``, ``--set``) is blamed on that override."""
    keys = [(item.split("=", 1)[0], item) for item in overrides or []]
    groups: Dict[str, list] = {}
    for e in exc.errors():
        dotted = ".".join(str(p) for p in e["loc"])
        blamed = [item for key, item in keys if dotted == key or dotted.startswith(key + ".")
                  or key.startswith(dotted + ".")]
        groups.setdefault(f"--set {blamed[-1]}" if blamed else source, []).append(e)
    out = []
    for where, errors in groups.items():
        unknown: Dict[str, List[str]] = {}
        lines = []
        for e in errors:
            if e["type"] == "extra_forbidden":
                unknown.setdefault(".".join(str(p) for p in e["loc"][:-1]), []).append(str(e["loc"][-1]))
            else:
                lines.append(_describe(e))
        for section, names in unknown.items():
            lines.append(f"{section or '(top level)'}: unknown keys {sorted(names)} (known: {_known_keys(section)})")
        out.append(f"{where}: invalid config:\n  " + "\n  ".join(lines))
    return "\n".join(out)


def _known_keys(where: str) -> List[str]:
    model = TrainConfig
    for part in [p for p in where.split(".") if p]:
        ann = model.model_fields[part].annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and
                      issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)


def config_from_dict(data: dict, source: str = "config", overrides: Optional[List[str]] = None) -> TrainConfig:
    """A :class:`TrainConfig` from a parsed config file; every problem in one ``ValueError`` naming ``source``
    (or the ``--set`` override in ``overrides`` that wrote the key)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data, context={"require_data": True})
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, source, overrides)) from None


def set_dotted(data: dict, key: str, value) -> None:
    """``data["a"]["b"] = value`` for ``key="a.b"`` (missing sections created; a non-section on the way is a
    ValueError naming it)."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{part!r} is not a config section")
        node = child
    node[parts[-1]] = value


def load_config(path: str, overrides: Optional[List[str]] = None) -> TrainConfig:
    """Read and validate a YAML/JSON training config.

    ``overrides``: ``dotted.key=value`` strings (values parsed as YAML). Relative ``data.negatives``,
    ``data.descriptions`` and ``data.vocabulary`` paths written in the file are relative to the file; given as overrides, they
    are relative to the working directory, like any command-line path.
    """
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) if not path.endswith(".json") else json.load(f)
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except (yaml.YAMLError, json.JSONDecodeError, RecursionError) as exc:
            raise InputError(path, f"cannot parse ({exc})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(path, f"expected a mapping of config keys, got {type(data).__name__}")
    base_dir = os.path.dirname(os.path.abspath(path))
    section = data.get("data")
    if isinstance(section, dict):
        for key in ("negatives", "vocabulary", "descriptions"):
            value = section.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                section[key] = os.path.normpath(os.path.join(base_dir, value))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        try:
            set_dotted(data, key, yaml.safe_load(value))
        except ValueError as exc:
            raise ValueError(f"override {item!r}: {exc}") from None
    try:
        return config_from_dict(data, source=path, overrides=overrides)
    except ValueError as exc:
        if str(exc).startswith("--set "):  # blamed on an override, not on the file
            raise
        raise InputError.of(path, exc) from None


#: The schedule keys whose epochs each stage of a setting trains (see :func:`stages_for`).
_STAGE_KEYS = {"visual": ("stage1_epochs",), "text": ("stage2_epochs",), "joint": ("stage1_epochs", "stage2_epochs"),
               "train": ("stage1_epochs", "stage2_epochs")}


def _check_stages_train(setting: str, schedule: "ScheduleConfig") -> None:
    """Refuse a schedule whose trained stage (epochs > 0) has no epoch after its warm-up: with the
    warm-up at ``warmup_lr`` (1e-5) such a stage barely moves the prompts, and the run ends near its
    start without a word. A stage of 0 epochs is not trained (fine); ``warmup_lr == lr`` is no warm-up."""
    warm = schedule.warmup_epochs
    if warm == 0 or schedule.warmup_lr >= schedule.lr:
        return
    for stage in stages_for(setting, schedule):
        if stage.epochs <= warm:
            keys = " + ".join(f"schedule.{k}" for k in _STAGE_KEYS[stage.name])
            raise ValueError(
                f"{keys} ({stage.epochs}) must be greater than schedule.warmup_epochs ({warm}): stage "
                f"{stage.name!r} of setting {setting!r} would run only its warm-up at schedule.warmup_lr "
                f"({schedule.warmup_lr:g}) and train nothing; give it more epochs, or set schedule.warmup_epochs: "
                f"{stage.epochs - 1}")


def warmup_that_fits(*stage_epochs: int, warmup: int = 1) -> int:
    """``warmup`` epochs when every trained stage (epochs > 0) keeps an epoch after them, else 0.

    For schedules built from command-line epochs (``opendas demo --epochs 1``, the eval scripts): a
    short stage trains from its first epoch instead of being refused; a config file is validated as written.
    """
    return warmup if all(e > warmup for e in stage_epochs if e > 0) else 0


@dataclass(frozen=True)
class Stage:
    """One training stage: which prompt groups learn and whether the triplet loss is on."""

    name: str
    epochs: int
    visual: bool
    text: bool
    triplet: bool


def stages_for(setting: str, schedule: ScheduleConfig) -> List[Stage]:
    """The stages of a training setting (paper Tab. 5): two-stage OpenDAS, its ablations, one-stage baselines."""
    s1, s2 = schedule.stage1_epochs, schedule.stage2_epochs
    table = {
        "two-stage": [Stage("visual", s1, True, False, False), Stage("text", s2, False, True, True)],
        "joint-triplet": [Stage("joint", s1 + s2, True, True, True)],
        "visual-only": [Stage("visual", s1, True, False, False)],
        "text-only": [Stage("text", s2, False, True, True)],
        "one-stage-ce": [Stage("train", s1 + s2, True, True, False)],
    }
    setting = normalize_setting(setting)
    if setting not in table:
        raise ValueError(f"unknown setting {setting!r}; known: {sorted(table)}")
    return [st for st in table[setting] if st.epochs > 0]

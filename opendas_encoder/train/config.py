"""Training configuration: typed dataclasses, read from YAML or JSON, validated with clear errors.

Example (YAML)::

    name: offices
    seed: 0
    model: {name: ViT-L-14, pretrained: openai}
    prompts: {visual_tokens: 8, text_tokens: 4}
    data:
      train: {name: generic, root: /data/offices, split: train}
      test: {name: generic, root: /data/offices, split: test}
      negatives: negatives.json
    schedule: {lr: 0.0025, batch_size: 16, stage1_epochs: 5, stage2_epochs: 5}
    output_dir: runs/offices
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from ..methods.opendas import PromptConfig

SETTINGS = ("two-stage", "joint", "visual-only", "text-only", "single")
AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class DatasetSpec:
    """A dataset from the registry (``opendas_encoder.data.registry``): name, root, split, extra options."""

    name: str = "generated-world"
    root: Optional[str] = None
    split: str = "train"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    train: DatasetSpec = field(default_factory=DatasetSpec)
    test: Optional[DatasetSpec] = field(default_factory=lambda: DatasetSpec(split="test"))
    #: JSON {"base": [...], "test": [...]}; default: base = train labels, test = test labels.
    vocabulary: Optional[str] = None
    #: JSON {class: [five negatives]}; None = no negative queries.
    negatives: Optional[str] = None
    drop_novel_negatives: bool = True
    expand_ratio: float = 0.0
    min_pixels: int = 16


@dataclass
class ModelSpec:
    name: str = "opendas-world-vit"
    pretrained: Optional[str] = "generated-world"


@dataclass
class ScheduleConfig:
    """The paper's defaults: SGD, lr 0.0025, cosine, 1 warm-up epoch at 1e-5, batch 16, 5 + 5 epochs."""

    optimizer: str = "sgd"
    lr: float = 0.0025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    batch_size: int = 16
    stage1_epochs: int = 5
    stage2_epochs: int = 5


@dataclass
class TripletConfig:
    margin: float = 1.5
    lambda_start: float = 0.0
    lambda_end: float = 5.0


@dataclass
class RuntimeConfig:
    device: str = "auto"  # "auto" = cuda if available
    amp: str = "auto"  # "auto" (bf16/fp16 on CUDA, off on CPU), "off", "bf16", "fp16"
    cache_features: bool = True  # stage 2 on cached image features (no image tower) when augment is off
    augment: bool = False  # random flip + random square crop (scale 0.7-1) of each training segment
    num_workers: int = 0  # DataLoader workers that crop and preprocess segments
    compile: bool = False  # torch.compile the encoder's forward functions (eager fallback with a warning)
    eval_batch_size: int = 64
    log_every: int = 10


@dataclass
class TrainConfig:
    name: str = "opendas"
    seed: int = 0
    method: str = "opendas"
    setting: str = "two-stage"
    method_options: Dict[str, Any] = field(default_factory=dict)
    model: ModelSpec = field(default_factory=ModelSpec)
    prompts: Dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    triplet: TripletConfig = field(default_factory=TripletConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output_dir: str = "runs/opendas"

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")
        if self.schedule.optimizer.lower() not in ("sgd", "adamw"):
            raise ValueError(f"schedule.optimizer must be 'sgd' or 'adamw', got {self.schedule.optimizer!r}")
        if self.schedule.batch_size < 1:
            raise ValueError("schedule.batch_size must be >= 1")
        if self.runtime.amp not in AMP_MODES:
            raise ValueError(f"runtime.amp must be one of {AMP_MODES}, got {self.runtime.amp!r}")
        if not isinstance(self.runtime.num_workers, int) or self.runtime.num_workers < 0:
            raise ValueError(f"runtime.num_workers must be an integer >= 0, got {self.runtime.num_workers!r}")
        if not isinstance(self.runtime.compile, bool):
            raise ValueError(f"runtime.compile must be true or false, got {self.runtime.compile!r}")
        self.prompt_config()  # validates

    def prompt_config(self) -> PromptConfig:
        return PromptConfig.from_dict(self.prompts, source="config prompts") if self.prompts else PromptConfig()

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if callable(getattr(f, "default_factory", None)) else f.default
        if is_dataclass(default) and value is not None:
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif name == "test" and cls is DataConfig and value is not None:
            kwargs[name] = _build(DatasetSpec, value, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: dict, source: str = "config") -> TrainConfig:
    try:
        return _build(TrainConfig, data, source)
    except TypeError as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_config(path: str, overrides: Optional[List[str]] = None) -> TrainConfig:
    """Read a YAML/JSON training config; ``overrides`` are ``dotted.key=value`` strings (YAML values)."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) if not path.endswith(".json") else json.load(f)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot parse ({exc})") from None
    data = data or {}
    base_dir = os.path.dirname(os.path.abspath(path))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    data_section = data.get("data") or {}
    for key in ("negatives", "vocabulary"):  # relative file paths are relative to the config file
        value = data_section.get(key)
        if isinstance(value, str) and not os.path.isabs(value) and not os.path.exists(value):
            candidate = os.path.join(base_dir, value)
            if os.path.exists(candidate):
                data_section[key] = candidate
    return config_from_dict(data, source=path)


@dataclass(frozen=True)
class Stage:
    """One training stage: which prompt groups learn and whether the triplet loss is on."""

    name: str
    epochs: int
    visual: bool
    text: bool
    triplet: bool


def stages_for(setting: str, schedule: ScheduleConfig) -> List[Stage]:
    """The stages of a training setting (paper Tab. 5): two-stage OpenDAS and its ablations."""
    s1, s2 = schedule.stage1_epochs, schedule.stage2_epochs
    table = {
        "two-stage": [Stage("visual", s1, True, False, False), Stage("text", s2, False, True, True)],
        "joint": [Stage("joint", s1 + s2, True, True, True)],
        "visual-only": [Stage("visual", s1, True, False, False)],
        "text-only": [Stage("text", s2, False, True, True)],
        "single": [Stage("train", s1 + s2, True, True, False)],
    }
    if setting not in table:
        raise ValueError(f"unknown setting {setting!r}; known: {sorted(table)}")
    return [st for st in table[setting] if st.epochs > 0]

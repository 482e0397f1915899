"""One way to name a training run in eval/: the spec, its syntax, and the resolved-training key.

Every table script (``run_cls.py``, ``run_suite.py``, ``run_fewshot.py``, ``run_ablations.py``) names
its runs with one syntax::

    [TAG=]NAME[:SETTING][@dotted.key=value]...

* ``NAME``: ``zeroshot`` (not trained), ``opendas`` (OpenDAS as the script's base config has it:
  ``run_cls.py`` the paper's preset, the suite and the few-shot curves the library default),
  ``opendas-paper`` / ``opendas-default`` (that preset), ``opendas-carry`` (the paper's with
  ``text_deep_init: carry``), or a baseline method (``cocoop``, ``vpt``, ``rpo``, ``maple``,
  ``wiseft-text``, ``wiseft-visual``, ``cliplora``, ``promptsrc``; ``wiseft-both``, issue 24's weight-space
  candidate) with its paper options
  (:data:`METHOD_OPTIONS`);
* ``:SETTING``: another training setting (``opendas-paper:visual-only``);
* ``@dotted.key=value``: any training-config key over the name's (values read as YAML):
  ``opendas-paper@consistency.image=10@averaging.mode=ema``, ``vpt@method_options.n_tokens=8``;
* ``TAG=``: the name the run is reported and stored under (default: the whole text).

:meth:`RunSpec.config` applies a spec to the script's base :class:`TrainConfig`; :func:`training_key`
of the result says which runs are the same training (trained once, reported under each key), in
every script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

#: the baselines' paper options (Tab. 1 counts on ViT-L-14; CLIP-LoRA and PromptSRC: their papers' defaults,
#: the method configs' own); depths None = every layer of the model at hand
METHOD_OPTIONS: Dict[str, dict] = {
    "cocoop": {"n_ctx": 4, "ctx_init": "a photo of a", "meta_reduction": 16},
    "vpt": {"n_tokens": 32, "depth": None},
    "rpo": {"k": 24},
    "maple": {"n_ctx": 2, "ctx_init": "a photo of a", "depth": None},
    "wiseft-text": {"alpha": 0.5},
    "wiseft-visual": {"alpha": 0.5},
    "wiseft-both": {"alpha": 0.5},
    "cliplora": {},
    "promptsrc": {},
}
#: OpenDAS names: preset (None: the base config's) and config overrides
OPENDAS_NAMES: Dict[str, Tuple[Optional[str], dict]] = {
    "opendas": (None, {}),
    "opendas-paper": ("paper", {}),
    "opendas-default": ("default", {}),
    "opendas-carry": ("paper", {"prompts.text_deep_init": "carry"}),
}
#: report names of the names (a script may rename ``opendas`` after its base preset)
DISPLAY: Dict[str, str] = {
    "zeroshot": "zero-shot CLIP", "opendas": "OpenDAS", "opendas-paper": "OpenDAS (paper)",
    "opendas-default": "OpenDAS (default)", "opendas-carry": "OpenDAS (carry)", "cocoop": "CoCoOp", "vpt": "VPT",
    "rpo": "RPO", "maple": "MaPLe", "wiseft-text": "WiSE-FT (text)", "wiseft-visual": "WiSE-FT (visual)",
    "wiseft-both": "WiSE-FT (both towers)",
    "cliplora": "CLIP-LoRA", "promptsrc": "PromptSRC",
}
#: keys a spec may not override (its NAME and :SETTING say them; the script owns the rest of these)
FIXED_KEYS = ("method", "setting", "preset", "name", "output_dir", "seed")


@dataclass(frozen=True)
class RunSpec:
    """One named training run: ``key`` (reported and stored under it), ``name`` (see the module docstring),
    the encoder ``method`` ("zeroshot": not trained), its ``setting``, OpenDAS's ``preset`` (None: the base
    config's) and ``overrides`` ((dotted key, JSON value), the name's then the spec's)."""

    key: str
    name: str
    method: str
    setting: str
    preset: Optional[str] = None
    overrides: Tuple[Tuple[str, str], ...] = ()

    def section(self, section: str) -> dict:
        """The overrides under ``section`` ({field: value})."""
        return {k.split(".", 1)[1]: json.loads(v) for k, v in self.overrides if k.startswith(section + ".")}

    @property
    def prompts(self) -> str:
        """JSON of the prompt fields the spec sets (OpenDAS)."""
        return json.dumps(self.section("prompts"), sort_keys=True)

    @property
    def options(self) -> str:
        """JSON of the method options the spec sets (a baseline's paper options and the spec's)."""
        return json.dumps(self.section("method_options"), sort_keys=True)

    @property
    def tag(self) -> str:
        """``key`` as a folder name (``:`` -> ``_``, ``@`` -> ``+``, ``=`` -> ``-``, ``/`` -> ``|``)."""
        return self.key.replace(":", "_").replace("@", "+").replace("=", "-").replace("/", "|")

    @property
    def trained(self) -> bool:
        return self.method != "zeroshot"

    def with_overrides(self, **values) -> "RunSpec":
        """A copy with more overrides (dotted keys given with ``__`` for ``.``: ``triplet__lambda_end=2``)."""
        extra = tuple((k.replace("__", "."), json.dumps(v, sort_keys=True)) for k, v in values.items())
        return replace(self, overrides=self.overrides + extra)

    def config(self, base, **changes):
        """``base`` (a :class:`TrainConfig`) as this run: its method, setting and preset, then the overrides,
        then ``changes`` (name, seed, output_dir, ...); validated. ValueError names the key and the problem."""
        from pydantic import ValidationError

        from opendas_encoder.train.config import TrainConfig, format_validation_error, set_dotted

        if not self.trained:
            raise ValueError(f"{self.key}: zeroshot is not trained")
        update = {"method": self.method, "setting": self.setting}
        if self.method != "opendas":
            update["prompts"] = {}
            update["method_options"] = {}
        elif self.preset is not None and self.preset != base.preset:
            update["preset"] = self.preset
        if self.method != base.method and self.method == "opendas":
            update.setdefault("preset", self.preset or base.preset)
        try:
            cfg = base.updated(**update)
        except (ValidationError, ValueError) as exc:
            raise ValueError(f"{self.key}: {exc}") from None
        data = cfg.model_dump(mode="json")
        for key, value in self.overrides:
            try:
                set_dotted(data, key, json.loads(value))
            except ValueError as exc:
                raise ValueError(f"{self.key}: {key!r}: {exc}") from None
        data.update(changes)
        try:
            return TrainConfig.model_validate(data)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, f"run {self.key!r}")) from None


def parse_spec(text: str) -> RunSpec:
    """``[TAG=]NAME[:SETTING][@dotted.key=value]...`` -> :class:`RunSpec`; ValueError naming the problem."""
    import yaml

    from opendas_encoder.core.registry import method_names
    from opendas_encoder.train.config import SETTINGS, method_settings

    text = text.strip()
    head, *items = text.split("@")
    tag, eq, head = head.partition("=") if "=" in head else ("", "", head)
    name, _, setting = head.strip().partition(":")
    key = tag.strip() if eq else text
    if eq and (not key or any(c in key for c in "/\\ @:")):
        raise ValueError(f"{text!r}: the tag before '=' must be a name without '/', '\\', spaces, '@' or ':'")
    baselines = [m for m in method_names() if m not in ("opendas", "zeroshot")]
    overrides = []
    if name == "zeroshot":
        if setting or items:
            raise ValueError(f"{text!r}: zeroshot is not trained: it takes no :SETTING or @overrides")
        return RunSpec(key, name, "zeroshot", "none")
    if name in OPENDAS_NAMES:
        method = "opendas"
        preset, own = OPENDAS_NAMES[name]
        overrides += [(k, json.dumps(v)) for k, v in own.items()]
    elif name in baselines:
        method, preset = name, None
        overrides += [(f"method_options.{k}", json.dumps(v)) for k, v in METHOD_OPTIONS.get(name, {}).items()]
    else:
        raise ValueError(f"unknown method {name!r} in {text!r}; known: {['zeroshot', *OPENDAS_NAMES, *baselines]} "
                         "(NAME:SETTING for another training setting, NAME@section.key=value for options, "
                         "TAG=NAME... to name the run)")
    allowed = method_settings(method)
    setting = setting or allowed[0]
    if setting not in SETTINGS:
        raise ValueError(f"{text!r}: unknown setting {setting!r}; known: {list(SETTINGS)}")
    if setting not in allowed:
        raise ValueError(f"{text!r}: {method} trains with {' or '.join(allowed)}, not {setting!r}")
    for item in items:
        path, eq, value = item.partition("=")
        path = path.strip()
        if not eq or "." not in path or path.split(".")[0] in FIXED_KEYS:
            raise ValueError(f"{text!r}: override {item!r} must look like section.key=value (the method, setting "
                             "and preset are the NAME and :SETTING)")
        overrides.append((path, json.dumps(yaml.safe_load(value), sort_keys=True)))
    return RunSpec(key, name, method, setting, preset, tuple(overrides))


def training_key(config) -> str:
    """Equal keys = the same training: the config without its name, folder and seed (runs are compared at
    one seed), OpenDAS's preset resolved (its prompt fields written out; the training options are the
    config's sections already)."""
    d = config.to_dict()
    for k in ("name", "output_dir", "preset", "seed"):
        d.pop(k, None)
    if config.method == "opendas":
        d["prompts"] = config.prompt_config().to_dict()
    return json.dumps(d, sort_keys=True)

"""Checkpoints on the Hugging Face Hub and their model cards.

``load_encoder("hf-hub:ORG/REPO[@revision]")`` fetches the checkpoint folder with
``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_OFFLINE=1`` and tokens apply as usual);
``save_checkpoint(..., push_to_hub="ORG/REPO")`` uploads the folder with ``HfApi.upload_folder``.
Every checkpoint folder carries a ``README.md`` model card written from its ``opendas_config.json``
(base model, method and config, training data, results, the command that made it), as peft and
Hugging Face checkpoints do.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Optional, Tuple

HUB_PREFIX = "hf-hub:"
CARD_NAME = "README.md"


def split_hub_id(spec: str) -> Tuple[str, Optional[str]]:
    """``"hf-hub:org/repo@rev"`` -> ``("org/repo", "rev")``; the revision is optional."""
    repo = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"{spec!r}: a Hub checkpoint is named hf-hub:ORG/REPO (optionally @revision)")
    return repo, revision or None


def download_checkpoint(spec: str) -> str:
    """The local folder of a Hub checkpoint (downloaded, or from the cache when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from ..version import __version__

    repo, revision = split_hub_id(spec)
    try:
        return snapshot_download(repo, revision=revision, library_name="opendas_encoder", library_version=__version__)
    except LocalEntryNotFoundError as exc:
        raise FileNotFoundError(f"{spec}: not in the local Hugging Face cache and the Hub cannot be reached "
                                f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {exc}") from None


def push_checkpoint(directory: str, repo_id: str, private: Optional[bool] = None,
                    commit_message: Optional[str] = None) -> str:
    """Upload a checkpoint folder to ``repo_id`` (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    repo, revision = split_hub_id(repo_id)
    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo, folder_path=directory, revision=revision,
                             commit_message=commit_message or "opendas_encoder checkpoint")
    return getattr(info, "commit_url", str(info))


# ---------------------------------------------------------------------------------------------- model card
def _table(rows) -> str:
    """A markdown table from (header, *rows) tuples."""
    from tabulate import tabulate

    header, *body = rows
    return tabulate(body, headers=header, tablefmt="github")


def model_card(config: dict) -> str:
    """The README.md of a checkpoint folder, from its parsed ``opendas_config.json``."""
    meta = config.get("metadata", {}) or {}
    method, name, tag = config["method"], config["model_name"], config.get("pretrained")
    tensors = config.get("tensors", {})
    n_learned = sum(_numel(shape) for shape in tensors.values())
    base = config.get("base_model", {})
    generated = meta.get("generated_data") is True  # recorded from the dataset spec, never guessed from words
    lines = [
        "---",
        "library_name: opendas_encoder",
        "tags: [clip, open-vocabulary, domain-adaptation, prompt-learning, opendas]",
        f"base_model: {name}" + (f" ({tag})" if tag else ""),
        "---",
        "",
        f"# {meta.get('run', method)}: {method} over {name}",
        "",
        "An adapted CLIP encoder written by opendas_encoder (OpenDAS: open-vocabulary "
        "domain adaptation with deep visual and text prompts over a frozen open_clip model).",
    ]
    if generated:
        lines += ["", "**Trained and evaluated on generated data (the project's procedurally generated world), "
                      "not a real dataset.**"]
    lines += ["", "## Base model", "",
              _table([("open_clip model", "pretrained tag", "image size", "patch", "context length"),
                      (name, tag or "none (random weights)", base.get("image_size", "?"), base.get("patch_size", "?"),
                       base.get("context_length", "?"))]),
              "", "## Method", "",
              f"`{method}` with {n_learned:,} learned values in `{config.get('tensors_file', 'prompts.safetensors')}` "
              f"({', '.join(f'{k} {tuple(v)}' for k, v in sorted(tensors.items())) or 'none'}).", "",
              "```json", json.dumps(config.get("method_config", {}), indent=2, sort_keys=True), "```"]
    data_rows = [(k, _short(meta[k])) for k in ("dataset", "domain", "train_segments", "label_space_size", "setting",
                                                 "seed", "stage", "epoch", "completed") if k in meta]
    for key in ("base_classes", "negative_queries"):
        if key in meta:
            data_rows.append((key, f"{len(meta[key])} entries"))
    if data_rows:
        lines += ["", "## Training", "", _table([("", "")] + data_rows)]
    results = meta.get("results")
    if isinstance(results, dict) and results:
        keys = sorted({k for row in results.values() if isinstance(row, dict) for k in row})
        rows = [("encoder",) + tuple(keys)] + [(enc,) + tuple(_short(row.get(k, "")) for k in keys)
                                               for enc, row in results.items() if isinstance(row, dict)]
        lines += ["", "## Results of its run", "", _table(rows)]
    if meta.get("command"):
        lines += ["", "## Command", "", "```bash", str(meta["command"]), "```"]
    if tag:
        load = ['encoder = oe.load_encoder("<this folder or hf-hub:ORG/REPO>")']
    else:  # a random base cannot be rebuilt from a tag: its weights are handed over (or the model itself)
        load = [f"# the base {name} had random weights (no pretrained tag): hand over those weights",
                'encoder = oe.load_encoder("<this folder or hf-hub:ORG/REPO>", pretrained="<base weights .safetensors>")']
    lines += ["", "## Use", "", "```python", "import opendas_encoder as oe"] + load + \
        ['features = encoder.encode_text(["chair", "door frame"], normalize=True)', "```", ""]
    return "\n".join(lines)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def current_command() -> str:
    """The command line of this process, shell-quoted (recorded in model cards)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return " ".join(shlex.quote(a) for a in [prog, *sys.argv[1:]])

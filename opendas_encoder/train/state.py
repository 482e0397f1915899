"""Resumable training state: prompts + optimizer buffers (safetensors) + counters and the learning-rate
scheduler's ``state_dict`` (JSON), written atomically; nothing is pickled.

Layout inside the run folder::

    state/epoch-0003/{prompts.safetensors, opendas_config.json, optimizer.safetensors, trainer_state.json,
                      averaged.safetensors (only with prompt averaging)}
    state/LATEST                      # name of the newest complete state folder

A state folder is complete before ``LATEST`` is switched to it (an atomic rename), so a run killed
at any moment resumes from its last finished epoch; older folders are then removed.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import load_file, save

from ..core.checkpoint import atomic_write_bytes, read_checkpoint_config, read_checkpoint_tensors, save_checkpoint


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: Dict[int, str]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's per-parameter state into named tensors + JSON scalars."""
    tensors, scalars = {}, {}
    for p, state in optimizer.state.items():
        name = names[id(p)]
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{name}/{key}"] = value
    return tensors, scalars


def restore_optimizer(optimizer: torch.optim.Optimizer, names: Dict[int, str], tensors: Dict[str, torch.Tensor],
                      scalars: dict) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            state = {}
            for key, value in tensors.items():
                if key.startswith(name + "/"):
                    state[key[len(name) + 1:]] = value.to(p.device)
            for key, value in scalars.items():
                if key.startswith(name + "/"):
                    state[key[len(name) + 1:]] = value
            if state:
                optimizer.state[p] = state


AVERAGED_FILE = "averaged.safetensors"


def save_state(run_dir: str, model, optimizer: Optional[torch.optim.Optimizer], param_names: Dict[int, str],
               counters: dict, metadata: dict, scheduler: Optional[dict] = None,
               averaged: Optional[Dict[str, torch.Tensor]] = None, config: Optional[dict] = None) -> str:
    """Write a complete state folder and point ``LATEST`` at it; returns its path.

    scheduler: the learning-rate scheduler's ``state_dict()`` (plain numbers and lists), stored in
    ``trainer_state.json`` under ``"scheduler"``. averaged: the running prompt average of the stage
    (``PromptAverager.state()``), stored in ``averaged.safetensors``. config: the run's training options
    (``config.resume_record``), stored under ``"config"``; a resumed run must have the same.
    """
    state_root = os.path.join(run_dir, "state")
    os.makedirs(state_root, exist_ok=True)
    name = f"s{counters['stage_index']}-epoch-{counters['epoch']:04d}"
    folder = os.path.join(state_root, name)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    tmp = folder + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    save_checkpoint(model, tmp, **metadata)
    opt_tensors, opt_scalars = optimizer_tensors(optimizer, param_names) if optimizer is not None else ({}, {})
    # safetensors' save_file writes mode 0600; atomic_write_bytes gives open()'s mode like every other run file
    atomic_write_bytes(os.path.join(tmp, "optimizer.safetensors"), save(opt_tensors))
    if averaged is not None:
        atomic_write_bytes(os.path.join(tmp, AVERAGED_FILE), save({k: v.contiguous() for k, v in averaged.items()}))
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        json.dump({"counters": counters, "optimizer_scalars": opt_scalars, "scheduler": scheduler, "config": config},
                  f, indent=1, sort_keys=True, allow_nan=False)
    os.replace(tmp, folder)
    atomic_write_bytes(os.path.join(state_root, "LATEST"), (name + "\n").encode())
    for other in os.listdir(state_root):
        path = os.path.join(state_root, other)
        if other not in (name, "LATEST") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
    return folder


def latest_state(run_dir: str) -> Optional[str]:
    """The newest complete state folder of a run, or None."""
    pointer = os.path.join(run_dir, "state", "LATEST")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        folder = os.path.join(run_dir, "state", f.read().strip())
    if not os.path.isfile(os.path.join(folder, "trainer_state.json")):
        raise ValueError(f"{pointer} names {folder}, which is not a complete training state")
    return folder


def load_state(folder: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], dict]:
    """(prompt tensors, optimizer tensors, trainer_state dict) of a state folder; the running prompt
    average, when saved, is ``state["averaged"]`` (tensors by name)."""
    prompts = read_checkpoint_tensors(folder, read_checkpoint_config(folder)["tensors_file"])
    opt_path = os.path.join(folder, "optimizer.safetensors")
    optimizer = load_file(opt_path) if os.path.isfile(opt_path) else {}
    with open(os.path.join(folder, "trainer_state.json")) as f:
        state = json.load(f)
    avg_path = os.path.join(folder, AVERAGED_FILE)
    if os.path.isfile(avg_path):
        state["averaged"] = load_file(avg_path)
    return prompts, optimizer, state

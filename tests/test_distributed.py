"""Data-parallel training on CPU: 2 processes (gloo) must equal one process with the same global batch.

Both ranks build the same random tiny model (seeded before building) and the same generated
segments; each takes its share of every global batch (EpochShardSampler) and DistributedDataParallel
averages the gradients of the ranks' weighted shares. With 9 segments and batch 4 the last batch has one
segment, so rank 1's share of it is empty and it must still join the collectives.
"""

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file, save_file

import opendas_encoder as oe
from conftest import make_square_segments
from opendas_encoder.data import ListSegmentDataset
from opendas_encoder.train import ScheduleConfig, TrainConfig, fit, prepare_segments, read_log
from opendas_encoder.train.config import RuntimeConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("red square", "green square", "blue square")
LABEL_SPACE = list(CLASSES) + ["orange square", "purple circle"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def segments() -> ListSegmentDataset:
    """9 segments (3 per class): with batch 4 the last global batch holds one segment."""
    return make_square_segments(n_per_class=3, classes=CLASSES, name="ddp-unit")


def train_tiny(run_dir: str) -> dict:
    """Two-stage fit of a seeded random tiny model, global batch 4; returns the final prompts."""
    torch.manual_seed(0)
    model = oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4))
    train = prepare_segments(segments(), model.preprocess, list(CLASSES), model.image_size, progress=False)
    config = TrainConfig(schedule=ScheduleConfig(batch_size=4, stage1_epochs=2, stage2_epochs=1, lr=0.05,
                                                 warmup_epochs=0),
                         runtime=RuntimeConfig(device="cpu"), output_dir=run_dir)
    fit(model, train, LABEL_SPACE, config, run_dir, progress=False)
    return model.learned_state_dict()


def _rank_process(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: join the gloo group, train, write its prompts to ``out_dir/rank{rank}.safetensors``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        prompts = train_tiny(os.path.join(out_dir, "run-ddp"))
        save_file(prompts, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    port = free_port()
    other = mp.get_context("spawn").Process(target=_rank_process, args=(1, 2, port, str(tmp_path)))
    other.start()  # rank 1 in a fresh process; this test process is rank 0 (saves one start-up)
    try:
        _rank_process(0, 2, port, str(tmp_path))
    finally:
        other.join(timeout=120)
    assert other.exitcode == 0
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    single = train_tiny(str(tmp_path / "run-single"))
    assert set(ranks[0]) == {"visual_prompts", "text_prompts"}
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # same all-reduced gradients on both ranks
        assert torch.allclose(ranks[0][name], single[name], atol=1e-5, rtol=0), name
    torch.manual_seed(0)
    start = oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4))
    assert not torch.allclose(start.visual_prompts, single["visual_prompts"], atol=1e-3)  # training moved them
    # rank 0 alone logs: 3 steps x (2 + 1) epochs, once
    assert len(read_log(str(tmp_path / "run-ddp"))) == len(read_log(str(tmp_path / "run-single"))) == 9
    assert os.path.isfile(tmp_path / "run-ddp" / "final" / "prompts.safetensors")


def _cli_config(tmp_path, name: str) -> str:
    from opendas_encoder.generated.world import world_negatives

    (tmp_path / "negatives.json").write_text(json.dumps(world_negatives()))
    cfg = {"name": name, "seed": 0, "model": {"name": "opendas-tiny-vit", "pretrained": None},
           # no low-rank updates: their dropout masks are drawn per rank (seed, step, rank), so with them a DDP run
           # equals a single-process one in distribution, not value for value
           "prompts": {"visual_tokens": 2, "text_tokens": 4, "lowrank_rank": 0},
           "data": {"train": {"name": "generated-world", "split": "train", "options": {"n_scenes": 4, "seed": 0}},
                    "test": {"name": "generated-world", "split": "test", "options": {"n_scenes": 2, "seed": 1}},
                    "negatives": "negatives.json"},
           "schedule": {"batch_size": 8, "stage1_epochs": 1, "stage2_epochs": 1, "warmup_epochs": 0, "lr": 0.05},
           "runtime": {"device": "cpu"}, "output_dir": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_torchrun_cli_train_matches_single_process(tmp_path):
    from opendas_encoder.cli import main

    ddp_cfg = _cli_config(tmp_path, "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "opendas_encoder.cli", "train", ddp_cfg, "--quiet", "--no-plots"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint:") == 1  # rank 0 alone reports
    assert main(["train", _cli_config(tmp_path, "single"), "--quiet", "--no-plots"]) == 0
    ddp = load_file(str(tmp_path / "ddp" / "final" / "prompts.safetensors"))
    single = load_file(str(tmp_path / "single" / "final" / "prompts.safetensors"))
    for name in single:
        assert torch.allclose(ddp[name], single[name], atol=1e-5, rtol=0), name
    ddp_log = read_log(str(tmp_path / "ddp"))
    assert [r["step"] for r in ddp_log] == [r["step"] for r in read_log(str(tmp_path / "single"))]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["adapted"]["acc"] == pytest.approx(
        json.loads((tmp_path / "single" / "results.json").read_text())["adapted"]["acc"])


@pytest.mark.parametrize("size,batch,world", [(9, 4, 2), (10, 4, 2), (11, 8, 4), (3, 4, 2)])
def test_rank_batches_together_are_exactly_the_single_process_batches(size, batch, world):
    from torch.utils.data import BatchSampler, DistributedSampler

    from opendas_encoder.train import EpochShardSampler

    seed, epoch = 1234, 3
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    single = [perm[k:k + batch] for k in range(0, size, batch)]  # one process, the trainer's order
    per_rank = []
    for rank in range(world):
        sampler = EpochShardSampler(size, world, rank, seed=seed)
        sampler.set_epoch(epoch)
        per_rank.append(list(BatchSampler(sampler, batch // world, drop_last=False)))
    for k, global_batch in enumerate(single):
        shares = [batches[k] if k < len(batches) else [] for batches in per_rank]
        assert sorted(sum(shares, [])) == sorted(global_batch)  # no sample lost or repeated
        for rank, share in enumerate(shares):
            assert share == global_batch[rank::world]  # the positions augmentation parameters are drawn for
    assert all(len(batches) <= len(single) for batches in per_rank)
    # torch's own DistributedSampler pads uneven sizes with repeated samples (why the subclass exists)
    padded = sum(len(list(DistributedSampler(range(size), world, r, seed=seed))) for r in range(world))
    assert padded == size + (-size) % world


def test_ddp_wraps_only_the_trainable_prompts(tmp_path):
    from torch.nn.parallel import DistributedDataParallel

    from opendas_encoder.train.config import Stage
    from opendas_encoder.train.trainer import StageObjective

    torch.manual_seed(0)
    model = oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4))
    model.set_trainable(visual=False, text=True)
    params = [p for p in model.parameters() if p.requires_grad]
    objective = StageObjective(model, params, Stage("text", 1, False, True, True), model.tokenizer(list(CLASSES)),
                               torch.tensor(100.0), 1.5)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(objective)
        assert [id(p) for p in ddp.parameters()] == [id(model.text_prompts)]  # the frozen base is outside DDP
        features = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
        loss, *_ = ddp(torch.tensor([0, 1, 2, 0]), features=features, lam=1.0)  # loss, ce, triplet, consistency
        loss.backward()
        assert model.text_prompts.grad is not None and model.text_prompts.grad.abs().sum() > 0
        zero, *_ = ddp(None)  # an empty share: zero loss, zero gradients, same all-reduce
        model.text_prompts.grad = None
        zero.backward()
        assert float(zero.detach()) == 0.0 and torch.count_nonzero(model.text_prompts.grad) == 0
        assert all(p.grad is None for p in model.clip.parameters())
    finally:
        dist.destroy_process_group()

"""Several training processes (gloo on CPU, as torchrun / accelerate launch start them): ddp, and
zero2/fsdp sharding through FSDP2, against one process that accumulates the same micro-batches."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fastwam.checkpoint import CheckpointError
from fastwam.config import Config, preset
from fastwam.policy import Policy
from fastwam.train import build_trainer, latest_checkpoint
from test_train import write_dot_dataset

PROCESSES = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dot_dataset(tmp_path_factory.mktemp("sharded") / "ds", 16)


def config(steps=4, **train) -> Config:
    cfg = preset("tiny")
    # warmup past the last step: the learning rate at each step does not depend on train.steps, so a
    # run stopped at step 2 and resumed to 4 is the 4-step run
    return cfg.replace(train=dataclasses.replace(cfg.train, steps=steps, batch_size=2, warmup=10, log_every=1,
                                                 checkpoint_every=2, **train))


def launch(cfg: Config | None, data, out, *extra: str) -> str:
    """``fastwam train`` in PROCESSES processes, as torchrun starts them (``cfg`` None: no preset)."""
    out.mkdir(parents=True, exist_ok=True)
    preset_args = []
    if cfg is not None:
        yaml = out.parent / f"{out.name}.yaml"
        cfg.save(yaml)
        preset_args = ["--preset", str(yaml)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={PROCESSES}", f"--master-port={port}",
           "-m", "fastwam.cli", "train", "--data", str(data), *preset_args, "--out", str(out), *extra]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint: ") == 1  # one process reports
    return done.stderr


def losses(run) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def one_process(cfg: Config, data, out):
    """The reference: one process accumulating the PROCESSES micro-batches the processes draw."""
    from accelerate.state import AcceleratorState

    cfg = cfg.replace(train=dataclasses.replace(cfg.train, accumulate=PROCESSES * cfg.train.accumulate, strategy="ddp"))
    AcceleratorState._reset_state(True)  # accelerate keeps one state per process: this run's precision
    try:
        build_trainer(cfg, data, out, progress=False).run()
    finally:
        AcceleratorState._reset_state(True)
    return out


@pytest.mark.parametrize("strategy, train, tolerance", [
    ("ddp", {"accumulate": 2}, 1e-5),
    ("zero2", {"ema": 0.9}, 1e-5),
    ("fsdp", {"ema": 0.9, "activation_checkpointing": True, "accumulate": 2}, 1e-5),
    ("fsdp", {"mixed_precision": "bf16"}, 1e-2),  # both bf16 autocast; FSDP also keeps the gathered weights in bf16
], ids=["ddp-accumulate", "zero2-ema", "fsdp-ema-checkpointing-accumulate", "fsdp-bf16"])
def test_processes_repeat_the_one_process_run(dataset, tmp_path, strategy, train, tolerance):
    cfg = config(**train, strategy=strategy)
    launch(cfg, dataset, tmp_path / "many")
    one_process(cfg, dataset, tmp_path / "one")
    many, one = losses(tmp_path / "many"), losses(tmp_path / "one")
    assert [s for s, _ in many] == [1, 2, 3, 4]
    assert [loss for _, loss in many] == pytest.approx([loss for _, loss in one], rel=tolerance)
    assert many[0][1] != many[-1][1]  # it trained
    # the consolidated inference weights (the EMA where kept) match, and a Policy loads them
    a = load_file(latest_checkpoint(tmp_path / "many") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    assert a.keys() == b.keys()
    weight_tolerance = 1e-4 if tolerance < 1e-3 else 5e-2
    assert all(torch.allclose(a[k], b[k], atol=weight_tolerance) for k in a), \
        max((a[k] - b[k]).abs().max().item() for k in a)
    Policy.from_checkpoint(tmp_path / "many")
    shards = sorted(p.name for p in latest_checkpoint(tmp_path / "many").glob("train_state*"))
    assert shards == (["train_state.pt"] if strategy == "ddp" else
                      [f"train_state.shard-{r:05d}-of-{PROCESSES:05d}.pt" for r in range(PROCESSES)])


def test_a_sharded_run_resumes_and_continues_identically(dataset, tmp_path):
    cfg = config(strategy="fsdp", ema=0.9)
    launch(cfg, dataset, tmp_path / "full")
    launch(config(steps=2, strategy="fsdp", ema=0.9), dataset, tmp_path / "cut")  # as if killed after step 2
    launch(cfg, dataset, tmp_path / "cut", "--resume")
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a = load_file(latest_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "cut") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # each process holds half of the weights (the plan's parameters / GPUs), together all of them
    step = latest_checkpoint(tmp_path / "cut")
    held = [sum(t.numel() for t in torch.load(step / f"train_state.shard-{r:05d}-of-00002.pt",
                                              weights_only=True)["model"].values()) for r in range(PROCESSES)]
    assert sum(held) == sum(t.numel() for t in a.values()) and abs(held[0] - held[1]) < 0.02 * sum(held)
    # one process's shard of the newest checkpoint damaged: all processes fall back to step 2 together
    (step / "train_state.shard-00001-of-00002.pt").write_bytes(b"damaged")
    err = launch(cfg, dataset, tmp_path / "cut", "--resume")
    assert "step-0000004/train_state.shard-00001-of-00002.pt: damaged (SHA-256" in err
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    # one process cannot take the shards of two: the error names what the checkpoint holds
    with pytest.raises(CheckpointError, match=r"train_state.pt: missing \(it holds 2 shards, train_state.shard-00000-of-"
                                              r"00002.pt \.\.\.: resume with train.strategy zero2 or fsdp in 2 processes\)"):
        build_trainer(config(strategy="ddp", ema=0.9), dataset, tmp_path / "cut", progress=False, resume=True,
                      allow_changes=True)


def test_sharding_needs_several_processes(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"train.strategy fsdp: sharding needs several processes"):
        build_trainer(config(strategy="fsdp"), dataset, tmp_path / "r", progress=False)


def test_activation_checkpointing_keeps_loss_and_gradients(dataset, tmp_path):
    from test_model import randomized

    cfg = config()
    batch = build_trainer(cfg, dataset, tmp_path / "r", progress=False).data.batch(torch.arange(3))
    model = randomized(cfg.model).train()  # every gate open: no gradient is zero by construction
    results = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad()
        loss = model.loss(batch, generator=torch.Generator().manual_seed(1)).total
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (plain, grads), (recomputed, grads_ac) = results
    assert plain == recomputed
    assert all(g.abs().sum() > 0 for g in grads[-8:])
    assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(grads, grads_ac))


def test_a_sharded_distillation_keeps_the_teachers_video_expert(dataset, tmp_path):
    teacher = tmp_path / "teacher"
    build_trainer(config(steps=2), dataset, teacher, progress=False).run()
    student = tmp_path / "student"
    launch(None, dataset, student, "--distill-from", str(teacher), "--student-steps", "1", "--steps", "2",
           "--strategy", "fsdp")
    before = load_file(latest_checkpoint(teacher) / "model.safetensors")
    after = load_file(latest_checkpoint(student) / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("video."))  # frozen, shared
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("action."))  # taught
    assert Policy.from_checkpoint(student).cfg.model.action_flow.steps == 1

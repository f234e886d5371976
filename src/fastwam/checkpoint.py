"""Checkpoint I/O, in one place for train, policy, eval and serve.

A run directory holds ``checkpoints/step-XXXXXXX/``, each complete in itself:

- ``model.safetensors``: the inference weights (the EMA when training kept one);
- ``config.yaml``, ``stats.json``, ``data.json``: what a policy needs besides the weights
  (``write_run_files``);
- ``train_state.pt``: what resuming needs (step, weights, optimizer, schedule, EMA, RNG), tensors
  and plain containers only, loaded with ``torch.load(weights_only=True)``: never unpickled code;
  sharded training (``train.strategy`` zero2/fsdp) writes one per process instead,
  ``train_state.shard-RRRRR-of-WWWWW.pt``, each holding that process's shards;
- ``checksums.json``: the SHA-256 of every file above, written last and verified on load, so a
  damaged or truncated file is named instead of loading silently (checkpoints written before
  checksums existed have none and load unverified).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch

from fastwam.checks import file_sha256

CHECKPOINTS = "checkpoints"
CHECKSUMS = "checksums.json"
TRAIN_STATE = "train_state.pt"
RUN_LOCK = "train.lock"
VERIFIED_ON_RESUME = ("config.yaml", "model.safetensors", "stats.json")  # besides the training state itself


class CheckpointError(ValueError):
    """A checkpoint file that is missing, damaged or does not fit; the message names the file."""


def write_run_files(directory: Path, cfg, normalizer, data_info: dict) -> None:
    """config.yaml, stats.json and data.json: what a policy needs besides the weights."""
    cfg.save(directory / "config.yaml")
    normalizer.save(directory / "stats.json")
    (directory / "data.json").write_text(json.dumps(data_info, indent=1))


sha256 = file_sha256  # a checkpoint file's digest

def write_checksums(directory: Path, known: dict[str, str] | None = None) -> None:
    """checksums.json for every other file of a checkpoint directory (``known``: digests already
    taken, e.g. by the processes that wrote their own shards)."""
    known = known or {}
    sums = {p.name: known.get(p.name) or sha256(p) for p in sorted(directory.iterdir())
            if p.is_file() and p.name != CHECKSUMS}
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n")


def verify(directory: Path, *names: str) -> None:
    """Check the named files of a checkpoint against its checksums.json (none: an older checkpoint)."""
    sums_path = directory / CHECKSUMS
    if not sums_path.is_file():
        return
    try:
        sums = json.loads(sums_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{sums_path}: damaged ({e})") from None
    for name in names:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if name not in sums:
            raise CheckpointError(f"{path}: not in {sums_path} (written after the checkpoint)")
        got = sha256(path)
        if got != sums[name]:
            raise CheckpointError(f"{path}: damaged (SHA-256 {got[:12]}..., {CHECKSUMS} records {sums[name][:12]}...)")


def checkpoints(run: str | Path) -> list[Path]:
    """A run's checkpoint directories, oldest first."""
    return sorted((Path(run) / CHECKPOINTS).glob("step-???????"))


def latest_checkpoint(run: str | Path) -> Path:
    """The newest checkpoint of a run directory (or the directory itself if it is one)."""
    run = Path(run)
    if (run / "model.safetensors").is_file():
        return run
    found = checkpoints(run)
    if not found:
        raise FileNotFoundError(f"{run}: no checkpoint (expected {run / CHECKPOINTS}/step-XXXXXXX/model.safetensors)")
    return found[-1]


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """Build the model of a checkpoint's config and load its verified weights strictly -> (WAM, Config)."""
    from safetensors.torch import load_file

    from fastwam.config import Config
    from fastwam.model import WAM

    path = latest_checkpoint(checkpoint)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing model weights")
    verify(path, "model.safetensors", "config.yaml", "stats.json")
    cfg = Config.load(path / "config.yaml")
    model = WAM(cfg.model)
    state = load_file(weights)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(f"{weights}: does not match the config's model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    damaged = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if damaged:
        raise CheckpointError(f"{weights}: non-finite values in {damaged[:5]} ({len(damaged)} tensors): damaged weights")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), cfg


def load_training_state(path: Path, name: str = TRAIN_STATE) -> dict:
    """A checkpoint's verified training state ``name`` (tensors and plain containers only)."""
    if not (path / name).is_file():
        raise CheckpointError(f"{path / name}: missing{_layout_hint(path, name)}")
    verify(path, name, *VERIFIED_ON_RESUME)  # what a resume continues from and what it serves, as load_model does
    try:
        return torch.load(path / name, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files: torch raises several kinds
        raise CheckpointError(f"{path / name}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _layout_hint(path: Path, name: str) -> str:
    """What training state ``path`` holds instead of ``name`` (the other kind of strategy, or
    another number of processes)."""
    shards = sorted(p.name for p in path.glob("train_state.shard-*.pt"))
    if shards:
        return (f" (it holds {len(shards)} shards, {shards[0]} ...: resume with train.strategy zero2 or fsdp "
                f"in {len(shards)} processes)")
    if (path / TRAIN_STATE).is_file():
        return f" (it holds {TRAIN_STATE}, unsharded: resume with train.strategy ddp, in any number of processes)"
    return ""


def newest_readable_config(run: Path) -> Path:
    """The newest checkpoint whose config.yaml verifies and parses (what a resume compares against)."""
    from fastwam.config import Config

    problems = []
    for path in reversed(checkpoints(run)):
        try:
            verify(path, "config.yaml")
            Config.load(path / "config.yaml")
            return path
        except (ValueError, OSError) as e:
            problems.append(str(e))
    raise CheckpointError(f"{run}: no checkpoint to resume from ({'; '.join(problems) or 'none written'})")


def newest_intact_training_state(run: Path, name: str = TRAIN_STATE,
                                 agree: Callable[[bool], bool] | None = None) -> tuple[Path, dict, list[str]]:
    """The newest checkpoint whose training state ``name`` loads -> (path, state, what was wrong with
    newer ones). ``agree(ok) -> all ok``: processes that each load their own shard pick the same one."""
    problems = []
    for path in reversed(checkpoints(run)):
        try:
            state, problem = load_training_state(path, name), None
        except (CheckpointError, OSError) as e:  # every process must reach ``agree``
            state, problem = None, str(e)
        if agree is not None and not agree(state is not None):
            problems.append(problem or f"{path}: another process's training-state shard is damaged or missing")
            continue
        if state is not None:
            return path, state, problems
        problems.append(problem)
    detail = "; ".join(problems) or "none written"
    raise CheckpointError(f"{run}: no checkpoint to resume from ({detail})")


@contextlib.contextmanager
def run_lock(run: str | Path) -> Iterator[Path]:
    """Hold ``<run>/train.lock`` while inside: one writer per run directory. A second ``fastwam train``
    on the same ``--out`` is refused, naming the holder (pid, host, start, command). The lock is the
    kernel's (``flock``): it dies with its process, so a killed run never leaves a stale one."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    path = run / RUN_LOCK
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that wrote nothing yet"
        handle.close()
        raise ValueError(f"{run}: another fastwam train is writing this run ({holder}; {path}); wait for it to "
                         "finish or choose another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}\n")
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock

"""Open-loop action error: a checkpoint's action chunks against the ones a dataset recorded.

For sampled windows of a LeRobot dataset (best: demonstrations on layouts the checkpoint never
trained on, e.g. MetaWorld's validation layouts, ``fastwam collect metaworld --seed 1000``), the
model predicts each window's chunk from its observation under every inference condition it has,
all from the same action noise:

- its modes (``action_only``, ``joint``, ``video_then_action``), each as ``fastwam eval`` runs it;
- ``true_future``, for models whose actions read a future (IDM, dual): the actions given the
  future latents that really followed instead of imagined ones (``WAM.predict_actions(future=)``).
  ``video_then_action`` minus ``true_future`` is what imagining the future costs the actions.

Error: mean squared error over the chunk's valid steps, in the checkpoint's normalized action
units, per sample. Means and paired differences carry 95 % intervals over episodes (a sample's
neighbours in its episode are not independent draws): the t interval of the per-episode means. For
``video_then_action`` the imagined future's own error (latent MSE against the true future) is
recorded too, and its Spearman correlation across samples with the action error it causes.

    fastwam offline --checkpoint runs/mt10_idm_s0 --data data/mt10_heldout --json idm.json
    fastwam offline --pair idm.json:true_future joint.json:joint   # two checkpoints, paired over the windows
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

TRUE_FUTURE = "true_future"


def conditions(modes: tuple[str, ...]) -> list[str]:
    """The conditions a model with inference ``modes`` is measured under (its modes, then the oracle)."""
    return [*modes, *([TRUE_FUTURE] if "video_then_action" in modes else [])]


def sample_indices(total: int, samples: int) -> np.ndarray:
    """``samples`` window indices spread evenly over ``total`` (all of them when there are fewer)."""
    if total < 1:
        raise ValueError("the dataset has no windows to measure")
    if samples < 1:
        raise ValueError(f"samples: expected >= 1, got {samples}")
    if samples >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, samples).round().astype(np.int64))


@torch.no_grad()
def chunk_errors(model, batch, seed: int) -> dict[str, torch.Tensor]:
    """Per-sample action MSE (B,) under each condition of ``model``, all from one action noise; for
    ``video_then_action`` also ``future_mse`` (B,), the imagined future's latent MSE against the true one."""
    cfg, device = model.cfg, batch.actions.device
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn(batch.actions.shape, generator=generator, device=device)
    video_seed = int(torch.randint(2**62, (1,), generator=generator, device=device))
    observation = (batch.context, batch.state, batch.text)
    valid = (~batch.action_pad).float()  # (B, S)

    def error(actions):  # (B, S, A) -> (B,)
        per_step = (actions - batch.actions).pow(2).mean(-1)
        return (per_step * valid).sum(1) / valid.sum(1).clamp(min=1.0)

    def idm_actions(future):  # the actions of IDM inference, given the future they read
        return model.predict_actions(*observation, noise=noise, mode="video_then_action", future=future)

    out = {}
    for condition in conditions(cfg.variant.modes):
        if condition == TRUE_FUTURE:
            out[condition] = error(idm_actions(batch.future))
        elif condition == "video_then_action":
            future = model.imagine(*observation, generator=torch.Generator(device).manual_seed(video_seed))  # (B, Tf, C, h, w)
            out[condition] = error(idm_actions(future))
            future_valid = (~batch.future_pad).float()  # (B, Tf)
            per_frame = (future - batch.future).pow(2).flatten(2).mean(-1)
            out["future_mse"] = (per_frame * future_valid).sum(1) / future_valid.sum(1).clamp(min=1.0)
        else:
            out[condition] = error(model.predict_actions(*observation, noise=noise, mode=condition,
                                                         generator=torch.Generator(device).manual_seed(video_seed)))
    return out


def episode_interval(values: np.ndarray, episodes: np.ndarray) -> dict:
    """Mean over samples and the 95 % t interval of the per-episode means (samples clustered by episode)."""
    means = np.array([values[episodes == e].mean() for e in np.unique(episodes)])
    n = len(means)
    half = float(1.96 * means.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    centre = float(means.mean())
    return {"mean": float(values.mean()), "episode_mean": centre, "low": centre - half, "high": centre + half,
            "episodes": n, "samples": len(values)}


def summarize(errors: dict[str, np.ndarray], episodes: np.ndarray, tasks: list[str]) -> dict:
    """Per condition: overall (with interval) and per task; paired differences against the first
    condition and, with the oracle, imagined minus true future; the future error's correlation with
    what it costs the actions."""
    from scipy.stats import spearmanr

    names = [c for c in errors if c != "future_mse"]
    record = {"conditions": {}, "differences": {}}
    for c in names:
        record["conditions"][c] = {
            **episode_interval(errors[c], episodes),
            "per_task": {t: float(errors[c][np.array(tasks) == t].mean()) for t in sorted(set(tasks))}}
    pairs = [(c, names[0]) for c in names[1:] if (c, names[0]) != (TRUE_FUTURE, "video_then_action")]
    if TRUE_FUTURE in errors:
        pairs.append(("video_then_action", TRUE_FUTURE))
    for a, b in pairs:
        record["differences"][f"{a} - {b}"] = episode_interval(errors[a] - errors[b], episodes)
    if "future_mse" in errors:
        record["future_mse"] = episode_interval(errors["future_mse"], episodes)
        gap = errors["video_then_action"] - errors[TRUE_FUTURE] if TRUE_FUTURE in errors else errors["video_then_action"]
        if np.ptp(errors["future_mse"]) == 0 or np.ptp(gap) == 0:  # a constant side: no rank correlation
            rho = p = None
        else:
            rho, p = (float(x) for x in spearmanr(errors["future_mse"], gap))
        record["future_mse_vs_action_cost"] = {"spearman": rho, "p": p, "n": len(gap)}
    return record


def paired(a: dict, condition_a: str, b: dict, condition_b: str) -> dict:
    """``condition_a`` of record ``a`` minus ``condition_b`` of record ``b``, paired over their windows
    (two checkpoints measured on the same dataset, windows and seed: the same targets and noise)."""
    for key in ("dataset_sha256", "seed", "device", "sample_episode"):
        if a.get(key) != b.get(key):
            raise ValueError(f"{key}: the two records were not measured on the same windows "
                             f"({str(a.get(key))[:40]} against {str(b.get(key))[:40]}); expected one dataset, seed and --samples")
    for record, condition in ((a, condition_a), (b, condition_b)):
        if condition not in record["per_sample"] or condition == "future_mse":
            raise ValueError(f"condition {condition!r}: expected one of {list(record['conditions'])} "
                             f"({record['checkpoint']})")
    difference = np.asarray(a["per_sample"][condition_a]) - np.asarray(b["per_sample"][condition_b])
    return episode_interval(difference, np.asarray(a["sample_episode"]))


def measure(checkpoint: str | Path, data: str | Path, samples: int = 400, batch_size: int = 32, seed: int = 0,
            device: str = "cpu", progress: bool = True) -> dict:
    """The open-loop record of ``checkpoint`` on the dataset at ``data`` (module docstring)."""
    from tqdm import tqdm

    from fastwam import code_version
    from fastwam.checkpoint import latest_checkpoint, load_model, sha256
    from fastwam.data.lerobot import LeRobotDataset
    from fastwam.data.normalize import Normalizer
    from fastwam.data.windows import ACTION_KEY, STATE_KEY
    from fastwam.evaluate import run_info
    from fastwam.train import load_training_data

    path = latest_checkpoint(checkpoint)
    model, cfg = load_model(path, device)
    normalizer = Normalizer.load(path / "stats.json")  # the checkpoint's units, not the dataset's
    dataset = LeRobotDataset(data, require=(STATE_KEY, ACTION_KEY))
    training = load_training_data(cfg, dataset, normalizer, progress)
    indices = sample_indices(len(training), samples)
    episode_of = np.asarray(dataset.column("episode_index"))[training.rows.numpy()]
    task_of = [dataset.tasks[i] for i in training.task_index[training.rows].tolist()]

    errors: dict[str, list] = {}
    for start in tqdm(range(0, len(indices), batch_size), desc="open loop", disable=not progress):
        chunk = torch.from_numpy(indices[start:start + batch_size])
        for name, value in chunk_errors(model, training.batch(chunk).to(device), seed + start).items():
            errors.setdefault(name, []).append(value.float().cpu().numpy())
    errors = {k: np.concatenate(v).astype(np.float64) for k, v in errors.items()}
    for name, values in errors.items():
        if not np.isfinite(values).all():
            raise ValueError(f"{path}: non-finite {name} errors on {data}: the model's outputs are not finite")
    info, content = run_info(path), dataset.content_sha256()
    record = summarize(errors, episode_of[indices], [task_of[i] for i in indices])
    return {"checkpoint": str(path), "weights_sha256": sha256(path / "model.safetensors"),
            "variant": cfg.model.variant.mask, "dataset": str(Path(data).resolve()), "dataset_sha256": content,
            "trained_on_this_data": info.get("dataset_sha256") == content, "seed": seed, "device": str(device),
            "code": code_version(),
            **record, "per_sample": {k: v.tolist() for k, v in errors.items()},
            "sample_episode": episode_of[indices].tolist()}


def format_record(record: dict) -> str:
    lines = [f"{record['checkpoint']} on {record['dataset']} ({'its training data' if record['trained_on_this_data'] else 'not its training data'}): "
             "action MSE (normalized units), mean of the episodes' means, 95 % over episodes"]
    for name, c in record["conditions"].items():
        lines.append(f"  {name:<18} {c['episode_mean']:.4f}  ({c['low']:.4f}-{c['high']:.4f}), {c['samples']} samples, {c['episodes']} episodes")
    for name, d in record["differences"].items():
        lines.append(f"  {name:<36} {d['episode_mean']:+.4f} ({d['low']:+.4f} to {d['high']:+.4f})")
    if "future_mse" in record:
        f, r = record["future_mse"], record["future_mse_vs_action_cost"]
        rank = "undefined (a side is constant)" if r["spearman"] is None else f"{r['spearman']:.2f} (p {r['p']:.2g}, n {r['n']})"
        lines.append(f"  imagined future latent MSE {f['mean']:.4f}; Spearman with the action cost {rank}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="run directory or checkpoint directory (with --data)")
    parser.add_argument("--data", help="LeRobot dataset whose recorded chunks are the targets")
    parser.add_argument("--pair", nargs=2, metavar="RECORD.json:CONDITION",
                        help="instead of measuring: the first record's condition minus the second's, paired over "
                             "their windows (two records of one dataset, --samples and --seed)")
    parser.add_argument("--samples", type=int, default=400, help="windows measured, spread evenly (default 400)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="action and video noise")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (the noise streams are the device's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", default="", help="write the record here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _pair(args: argparse.Namespace) -> int:
    sides = []
    for spec in args.pair:
        path, _, condition = spec.rpartition(":")
        if not path:
            raise ValueError(f"--pair {spec!r}: expected RECORD.json:CONDITION")
        sides.append((json.loads(Path(path).read_text()), condition))
    d = paired(sides[0][0], sides[0][1], sides[1][0], sides[1][1])
    print(f"{args.pair[0]} - {args.pair[1]}: {d['episode_mean']:+.4f} ({d['low']:+.4f} to {d['high']:+.4f}), "
          f"95 % over {d['episodes']} episodes, {d['samples']} windows paired")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pair:
        if args.checkpoint or args.data:
            raise ValueError("--pair compares two records; it takes no --checkpoint or --data")
        return _pair(args)
    if not (args.checkpoint and args.data):
        raise ValueError("--checkpoint and --data are required (or --pair RECORD.json:CONDITION RECORD.json:CONDITION)")
    if args.threads:
        torch.set_num_threads(args.threads)
    record = measure(args.checkpoint, args.data, args.samples, args.batch_size, args.seed, args.device,
                     progress=not args.quiet)
    print(format_record(record))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0

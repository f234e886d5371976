"""Open-loop action error: a checkpoint's action chunks against the ones a dataset recorded.

For sampled windows of a LeRobot dataset (best: demonstrations on layouts the checkpoint never
trained on, e.g. MetaWorld's validation layouts, ``fastwam collect metaworld --seed 1000``), the
model predicts each window's chunk from its observation under every inference condition it has,
each window from noise drawn with a seed of its own (``window_noise``: the same in every condition,
for every checkpoint and batch size, so that records of one dataset and seed pair window by window):

- its modes (``action_only``, ``joint``, ``video_then_action``), each as ``fastwam eval`` runs it;
- ``true_future``, for models whose actions read a future (IDM, dual): the actions given the
  future latents that really followed instead of imagined ones (``WAM.predict_actions(future=)``).
  ``video_then_action`` minus ``true_future`` is what imagining the future costs the actions.

Error: mean squared error over the chunk's valid steps, in the checkpoint's normalized action
units, per window. Means and paired differences carry 95 % intervals over episodes (a window's
neighbours in its episode are not independent draws): the t interval of the per-episode means. For
``video_then_action`` the imagined future's own error (latent MSE against the true future, over its
frames within the episode) is recorded too, and its Spearman correlation across windows with the
action error it causes.

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

from fastwam.checks import check_device, check_output_file, check_threads

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


SEED_STRIDE = 2_654_435_761  # Knuth's multiplicative constant: seeds' window streams spread over 32 bits


def window_seed(seed: int, window: int) -> int:
    """The generator seed of one window under ``--seed``: 32 bits, because torch's CPU generator keeps
    only the low 32 bits of a seed (``seed * 2**32 + i`` gave every --seed the same noise on a CPU).
    Seed 0 gives the window's index, as every record before this change used."""
    return (seed * SEED_STRIDE + window) % 2**32


def window_noise(seeds: list[int], action_shape: tuple[int, ...], future_shape: tuple[int, ...] | None,
                 device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each window's action noise (S, A) and video noise (Tf, C, h, w), drawn in that order from a
    generator seeded with the window's own seed (so a window's noise does not depend on its batch)
    -> (B, S, A), (B, Tf, C, h, w) or None."""
    actions, futures = [], []
    for seed in seeds:
        generator = torch.Generator(device).manual_seed(seed)
        actions.append(torch.randn(action_shape, generator=generator, device=device))
        if future_shape is not None:
            futures.append(torch.randn(future_shape, generator=generator, device=device))
    return torch.stack(actions), (torch.stack(futures) if futures else None)


def masked_mean(per_step: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T) values, (B, T) bool -> (B,) mean over the valid steps; NaN where none is valid."""
    count = valid.sum(1)
    mean = (per_step * valid).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


@torch.no_grad()
def chunk_errors(model, batch, seeds: list[int]) -> dict[str, torch.Tensor]:
    """Per-window action MSE (B,) under each condition of ``model``, all from each window's noise
    (``window_noise``); for ``video_then_action`` also ``future_mse`` (B,), the imagined future's
    latent MSE against the true one over its frames within the episode (NaN where none is)."""
    cfg = model.cfg
    B = batch.actions.shape[0]
    future_shape = (cfg.future_frames, *cfg.latent_shape) if cfg.variant.has_future else None
    noise, video_noise = window_noise(seeds, tuple(batch.actions.shape[1:]), future_shape, batch.actions.device)
    observation = (batch.context, batch.state, batch.text)

    def error(actions):  # (B, S, A) -> (B,)
        return masked_mean((actions - batch.actions).pow(2).mean(-1), ~batch.action_pad)

    def idm_actions(future):  # the actions of IDM inference, given the future they read
        return model.predict_actions(*observation, noise=noise, mode="video_then_action", future=future)

    out = {}
    for condition in conditions(cfg.variant.modes):
        if condition == "action_only":
            out[condition] = error(model.predict_actions(*observation, noise=noise, mode=condition))
        elif condition == "joint":  # as predict_actions(mode="joint"), with this window's video noise
            out[condition] = error(model.sample_joint(model.prefill(*observation), noise, video_noise,
                                                      cfg.action_flow.steps)[0])
        elif condition == "video_then_action":  # as predict_actions' IDM mode, with this window's video noise
            future = model.sample_future(model.prefill(*observation), video_noise, cfg.video_flow.steps)  # (B, Tf, C, h, w)
            out[condition] = error(idm_actions(future))
            out["future_mse"] = masked_mean((future - batch.future).pow(2).reshape(B, cfg.future_frames, -1).mean(-1),
                                            ~batch.future_pad)
        else:
            out[condition] = error(idm_actions(batch.future))
    return out


def episode_interval(values: np.ndarray, episodes: np.ndarray) -> dict:
    """The mean of the per-episode means and its 95 % t interval over episodes (windows clustered by
    episode), beside the plain mean over windows; NaN values (no valid frame) are left out."""
    from scipy.stats import t

    finite = np.isfinite(values)
    values, episodes = values[finite], episodes[finite]
    means = np.array([values[episodes == e].mean() for e in np.unique(episodes)])
    n = len(means)
    centre = float(means.mean())
    if n > 1:
        half = float(t.ppf(0.975, n - 1) * means.std(ddof=1) / math.sqrt(n))
        low, high = centre - half, centre + half
    else:
        low = high = None  # one episode: no interval
    return {"episode_mean": centre, "low": low, "high": high, "sample_mean": float(values.mean()),
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
    if "future_mse" in errors:  # with video_then_action, and so with the oracle
        record["future_mse"] = episode_interval(errors["future_mse"], episodes)
        scored = np.isfinite(errors["future_mse"])
        imagined, gap = errors["future_mse"][scored], (errors["video_then_action"] - errors[TRUE_FUTURE])[scored]
        if len(gap) < 3 or np.ptp(imagined) == 0 or np.ptp(gap) == 0:  # a constant side: no rank correlation
            rho = p = None
        else:
            rho, p = (float(x) for x in spearmanr(imagined, gap))
        # p treats windows as independent draws (they are clustered by episode): a rough guide only
        record["future_mse_vs_action_cost"] = {"spearman": rho, "p_windows_independent": p, "n": int(len(gap))}
    return record


PAIRED_ON = ("dataset_sha256", "targets", "seed", "device", "sample_window")  # what two paired records share


def paired(a: dict, condition_a: str, b: dict, condition_b: str, names: tuple[str, str] = ("first", "second")) -> dict:
    """``condition_a`` of record ``a`` minus ``condition_b`` of record ``b``, paired over their windows
    (two checkpoints measured on the same windows of one dataset, in the same units and with the same
    noise). ``names``: the records' files, for the errors."""
    for key in PAIRED_ON:
        if a.get(key) != b.get(key):
            got = [r.get(key) for r in (a, b)]
            shown = [f"{len(g)} windows" if isinstance(g, list) else str(g)[:40] for g in got]
            raise ValueError(f"{names[0]} and {names[1]}: {key} differs ({shown[0]} against {shown[1]}); a pair needs "
                             "one dataset, checkpoint units and window config, --samples, --seed and --device")
    for record, condition, name in ((a, condition_a, names[0]), (b, condition_b, names[1])):
        if condition not in record["conditions"]:
            raise ValueError(f"{name}: condition {condition!r}: expected one of {list(record['conditions'])}")
    difference = _values(a, condition_a, names[0]) - _values(b, condition_b, names[1])
    return episode_interval(difference, np.asarray(a["sample_episode"]))


def _values(record: dict, condition: str, name: str) -> np.ndarray:
    """A record's per-window errors of one condition, one finite number per window of ``sample_episode``."""
    episodes, values = record.get("sample_episode"), (record.get("per_sample") or {}).get(condition)
    if not isinstance(episodes, list) or not isinstance(values, list) or len(values) != len(episodes):
        raise ValueError(f"{name}: per_sample[{condition!r}] and sample_episode must be lists of one entry per "
                         f"window, got {len(values) if isinstance(values, list) else values!r:.20} and "
                         f"{len(episodes) if isinstance(episodes, list) else episodes!r:.20}")
    bad = [i for i, v in enumerate(values) if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name}: per_sample[{condition!r}][{bad[0]}] is {values[bad[0]]!r}: expected a finite error "
                         f"for every window ({len(bad)} are not)")
    return np.asarray(values, dtype=np.float64)


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

    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    path = latest_checkpoint(checkpoint)
    model, cfg = load_model(path, device)
    normalizer = Normalizer.load(path / "stats.json")  # the checkpoint's units, not the dataset's
    dataset = LeRobotDataset(data, require=(STATE_KEY, ACTION_KEY))
    training = load_training_data(cfg, dataset, normalizer, progress)
    if len(training) == 0:
        raise ValueError(f"{data}: no windows to measure")
    indices = sample_indices(len(training), samples)
    episode_of = np.asarray(dataset.column("episode_index"))[training.rows.numpy()]
    task_of = [dataset.tasks[i] for i in training.task_index[training.rows].tolist()]

    errors: dict[str, list] = {}
    for start in tqdm(range(0, len(indices), batch_size), desc="open loop", disable=not progress):
        window = indices[start:start + batch_size]
        seeds = [window_seed(seed, int(i)) for i in window]
        for name, value in chunk_errors(model, training.batch(torch.from_numpy(window)).to(device), seeds).items():
            errors.setdefault(name, []).append(value.float().cpu().numpy())
    errors = {k: np.concatenate(v).astype(np.float64) for k, v in errors.items()}
    for name, values in errors.items():
        if name != "future_mse" and not np.isfinite(values).all():
            raise ValueError(f"{path}: non-finite {name} errors on {data}: the model's outputs are not finite")
    info, content = run_info(path), dataset.content_sha256()
    m = cfg.model
    targets = {"stats_sha256": sha256(path / "stats.json"), "chunk": m.chunk, "context_frames": m.context_frames,
               "future_frames": m.future_frames, "frame_stride": cfg.data.frame_stride}
    record = summarize(errors, episode_of[indices], [task_of[i] for i in indices])
    return {"checkpoint": str(path), "weights_sha256": sha256(path / "model.safetensors"),
            "variant": m.variant.mask, "dataset": str(Path(data).resolve()), "dataset_sha256": content,
            "trained_on_this_data": info.get("dataset_sha256") == content, "targets": targets, "seed": seed,
            "noise": "per window i: torch.Generator(device).manual_seed((seed * 2654435761 + i) % 2**32), actions then video",
            "device": str(torch.device(device)), "code": code_version(),
            **record, "per_sample": {k: [v if math.isfinite(v) else None for v in values.tolist()]
                                     for k, values in errors.items()},
            "sample_window": indices.tolist(), "sample_episode": episode_of[indices].tolist()}


def format_record(record: dict) -> str:
    def interval(d, sign=""):
        if d["low"] is None:
            return f"{d['episode_mean']:{sign}.4f} (one episode: no interval)"
        return f"{d['episode_mean']:{sign}.4f} ({d['low']:{sign}.4f} to {d['high']:{sign}.4f})"

    data = "its training data" if record["trained_on_this_data"] else "not its training data"
    lines = [f"{record['checkpoint']} on {record['dataset']} ({data}): action MSE (normalized units), "
             "mean of the episodes' means, 95 % over episodes"]
    for name, c in record["conditions"].items():
        lines.append(f"  {name:<18} {interval(c)}, {c['samples']} windows, {c['episodes']} episodes")
    for name, d in record["differences"].items():
        lines.append(f"  {name:<36} {interval(d, '+')}")
    if "future_mse" in record:
        r = record["future_mse_vs_action_cost"]
        rank = ("undefined (a side is constant)" if r["spearman"] is None else
                f"{r['spearman']:.2f} (n {r['n']} windows; p {r['p_windows_independent']:.2g} if they were independent)")
        lines.append(f"  imagined future latent MSE {interval(record['future_mse'])}; Spearman with the action cost {rank}")
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
        try:
            record = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        missing = [k for k in ("conditions", "per_sample", "sample_episode", *PAIRED_ON)
                   if not isinstance(record, dict) or k not in record]
        if missing:
            raise ValueError(f"{path}: not a `fastwam offline` record (no {', '.join(missing)})")
        sides.append((record, condition, path))
    (a, ca, pa), (b, cb, pb) = sides
    d = paired(a, ca, b, cb, names=(pa, pb))
    shown = (f"{d['episode_mean']:+.4f} ({d['low']:+.4f} to {d['high']:+.4f})" if d["low"] is not None
             else f"{d['episode_mean']:+.4f} (one episode: no interval)")
    print(f"{args.pair[0]} - {args.pair[1]}: {shown}, 95 % over {d['episodes']} episodes, {d['samples']} windows paired")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pair:
        if args.checkpoint or args.data:
            raise ValueError("--pair compares two records; it takes no --checkpoint or --data")
        return _pair(args)
    if not (args.checkpoint and args.data):
        raise ValueError("--checkpoint and --data are required (or --pair RECORD.json:CONDITION RECORD.json:CONDITION)")
    check_device("--device", args.device)
    if args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {args.seed}")
    if args.json:
        check_output_file("--json", args.json)
    if check_threads("--threads", args.threads):
        torch.set_num_threads(args.threads)
    record = measure(args.checkpoint, args.data, args.samples, args.batch_size, args.seed, args.device,
                     progress=not args.quiet)
    print(format_record(record))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0

"""Imagination quality: how well a model's imagined future frames match what really followed.

At every replan of a closed-loop episode (``fastwam eval``), a model trained with video imagines
the frames at t + r*k (k = 1..K; r = ``data.frame_stride``, K = the future frames it was trained
for) from the observation it acts on; the env then renders the frames that really followed under
the policy's own actions. Each (imagined, real) pair is scored with PSNR and SSIM from
scikit-image (SSIM as Wang et al. 2004: Gaussian window sigma 1.5; the window crosses the seam of
side-by-side cameras), per horizon; pairs past the episode's end do not exist. The scored future is
an independent draw (``Policy.imagine``: the video schedule's steps, noise from a stream of its
own), the same procedure for every variant, so the actions and successes are those of a plain
evaluation with the same seed; an IDM-mode policy acts on another draw of its own.

The record (``summarize``) holds, for ``psnr`` and ``ssim`` alike: the overall mean and its 95 %
interval over episodes, the mean per horizon (t + r, t + 2r, ...), the same per task, every mean
weighing episodes alike (a failed episode runs longer and has more replans, not more weight); and how
imagination quality goes with success, as Spearman rank correlations across tasks (per-task
mean against success rate) and across episodes (per-episode mean against success), each with
its p-value and n (null where a side is constant).
"""

from __future__ import annotations

import numpy as np

METRICS = ("psnr", "ssim")
SSIM_WINDOW = 11  # pixels: the Gaussian window (sigma 1.5, truncated at 3.5 sigma) scikit-image uses
PSNR_CAP = 100.0  # dB for identical frames (PSNR infinite): above any differing pair of <= 1e5 8-bit values (98 dB)


def score_pair(imagined: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of an imagined frame against the real one: uint8 (H, W, 3) each."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if (imagined.shape != real.shape or imagined.dtype != np.uint8 or real.dtype != np.uint8
            or real.ndim != 3 or min(real.shape[:2]) < SSIM_WINDOW):
        raise ValueError(f"imagined and real frames: expected two uint8 (H, W, 3) of one shape, H and W >= "
                         f"{SSIM_WINDOW} (SSIM's window), got {imagined.dtype} {imagined.shape} and {real.dtype} {real.shape}")
    if np.array_equal(imagined, real):
        return PSNR_CAP, 1.0
    psnr = peak_signal_noise_ratio(real, imagined, data_range=255)
    ssim = structural_similarity(real, imagined, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    return float(psnr), float(ssim)


def score_episode(imagined: dict[int, np.ndarray], frames: dict[int, np.ndarray], stride: int) -> list[list[float]]:
    """Every pair of an episode: [replan step, k, psnr, ssim] for the imagined frames (replan step ->
    uint8 (K, H, W, 3), frame k - 1 at step + stride * k) whose real frame (step -> uint8 (H, W, 3)) exists."""
    pairs = []
    for step in sorted(imagined):
        for k, frame in enumerate(imagined[step], start=1):
            real = frames.get(step + stride * k)
            if real is not None:
                pairs.append([step, k, *score_pair(frame, real)])
    return pairs


def summarize(episodes: list[dict], stride: int) -> dict:
    """episodes: [{"task", "index", "success", "pairs": score_episode(...)}] -> the record (module docstring)."""
    from fastwam.evaluate import Z95

    tasks = list(dict.fromkeys(e["task"] for e in episodes))
    scored = [e for e in episodes if e["pairs"]]
    horizons = sorted({int(p[1]) for e in scored for p in e["pairs"]})
    record = {"frame_stride": stride, "horizons": [stride * k for k in horizons],
              "pairs": sum(len(e["pairs"]) for e in episodes), "episodes_scored": len(scored),
              "episodes_unscored": len(episodes) - len(scored)}
    for column, metric in enumerate(METRICS, start=2):
        def means(selected, k=None):  # mean over episodes of each episode's mean (at horizon k)
            values = [np.mean(v) for e in selected if (v := [p[column] for p in e["pairs"] if k in (None, p[1])])]
            return float(np.mean(values)) if values else None

        def by_horizon(selected):
            return {str(stride * k): means(selected, k) for k in horizons}

        per_episode = [float(np.mean([p[column] for p in e["pairs"]])) for e in scored]
        spread = Z95 * np.std(per_episode, ddof=1) / np.sqrt(len(per_episode)) if len(per_episode) > 1 else None
        overall = means(scored)
        record[metric] = {
            "overall": overall,
            "ci95": [overall - spread, overall + spread] if spread is not None and overall is not None else None,
            "by_horizon": by_horizon(scored),
            "tasks": {t: {"mean": means([e for e in scored if e["task"] == t]),
                          "by_horizon": by_horizon([e for e in scored if e["task"] == t])} for t in tasks},
        }
    record["correlation"] = _correlations(episodes, tasks, record)
    return record


def _correlations(episodes: list[dict], tasks: list[str], record: dict) -> dict:
    from scipy.stats import spearmanr

    def spearman(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return {"spearman": None, "p": None, "n": len(x)}
        rho, p = spearmanr(x, y)
        return {"spearman": float(rho), "p": float(p), "n": len(x)}

    success_rate = {t: np.mean([e["success"] for e in episodes if e["task"] == t]) for t in tasks}
    scored = [e for e in episodes if e["pairs"]]
    result = {"across_tasks": {}, "across_episodes": {}}
    for column, metric in enumerate(METRICS, start=2):
        quality = {t: v["mean"] for t, v in record[metric]["tasks"].items() if v["mean"] is not None}
        result["across_tasks"][metric] = spearman([quality[t] for t in quality], [success_rate[t] for t in quality])
        result["across_episodes"][metric] = spearman([np.mean([p[column] for p in e["pairs"]]) for e in scored],
                                                     [e["success"] for e in scored])
    return result


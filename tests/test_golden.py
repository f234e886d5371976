"""Stored golden outputs of the tiny model: a refactor that changes any number fails here.

The model's weights are drawn from a fixed seed, its inputs from another; the losses of every
variant, the actions of every inference mode and the imagined future are compared with
``tests/data/golden_tiny.safetensors``. An intended change of the numbers (a new initialization,
another schedule) regenerates the file on purpose:

    FASTWAM_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_model import randomized, tiny

GOLDEN = Path(__file__).parent / "data" / "golden_tiny.safetensors"


def outputs() -> dict[str, torch.Tensor]:
    """Every number the golden file pins, computed afresh."""
    out = {}
    for variant, video_weight in (("fastwam", None), ("joint", None), ("idm", None), ("dual", None), ("fastwam", 0.0)):
        cfg = tiny(variant, video_weight)
        model = randomized(cfg, seed=3)
        batch = cfg.fake_batch(2, torch.Generator().manual_seed(4))
        name = variant if video_weight is None else "nofuture"
        loss = model.loss(batch, torch.Generator().manual_seed(5))
        out[f"{name}/loss"] = torch.stack([loss.total, loss.action, loss.video]).detach()
        observation = (batch.context, batch.state, batch.text)
        for mode in cfg.variant.modes:
            out[f"{name}/actions/{mode}"] = model.predict_actions(*observation, mode=mode,
                                                                  generator=torch.Generator().manual_seed(6))
        if cfg.variant.has_future:
            out[f"{name}/imagined"] = model.imagine(*observation, generator=torch.Generator().manual_seed(7))
    return {k: v.contiguous() for k, v in out.items()}


def test_outputs_match_the_stored_golden_file():
    fresh = outputs()
    if os.environ.get("FASTWAM_REGENERATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        save_file(fresh, GOLDEN)
    assert GOLDEN.is_file(), f"{GOLDEN} is missing; regenerate it (see this module's docstring)"
    golden = load_file(GOLDEN)
    assert sorted(golden) == sorted(fresh), f"golden keys {sorted(golden)}, computed {sorted(fresh)}"
    for key, expected in golden.items():
        assert fresh[key].shape == expected.shape, f"{key}: shape {tuple(fresh[key].shape)}, golden {tuple(expected.shape)}"
        torch.testing.assert_close(fresh[key], expected, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    # the dual model's two modes give different actions, so a mode that silently fell back to the
    # other could not match the file
    assert (fresh["dual/actions/video_then_action"] - fresh["dual/actions/action_only"]).abs().max() > 0.1

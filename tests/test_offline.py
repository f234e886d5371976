"""Open-loop action error (`fastwam offline`): the conditions, the per-sample error, the record."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_model import randomized, tiny
from test_train import S, tiny_config, write_dot_dataset

from fastwam import offline
from fastwam.cli import main as cli_main
from fastwam.train import build_trainer


def test_the_conditions_are_a_models_modes_and_the_oracle_where_actions_read_a_future():
    assert offline.conditions(("action_only",)) == ["action_only"]
    assert offline.conditions(("joint",)) == ["joint"]
    assert offline.conditions(("video_then_action",)) == ["video_then_action", "true_future"]
    assert offline.conditions(("action_only", "video_then_action")) == ["action_only", "video_then_action", "true_future"]


def test_samples_spread_over_the_windows():
    assert offline.sample_indices(10, 400).tolist() == list(range(10))
    assert offline.sample_indices(101, 5).tolist() == [0, 25, 50, 75, 100]
    with pytest.raises(ValueError, match="samples: expected >= 1, got 0"):
        offline.sample_indices(10, 0)


def test_each_error_is_the_mse_of_the_models_own_chunk_over_the_valid_steps():
    cfg = tiny("dual")
    model, batch = randomized(cfg), cfg.fake_batch(3)
    batch.action_pad[0, 5:] = True  # the first window's episode ends mid-chunk
    batch.future_pad[1, 1:] = True  # the second's future leaves its episode after one frame
    batch.future_pad[2, :] = True  # the third's at once
    seeds = [7, 8, 9]
    errors = offline.chunk_errors(model, batch, seeds)
    assert sorted(errors) == ["action_only", "future_mse", "true_future", "video_then_action"]
    noise, video_noise = offline.window_noise(seeds, (cfg.chunk, cfg.action_dim), (cfg.future_frames, *cfg.latent_shape), "cpu")
    observation = (batch.context, batch.state, batch.text)
    imagined = model.sample_future(model.prefill(*observation), video_noise, cfg.video_flow.steps)
    for condition, future in (("action_only", None), ("true_future", batch.future), ("video_then_action", imagined)):
        mode = "action_only" if future is None else "video_then_action"
        actions = model.predict_actions(*observation, noise=noise, mode=mode, future=future)
        squared = (actions - batch.actions).pow(2).mean(-1)  # (B, S)
        expected = torch.stack([squared[0, :5].mean(), squared[1].mean(), squared[2].mean()])
        assert torch.allclose(errors[condition], expected, atol=1e-6), condition
    assert (errors["video_then_action"] - errors["true_future"]).abs().max() > 1e-4  # another future, other actions
    per_frame = (imagined - batch.future).pow(2).flatten(2).mean(-1)  # (B, Tf)
    assert errors["future_mse"][0] == pytest.approx(float(per_frame[0].mean()), rel=1e-5)
    assert errors["future_mse"][1] == pytest.approx(float(per_frame[1, 0]), rel=1e-5)
    assert torch.isnan(errors["future_mse"][2])  # no real frame to score against


@pytest.mark.parametrize("variant", ["joint", "dual"])
def test_a_windows_errors_do_not_depend_on_its_batch(variant):
    cfg = tiny(variant)
    model, batch = randomized(cfg), cfg.fake_batch(3)
    together = offline.chunk_errors(model, batch, [4, 5, 6])
    fields = ("context", "actions", "action_pad", "state", "text", "future", "future_pad")
    alone = offline.chunk_errors(model, dataclasses.replace(batch, **{f: getattr(batch, f)[2:] for f in fields}), [6])
    assert sorted(together) == sorted(alone)
    for name in together:
        assert together[name][2] == pytest.approx(float(alone[name][0]), rel=1e-4, abs=1e-6), name


def test_intervals_are_over_episodes_and_differences_are_paired():
    errors = {"video_then_action": np.array([1.0, 3.0, 2.0, 2.0, 6.0]),
              "true_future": np.array([1.0, 1.0, 1.0, 1.0, 2.0]),
              "future_mse": np.array([0.1, 0.5, 0.3, 0.2, 0.9])}
    episodes, tasks = np.array([0, 0, 1, 1, 2]), ["a", "a", "a", "b", "b"]
    record = offline.summarize(errors, episodes, tasks)
    imagined = record["conditions"]["video_then_action"]
    assert imagined["sample_mean"] == pytest.approx(2.8) and imagined["episode_mean"] == pytest.approx(10 / 3)  # (2 + 2 + 6) / 3
    half = 4.302653 * np.std([2, 2, 6], ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (imagined["low"], imagined["high"]) == pytest.approx((10 / 3 - half, 10 / 3 + half))
    assert imagined["episodes"] == 3 and imagined["samples"] == 5
    assert imagined["per_task"] == {"a": pytest.approx(2.0), "b": pytest.approx(4.0)}
    assert list(record["differences"]) == ["video_then_action - true_future"]
    gap = record["differences"]["video_then_action - true_future"]  # per episode: 1, 1, 4
    assert gap["episode_mean"] == pytest.approx(2.0)
    assert gap["high"] - gap["low"] == pytest.approx(2 * 4.302653 * np.std([1, 1, 4], ddof=1) / np.sqrt(3))
    assert record["future_mse_vs_action_cost"]["spearman"] > 0.8  # the gap grows with the future's error
    one = offline.episode_interval(np.array([1.0, np.nan, 3.0]), np.array([0, 0, 0]))
    assert one == {"episode_mean": 2.0, "low": None, "high": None, "sample_mean": 2.0, "episodes": 1, "samples": 2}


@pytest.fixture(scope="module")
def idm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    data = write_dot_dataset(root / "ds", S)
    build_trainer(tiny_config(steps=3).with_variant("idm"), data, root / "run", progress=False).run()
    return root / "run", data


def test_the_command_writes_the_record_of_an_idm_checkpoint(idm_run, tmp_path, capsys):
    run, data = idm_run
    out = tmp_path / "offline.json"
    assert cli_main(["offline", "--checkpoint", str(run), "--data", str(data), "--samples", "10",
                     "--batch-size", "4", "--json", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert record["variant"] == "idm" and record["trained_on_this_data"] is True
    assert list(record["conditions"]) == ["video_then_action", "true_future"]
    assert len(record["per_sample"]["true_future"]) == 10 and len(record["sample_episode"]) == 10
    assert set(record["sample_episode"]) == {0, 1}
    assert list(record["differences"]) == ["video_then_action - true_future"]
    printed = capsys.readouterr().out
    assert "its training data" in printed and "true_future" in printed


def test_a_dataset_the_checkpoint_cannot_read_is_refused_by_name(idm_run, tmp_path):
    run, _ = idm_run
    with pytest.raises(SystemExit, match=r"fastwam offline: .*nowhere"):
        cli_main(["offline", "--checkpoint", str(run), "--data", str(tmp_path / "nowhere"), "--quiet"])


def test_a_dual_model_is_compared_with_its_fast_wam_mode_and_its_oracle():
    errors = {name: np.arange(4.0) + i for i, name in enumerate(offline.conditions(("action_only", "video_then_action")))}
    errors["future_mse"] = np.ones(4)
    record = offline.summarize(errors, np.array([0, 0, 1, 1]), ["a"] * 4)
    assert list(record["differences"]) == ["video_then_action - action_only", "true_future - action_only",
                                           "video_then_action - true_future"]
    assert record["differences"]["true_future - action_only"]["episode_mean"] == pytest.approx(2.0)
    assert record["future_mse_vs_action_cost"] == {"spearman": None, "p_windows_independent": None, "n": 4}  # a constant side


def test_two_records_pair_over_their_windows_and_other_windows_are_refused(idm_run, tmp_path, capsys):
    run, data = idm_run
    paths = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        paths[name] = tmp_path / f"{name}.json"
        cli_main(["offline", "--checkpoint", str(run), "--data", str(data), "--samples", "6", "--seed", str(seed),
                  "--json", str(paths[name]), "--quiet"])
    a, c = (json.loads(paths[k].read_text()) for k in "ac")
    assert offline.paired(a, "video_then_action", a, "true_future") == a["differences"]["video_then_action - true_future"]
    with pytest.raises(ValueError, match=r"first and second: seed differs \(0 against 1\)"):
        offline.paired(a, "true_future", c, "true_future")
    capsys.readouterr()
    assert cli_main(["offline", "--pair", f"{paths['a']}:true_future", f"{paths['b']}:true_future"]) == 0
    assert "+0.0000 (+0.0000 to +0.0000), 95 % over 2 episodes, 6 windows paired" in capsys.readouterr().out  # one model, one noise
    c["seed"] = 0
    c["sample_window"] = c["sample_window"][:-1]
    with pytest.raises(ValueError, match=r"first and second: sample_window differs \(6 windows against 5 windows\)"):
        offline.paired(a, "true_future", c, "true_future")
    with pytest.raises(ValueError, match=r"A.json: condition 'joint': expected one of \['video_then_action', 'true_future'\]"):
        offline.paired(a, "joint", a, "true_future", names=("A.json", "B.json"))
    paths["bad"] = tmp_path / "bad.json"
    paths["bad"].write_text(json.dumps({"conditions": {}}))
    with pytest.raises(SystemExit, match=r"bad.json: not a `fastwam offline` record \(no per_sample, sample_episode"):
        cli_main(["offline", "--pair", f"{paths['bad']}:x", f"{paths['a']}:true_future"])
    with pytest.raises(SystemExit, match="--checkpoint and --data are required"):
        cli_main(["offline", "--data", str(data)])
    # --seed reaches the noise (torch's CPU generator keeps 32 bits of a seed: seed * 2**32 + i reached none)
    assert a["per_sample"]["true_future"] != c["per_sample"]["true_future"]
    b = json.loads(paths["b"].read_text())
    for edit, message in [(lambda r: r["per_sample"]["true_future"].__setitem__(2, None),
                           r"B.json: per_sample\['true_future'\]\[2\] is None: expected a finite error for every window"),
                          (lambda r: r["per_sample"]["true_future"].pop(),
                           r"B.json: per_sample\['true_future'\] and sample_episode must be lists of one entry per window, "
                           r"got 5 and 6")]:
        broken = json.loads(json.dumps(b))
        edit(broken)
        with pytest.raises(ValueError, match=message):
            offline.paired(a, "true_future", broken, "true_future", names=("A.json", "B.json"))

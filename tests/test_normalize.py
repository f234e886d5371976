"""Normalizer: min/max and mean/std round trips, constant dimensions, serialization, stats sources."""

import json

import numpy as np
import pytest
import torch

from fastwam.data.lerobot import LeRobotDataset, LeRobotWriter, build_features
from fastwam.data.normalize import Normalizer, compute_stats


def stats_of(x):
    x = np.asarray(x, np.float64)
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": [len(x)],
            "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    action = rng.normal([0.5, -2.0, 10.0], [0.1, 3.0, 0.01], size=(200, 3)).astype(np.float32)
    state = rng.uniform(-1, 4, (200, 4)).astype(np.float32)
    state[:, 2] = 0.25  # a constant dimension
    return {"action": action, "observation.state": state}


@pytest.mark.parametrize("mode", ["min_max", "mean_std", "quantiles"])
def test_round_trip_numpy_and_torch(data, mode):
    norm = Normalizer({k: stats_of(v) for k, v in data.items()}, {"action": mode, "observation.state": mode})
    for key, x in data.items():
        y = norm.normalize(key, x)
        assert y.dtype == np.float32 and np.isfinite(y).all()
        np.testing.assert_allclose(norm.unnormalize(key, y), x, rtol=1e-6, atol=1e-6)
        t = torch.from_numpy(x)
        yt = norm.normalize(key, t)
        assert yt.dtype == torch.float32
        torch.testing.assert_close(norm.unnormalize(key, yt), t, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(yt.numpy(), y, rtol=1e-6, atol=1e-6)


def test_min_max_maps_the_data_range_to_minus_one_one(data):
    norm = Normalizer({"action": stats_of(data["action"])}, {"action": "min_max"})
    y = norm.normalize("action", data["action"].astype(np.float64))
    np.testing.assert_allclose(y.min(0), -1, atol=1e-12)
    np.testing.assert_allclose(y.max(0), 1, atol=1e-12)


def test_quantiles_map_the_central_98_percent_to_minus_one_one(data):
    norm = Normalizer({k: stats_of(v) for k, v in data.items()}, {"action": "quantiles", "observation.state": "min_max"})
    x = data["action"].astype(np.float64)
    y = norm.normalize("action", np.stack([np.quantile(x, 0.01, axis=0), np.quantile(x, 0.99, axis=0)]))
    np.testing.assert_allclose(y, [[-1] * 3, [1] * 3], atol=1e-9)
    assert np.abs(norm.normalize("action", x)).max() > 1  # the outer 2 % lie beyond
    bare = {k: {s: v for s, v in stats_of(v).items() if not s.startswith("q")} for k, v in data.items()}
    with pytest.raises(ValueError, match=r"stats of 'action' lack \['q01', 'q99'\] needed for quantiles normalization "
                                         r"\(train --recompute-stats"):
        Normalizer(bare, {"action": "quantiles", "observation.state": "min_max"})


def test_mean_std_standardizes(data):
    norm = Normalizer({"action": stats_of(data["action"])}, {"action": "mean_std"})
    y = norm.normalize("action", data["action"].astype(np.float64))
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-9)


@pytest.mark.parametrize("mode", ["min_max", "mean_std"])
def test_constant_dimension_gives_zero_and_round_trips(data, mode):
    norm = Normalizer({"observation.state": stats_of(data["observation.state"])}, {"observation.state": mode})
    x = data["observation.state"]
    y = norm.normalize("observation.state", x)
    assert np.isfinite(y).all() and np.all(y[:, 2] == 0)
    np.testing.assert_array_equal(norm.unnormalize("observation.state", y)[:, 2], x[:, 2])
    off_value = x[:1].copy()
    off_value[0, 2] = 0.75  # an unseen value on a constant dim: finite, and still invertible
    back = norm.unnormalize("observation.state", norm.normalize("observation.state", off_value))
    np.testing.assert_allclose(back, off_value, rtol=1e-6)


def test_to_dict_from_dict_and_save_load(data, tmp_path):
    norm = Normalizer({k: stats_of(v) for k, v in data.items()}, {"action": "mean_std", "observation.state": "min_max"})
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    norm.save(tmp_path / "stats.json")
    loaded = Normalizer.load(tmp_path / "stats.json")
    for key, x in data.items():
        for other in (restored, loaded):
            np.testing.assert_array_equal(other.normalize(key, x), norm.normalize(key, x))
    assert loaded.modes == {"action": "mean_std", "observation.state": "min_max"}


def test_errors(data):
    norm = Normalizer({"action": stats_of(data["action"])}, {"action": "min_max"})
    with pytest.raises(KeyError, match="observation.state"):
        norm.normalize("observation.state", data["observation.state"])
    with pytest.raises(ValueError, match="last dim"):
        norm.normalize("action", data["action"][:, :2])
    with pytest.raises(ValueError, match="unknown normalization mode"):
        Normalizer({"action": stats_of(data["action"])}, {"action": "quantile"})
    with pytest.raises(ValueError, match=r"lack feature\(s\) \['observation.state'\]"):
        Normalizer({"action": stats_of(data["action"])}, {"observation.state": "min_max"})
    with pytest.raises(FileNotFoundError):
        Normalizer.load("/nonexistent/stats.json")


def test_from_dataset_stats_json_and_recomputed_agree(data, tmp_path):
    features = build_features(10, {}, {"observation.state": list("abcd"), "action": list("xyz")})
    with LeRobotWriter(tmp_path / "ds", fps=10, features=features) as writer:
        for part in (slice(0, 80), slice(80, 200)):  # two episodes: stats.json aggregates them
            writer.add_episode("t", {k: v[part] for k, v in data.items()}, {})
    ds = LeRobotDataset(tmp_path / "ds")
    recomputed = compute_stats(ds)
    for key, x in data.items():
        for stat in ("min", "max", "mean", "std"):
            np.testing.assert_allclose(ds.stats[key][stat], stats_of(x)[stat], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(recomputed[key][stat], stats_of(x)[stat], rtol=1e-9, atol=1e-12)
    a, b = Normalizer.from_dataset(ds), Normalizer.from_dataset(ds, recompute=True)
    np.testing.assert_allclose(a.normalize("action", data["action"]), b.normalize("action", data["action"]), atol=1e-6)

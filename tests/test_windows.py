"""ChunkDataset: windows at episode starts, middles and ends, pad flags, camera layout."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fastwam.data.lerobot import DatasetError, LeRobotDataset, LeRobotWriter, build_features
from fastwam.data.windows import ChunkDataset

LENGTHS = (7, 12)  # two episodes
S = 8  # pixels per camera side
CHUNK, STRIDE, FUTURE = 6, 3, 2


def frame_value(episode, t, camera):
    """Each frame is one flat gray level, far apart from the others (codec error is <= 2)."""
    return 10 + 6 * (episode * LENGTHS[0] + t) + (120 if camera == "right" else 0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("win") / "ds"
    features = build_features(10, {"left": (S, S), "right": (S, S)},
                              {"observation.state": ["e", "t", "z", "g"], "action": ["e", "t", "z", "g"]})
    with LeRobotWriter(root, fps=10, features=features) as writer:
        for e, n in enumerate(LENGTHS):
            t = np.arange(n, dtype=np.float32)
            values = np.stack([np.full(n, e), t, -t, np.ones(n)], 1).astype(np.float32)  # (T, 4): [e, t, -t, 1]
            frames = {f"observation.images.{c}": np.stack([np.full((S, S, 3), frame_value(e, i, c), np.uint8)
                                                          for i in range(n)]) for c in ("left", "right")}
            action = values + np.array([100, 0, 0, 0], np.float32)  # [100 + e, t, -t, 1]
            writer.add_episode(f"task {e}", {"observation.state": values, "action": action}, frames)
    return LeRobotDataset(root)


def decode_gray(frames):
    """(K, 3, S, W) uint8 -> per frame and camera block the gray level, rounded to the grid of values."""
    return frames.float().mean(dim=(1, 2)).reshape(frames.shape[0], -1, S).mean(-1)  # (K, cameras)


def test_window_at_episode_start(dataset):
    ds = ChunkDataset(dataset, CHUNK, STRIDE, FUTURE, cameras=["left", "right"])
    item = ds[0]
    assert item["frames"].shape == (1 + FUTURE, 3, S, 2 * S) and item["frames"].dtype == torch.uint8
    assert item["frame_pad"].tolist() == [False, False, False]
    expected = [[frame_value(0, t, "left"), frame_value(0, t, "right")] for t in (0, 3, 6)]
    assert torch.allclose(decode_gray(item["frames"]), torch.tensor(expected, dtype=torch.float32), atol=2)
    assert item["actions"].shape == (CHUNK, 4) and item["actions"].dtype == torch.float32
    assert item["actions"][:, 1].tolist() == [0, 1, 2, 3, 4, 5] and item["actions"][0, 0] == 100
    assert item["action_pad"].tolist() == [False] * CHUNK
    assert item["state"].tolist() == [0, 0, 0, 1]
    assert (item["task"], item["task_index"], item["episode_index"], item["frame_index"]) == ("task 0", 0, 0, 0)


def test_window_near_episode_end_pads_and_repeats(dataset):
    ds = ChunkDataset(dataset, CHUNK, STRIDE, FUTURE, cameras=["left"])
    item = ds[3]  # episode 0, t = 3, last frame 6
    rows, pad = ds.frame_indices(3)
    assert rows.tolist() == [3, 6, 6] and pad.tolist() == [False, False, True]  # t + 6 = 9 is past the end
    assert item["frame_pad"].tolist() == [False, False, True]
    gray = decode_gray(item["frames"])[:, 0]
    assert abs(gray[1] - frame_value(0, 6, "left")) <= 2 and torch.equal(item["frames"][2], item["frames"][1])
    assert item["actions"][:, 1].tolist() == [3, 4, 5, 6, 6, 6]  # last action repeated
    assert item["action_pad"].tolist() == [False, False, False, False, True, True]
    assert item["frames"].shape == (1 + FUTURE, 3, S, S)


def test_window_at_last_frame_and_next_episode_start(dataset):
    ds = ChunkDataset(dataset, CHUNK, STRIDE, FUTURE)
    last = LENGTHS[0] - 1
    item = ds[last]
    assert item["frame_pad"].tolist() == [False, True, True]
    assert item["action_pad"].tolist() == [False] + [True] * (CHUNK - 1)
    assert item["actions"][:, 1].tolist() == [6] * CHUNK and item["actions"][:, 0].tolist() == [100] * CHUNK
    first = ds[last + 1]  # never crosses into the next episode, and the next one starts clean
    assert (first["episode_index"], first["frame_index"], first["task"]) == (1, 0, "task 1")
    assert first["actions"][:, 1].tolist() == [0, 1, 2, 3, 4, 5] and first["actions"][0, 0] == 101
    assert first["state"].tolist() == [1, 0, 0, 1] and not first["action_pad"].any()


def test_windows_never_cross_episodes(dataset):
    ds = ChunkDataset(dataset, CHUNK, STRIDE, FUTURE)
    episode = dataset.column("episode_index")
    assert len(ds) == sum(LENGTHS)
    for i in range(len(ds)):
        stop = dataset.episode(int(episode[i])).stop
        for (rows, pad), offsets in ((ds.frame_indices(i), STRIDE * np.arange(1 + FUTURE)),
                                     (ds.action_indices(i), np.arange(CHUNK))):
            assert (episode[rows] == episode[i]).all()
            np.testing.assert_array_equal(pad, i + offsets >= stop)
            np.testing.assert_array_equal(rows, np.minimum(i + offsets, stop - 1))


def test_history_frames_repeat_the_episode_start_and_never_cross_episodes(dataset):
    ds = ChunkDataset(dataset, CHUNK, STRIDE, FUTURE, cameras=["left"], context_frames=3)
    start = LENGTHS[0]  # episode 1 begins at row 7
    rows, pad = ds.frame_indices(start + 1)  # t = 1: t - 6 and t - 3 are before the start
    assert rows.tolist() == [start, start, start + 1, start + 4, start + 7] and not pad.any()
    item = ds[start + 1]
    assert item["frames"].shape == (3 + FUTURE, 3, S, S) and item["frame_pad"].shape == (3 + FUTURE,)
    gray = decode_gray(item["frames"])[:, 0]
    expected = [frame_value(1, t, "left") for t in (0, 0, 1, 4, 7)]
    assert torch.allclose(gray, torch.tensor(expected, dtype=torch.float32), atol=2)
    last = sum(LENGTHS) - 1
    rows, pad = ds.frame_indices(last - 1)  # t = 10 of 12: history inside, future past the end
    assert rows.tolist() == [last - 7, last - 4, last - 1, last, last] and pad.tolist() == [False] * 3 + [True] * 2
    assert item["actions"][:, 1].tolist() == [1, 2, 3, 4, 5, 6]  # actions unaffected by the history


def test_episode_subset_and_dataloader(dataset):
    ds = ChunkDataset(dataset.root, CHUNK, STRIDE, FUTURE, episodes=[1])
    assert len(ds) == LENGTHS[1] and ds[0]["episode_index"] == 1
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["frames"].shape == (4, 1 + FUTURE, 3, S, 2 * S)
    assert batch["actions"].shape == (4, CHUNK, 4) and batch["action_pad"].shape == (4, CHUNK)
    assert batch["task"] == ["task 1"] * 4 and batch["frame_index"].tolist() == [0, 1, 2, 3]


def test_no_future_frames(dataset):
    item = ChunkDataset(dataset, chunk=1, frame_stride=1, future_frames=0)[3]
    assert item["frames"].shape == (1, 3, S, 2 * S) and item["actions"].shape == (1, 4)


def test_bad_arguments(dataset):
    with pytest.raises(ValueError, match="chunk >= 1"):
        ChunkDataset(dataset, 0, STRIDE, FUTURE)
    with pytest.raises(ValueError, match=r"context_frames >= 1; got 6, 3, 2, 0"):
        ChunkDataset(dataset, CHUNK, STRIDE, FUTURE, context_frames=0)
    with pytest.raises(DatasetError, match=r"cameras \['observation.images.top'\]"):
        ChunkDataset(dataset, CHUNK, STRIDE, FUTURE, cameras=["top"])
    with pytest.raises(IndexError):
        ChunkDataset(dataset, CHUNK, STRIDE, FUTURE)[sum(LENGTHS)]
    with pytest.raises(IndexError, match="episode index 5"):
        ChunkDataset(dataset, CHUNK, STRIDE, FUTURE, episodes=[5])

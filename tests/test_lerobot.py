"""LeRobot format: v3.0 write -> read round trip, a hand-built v2.1 fixture, and bad inputs.

Video tolerance: the lossless encoding (libx264, yuv444p, crf 0) returns every pixel within 2 levels
(of 255) of what was written; the default (LeRobot's AV1, yuv420p, crf 30) is lossy and checked on
smooth frames; parquet values come back exactly.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastwam.data.lerobot import (COLLECTION_LOG, FILE_CHECKSUMS, VIDEO_ENCODINGS, DatasetError, DatasetFileNotFoundError, EpisodeIndexError,
                                  LeRobotDataset, LeRobotWriter, VideoSettings, build_features)

FPS = 10
H, W = 16, 24
LENGTHS = (5, 9, 3)
TASKS = ("open the drawer", "push the puck")
VIDEO_TOLERANCE = 2


def make_episodes(seed=0):
    """Per episode: (task, state (T, 4), action (T, 3), frames {key: uint8 (T, H, W, 3)})."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e, length in enumerate(LENGTHS):
        base = rng.integers(30, 220, (1, H, W, 3))
        frames = {k: np.clip(base + off + rng.integers(-25, 25, (length, H, W, 3)), 0, 255).astype(np.uint8)
                  for k, off in (("observation.images.front", 0), ("observation.images.wrist", 20))}
        episodes.append((TASKS[e % 2], rng.normal(size=(length, 4)).astype(np.float32),
                         rng.uniform(-1, 1, (length, 3)).astype(np.float32), frames))
    return episodes


def write_dataset(root, episodes, video=VIDEO_ENCODINGS["lossless"], **writer_kwargs):
    """Lossless by default: most tests here check values exactly (the default encoding: ``test_av1_*``)."""
    h, w = next(iter(episodes[0][3].values())).shape[1:3]
    features = build_features(FPS, {"front": (h, w), "wrist": (h, w)},
                              {"observation.state": ["x", "y", "z", "g"], "action": ["dx", "dy", "dz"]}, video=video)
    with LeRobotWriter(root, fps=FPS, features=features, robot_type="test", video=video, **writer_kwargs) as writer:
        for task, state, action, frames in episodes:
            writer.add_episode(task, {"observation.state": state, "action": action}, frames)
    return Path(root)


@pytest.fixture
def episodes():
    return make_episodes()


@pytest.fixture
def root(tmp_path, episodes):
    """A dataset as another tool writes it: no meta/checksums.json, so damage here reaches the reader's
    own checks (a fastwam dataset names a damaged file by its checksum first: ``test_checksums_*``)."""
    root = write_dataset(tmp_path / "ds", episodes)
    (root / FILE_CHECKSUMS).unlink()
    return root


# ----------------------------------------------------------------------------------------------
# Round trip (v3.0)
# ----------------------------------------------------------------------------------------------


def test_checksums_record_every_data_and_video_file_and_are_checked_before_reading(tmp_path, episodes):
    root = write_dataset(tmp_path / "sealed", episodes)
    sums = json.loads((root / FILE_CHECKSUMS).read_text())["sha256"]
    assert sorted(sums) == ["data/chunk-000/file-000.parquet", "videos/observation.images.front/chunk-000/file-000.mp4",
                            "videos/observation.images.wrist/chunk-000/file-000.mp4"]
    assert all(sums[name] == hashlib.sha256((root / name).read_bytes()).hexdigest() for name in sums)
    dataset = LeRobotDataset(root)
    assert dataset.check_files() == []
    front = root / "videos/observation.images.front/chunk-000/file-000.mp4"
    data = bytearray(front.read_bytes())
    data[len(data) // 2] ^= 0x01
    front.write_bytes(bytes(data))
    assert len(dataset.check_files()) == 1 and "front/chunk-000/file-000.mp4: altered since" in dataset.check_files()[0]
    with pytest.raises(DatasetError, match="front/chunk-000/file-000.mp4: altered since it was written"):
        LeRobotDataset(root).episode_frames(0, "front")
    LeRobotDataset(root).episode_frames(0, "wrist")  # the other camera's file is intact
    table = root / "data/chunk-000/file-000.parquet"
    table.write_bytes(table.read_bytes() + b"\0")
    with pytest.raises(DatasetError, match="data/chunk-000/file-000.parquet: altered since it was written"):
        LeRobotDataset(root)


def test_v3_layout_and_info(root):
    for rel in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
                "data/chunk-000/file-000.parquet", "videos/observation.images.front/chunk-000/file-000.mp4",
                "videos/observation.images.wrist/chunk-000/file-000.mp4"):
        assert (root / rel).is_file(), rel
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"], info["fps"]) == (3, sum(LENGTHS), 2, FPS)
    assert info["features"]["observation.images.front"]["dtype"] == "video"
    assert info["features"]["observation.images.front"]["shape"] == [H, W, 3]
    video = info["features"]["observation.images.front"]["info"]
    assert video["is_depth_map"] is False and "video.is_depth_map" not in video  # LeRobot 0.6's keys
    assert (video["video.codec"], video["video.fps"], video["video.g"], video["video.crf"]) == ("h264", FPS, 64, 0)
    assert info["features"]["action"] == {"dtype": "float32", "shape": [3], "names": ["dx", "dy", "dz"]}
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # LeRobot's pandas index
    assert not (root.parent / "ds.partial").exists()


def test_parquet_values_round_trip_exactly(root, episodes):
    ds = LeRobotDataset(root, require=("observation.state", "action"))
    assert (ds.version, ds.fps, ds.num_episodes, ds.num_frames) == ("v3.0", FPS, 3, sum(LENGTHS))
    assert ds.tasks == list(TASKS)
    assert ds.cameras == ["front", "wrist"]
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([e[2] for e in episodes]))
    np.testing.assert_array_equal(ds.column("observation.state"), np.concatenate([e[1] for e in episodes]))
    assert ds.column("action").dtype == np.float32
    np.testing.assert_array_equal(ds.column("index"), np.arange(sum(LENGTHS)))
    np.testing.assert_array_equal(ds.column("episode_index"), np.repeat([0, 1, 2], LENGTHS))
    np.testing.assert_array_equal(ds.column("frame_index"), np.concatenate([np.arange(n) for n in LENGTHS]))
    np.testing.assert_array_equal(ds.column("timestamp"), (ds.column("frame_index") / FPS).astype(np.float32))
    np.testing.assert_array_equal(ds.column("task_index"), np.repeat([0, 1, 0], LENGTHS))
    assert [ds.task(ds.episode(e).start) for e in range(3)] == [TASKS[0], TASKS[1], TASKS[0]]
    assert [(ds.episode(e).start, ds.episode(e).length) for e in range(3)] == [(0, 5), (5, 9), (14, 3)]


def test_video_frames_round_trip_within_tolerance(root, episodes):
    ds = LeRobotDataset(root)
    for e, (_, _, _, frames) in enumerate(episodes):
        for key, written in frames.items():
            read = ds.episode_frames(e, key)
            assert read.dtype == np.uint8 and read.shape == written.shape
            assert np.abs(read.astype(int) - written).max() <= VIDEO_TOLERANCE
    assert ds.episode_frames(1, "front").shape == (LENGTHS[1], H, W, 3)  # camera name works as key too


def smooth_episodes(size, lengths=LENGTHS):
    """Episodes of moving colour gradients (what lossy codecs keep well), frames (T, size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size]
    episodes = []
    for e, length in enumerate(lengths):
        frames = {key: np.stack([np.stack([(xx * 3 + t * 5 + off) % 200, (yy * 3 + e * 20) % 200, (xx + yy) * 2 % 200], -1)
                                 for t in range(length)]).astype(np.uint8)
                  for key, off in (("observation.images.front", 0), ("observation.images.wrist", 40))}
        episodes.append((TASKS[e % 2], np.zeros((length, 4), np.float32), np.zeros((length, 3), np.float32), frames))
    return episodes


@pytest.mark.parametrize("video", [VideoSettings(), VideoSettings(codec="libx264", pix_fmt="yuv420p", crf=18, gop=2)],
                         ids=["av1-default", "h264-yuv420p"])
def test_lossy_browser_encodings_read_back_episode_by_episode(tmp_path, video):
    episodes = smooth_episodes(32)
    root = write_dataset(tmp_path / "ds", episodes, video=video)
    info = json.loads((root / "meta/info.json").read_text())["features"]["observation.images.front"]["info"]
    assert (info["video.codec"], info["video.pix_fmt"], info["video.crf"], info["video.g"]) == (
        "h264" if video.codec == "libx264" else "av1", "yuv420p", video.crf, video.gop)
    with av.open(str(next((root / "videos").rglob("*.mp4")))) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == (
            "h264" if video.codec == "libx264" else "libdav1d", "yuv420p")
    ds = LeRobotDataset(root)
    for e, (_, _, _, frames) in enumerate(episodes):
        for key, written in frames.items():
            error = np.abs(ds.episode_frames(e, key).astype(int) - written)
            # lossy, but each episode's own frames: a frame off by one would be 5 levels off everywhere
            assert error.mean() < 3 and np.percentile(error, 50) <= 2, (e, key, error.mean())


def test_yuv420p_refuses_odd_frame_sizes(tmp_path):
    features = build_features(FPS, {"front": (15, 16)}, {"action": ["a"]})
    with pytest.raises(DatasetError, match=r"observation.images.front is 15x16 px; libsvtav1 with yuv420p needs even sizes"):
        LeRobotWriter(tmp_path / "odd", fps=FPS, features=features)
    assert not (tmp_path / "odd.partial").exists()


def test_all_frames_are_decoded_once_into_a_cache(root, episodes):
    ds = LeRobotDataset(root)
    frames = ds.frames("observation.images.wrist")
    written = np.concatenate([e[3]["observation.images.wrist"] for e in episodes])
    assert frames.shape == written.shape and isinstance(frames, np.memmap)
    assert np.abs(frames.astype(int) - written).max() <= VIDEO_TOLERANCE
    cached = list((root / "cache").glob("frames-observation.images.wrist-*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = LeRobotDataset(root).frames("wrist")
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not decoded again
    np.testing.assert_array_equal(again, frames)


def test_what_a_killed_decode_left_is_removed_by_the_next(root):
    """A killed training leaves its half-written cache (GBs for real data); the next decode of the same
    key removes this host's dead processes' leftovers, and nothing a live process or another host writes."""
    LeRobotDataset(root).frames("wrist")
    [cache] = (root / "cache").glob("frames-observation.images.wrist-*.npy")
    cache.unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    host = socket.gethostname().replace(".", "_")
    left = {name: root / "cache" / f"{cache.stem}.{name}.tmp.npy"
            for name in (f"{host}.{dead.stdout.strip()}", f"{host}.{os.getppid()}", f"otherhost.{dead.stdout.strip()}")}
    for path in left.values():
        path.write_bytes(b"half written")
    LeRobotDataset(root).frames("wrist")
    assert cache.is_file()
    assert {name for name, path in left.items() if path.exists()} == set(list(left)[1:])


def test_stats_json_matches_data(root, episodes):
    stats = LeRobotDataset(root).stats
    action = np.concatenate([e[2] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(stats["action"]["min"], action.min(0))
    np.testing.assert_allclose(stats["action"]["max"], action.max(0))
    np.testing.assert_allclose(stats["action"]["mean"], action.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["action"]["std"], action.std(0), rtol=1e-9)
    assert stats["action"]["count"].tolist() == [sum(LENGTHS)]
    assert stats["observation.images.front"]["mean"].shape == (3, 1, 1)
    assert 0 <= stats["observation.images.front"]["min"].min() <= stats["observation.images.front"]["max"].max() <= 1
    # quantiles as LeRobot >= 0.4 writes them (q01 ... q99), images counted in frames, not pixels
    for name, q in {"q01": 0.01, "q10": 0.1, "q50": 0.5, "q90": 0.9, "q99": 0.99}.items():
        per_episode = [np.quantile(e[2].astype(np.float64), q, axis=0) for e in episodes]
        expected = sum(n * v for n, v in zip(LENGTHS, per_episode)) / sum(LENGTHS)  # count-weighted, as LeRobot
        np.testing.assert_allclose(stats["action"][name], expected, rtol=1e-9)
        assert stats["observation.images.front"][name].shape == (3, 1, 1)
    assert stats["observation.images.front"]["count"].tolist() == [sum(LENGTHS)]


def test_many_small_files_read_back(tmp_path, episodes):
    """Tiny size limits: every episode in its own data file and mp4 (exercises chunk/file indices)."""
    root = write_dataset(tmp_path / "ds", episodes, data_file_mb=1e-9, video_file_mb=1e-9)
    assert len(list((root / "data").glob("chunk-000/file-*.parquet"))) == 3
    assert len(list((root / "videos/observation.images.front").glob("chunk-000/file-*.mp4"))) == 3
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([e[2] for e in episodes]))
    read = ds.episode_frames(2, "front")
    assert np.abs(read.astype(int) - episodes[2][3]["observation.images.front"]).max() <= VIDEO_TOLERANCE


# ----------------------------------------------------------------------------------------------
# v2.1 fixture, built here in that layout
# ----------------------------------------------------------------------------------------------


def write_v21(root, episodes):
    """A v2.1 dataset: jsonl metadata, one parquet (variable-length list columns) and mp4 per episode."""
    (root / "meta").mkdir(parents=True)
    features = build_features(FPS, {"front": (H, W)}, {"observation.state": list("xyzg"), "action": list("abc")})
    features["observation.images.front"]["info"]["video.codec"] = "h264"
    info = {"codebase_version": "v2.1", "robot_type": "test", "total_episodes": len(episodes),
            "total_frames": sum(LENGTHS), "total_tasks": 2, "total_videos": len(episodes), "total_chunks": 1,
            "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS)))
    start, ep_lines, stat_lines = 0, [], []
    for e, (task, state, action, frames) in enumerate(episodes):
        n = len(action)
        table = pa.table({
            "observation.state": pa.array(state.tolist(), pa.list_(pa.float32())),
            "action": pa.array(action.tolist(), pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / FPS),
            "frame_index": pa.array(np.arange(n)), "episode_index": pa.array(np.full(n, e)),
            "index": pa.array(np.arange(start, start + n)), "task_index": pa.array(np.full(n, TASKS.index(task)))})
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        encode_mp4(root / f"videos/chunk-000/observation.images.front/episode_{e:06d}.mp4", frames["observation.images.front"])
        ep_lines.append(json.dumps({"episode_index": e, "tasks": [task], "length": n}) + "\n")
        stat_lines.append(json.dumps({"episode_index": e, "stats": {"action": {
            "min": action.min(0).tolist(), "max": action.max(0).tolist(), "mean": action.mean(0).tolist(),
            "std": action.std(0).tolist(), "count": [n]}}}) + "\n")
        start += n
    (root / "meta/episodes.jsonl").write_text("".join(ep_lines))
    (root / "meta/episodes_stats.jsonl").write_text("".join(stat_lines))
    return root


def encode_mp4(path, frames, fps=FPS):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        stream.options = {"crf": "0"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_v21_dataset_reads_correctly(tmp_path, episodes):
    root = write_v21(tmp_path / "v21", episodes)
    ds = LeRobotDataset(root, require=("observation.state", "action"))
    assert (ds.version, ds.num_episodes, ds.num_frames, ds.tasks) == ("v2.1", 3, sum(LENGTHS), list(TASKS))
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([e[2] for e in episodes]))
    np.testing.assert_array_equal(ds.column("observation.state"), np.concatenate([e[1] for e in episodes]))
    for e in range(3):
        written = episodes[e][3]["observation.images.front"]
        assert np.abs(ds.episode_frames(e, "front").astype(int) - written).max() <= VIDEO_TOLERANCE
    all_frames = ds.frames("front")
    assert all_frames.shape == (sum(LENGTHS), H, W, 3)
    action = np.concatenate([e[2] for e in episodes]).astype(np.float64)
    stats = ds.stats["action"]  # no stats.json: aggregated from episodes_stats.jsonl
    np.testing.assert_allclose(stats["mean"], action.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["std"], action.std(0), rtol=1e-5)
    np.testing.assert_allclose(stats["min"], action.min(0), rtol=1e-6)


def test_v20_dataset_reads_with_its_global_stats(tmp_path, episodes):
    """v2.0: the v2.1 layout with one meta/stats.json instead of per-episode stats."""
    root = write_v21(tmp_path / "v20", episodes)
    edit_info(root, lambda info: info.update(codebase_version="v2.0"))
    (root / "meta/episodes_stats.jsonl").unlink()
    action = np.concatenate([e[2] for e in episodes]).astype(np.float64)
    (root / "meta/stats.json").write_text(json.dumps({"action": {
        "mean": action.mean(0).tolist(), "std": action.std(0).tolist(), "min": action.min(0).tolist(),
        "max": action.max(0).tolist()}}))
    ds = LeRobotDataset(root, require=("observation.state", "action"))
    assert (ds.version, ds.num_episodes, ds.num_frames) == ("v2.0", 3, sum(LENGTHS))
    np.testing.assert_array_equal(ds.column("action"), action.astype(np.float32))
    assert np.abs(ds.episode_frames(2, "front").astype(int) - episodes[2][3]["observation.images.front"]).max() <= VIDEO_TOLERANCE
    np.testing.assert_allclose(ds.stats["action"]["mean"], action.mean(0))


# ----------------------------------------------------------------------------------------------
# Bad input: each raises, naming the file and the problem
# ----------------------------------------------------------------------------------------------

DATA = "data/chunk-000/file-000.parquet"
VIDEO = "videos/observation.images.front/chunk-000/file-000.mp4"


def edit_info(root, edit):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def edit_data(root, edit):
    path = root / DATA
    pq.write_table(edit(pq.read_table(path)), path)


def test_missing_feature_column(root):
    edit_data(root, lambda t: t.drop_columns(["action"]))
    with pytest.raises(DatasetError, match=r"file-000\.parquet.*missing feature column 'action'"):
        LeRobotDataset(root)


def test_missing_required_feature(root):
    with pytest.raises(DatasetError, match=r"info\.json.*missing feature.*observation\.velocity"):
        LeRobotDataset(root, require=("observation.velocity",))


def test_wrong_shape(root):
    edit_info(root, lambda info: info["features"]["action"].update(shape=[5]))
    with pytest.raises(DatasetError, match=r"file-000\.parquet.*action.*shape \[3\].*\[5\]"):
        LeRobotDataset(root)


def test_wrong_dtype(root):
    edit_info(root, lambda info: info["features"]["observation.state"].update(dtype="float64"))
    with pytest.raises(DatasetError, match=r"file-000\.parquet.*observation\.state.*dtype float32.*float64"):
        LeRobotDataset(root)


def test_episode_index_out_of_range(root):
    ds = LeRobotDataset(root)
    for bad in (3, -1, 99):
        with pytest.raises(EpisodeIndexError, match=r"episode index .* out of range 0\.\.2"):
            ds.episode_frames(bad, "front")
    with pytest.raises(IndexError):
        ds.episode(3)


def test_data_rows_with_episode_index_out_of_range(root):
    def bump(table):
        values = table.column("episode_index").to_numpy().copy()
        values[-1] = 7
        return table.set_column(table.column_names.index("episode_index"), "episode_index", pa.array(values))
    edit_data(root, bump)
    with pytest.raises(DatasetError, match=r"data.*episode_index at row 16 is 7, expected 2"):
        LeRobotDataset(root)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_mp4(root, damage):
    path = root / VIDEO
    data = path.read_bytes()
    path.write_bytes(b"\x00not an mp4 at all" * 100 if damage == "garbage" else data[: len(data) // 2])
    ds = LeRobotDataset(root)  # metadata and parquet are fine; the video fails when decoded
    with pytest.raises(DatasetError, match=r"file-000\.mp4.*(corrupt|truncated)"):
        for e in range(ds.num_episodes):
            ds.episode_frames(e, "front")


def test_missing_mp4(root):
    (root / VIDEO).unlink()
    with pytest.raises(DatasetFileNotFoundError, match=r"file-000\.mp4.*not found"):
        LeRobotDataset(root).episode_frames(0, "front")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_parquet(root, damage):
    path = root / DATA
    data = path.read_bytes()
    path.write_bytes(b"PAR1 garbage garbage" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"file-000\.parquet.*corrupt or truncated parquet"):
        LeRobotDataset(root)


def test_inconsistent_fps_in_info(root):
    edit_info(root, lambda info: info.update(fps=20))
    with pytest.raises(DatasetError, match=r"inconsistent fps"):
        LeRobotDataset(root)


@pytest.mark.parametrize("key, value", [("total_frames", 999), ("total_tasks", 7), ("total_episodes", 4)])
def test_totals_in_info_are_checked_against_the_data(root, key, value):
    edit_info(root, lambda info: info.update({key: value}))
    with pytest.raises(DatasetError, match=rf"meta/info\.json: {key} is {value}, but .* (holds|lists) \d+"):
        LeRobotDataset(root)


def test_inconsistent_fps_in_video_stream(tmp_path, episodes):
    root = write_v21(tmp_path / "v21", episodes)
    frames = episodes[1][3]["observation.images.front"]
    encode_mp4(root / "videos/chunk-000/observation.images.front/episode_000001.mp4", frames, fps=25)
    ds = LeRobotDataset(root)
    with pytest.raises(DatasetError, match=r"episode_000001\.mp4: inconsistent fps: video stream rate 25"):
        ds.episode_frames(1, "front")


def test_inconsistent_timestamps(root):
    def shift(table):
        ts = table.column("timestamp").to_numpy().copy() * 2
        return table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(ts))
    edit_data(root, shift)
    with pytest.raises(DatasetError, match=r"data: inconsistent fps: row \d+ has timestamp"):
        LeRobotDataset(root)


def test_nan_in_actions_read(root):
    def poison(table):
        action = np.stack(table.column("action").to_numpy(zero_copy_only=False))
        action[7, 1] = np.nan
        flat = pa.array(action.reshape(-1))
        return table.set_column(table.column_names.index("action"), "action",
                                pa.FixedSizeListArray.from_arrays(flat, 3))
    edit_data(root, poison)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: action contains NaN.*episode 1, frame 2"):
        LeRobotDataset(root)


def test_nan_in_actions_write(tmp_path, episodes):
    task, state, action, frames = episodes[0]
    action = action.copy()
    action[0, 0] = np.nan
    with pytest.raises(DatasetError, match=r"action contains NaN"):
        write_dataset(tmp_path / "ds", [(task, state, action, frames)])
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()


def test_writer_rejects_bad_episodes_and_existing_dir(root, tmp_path, episodes):
    with pytest.raises(DatasetError, match="already exists"):
        write_dataset(root, episodes)
    task, state, action, frames = episodes[0]
    with pytest.raises(DatasetError, match=r"action has shape \(5, 2\), expected \(5, 3\)"):
        write_dataset(tmp_path / "b", [(task, state, action[:, :2], frames)])
    with pytest.raises(DatasetError, match=r"missing features \['action'\]"):
        features = build_features(FPS, {}, {"action": ["a"]})
        with LeRobotWriter(tmp_path / "c", fps=FPS, features=features) as w:
            w.add_episode(task, {}, {})


def test_missing_dataset_and_metadata(tmp_path, root):
    with pytest.raises(DatasetFileNotFoundError):
        LeRobotDataset(tmp_path / "nowhere")
    (root / "meta/tasks.parquet").unlink()
    with pytest.raises(DatasetFileNotFoundError, match=r"tasks\.parquet: file not found"):
        LeRobotDataset(root)


def test_unsupported_version(root):
    edit_info(root, lambda info: info.update(codebase_version="v1.6"))
    with pytest.raises(DatasetError, match=r"info\.json: codebase_version 'v1.6' not supported"):
        LeRobotDataset(root)


def test_content_hash_names_the_data_not_where_or_when_it_was_written(tmp_path, root, episodes):
    ds = LeRobotDataset(root)
    ds.frames("front")  # a frame cache and a collection log are not content
    (root / "meta" / COLLECTION_LOG).write_text(json.dumps({"collect_seconds": 12.3}))
    copy = write_dataset(tmp_path / "elsewhere" / "same", episodes)  # written again, another place and time
    assert LeRobotDataset(copy).content_sha256() == ds.content_sha256()
    episodes[1][3]["observation.images.wrist"][4, 7, 11] ^= 128  # one pixel of one frame
    other = write_dataset(tmp_path / "other", episodes)
    assert LeRobotDataset(other).content_sha256() != ds.content_sha256()


def test_stale_cache_is_not_reused(root):
    ds = LeRobotDataset(root)
    ds.frames("front")
    shutil.copy(root / VIDEO, root / "tmp.mp4")
    (root / VIDEO).write_bytes((root / "tmp.mp4").read_bytes())  # rewritten: new mtime -> new fingerprint
    assert len(list((root / "cache").glob("frames-observation.images.front-*.npy"))) == 1
    LeRobotDataset(root).frames("front")
    assert len(list((root / "cache").glob("frames-observation.images.front-*.npy"))) == 2


def test_video_encodings_benchmark_measures_each_encoding_against_the_source(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("video_encodings", Path(__file__).parent.parent / "benchmarks/video_encodings.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = write_dataset(tmp_path / "ds", smooth_episodes(32))  # lossless: the source frames within 2 levels
    out = tmp_path / "enc.json"
    assert bench.main([str(root), "--camera", "front", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["frames"] == sum(LENGTHS) and set(record["encodings"]) == set(VIDEO_ENCODINGS)
    lossless, av1 = record["encodings"]["lossless"], record["encodings"]["av1"]
    assert lossless["max_abs_error"] <= VIDEO_TOLERANCE < av1["max_abs_error"]
    assert av1["bytes"] > 0 and av1["decode_ms_per_frame"] > 0
    assert "lossless" in capsys.readouterr().out


def with_image_feature(root, episodes, fmt="PNG", shape=None, damage=None):
    """The dataset at ``root`` plus an ``observation.images.side`` image feature: the wrist frames
    encoded as ``fmt`` in the parquet (HF datasets' Image struct {bytes, path}), as public LIBERO sets."""
    import io

    from PIL import Image

    frames = np.concatenate([e[3]["observation.images.wrist"] for e in episodes])

    def encode(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
        return buffer.getvalue()

    blobs = [encode(f) for f in frames]
    if damage is not None:
        blobs[damage] = b"not an image"
    struct = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([None] * len(blobs), pa.string())],
                                        names=["bytes", "path"])
    edit_data(root, lambda t: t.append_column("observation.images.side", struct))
    edit_info(root, lambda info: info["features"].update({"observation.images.side": {
        "dtype": "image", "shape": shape or [H, W, 3], "names": ["height", "width", "channel"]}}))
    return frames


@pytest.mark.parametrize("fmt, tolerance", [("PNG", 0), ("JPEG", 255)])  # JPEG: lossy, checked on the mean
def test_image_features_in_the_parquet_read_as_cameras(root, episodes, fmt, tolerance):
    frames = with_image_feature(root, episodes, fmt)
    ds = LeRobotDataset(root)
    assert ds.image_keys == ["observation.images.side"] and ds.cameras == ["front", "wrist", "side"]
    start = 0
    for e, length in enumerate(LENGTHS):
        got = ds.episode_frames(e, "side")
        assert got.shape == (length, H, W, 3)
        error = np.abs(got.astype(int) - frames[start:start + length])
        assert error.max() <= tolerance and error.mean() < 8  # a frame off by one would be ~30 off on average
        start += length
    cached = ds.frames("side")
    assert np.array_equal(cached, np.concatenate([ds.episode_frames(e, "side") for e in range(len(LENGTHS))]))
    from fastwam.data.windows import ChunkDataset

    windows = ChunkDataset(ds, chunk=2, frame_stride=1, future_frames=0, cameras=["front", "side"])
    assert windows.camera_keys == ["observation.images.front", "observation.images.side"]


def test_image_features_declared_channels_first_read_as_height_width_channels(root, episodes):
    frames = with_image_feature(root, episodes, shape=[3, H, W])
    ds = LeRobotDataset(root)
    assert ds.features["observation.images.side"]["shape"] == [H, W, 3]
    assert np.array_equal(ds.episode_frames(0, "side"), frames[:LENGTHS[0]])


def test_bad_images_in_the_parquet_are_named(root, episodes):
    with_image_feature(root, episodes, damage=LENGTHS[0] + 1)
    ds = LeRobotDataset(root)
    ds.episode_frames(0, "side")  # the damaged row is the second episode's
    with pytest.raises(DatasetError, match=r"file-000\.parquet: observation\.images\.side row 6: undecodable image"):
        ds.episode_frames(1, "side")


def test_images_of_another_size_than_declared_are_named(root, episodes):
    with_image_feature(root, episodes, shape=[H + 2, W, 3])
    with pytest.raises(DatasetError, match=rf"observation\.images\.side row 0 is a \({H}, {W}, 3\) image, info\.json "
                                           rf"declares \({H + 2}, {W}, 3\)"):
        LeRobotDataset(root).episode_frames(0, "side")


@pytest.mark.parametrize("edit, message", [
    (lambda info: [], r"meta/info.json: expected a mapping with a 'features' mapping, got \[\]"),
    (lambda info: {**info, "features": list(info["features"])}, r"expected a mapping with a 'features' mapping"),
    (lambda info: {**info, "features": {**info["features"], "action": {**info["features"]["action"], "shape": 3}}},
     r"feature 'action': expected a dtype name and a shape list of sizes >= 1, got dtype 'float32', shape 3"),
    (lambda info: {**info, "features": {**info["features"], "action": {**info["features"]["action"], "dtype": "foo"}}},
     r"meta/info.json: feature 'action' has dtype 'foo', not a numeric type"),
    (lambda info: {**info, "total_episodes": "3"}, r"total_episodes is '3', but metadata lists 3 episodes"),
])
def test_malformed_info_json_is_named_not_a_traceback(root, edit, message):
    path = root / "meta/info.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(DatasetError, match=message):
        LeRobotDataset(root)

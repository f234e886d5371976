"""Options every command checks before its work starts: one line naming the option, expected against got."""

import pytest

from fastwam.cli import main


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize("argv, message", [
    (["--workers", "-3"], r"--workers: expected at least 1 worker process, got -3"),
    (["--workers", "0"], r"--workers: expected at least 1 worker process, got 0"),
    (["--threads", "-1"], r"--threads: expected a thread count >= 1 \(0: torch's default\), got -1"),
    (["--device", "foo"], r"--device: expected a device such as cpu, cuda or cuda:1, got 'foo'"),
    (["--device", "cuda:3"], r"--device: 'cuda:3' is not available here"),
    (["--json", "{file}/x.json"], r"--json {file}/x.json: {file} is a file, so the folder cannot be made"),
    (["--json", "{dir}"], r"--json {dir}: is a directory; expected a file path"),
    (["--video", "{file}/v.mp4"], r"--video {file}/v.mp4: {file} is a file"),
])
def test_eval_checks_its_options_and_output_paths_before_any_episode(tmp_path, a_file, argv, message):
    argv = [a.format(file=a_file, dir=tmp_path) for a in argv]
    with pytest.raises(SystemExit, match="^fastwam eval: " + message.format(file=a_file, dir=tmp_path)):
        main(["eval", "metaworld", "--checkpoint", str(tmp_path / "no-such-run"), *argv])


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], r"--batch: expected >= 1 observations per call, got 0"),
    (["--device", "cuda"], r"--device: 'cuda' is not available here"),
    (["--threads", "-2"], r"--threads: expected a thread count >= 1"),
    (["--json", "{file}/x.json"], r"--json {file}/x.json: {file} is a file"),
])
def test_bench_checks_its_options_before_timing(a_file, argv, message):
    argv = [a.format(file=a_file) for a in argv]
    with pytest.raises(SystemExit, match="^fastwam bench: " + message.format(file=a_file)):
        main(["bench", "latency", "--preset", "tiny", "--variants", "fastwam", *argv])


@pytest.mark.parametrize("argv, message", [
    (["--device", "foo"], r"--device: expected a device such as cpu"),
    (["--threads", "-1"], r"--threads: expected a thread count >= 1"),
    (["--seed", "-1"], r"--seed: expected an integer >= 0, got -1"),
    (["--json", "{file}/x.json"], r"--json {file}/x.json: {file} is a file"),
])
def test_offline_checks_its_options_before_measuring(tmp_path, a_file, argv, message):
    argv = [a.format(file=a_file) for a in argv]
    with pytest.raises(SystemExit, match="^fastwam offline: " + message.format(file=a_file)):
        main(["offline", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "data"), *argv])

"""The latency benchmark's command line and JSON schema (timings themselves live in docs/RESULTS.md)."""

import json

import fastwam
from fastwam.cli import main


def test_bench_latency_writes_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "latency", "--preset", "tiny", "--variants", "fastwam,joint,idm", "--steps", "3",
                 "--calls", "2", "--warmup", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["preset"] == "tiny" and record["steps"] == [3] and len(record["runs"]) == 1
    result = record["runs"][0]
    assert result["preset"] == "tiny" and result["steps"] == 3 and result["dtype"] == "float32"
    assert result["device"].startswith("cpu") and result["compiled"] is False
    assert result["code"] == fastwam.code_version()
    variants = result["variants"]
    assert set(variants) == {"fastwam", "joint", "idm"}
    for v in variants.values():
        assert 0 < v["median_ms"] <= v["p90_ms"]
        assert v["params"] > 0 and v["warmup_s"] >= 0
    # tiny: 4 context tokens, chunk 4, 2 future frames of 4 tokens, 3 action steps (IDM: 4 video steps, the preset's)
    assert variants["fastwam"]["tokens"] == 4 + 3 * 4 and variants["fastwam"]["video_expert_calls"] == 1
    assert variants["joint"]["tokens"] == 4 + 3 * (8 + 4) and variants["joint"]["video_expert_calls"] == 1 + 3
    assert variants["idm"]["tokens"] == 4 + 4 * 8 + 8 + 3 * 4 and variants["idm"]["video_expert_calls"] == 1 + 4 + 1
    ratios = result["ratios"]
    assert set(ratios) == {"idm_over_fastwam", "joint_over_fastwam"}
    assert abs(ratios["idm_over_fastwam"] - variants["idm"]["median_ms"] / variants["fastwam"]["median_ms"]) < 1e-9
    assert "joint / fastwam" in capsys.readouterr().out


def test_a_preset_without_video_co_training_times_every_variant(tmp_path):
    from fastwam.config import preset

    path = tmp_path / "lambda0.yaml"
    preset("tiny").with_variant("fastwam", video_weight=0.0).save(path)
    out = tmp_path / "bench.json"
    assert main(["bench", "latency", "--preset", str(path), "--variants", "fastwam,joint", "--steps", "2",
                 "--calls", "1", "--warmup", "0", "--json", str(out)]) == 0
    variants = json.loads(out.read_text())["runs"][0]["variants"]
    assert variants["fastwam"]["tokens"] == 4 + 2 * 4  # the preset's own model: no future tokens
    assert variants["joint"]["tokens"] == 4 + 2 * (8 + 4)  # timed at λ = 1: the future it generates


def test_bench_rejects_unknown_variant():
    import pytest

    with pytest.raises(SystemExit, match="unknown \\['dream'\\]"):
        main(["bench", "latency", "--preset", "tiny", "--variants", "fastwam,dream"])


def test_bench_times_each_step_count_in_one_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "latency", "--preset", "tiny", "--variants", "fastwam", "--steps", "1,2,4",
                 "--calls", "1", "--warmup", "0", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["steps"] == [1, 2, 4] and [run["steps"] for run in record["runs"]] == [1, 2, 4]
    # tiny: 4 context tokens, then chunk-4 action tokens per step
    assert [run["variants"]["fastwam"]["tokens"] for run in record["runs"]] == [4 + 4, 4 + 2 * 4, 4 + 4 * 4]
    assert "median ms per chunk by denoising steps" in capsys.readouterr().out


def test_bench_rejects_bad_step_lists():
    import pytest

    for steps, message in (("1,x", "comma list of integers"), ("0,2", "distinct step counts >= 1"),
                           ("2,2", "distinct step counts >= 1")):
        with pytest.raises(SystemExit, match=message):
            main(["bench", "latency", "--preset", "tiny", "--steps", steps])

"""End to end on CPU: collect 1 demonstration, train a few steps, get killed, resume, evaluate."""

import json

import pytest

from fastwam.cli import main


@pytest.mark.slow
def test_collect_train_resume_evaluate(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["collect", "metaworld", "--tasks", "reach", "--episodes", "1", "--image-size", "16",
                 "--workers", "1", "--out", str(data)]) == 0

    from fastwam.config import preset
    from fastwam.train import build_trainer, config_from_args, latest_checkpoint

    train_args = ["train", "--data", str(data), "--preset", "tiny", "--steps", "4", "--checkpoint-every", "2",
                  "--batch-size", "4", "--out", str(run)]
    from fastwam.cli import build_parser

    cfg = config_from_args(build_parser().parse_args(train_args))
    assert cfg.model == preset("tiny").model
    build_trainer(cfg, data, run, progress=False).run(until=2)  # a run killed after its step-2 checkpoint
    assert latest_checkpoint(run).name == "step-0000002"
    assert main(train_args + ["--resume"]) == 0
    assert latest_checkpoint(run).name == "step-0000004"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]  # tiny logs every 5 steps and at the end of each run

    out = tmp_path / "eval.json"
    assert main(["eval", "metaworld", "--checkpoint", str(run), "--episodes", "1", "--max-steps", "8",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    task = result["tasks"]["reach-v3"]
    assert task["episodes"] == 1 and 0.0 <= task["success_rate"] <= 1.0 and task["mean_chunk_ms"] > 0
    used = json.loads((data / "meta" / "fastwam.json").read_text())["variations"]["reach-v3"]
    assert set(task["variations"]).isdisjoint(used)

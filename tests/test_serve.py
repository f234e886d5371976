"""``fastwam serve``: HTTP transport around the policy (loopback only)."""

import argparse
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fastwam.config import preset
from fastwam.data.normalize import Normalizer
from fastwam.policy import Policy
from fastwam.serve import add_arguments, make_server, policy_from_args
from fastwam.train import write_run_files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve")
    cfg = preset("tiny")
    torch.manual_seed(0)
    save_file(cfg.model.build().state_dict(), run / "model.safetensors")
    stats = {k: {"min": np.full(4, -2.0), "max": np.full(4, 2.0)} for k in ("observation.state", "action")}
    write_run_files(run, cfg, Normalizer(stats), {})
    return run


@pytest.fixture(scope="module")
def policy(run_dir):
    return Policy.from_checkpoint(run_dir)


def request(url, payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_act_matches_the_policy(policy):
    server = make_server(policy, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, info = request(url + "/info")
        assert status == 200 and info["chunk"] == 4 and info["image_shape"] == [16, 16, 3]
        assert (info["denoise_steps"], info["noise_scale"]) == (policy.cfg.model.action_flow.steps, 1.0)
        image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        obs = {"image": image.tolist(), "state": [0.1, 0.2, 0.3, 0.4], "instruction": "reach the goal"}
        policy.reset(seed=7)
        status, reply = request(url + "/act", obs)
        assert status == 200
        policy.reset(seed=7)
        expected = policy.act({**obs, "image": image})
        np.testing.assert_allclose(np.array(reply["actions"]), expected, atol=1e-6)
        status, reply = request(url + "/act", {**obs, "state": [0.0]})
        assert status == 400 and "observation['state']" in reply["error"]
        status, reply = request(url + "/act", {"state": [0, 0, 0, 0]})
        assert status == 400 and "missing ['image', 'instruction']" in reply["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_serve_options_set_the_policys_sampling(run_dir):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    obs = {"image": np.zeros((16, 16, 3), np.uint8), "state": [0.1, 0.2, 0.3, 0.4], "instruction": "reach the goal"}
    args = parser.parse_args(["--checkpoint", str(run_dir), "--steps", "3", "--noise-scale", "0", "--seed", "5"])
    served = policy_from_args(args)
    assert (served.steps, served.noise_scale) == (3, 0.0)
    reference = Policy.from_checkpoint(run_dir, steps=3, noise_scale=0.0)
    np.testing.assert_allclose(served.act(obs), reference.act(obs), atol=1e-6)  # deterministic: seed irrelevant
    noisy = [policy_from_args(parser.parse_args(["--checkpoint", str(run_dir), "--seed", str(s)])) for s in (5, 5, 6)]
    first, same, other = (p.act(obs) for p in noisy)
    np.testing.assert_array_equal(first, same)
    assert not np.allclose(first, other)
    with pytest.raises(ValueError, match="steps: expected >= 1 denoising steps, got 0"):
        policy_from_args(parser.parse_args(["--checkpoint", str(run_dir), "--steps", "0"]))

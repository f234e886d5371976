"""``fastwam serve``: openpi's websocket protocol, driven by the real ``openpi-client``, and hardened."""

import argparse
import dataclasses
import json
import logging
import math
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_model import randomized
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fastwam.config import preset
from fastwam.data.normalize import Normalizer
from fastwam.policy import Policy
from fastwam.serve import PolicyService, add_arguments, make_server, service_from_args, unpack
from fastwam.train import write_run_files

OPENPI_PYTHON = Path(__file__).parent.parent / ".venv-openpi" / "bin" / "python"  # make openpi-client
STATS = {"observation.state": {"min": np.full(8, -1.0), "max": np.full(8, 1.0)},
         "action": {"min": np.full(7, -2.0), "max": np.full(7, 2.0)}}
PROMPT = "put the bowl on the plate"


def libero_like():
    """The tiny preset shaped as a LIBERO checkpoint: cameras image + wrist_image, 8-D state, 7-D actions."""
    cfg = preset("tiny")
    return cfg.replace(model=dataclasses.replace(cfg.model, state_dim=8, action_dim=7, latent_width=8),
                       data=dataclasses.replace(cfg.data, cameras=("image", "wrist_image")))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve")
    cfg = libero_like()
    save_file({k: v.contiguous() for k, v in randomized(cfg.model).state_dict().items()}, run / "model.safetensors")
    write_run_files(run, cfg, Normalizer(STATS), {})
    return run


@pytest.fixture(scope="module")
def served(run_dir):
    """A server on a free loopback port: (service, port)."""
    service = PolicyService(Policy.from_checkpoint(run_dir, noise_scale=0.0))
    server = make_server(service, "127.0.0.1", 0, max_message_mb=4.0, idle_timeout=30, handshake_timeout=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield service, server.socket.getsockname()[1]
    server.shutdown()


def request(images=224, **override):
    rng = np.random.default_rng(0)
    obs = {"observation/image": rng.integers(0, 256, (images, images, 3), dtype=np.uint8),
           "observation/wrist_image": rng.integers(0, 256, (images, images, 3), dtype=np.uint8),
           "observation/state": np.linspace(-0.5, 0.5, 8).astype(np.float32), "prompt": PROMPT}
    return {**obs, **override}


def openpi_pack(obj) -> bytes:
    """What openpi-client's msgpack_numpy.Packer sends (bytes keys, dtype.str, shape tuple)."""
    def default(o):
        if isinstance(o, np.ndarray):
            return {b"__ndarray__": True, b"data": o.tobytes(), b"dtype": o.dtype.str, b"shape": o.shape}
        raise TypeError(type(o))
    return msgpack.packb(obj, default=default)


def ask(port, message):
    """Send one message on a fresh connection; (metadata, reply: dict or error text)."""
    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        metadata = msgpack.unpackb(ws.recv())
        ws.send(message)
        reply = ws.recv(timeout=60)
    return metadata, reply if isinstance(reply, str) else unpack(reply)


def test_the_real_openpi_client_drives_the_server_unchanged(served, run_dir):
    if not OPENPI_PYTHON.exists():
        pytest.skip(f"{OPENPI_PYTHON} missing: `make openpi-client` installs openpi-client==0.1.2 (make test does)")
    service, port = served
    script = f"""
import json, numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
client = WebsocketClientPolicy(host="127.0.0.1", port={port})
rng = np.random.default_rng(0)
obs = {{"observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "observation/state": np.linspace(-0.5, 0.5, 8).astype(np.float32), "prompt": {PROMPT!r}}}
first, second = client.infer(obs), client.infer(obs)
try:
    client.infer({{**obs, "observation/image": obs["observation/image"].astype(np.float32) / 255}})
    error = None
except RuntimeError as e:
    error = str(e)
print(json.dumps({{"metadata": client.get_server_metadata(), "actions": first["actions"].tolist(),
                  "dtype": str(first["actions"].dtype), "timing": [first["server_timing"], second["server_timing"]],
                  "again": second["actions"].tolist(), "error": error}}))
"""
    out = subprocess.run([str(OPENPI_PYTHON), "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    meta = result["metadata"]
    assert meta["inputs"] == {"observation/image": "image", "observation/wrist_image": "wrist_image",
                              "observation/state": "state", "prompt": "prompt"}
    assert (meta["action_horizon"], meta["action_dim"], meta["image_size"]) == (4, 7, 16)
    # the actions are the policy's on the resized cameras, side by side (noise scale 0: deterministic)
    obs = request()
    views = [np.asarray(Image.fromarray(obs[k]).resize((16, 16), Image.BILINEAR))
             for k in ("observation/image", "observation/wrist_image")]
    expected = Policy.from_checkpoint(run_dir, noise_scale=0.0).act(
        {"image": np.concatenate(views, axis=1), "state": obs["observation/state"], "instruction": PROMPT})
    np.testing.assert_allclose(np.array(result["actions"]), expected, atol=1e-5)
    assert result["dtype"] == "float32" and np.array(result["actions"]).shape == (4, 7)
    assert np.abs(expected).max() > 0 and result["again"] == result["actions"]
    first, second = result["timing"]
    assert first["infer_ms"] > 0 and "prev_total_ms" not in first and second["prev_total_ms"] > 0
    assert "observation/image: expected a uint8 (H, W, 3) array" in result["error"]
    assert "got float32 array (224, 224, 3); float images are not converted" in result["error"]


@pytest.mark.parametrize("override, message", [
    ({"observation/state": np.array([0, 0, np.nan, 0, 0, 0, 0, 0], np.float32)},
     "observation/state[2]: expected a finite number, got nan"),
    ({"observation/state": np.array([0, np.inf, 0, 0, 0, 0, 0, 0])}, "observation/state[1]: expected a finite"),
    ({"observation/state": np.array([0, 0, 0, 1e30, 0, 0, 0, 0])},
     "observation/state[3]: expected a value in [-10, 10] (the training range widened 10-fold), got 1e+30"),
    ({"observation/state": np.zeros(3, np.float32)}, "observation/state: expected 8 numbers, got float32 array (3,)"),
    ({"observation/image": np.full((224, 224, 3), 300, np.int64)},
     "observation/image: expected a uint8 (H, W, 3) array (msgpack-numpy), got int64 array (224, 224, 3)"),
    ({"observation/wrist_image": np.zeros((224, 200, 3), np.uint8)},
     "observation/wrist_image: expected a square image of at least 8 pixels (resized to 16), got 224x200"),
    ({"observation/image": [[[1, 2, 3]]]}, "observation/image: expected a uint8 (H, W, 3) array (msgpack-numpy), "
                                           "got a list of 1 items"),
    ({"prompt": 7}, "prompt: expected the instruction, a non-empty string of at most 1000 characters, got int"),
    ({"prompt": ""}, "prompt: expected the instruction"),
])
def test_bad_inputs_are_refused_naming_the_field(served, override, message):
    _, port = served
    _, reply = ask(port, openpi_pack(request(**override)))
    assert isinstance(reply, str) and message in reply


def test_malformed_messages_get_an_error_and_the_connection_stays_usable(served):
    _, port = served
    deep = b"\x81\xa6prompt" + b"\x91" * 100_000 + b"\xc0"  # {"prompt": [[[...]]]} 100,000 deep
    lying = openpi_pack(request(**{"observation/image": {b"__ndarray__": True, b"data": b"\x00" * 10,
                                                          b"dtype": "|u1", b"shape": [224, 224, 3]}}))
    objects = openpi_pack(request(**{"observation/state": {b"__ndarray__": True, b"data": b"\x00" * 8,
                                                            b"dtype": "|O", b"shape": [1]}}))
    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        ws.recv()
        for message, expected in [
            (deep, "request: expected one msgpack map (openpi's msgpack-numpy), got undecodable bytes"),
            (b"\xc1garbage", "got undecodable bytes"),
            (msgpack.packb([1, 2, 3]), "request: expected a msgpack map of named inputs, got list"),
            ("a text frame", "request: expected a binary msgpack message, got text"),
            (lying, "observation/image: array data: expected 150528 bytes for uint8 (224, 224, 3), got 10"),
            (objects, "observation/state: array dtype: expected one of"),
            (openpi_pack({"prompt": PROMPT}), "request: missing ['observation/image', 'observation/wrist_image', "
                                              "'observation/state']"),
        ]:
            ws.send(message)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and expected in reply, reply
        ws.send(openpi_pack(request()))  # still serving
        assert unpack(ws.recv(timeout=60))["actions"].shape == (4, 7)


def test_real_time_chunking_inputs_guide_the_chunk_and_are_validated(served):
    _, port = served
    previous = np.full((3, 7), 1.5, np.float32)
    _, free = ask(port, openpi_pack(request()))
    _, guided = ask(port, openpi_pack(request(**{"rtc/previous_actions": previous, "rtc/frozen": 2})))
    assert np.abs(guided["actions"][:2] - 1.5).max() < np.abs(free["actions"][:2] - 1.5).max()
    for extra, message in [({"rtc/frozen": 1}, "rtc/frozen: given without rtc/previous_actions"),
                           ({"rtc/previous_actions": previous, "rtc/frozen": 4},
                            "rtc/frozen: expected an integer in 0..3 (the previous actions given), got 4"),
                           ({"rtc/previous_actions": np.zeros((3, 6), np.float32)},
                            "rtc/previous_actions: expected finite raw actions (n, 7) with 1 <= n <= 4 (the chunk), got float32 array (3, 6)"),
                           ({"rtc/previous_actions": np.full((1, 7), np.inf)},
                            "rtc/previous_actions[0, 0]: expected a finite number, got inf")]:
        _, reply = ask(port, openpi_pack(request(**extra)))
        assert isinstance(reply, str) and message in reply, reply


def test_the_server_never_sends_a_non_finite_action(served, monkeypatch):
    service, port = served
    nan = lambda *args, **kwargs: torch.full((1, 4, 7), float("nan"))  # noqa: E731 (weights gone bad)
    monkeypatch.setattr(service.policy.model, "predict_actions", nan)
    _, reply = ask(port, openpi_pack(request()))
    assert isinstance(reply, str) and "inference failed" in reply and "non-finite actions (28 of 28)" in reply


def test_limits_health_and_timeouts(run_dir):
    service = PolicyService(Policy.from_checkpoint(run_dir))
    server = make_server(service, "127.0.0.1", 0, max_message_mb=0.01, idle_timeout=0.5, handshake_timeout=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.socket.getsockname()[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200 and r.read() == b"ok\n"
        with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:  # 150 KB > 10 KB
            ws.recv()
            ws.send(openpi_pack(request()))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1009  # message too big
        with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:  # idle: closed, saying why
            ws.recv()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1000 and "--idle-timeout" in closed.value.rcvd.reason
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # a handshake that never comes
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and never ends
            start = time.perf_counter()
            while raw.recv(1024):
                pass
            assert time.perf_counter() - start < 5  # dropped after the handshake timeout
    finally:
        server.shutdown()


def test_bad_options_and_damaged_checkpoints_are_refused_before_serving(run_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def start(*argv):
        return service_from_args(parser.parse_args(["--checkpoint", str(run_dir), *argv]))

    for argv, message in [(["--noise-scale", "nan"], "--noise-scale: expected a number in 0..10, got nan"),
                          (["--noise-scale", "-1"], "--noise-scale: expected a number in 0..10, got -1.0"),
                          (["--noise-scale", "1e20"], "--noise-scale: expected a number in 0..10, got 1e+20"),
                          (["--port", "70000"], "--port: expected 0..65535, got 70000"),
                          (["--idle-timeout", "0"], "--idle-timeout: expected seconds in (0, 604800], got 0"),
                          (["--idle-timeout", "1e10"], "--idle-timeout: expected seconds in (0, 604800], got 1e+10"),
                          (["--max-message-mb", "1e-9"], "--max-message-mb: expected 0.001..1024 MB, got 1e-09"),
                          (["--device", "foo"], "--device: expected a device such as cpu, cuda or cuda:1, got 'foo'"),
                          (["--device", "cuda:7"], "--device: 'cuda:7' is not available here"),
                          (["--input", "cam"], "--input: expected KEY=TARGET, got 'cam'"),
                          (["--input", "observation/exterior=corner3"],
                           "--input observation/exterior=corner3: expected a camera of the checkpoint (image, "
                           "wrist_image), state or prompt, got 'corner3'"),
                          (["--steps", "0"], "--steps: expected >= 1 denoising steps, got 0"),
                          (["--input", "observation/image=wrist_image"],
                           "--input: every camera, state and prompt needs one request key; ['image'] would have none"),
                          (["--rtc-guidance", "0"], "--rtc-guidance: expected a finite number > 0, got 0.0"),
                          (["--mode", "video_then_action"], "mode: this checkpoint (variant 'fastwam') runs action_only")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            start(*argv)
    renamed = start("--input", "observation/exterior_image_1_left=image")
    assert renamed.inputs.keys["observation/exterior_image_1_left"] == "image"
    assert "observation/image" not in renamed.inputs.keys
    from safetensors.torch import load_file

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in ("config.yaml", "stats.json"):
        (damaged / f).write_bytes((run_dir / f).read_bytes())
    weights = load_file(run_dir / "model.safetensors")
    name = sorted(weights)[3]
    weights[name] = weights[name].clone().fill_(math.nan)
    save_file(weights, damaged / "model.safetensors")
    with pytest.raises(ValueError, match=rf"model.safetensors: non-finite values in \['{name}'\] \(1 tensors\)"):
        Policy.from_checkpoint(damaged)
    history = libero_like()
    history = history.replace(model=dataclasses.replace(history.model, context_frames=2))
    with pytest.raises(ValueError, match="takes 1 past frame"):
        PolicyService(Policy(randomized(history.model), history, Normalizer(STATS)))


def test_concurrent_clients_are_all_answered_without_thread_growth(run_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).parents[1] / "benchmarks" / "serve_load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    result = load.run_load(run_dir, clients=3, requests=2, bad=1, rounds=2)
    assert result["failures"] == [] and result["answered"] == result["expected"] == 12
    first, second = result["after_rounds"]
    assert second["threads"] <= first["threads"]  # the connections' threads are gone after each round
    assert 0 < result["p50_ms"] <= result["p99_ms"]


# -- one validation path: the Python API refuses what the server refuses -----------------------------------

@pytest.fixture
def policy(run_dir):
    return Policy.from_checkpoint(run_dir, noise_scale=0.0)


def observation(**override):
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (16, 32, 3), dtype=np.uint8), "state": np.linspace(-0.5, 0.5, 8),
            "instruction": PROMPT, **override}


@pytest.mark.parametrize("override, message", [
    ({"state": np.array([0, 0, np.nan, 0, 0, 0, 0, 0])}, r"^observation\['state'\]\[2\]: expected a finite number, got nan$"),
    ({"state": np.array([0, -np.inf, 0, 0, 0, 0, 0, 0])}, r"^observation\['state'\]\[1\]: expected a finite number, got -inf"),
    ({"state": np.array([0, 0, 0, 1e30, 0, 0, 0, 0])},
     r"^observation\['state'\]\[3\]: expected a value in \[-10, 10\] \(the training range widened 10-fold\), got 1e\+30$"),
    ({"state": [0, 0, 0, "a", 0, 0, 0, 0]}, r"^observation\['state'\]\[3\]: expected a number, got 'a'$"),
    ({"state": [0, 0, None, 0, 0, 0, 0, 0]}, r"^observation\['state'\]\[2\]: expected a number, got None$"),
    ({"state": [True] * 8}, r"^observation\['state'\]\[0\]: expected a number, got True$"),
    ({"state": [[0.0], [0.0, 1.0]]}, r"^observation\['state'\]: expected 8 numbers, got a list of 2 items of ragged"),
    ({"state": "00000000"}, r"^observation\['state'\]: expected 8 numbers, got a string of 8 characters$"),
    ({"instruction": ""}, r"^observation\['instruction'\]: expected the instruction, a non-empty string of at most "
                          r"1000 characters, got a string of 0 characters$"),
    ({"instruction": "   "}, r"got a string of 3 characters$"),
    ({"instruction": "x" * 1_000_000}, r"got a string of 1000000 characters$"),
    ({"instruction": None}, r"^observation\['instruction'\]: expected the instruction, .*, got NoneType$"),
    ({"instruction": 5}, r"^observation\['instruction'\]: expected the instruction, .*, got int$"),
    ({"instruction": ["a", "b"]}, r"^observation\['instruction'\]: expected the instruction, .*, got a list of 2 items$"),
    ({"image": np.zeros((16, 32, 3), np.float32)}, r"^observation\['image'\]: expected uint8 \(\[B,\] 16, 32, 3\)"),
    ({"image": np.zeros((0, 16, 32, 3), np.uint8)}, r"^observation\['image'\]: expected at least one image"),
])
def test_the_policy_refuses_what_the_server_refuses_naming_the_field(policy, override, message):
    with pytest.raises(ValueError, match=message):
        policy.act(observation(**override))


def test_the_policy_refuses_bad_batches_and_options(policy, run_dir):
    batch = {"image": np.zeros((2, 16, 32, 3), np.uint8), "state": np.zeros((2, 8))}
    assert policy.act({**batch, "instruction": ["a", "b"]}).shape == (2, 4, 7)
    for instruction, message in [(["a"], r"expected 2 instructions \(one per image\), got 1"),
                                 (["a", 3], r"^observation\['instruction'\]\[1\]: expected the instruction"),
                                 (["a", ""], r"^observation\['instruction'\]\[1\]: .* got a string of 0 characters")]:
        with pytest.raises(ValueError, match=message):
            policy.act({**batch, "instruction": instruction})
    with pytest.raises(ValueError, match=r"^observation\['state'\]\[1, 4\]: expected a finite number, got nan"):
        policy.act({**batch, "state": np.where(np.arange(16).reshape(2, 8) == 12, np.nan, 0.0), "instruction": "a"})
    with pytest.raises(ValueError, match=r"^observation: expected a dict with image, state, instruction, got a list of 2 items"):
        policy.act([1, 2])
    for kwargs, message in [({"noise_scale": 1e20}, r"^noise_scale: expected a number in 0..10, got 1e\+20"),
                            ({"steps": 2.5}, r"^steps: expected an integer >= 1 \(denoising steps\), got 2.5"),
                            ({"seed": 2**64}, r"^seed: expected an integer in 0..2\*\*63 - 1"),
                            ({"action_shift": float("inf")}, r"^action_shift: expected a finite number > 0, got inf")]:
        with pytest.raises(ValueError, match=message):
            Policy.from_checkpoint(run_dir, **kwargs)


def test_action_shift_leaves_the_callers_model_alone(policy):
    shifted = Policy(policy.model, policy.cfg, policy.normalizer, action_shift=0.5, noise_scale=0.0)
    assert shifted.model.cfg.action_flow.shift == 0.5 and shifted.cfg.model.action_flow.shift == 0.5
    assert policy.model.cfg.action_flow.shift == policy.cfg.model.action_flow.shift != 0.5
    assert shifted.model.action is policy.model.action  # the weights are shared, not copied
    assert not np.allclose(shifted.act(observation()), policy.act(observation()))


def test_instruction_caches_are_bounded(run_dir, monkeypatch):
    import fastwam.policy
    import fastwam.text

    monkeypatch.setattr(fastwam.policy, "INSTRUCTION_CACHE", 3)
    monkeypatch.setattr(fastwam.text, "MEMORY_PROMPTS", 3)
    policy = Policy.from_checkpoint(run_dir, noise_scale=0.0)
    first = policy.act(observation(instruction="prompt 0"))
    for i in range(1, 6):
        policy.act(observation(instruction=f"prompt {i}"))
    assert policy._embedding.cache_info().currsize == 3 and len(policy.text_encoder._memory) == 3
    np.testing.assert_array_equal(policy.act(observation(instruction="prompt 0")), first)  # re-embedded alike


def test_numpy_scalars_over_the_wire_are_inputs_or_refused_by_key(served):
    def scalar(value):
        return {b"__npgeneric__": True, b"data": value.item(), b"dtype": value.dtype.str}

    state = [scalar(np.float32(v)) for v in np.linspace(-0.5, 0.5, 8)]
    _, plain = ask(served[1], openpi_pack(request()))
    _, reply = ask(served[1], openpi_pack(request(**{"prompt": scalar(np.str_(PROMPT)), "observation/state": state})))
    np.testing.assert_allclose(reply["actions"], plain["actions"], atol=1e-5)  # the same inputs, as numpy scalars
    _, reply = ask(served[1], openpi_pack(request(**{"rtc/previous_actions": np.zeros((3, 7), np.float32),
                                                     "rtc/frozen": scalar(np.int64(2))})))
    assert isinstance(reply, dict)
    complex_scalar = {b"__npgeneric__": True, b"data": 1.0, b"dtype": "<c16"}
    for override, message in [({"prompt": complex_scalar}, "prompt: numpy scalar: expected a number or string"),
                              ({"observation/state": [0.0] * 7 + [complex_scalar]}, "observation/state: numpy scalar"),
                              ({"observation/state": [0, 0, 0, "a", 0, 0, 0, 0]},
                               "observation/state[3]: expected a number, got 'a'"),
                              ({"rtc/previous_actions": np.full((3, 7), 1e4, np.float32)},
                               "rtc/previous_actions[0, 0]: expected a value in [-20, 20] (the training range widened "
                               "10-fold), got 1e+04"),
                              ({"rtc/previous_actions": np.full((3, 7), 1e30, np.float32)},
                               "rtc/previous_actions[0, 0]: expected a value in [-20, 20]"),
                              ({"rtc/previous_actions": np.zeros((3, 7), np.float32), "rtc/frozen": scalar(np.float64(1))},
                               "rtc/frozen: expected an integer in 0..3 (the previous actions given), got np.float64(1.0)")]:
        _, reply = ask(served[1], openpi_pack(request(**override)))
        assert isinstance(reply, str) and message in reply, reply


def test_a_client_leaving_mid_request_is_no_error(run_dir, caplog):
    service = PolicyService(Policy.from_checkpoint(run_dir))
    act = service.policy.act
    service.policy.act = lambda *args, **kwargs: (time.sleep(0.5), act(*args, **kwargs))[1]  # noqa: E731
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with caplog.at_level(logging.INFO):
            with connect(f"ws://127.0.0.1:{server.socket.getsockname()[1]}", compression=None, max_size=None) as ws:
                ws.recv()
                ws.send(openpi_pack(request()))
            time.sleep(1.5)  # closed before the reply
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert "closed the connection" in caplog.text
    finally:
        server.shutdown()


def test_running_out_of_file_descriptors_pauses_the_server_it_does_not_stop_it(run_dir):
    """Accepting fails with EMFILE while clients hold every descriptor; once they leave, it serves again."""
    script = f"""
import argparse, os, resource, sys
from fastwam.serve import add_arguments, make_server, service_from_args
parser = argparse.ArgumentParser(); add_arguments(parser)
service = service_from_args(parser.parse_args(["--checkpoint", {str(run_dir)!r}]))
server = make_server(service, "127.0.0.1", 0, handshake_timeout=2.0)
open_now = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 8, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.socket.getsockname()[1], flush=True)
server.serve_forever()
print("serve_forever returned", flush=True)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(24)]  # more than the limit
        time.sleep(1.0)
        for s in held:
            s.close()
        time.sleep(3.0)  # the held connections' handshakes time out, their descriptors come back
        _, reply = ask(port, openpi_pack(request()))
        assert isinstance(reply, dict) and reply["actions"].shape == (4, 7)
        assert process.poll() is None  # still serving
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "accepting a connection failed (Too many open files); retrying in" in err

"""``fastwam serve``: a checkpoint's policy over HTTP (transport only; the policy does the rest).

    POST /act   {"image": [[[r, g, b], ...], ...] (H x W x 3 uint8), "state": [...], "instruction": "..."}
             -> {"actions": [[...], ...] (chunk x action_dim, raw units), "ms": policy time}
    GET  /info  -> {"chunk", "action_dim", "state_dim", "image_shape", "cameras", "variant", "denoise_steps",
                    "noise_scale"}

Errors come back as HTTP 400 with {"error": message naming the field}. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from fastwam.policy import Policy


def make_server(policy: Policy, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server bound to (host, port) answering /act and /info with ``policy``."""
    d, m = policy.cfg.data, policy.cfg.model
    info = {"chunk": m.chunk, "action_dim": m.action_dim, "state_dim": m.state_dim,
            "image_shape": [d.image_size, d.image_size * len(d.cameras), 3], "cameras": list(d.cameras),
            "variant": m.variant.mask, "denoise_steps": policy.steps or m.action_flow.steps,
            "noise_scale": policy.noise_scale}
    lock = threading.Lock()  # one policy (noise generator, instruction cache) shared by the request threads

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/info":
                return self._reply(404, {"error": f"unknown path {self.path!r}: use GET /info or POST /act"})
            self._reply(200, info)

        def do_POST(self):
            if self.path != "/act":
                return self._reply(404, {"error": f"unknown path {self.path!r}: use POST /act"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if not isinstance(body, dict):
                    raise ValueError("request body: expected a JSON object with image, state, instruction")
                observation = {"image": np.asarray(body.get("image"), dtype=np.uint8) if "image" in body else None,
                               "state": body.get("state"), "instruction": body.get("instruction")}
                missing = [k for k, v in observation.items() if v is None]
                if missing:
                    raise KeyError(f"request body: missing {missing}")
                with lock:
                    start = time.perf_counter()
                    actions = policy.act(observation)
                    ms = (time.perf_counter() - start) * 1e3
                self._reply(200, {"actions": actions.tolist(), "ms": ms})
            except (ValueError, KeyError, TypeError) as e:
                self._reply(400, {"error": str(e)})

        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet: one line per request is noise for a control loop
            pass

    return ThreadingHTTPServer((host, port), Handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the checkpoint's)")
    parser.add_argument("--noise-scale", type=float, default=1.0, help="initial action-noise scale (0: deterministic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")


def policy_from_args(args: argparse.Namespace) -> Policy:
    return Policy.from_checkpoint(args.checkpoint, device=args.device, steps=args.steps, seed=args.seed,
                                  noise_scale=args.noise_scale)


def run(args: argparse.Namespace) -> int:
    server = make_server(policy_from_args(args), args.host, args.port)
    print(f"serving {args.checkpoint} on http://{args.host}:{server.server_address[1]} (POST /act, GET /info)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

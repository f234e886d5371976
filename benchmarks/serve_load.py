"""Load on ``fastwam serve`` over loopback: concurrent clients, every reply checked, latency and growth.

Serves a checkpoint (or a random one of ``--preset``) with deterministic sampling (noise scale 0)
in this process, then ``--clients`` threads each open a websocket and send ``--requests`` valid
requests (and, with ``--bad``, that many refused ones in between); every valid reply must equal
the policy's own answer for that observation, every refused one must be a text error. Prints p50
and p99 latency per request as the clients saw it, throughput, and the server process's threads
and resident memory before the load, after it and after a second round (growth = leak).

    .venv/bin/python benchmarks/serve_load.py --preset small --clients 8 --requests 25 --bad 5 [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def random_checkpoint(preset_name: str, directory: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from fastwam.config import preset
    from fastwam.data.normalize import Normalizer
    from fastwam.checkpoint import write_run_files

    cfg = preset(preset_name)
    torch.manual_seed(0)
    model = cfg.model.build()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # not the zero-initialised heads: replies depend on the inputs
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")
    m = cfg.model
    stats = {"observation.state": {"min": np.full(m.state_dim, -1.0), "max": np.full(m.state_dim, 1.0)},
             "action": {"min": np.full(m.action_dim, -1.0), "max": np.full(m.action_dim, 1.0)}}
    write_run_files(directory, cfg, Normalizer(stats), {})
    return directory


def run_load(checkpoint: str | Path, clients: int, requests: int, bad: int = 0, rounds: int = 2) -> dict:
    from websockets.sync.client import connect

    from fastwam.policy import Policy
    from fastwam.serve import PolicyService, make_server, pack, unpack

    service = PolicyService(Policy.from_checkpoint(checkpoint, noise_scale=0.0))
    size, dim = service.policy.cfg.data.image_size, service.policy.cfg.model.state_dim
    rng = np.random.default_rng(0)
    observations = [{**{k: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                        for k, v in service.inputs.keys.items() if v in service.cameras},
                     "observation/state": rng.uniform(-0.5, 0.5, dim).astype(np.float32), "prompt": f"task {i}"}
                    for i in range(clients)]
    expected = [service.infer(o)["actions"] for o in observations]
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.socket.getsockname()[1]
    before = {"threads": threading.active_count(), "rss_mb": rss_mb()}
    latencies, failures, growth = [], [], []

    def client(i: int) -> None:
        with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
            unpack(ws.recv())  # metadata
            for r in range(requests):
                start = time.perf_counter()
                ws.send(pack(observations[i]))
                reply = ws.recv(timeout=120)
                latencies.append((time.perf_counter() - start) * 1e3)
                if isinstance(reply, str) or not np.allclose(unpack(reply)["actions"], expected[i], atol=1e-5):
                    failures.append(f"client {i} request {r}: {reply if isinstance(reply, str) else 'wrong actions'}")
                if r < bad:
                    ws.send(pack({**observations[i], "observation/state": np.full(dim, np.nan, np.float32)}))
                    if not isinstance(ws.recv(timeout=120), str):
                        failures.append(f"client {i} bad request {r}: answered with actions")

    start = time.perf_counter()
    try:
        for _ in range(rounds):
            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(1.0)  # connections wind down
            growth.append({"threads": threading.active_count(), "rss_mb": rss_mb()})
    finally:
        server.shutdown()
    seconds = time.perf_counter() - start
    return {"clients": clients, "requests_per_client": requests, "bad_per_client": bad, "rounds": rounds,
            "answered": len(latencies), "expected": clients * requests * rounds, "failures": failures[:10],
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "requests_per_second": len(latencies) / seconds, "before": before, "after_rounds": growth}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="run or checkpoint directory (default: random --preset)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--bad", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_checkpoint(args.preset, Path(tmp))
        result = run_load(checkpoint, args.clients, args.requests, args.bad)
    result.update({"checkpoint": args.checkpoint or f"random {args.preset}", "torch_threads": torch.get_num_threads(),
                   "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.node()})
    print(f"{result['answered']}/{result['expected']} valid requests answered correctly, "
          f"{len(result['failures'])} failures; p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"{result['requests_per_second']:.1f} requests/s")
    print(f"threads {result['before']['threads']} -> " + " -> ".join(str(g["threads"]) for g in result["after_rounds"])
          + f"; RSS {result['before']['rss_mb']:.0f} MB -> "
          + " -> ".join(f"{g['rss_mb']:.0f} MB" for g in result["after_rounds"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not result["failures"] and result["answered"] == result["expected"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

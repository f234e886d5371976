"""``fastwam serve``: a checkpoint's policy over openpi's websocket protocol (msgpack + numpy).

openpi's own client (PyPI ``openpi-client``, ``WebsocketClientPolicy``) drives it unchanged:

- connect to ``ws://HOST:PORT``; the server first sends its metadata (``PolicyService.metadata``);
- each request is one binary msgpack map of named inputs, numpy arrays encoded as openpi's
  msgpack-numpy maps (``__ndarray__``, ``data``, ``dtype``, ``shape``); the reply is a binary map
  ``{"actions": float32 (chunk, action_dim) raw units, "server_timing": {"infer_ms", "prev_total_ms"},
  "policy_timing": {"infer_ms"}}``;
- a refused request is answered with one text message naming the field, expected against got (the
  openpi client raises it as an error) and the connection stays usable; a message over
  ``--max-message-mb`` closes the connection (code 1009), ``--idle-timeout`` without a request
  too (code 1000, saying why);
- ``GET /healthz`` answers 200 ``ok``.

Inputs (``InputMap``): ``observation/<camera>`` per camera of the checkpoint (uint8 (H, W, 3),
square; other sizes are resized to the checkpoint's, bilinear, as openpi's clients resize to 224),
``observation/state`` (state_dim numbers) and ``prompt`` (the instruction). A LIBERO checkpoint
(cameras ``image`` and ``wrist_image``) thus takes openpi's LIBERO keys as they come;
``--input KEY=camera`` (or ``=state``, ``=prompt``) renames one. Real-time chunking (optional keys,
an extension of openpi's protocol): ``rtc/previous_actions`` (float (n, action_dim), raw: what the
previous chunk planned for the new chunk's first n steps) and ``rtc/frozen`` (int: how many of
them execute while this chunk is computed) guide the sampler toward a smooth join
(``Policy.act(previous=...)``, weight cap ``--rtc-guidance``). The service
(``PolicyService``) is the one layer between any transport and ``Policy``: it validates, calls the
policy under a lock, and never answers with a non-finite action.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import msgpack
import numpy as np
from PIL import Image

from fastwam.checks import check_device
from fastwam.data.lerobot import camera_name
from fastwam.policy import MAX_NOISE_SCALE, ObservationError, Policy, describe_input

STATE, PROMPT = "state", "prompt"
RTC_PREVIOUS, RTC_FROZEN = "rtc/previous_actions", "rtc/frozen"
ARRAY_DTYPES = {"|u1", "|i1", "<i2", "<i4", "<i8", "<u2", "<u4", "<f2", "<f4", "<f8", "|b1"}  # little-endian numbers
MAX_DIMS = 4
MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds: a week (websockets' deadlines overflow past ~1e10)
ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}  # transient: back off
log = logging.getLogger("fastwam.serve")


class RequestError(ValueError):
    """A request the service refuses; the message names the field, expected against got."""


# -- wire format: openpi's msgpack-numpy, decoded strictly ----------------------------------------

def _pack_default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.str not in ARRAY_DTYPES:
            raise TypeError(f"cannot send a {obj.dtype} array")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__}")


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=_pack_default)


class Undecodable:
    """An array or numpy scalar the wire format cannot carry (a dtype outside ``ARRAY_DTYPES``, a
    shape or data that disagree): kept in its place, so the error names the request key it came in."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return self.reason


def _unpack_array(obj: dict):
    get = lambda k: obj.get(k.encode(), obj.get(k))  # noqa: E731 (openpi packs bytes keys)
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        data, dtype, shape = get("data"), _dtype(get("dtype")), get("shape")
        if dtype is None:
            return Undecodable(f"array dtype: expected one of {sorted(ARRAY_DTYPES)}, got {get('dtype')!r}")
        if (not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS
                or not all(isinstance(n, int) and n >= 0 for n in shape)):
            return Undecodable(f"array shape: expected at most {MAX_DIMS} sizes >= 0, got {shape!r}")
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            return Undecodable(f"array data: expected {math.prod(shape) * dtype.itemsize} bytes for {dtype} "
                               f"{tuple(shape)}, got {len(data) if isinstance(data, bytes) else type(data).__name__}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:  # openpi packs a numpy scalar as its .item()
        data, dtype = get("data"), _dtype(get("dtype"), strings=True)
        if dtype is None or not isinstance(data, (bool, int, float, str)) or isinstance(data, str) != (dtype.kind == "U"):
            return Undecodable(f"numpy scalar: expected a number or string of a dtype in {sorted(ARRAY_DTYPES)} or "
                               f"<U, got {data!r:.40} of dtype {get('dtype')!r}")
        try:
            return dtype.type(data)
        except (OverflowError, ValueError) as e:
            return Undecodable(f"numpy scalar: {data!r:.40} is not a {dtype} ({e})")
    return obj


def _dtype(name, strings: bool = False) -> np.dtype | None:
    """The wire's dtype name -> a dtype this server takes (None: not one)."""
    name = name.decode(errors="replace") if isinstance(name, bytes) else name
    if not isinstance(name, str):
        return None
    if name in ARRAY_DTYPES:
        return np.dtype(name)
    if strings and name.startswith("<U") and name[2:].isdigit():
        return np.dtype(name)
    return None


def unpack(message: bytes):
    """A request message -> its map; malformed, deeply nested or non-map messages raise RequestError."""
    try:
        value = msgpack.unpackb(message, object_hook=_unpack_array, raw=False)
    except RequestError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError) as e:  # StackError: nested too deep
        raise RequestError(f"request: expected one msgpack map (openpi's msgpack-numpy), got undecodable bytes "
                           f"({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise RequestError(f"request: expected a msgpack map of named inputs, got {type(value).__name__}")
    return value


# -- the policy layer under every transport ---------------------------------------------------------

@dataclass(frozen=True)
class InputMap:
    """Request key -> what it feeds: a camera of the checkpoint, ``state`` or ``prompt``."""

    keys: dict = field(default_factory=dict)

    @classmethod
    def default(cls, cameras: list[str], renames: dict[str, str] | None = None) -> "InputMap":
        keys = {f"observation/{c}": c for c in cameras} | {"observation/state": STATE, "prompt": PROMPT}
        for key, target in (renames or {}).items():
            if target not in (*cameras, STATE, PROMPT):
                raise ValueError(f"--input {key}={target}: expected a camera of the checkpoint "
                                 f"({', '.join(cameras)}), state or prompt, got {target!r}")
            keys = {k: v for k, v in keys.items() if v != target} | {key: target}
        fed = sorted(keys.values())
        if fed != sorted([*cameras, STATE, PROMPT]):
            unfed = sorted((set(cameras) | {STATE, PROMPT}) - set(fed))
            raise ValueError(f"--input: every camera, state and prompt needs one request key; {unfed} would have "
                             f"none (mapping {keys})")
        return cls(keys)


class PolicyService:
    """Named inputs -> validated observation -> ``Policy.act`` -> a reply with finite actions."""

    def __init__(self, policy: Policy, renames: dict[str, str] | None = None, guidance: float = 10.0):
        if policy.history_frames:
            raise ValueError(f"serve: this checkpoint takes {policy.history_frames} past frame(s) "
                             "(model.context_frames > 1); the openpi protocol sends one observation per request")
        if not (math.isfinite(guidance) and guidance > 0):
            raise ValueError(f"--rtc-guidance: expected a finite number > 0, got {guidance}")
        self.policy, self.guidance = policy, guidance
        self.cameras = [camera_name(c) for c in policy.cfg.data.cameras]
        self.inputs = InputMap.default(self.cameras, renames)  # --input KEY=TARGET over the defaults
        self._lock = threading.Lock()  # one policy (noise generator, instruction cache) shared by connections

    @property
    def metadata(self) -> dict:
        d, m = self.policy.cfg.data, self.policy.cfg.model
        return {"server": "fastwam", "inputs": self.inputs.keys, "cameras": self.cameras,
                "image_size": d.image_size, "state_dim": m.state_dim, "action_dim": m.action_dim,
                "action_horizon": m.chunk, "variant": m.variant.mask, "mode": self.policy.mode,
                "denoise_steps": self.policy.steps or m.action_flow.steps, "noise_scale": self.policy.noise_scale,
                "real_time_chunking": None if self.policy.mode == "joint" else {
                    "previous_actions": RTC_PREVIOUS, "frozen": RTC_FROZEN, "guidance": self.guidance}}

    def observation(self, request: dict) -> dict:
        """The request's inputs mapped onto the policy's observation (``Policy`` validates them)."""
        missing = [k for k in self.inputs.keys if k not in request]
        if missing:
            raise RequestError(f"request: missing {missing}; expected {sorted(self.inputs.keys)} "
                               f"(got {sorted(map(str, request))})")
        views, observation = {}, {}
        for key, target in self.inputs.keys.items():
            value = _decoded(key, request[key])
            if target == PROMPT:
                observation["instruction"] = value
            elif target == STATE:
                observation["state"] = value
            else:
                views[target] = self._image(key, value)
        return {"image": np.concatenate([views[c] for c in self.cameras], axis=1), **observation}

    def infer(self, request: dict) -> dict:
        observation, chunking = self.observation(request), self._chunking(request)
        with self._lock:
            start = time.perf_counter()
            try:
                actions = self.policy.act(observation, **chunking)
            except ObservationError as e:  # the policy's one validation, named by this request's key
                raise RequestError(f"{self._key_of(e.field)}{e.where}: {e.detail}") from None
            ms = (time.perf_counter() - start) * 1e3
        return {"actions": actions.astype(np.float32), "policy_timing": {"infer_ms": ms}}

    def _key_of(self, field: str) -> str:
        """The request key that carried an observation field or ``act`` argument."""
        target = {"state": STATE, "instruction": PROMPT}.get(field)
        if target is not None:
            return next(k for k, t in self.inputs.keys.items() if t == target)
        return {"previous": RTC_PREVIOUS, "frozen": RTC_FROZEN}.get(field, field)

    def _chunking(self, request: dict) -> dict:
        """The optional real-time chunking inputs -> ``Policy.act`` keyword arguments."""
        if RTC_PREVIOUS not in request:
            if RTC_FROZEN in request:
                raise RequestError(f"{RTC_FROZEN}: given without {RTC_PREVIOUS}")
            return {}
        if self.policy.mode == "joint":
            raise RequestError(f"{RTC_PREVIOUS}: real-time chunking steers action-only steps; this server runs joint "
                               "inference, which has none")
        previous = _decoded(RTC_PREVIOUS, request[RTC_PREVIOUS])
        if not isinstance(previous, np.ndarray) or previous.dtype.kind != "f":
            m = self.policy.cfg.model
            raise RequestError(f"{RTC_PREVIOUS}: expected a float array (n, {m.action_dim}) with 1 <= n <= {m.chunk}, "
                               f"got {describe_input(previous)}")
        return {"previous": previous, "frozen": _decoded(RTC_FROZEN, request.get(RTC_FROZEN, 0)),
                "guidance": self.guidance}

    def _image(self, key: str, value) -> np.ndarray:
        size = self.policy.cfg.data.image_size
        if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise RequestError(f"{key}: expected a uint8 (H, W, 3) array (msgpack-numpy), got {describe_input(value)}; "
                               "float images are not converted")
        if value.shape[0] != value.shape[1] or value.shape[0] < 8:
            raise RequestError(f"{key}: expected a square image of at least 8 pixels (resized to {size}), "
                               f"got {value.shape[0]}x{value.shape[1]}")
        if value.shape[0] == size:
            return value
        return np.asarray(Image.fromarray(value).resize((size, size), Image.BILINEAR))


def _decoded(key: str, value):
    """A request value, or RequestError naming its key when the wire format could not carry it."""
    if isinstance(value, Undecodable):
        raise RequestError(f"{key}: {value.reason}")
    if isinstance(value, (list, tuple)) and any(isinstance(v, Undecodable) for v in value):
        raise RequestError(f"{key}: {next(v for v in value if isinstance(v, Undecodable)).reason}")
    return value


# -- websocket transport --------------------------------------------------------------------------

def make_server(service: PolicyService, host: str = "127.0.0.1", port: int = 8000, max_message_mb: float = 16.0,
                idle_timeout: float = 300.0, handshake_timeout: float = 10.0):
    """A websocket server (openpi's protocol) bound to (host, port); ``serve_forever()`` / ``shutdown()``.
    A connection whose handshake takes longer than ``handshake_timeout`` s is dropped."""
    from websockets.datastructures import Headers
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Response
    from websockets.sync.server import serve

    def health(connection, request):
        if request.path == "/healthz":
            return Response(200, "OK", Headers([("Content-Type", "text/plain")]), b"ok\n")
        return None  # a websocket handshake (or its refusal by websockets)

    def handle(connection) -> None:
        peer = connection.remote_address  # read now: the socket is gone once the client is
        try:
            serve_connection(connection)
        except ConnectionClosed:  # the client went away mid-request: nothing to answer
            log.info("client %s closed the connection before its reply", peer)

    def serve_connection(connection) -> None:
        connection.send(pack(service.metadata))
        previous_ms = None
        while True:
            try:
                message = connection.recv(timeout=idle_timeout)
            except TimeoutError:
                connection.close(1000, f"no request for {idle_timeout:g} s (--idle-timeout)")
                return
            except ConnectionClosed:
                return
            start = time.perf_counter()
            try:
                if not isinstance(message, bytes):
                    raise RequestError("request: expected a binary msgpack message, got text")
                reply = service.infer(unpack(message))
            except RequestError as e:
                connection.send(f"fastwam serve: {e}")
                continue
            except Exception as e:  # the policy failed: say so (openpi's clients raise it), keep serving
                log.exception("inference failed")
                connection.send(f"fastwam serve: inference failed: {type(e).__name__}: {e}")
                continue
            reply["server_timing"] = {"infer_ms": reply["policy_timing"]["infer_ms"]}
            if previous_ms is not None:
                reply["server_timing"]["prev_total_ms"] = previous_ms
            connection.send(pack(reply))
            previous_ms = (time.perf_counter() - start) * 1e3

    server = serve(handle, host, port, compression=None, process_request=health, max_size=max(1, int(max_message_mb * 2**20)),
                   open_timeout=handshake_timeout, ping_interval=20, ping_timeout=20, close_timeout=5)
    server.socket = PatientListener(server.socket)
    return server


class PatientListener:
    """The server's listening socket, whose ``accept`` outlives a transient failure.

    websockets' ``serve_forever`` leaves its loop on any ``OSError`` from ``accept``, so one "too
    many open files" stopped the server for every client (exit status 0). Here such errors
    (``ACCEPT_ERRORS``) are logged and retried after a pause that doubles up to ``max_pause`` s;
    others (the socket closed by ``shutdown``) end the loop as before. Everything else is the socket's.
    """

    def __init__(self, sock, first_pause: float = 0.05, max_pause: float = 1.0):
        self._sock, self._first, self._max = sock, first_pause, max_pause

    def accept(self):
        pause = self._first
        while True:
            try:
                return self._sock.accept()
            except OSError as e:
                if e.errno not in ACCEPT_ERRORS:
                    raise
                log.warning("accepting a connection failed (%s); retrying in %.2f s", e.strerror or e, pause)
                time.sleep(pause)
                pause = min(2 * pause, self._max)

    def __getattr__(self, name):
        return getattr(self._sock, name)


# -- command line ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the checkpoint's)")
    parser.add_argument("--noise-scale", type=float, default=1.0, help="initial action-noise scale (0: deterministic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--mode", default=None, choices=["action_only", "video_then_action", "joint"],
                        help="inference procedure (default: the checkpoint's; dual checkpoints run two)")
    parser.add_argument("--input", action="append", default=[], metavar="KEY=TARGET",
                        help="request key feeding a camera of the checkpoint, state or prompt "
                             "(default: observation/<camera>, observation/state, prompt)")
    parser.add_argument("--rtc-guidance", type=float, default=10.0,
                        help="real-time chunking's guidance weight cap, for requests with rtc/previous_actions")
    parser.add_argument("--max-message-mb", type=float, default=16.0, help="largest request accepted")
    parser.add_argument("--idle-timeout", type=float, default=300.0, help="seconds without a request before closing")


def service_from_args(args: argparse.Namespace) -> PolicyService:
    """The policy and its input map from the command line; bad options raise ValueError before serving."""
    if not 0 <= args.noise_scale <= MAX_NOISE_SCALE:
        raise ValueError(f"--noise-scale: expected a number in 0..{MAX_NOISE_SCALE:g}, got {args.noise_scale}")
    check_device("--device", args.device)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: expected 0..65535, got {args.port}")
    if not 0.001 <= args.max_message_mb <= 1024:
        raise ValueError(f"--max-message-mb: expected 0.001..1024 MB, got {args.max_message_mb}")
    if not 0 < args.idle_timeout <= MAX_TIMEOUT:
        raise ValueError(f"--idle-timeout: expected seconds in (0, {MAX_TIMEOUT:g}], got {args.idle_timeout:g}")
    renames = {}
    for item in args.input:
        key, sep, target = item.partition("=")
        if not sep or not key or not target:
            raise ValueError(f"--input: expected KEY=TARGET, got {item!r}")
        renames[key] = target
    if not (math.isfinite(args.rtc_guidance) and args.rtc_guidance > 0):
        raise ValueError(f"--rtc-guidance: expected a finite number > 0, got {args.rtc_guidance}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps: expected >= 1 denoising steps, got {args.steps}")
    policy = Policy.from_checkpoint(args.checkpoint, device=args.device, steps=args.steps, seed=args.seed,
                                    noise_scale=args.noise_scale, mode=args.mode)
    return PolicyService(policy, renames, args.rtc_guidance)


def run(args: argparse.Namespace) -> int:
    try:
        service = service_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"fastwam serve: {e}") from e
    server = make_server(service, args.host, args.port, args.max_message_mb, args.idle_timeout)
    port = server.socket.getsockname()[1]
    print(f"serving {args.checkpoint} on ws://{args.host}:{port} (openpi protocol; GET /healthz); "
          f"inputs {service.inputs.keys}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0

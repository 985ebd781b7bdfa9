"""The model server's processes: MLflow's scoring app (``/invocations`` in MLflow's formats,
``/ping``, ``/health``, ``/version``) on one registered version, behind a request-size limit.

``dae serve`` (dae_cli/commands/serve.py) resolves the version and downloads it once, then
hands this factory to uvicorn with one worker process per core. Each worker loads the
downloaded copy: workers never ask the registry, and all of them serve the same version.

One request shape takes a shorter road: a JSON body that is only ``{"inputs": rows}`` (or
``"instances"``) of 784 floats per row, what ``dae``'s README and clients send. MLflow
spends ~58 ms of a 100-image request parsing it (the JSON decoded twice, then every number
deep-copied while casting to the schema's type; 75% of the request in a profile); here it is
decoded once with orjson into a float32 array and handed to the same pyfunc model, whose
``predict`` still enforces the signature. The answer is MLflow's ``{"predictions": rows}``
with the same numbers (tests/test_serving.py compares the two). Every other body (CSV,
``dataframe_split``, params, integers, a malformed one) goes to MLflow's handler as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np

from dae_core.shapes import INPUT_DIM

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

# What `dae serve` hands its workers (uvicorn starts them by import string, so through the
# environment of the process it execs).
MODEL_DIR_ENV = "DAE_SERVE_MODEL_DIR"
MAX_BODY_ENV = "DAE_SERVE_MAX_BODY_BYTES"
BODY_TIMEOUT_ENV = "DAE_SERVE_BODY_TIMEOUT_S"

# How much of an oversized body is read (and dropped) so that its client gets the 413.
DRAIN_FACTOR = 8

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# An error's message as a client reads it: MLflow's echo the whole input back.
MAX_MESSAGE = 300
# Error codes for answers that come without one (Starlette's 404/405, MLflow's 415 text).
_ERROR_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 408: "REQUEST_TIMEOUT", 413: "REQUEST_TOO_LARGE",
                415: "UNSUPPORTED_MEDIA_TYPE"}


def error_body(error_code: str, message: str) -> bytes:
    return json.dumps({"error_code": error_code, "message": message}).encode()


class StrictAnswers:
    """The server's contract with its clients: every error is ``{"error_code", "message"}``
    (one line, no stack trace, no server path), every answer of ``/invocations`` strict JSON
    (RFC 8259) with finite probabilities. MLflow answers NaN for NaN pixels (not JSON), and
    overflowing pixels give NaN probabilities: both are the client's inputs, so a 400 names
    them. Anything the app raises is a 500 whose cause goes to the server's log only."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, capture)
            status, body = _checked(scope, start.get("status", 500), b"".join(chunks))
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            status, body = 500, error_body("INTERNAL_ERROR", "the server failed on this request (its log says why)")
        closing = (b"connection", b"close") in (start.get("headers") or [])
        if status < 400 and scope.get("path") != "/invocations":
            headers = [(name, value) for name, value in start.get("headers") or [] if name != b"content-length"]
        else:
            headers = [(b"content-type", b"application/json"), *([(b"connection", b"close")] if closing else [])]
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _checked(scope: Scope, status: int, body: bytes) -> tuple[int, bytes]:
    """The answer as the contract has it (``StrictAnswers``)."""
    import orjson

    if status < 400:
        if scope.get("path") != "/invocations":
            return status, body  # /ping, /health, /version: MLflow's own
        try:
            document = orjson.loads(body)  # strict: NaN and Infinity are no JSON
            finite = bool(np.isfinite(np.asarray(document["predictions"], dtype=np.float64)).all())
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            finite = False
        if finite:
            return status, body
        return 400, error_body("INVALID_PARAMETER_VALUE", "the inputs give no finite probabilities: send pixels "
                                                          "as finite numbers in [0, 1], 784 per image")
    code, message = _ERROR_CODES.get(status, "BAD_REQUEST"), body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        document = json.loads(body)
        code = str(document.get("error_code") or code)
        message = str(document.get("message") or document.get("detail") or message)
    # A client's mistake stays a 4xx; a 5xx is the server's, said without its insides.
    return status, error_body(code, message_line(message) or f"HTTP {status}")


def message_line(message: str) -> str:
    """An error's message as a client gets it: one line of at most ``MAX_MESSAGE`` characters."""
    line = " ".join(message.split())
    return line if len(line) <= MAX_MESSAGE else f"{line[:MAX_MESSAGE]}..."


class BodyLimit:
    """Answers 413 to a request whose body is larger than ``max_bytes``, before the app sees
    it: by its Content-Length at once, or while a chunked body arrives; and 408 to one whose
    body stops arriving for ``timeout_s`` (a client that died mid-request, or one holding a
    worker's connection open on purpose). MLflow's app reads whole bodies anyway, so
    reading it here first costs no memory it would not use."""

    def __init__(self, app: App, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, receive, read=0, declared=int(declared), more=True)
            return
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                await _answer_and_close(send, 408, error_body(
                    "REQUEST_TIMEOUT", f"the request body stopped arriving for {self.timeout_s:g} s: send it whole"))
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send, receive, read=size, declared=None, more=more)
                return
            chunks.append(chunk)
            if not more:
                break
        await self.app(scope, _replaying(b"".join(chunks), receive), send)

    async def _refuse(self, send: Send, receive: Receive, read: int, declared: int | None, more: bool) -> None:
        """Answer 413. A client still sending would see its connection reset instead of the
        answer: the rest of a body up to ``DRAIN_FACTOR`` times the limit is read and dropped
        first; a larger one is cut off."""
        budget = DRAIN_FACTOR * self.max_bytes
        while more and read <= budget and (declared is None or declared <= budget):
            message = await receive()
            if message["type"] != "http.request":
                break
            read += len(message.get("body", b""))
            more = message.get("more_body", False)
        size = declared if declared is not None else read
        limit_mb = self.max_bytes / 2**20
        await _answer_and_close(send, 413, error_body(
            "REQUEST_TOO_LARGE", f"request body of {size} bytes (at least) is over this server's limit of "
                                 f"{self.max_bytes} bytes ({limit_mb:.0f} MiB): send fewer images per request"))


async def _answer_and_close(send: Send, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class TensorRows:
    """The short road for ``{"inputs": [[784 floats], ...]}`` (module docstring)."""

    def __init__(self, app: App, model: PyFuncModel) -> None:
        self.app, self.model = app, model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/invocations"
                and _is_plain_json(scope)):
            await self.app(scope, receive, send)
            return
        body = await _whole_body(receive)
        payload = await asyncio.to_thread(self._answer, body)
        if payload is None:
            await self.app(scope, _replaying(body, receive), send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _answer(self, body: bytes) -> bytes | None:
        import orjson

        pixels = tensor_rows(body)
        if pixels is None:
            return None
        predictions = np.asarray(self.model.predict(pixels), dtype=np.float64)
        return orjson.dumps({"predictions": predictions.tolist()})


def tensor_rows(body: bytes) -> np.ndarray | None:
    """(N, 784) float32 pixels from a body that is only ``{"inputs"|"instances": rows}`` with
    floats in every row; None for anything else (MLflow's handler decides about it)."""
    import orjson

    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or len(document) != 1:
        return None
    [(key, rows)] = document.items()
    if key not in ("inputs", "instances") or not isinstance(rows, list) or not rows:
        return None
    try:
        parsed = np.asarray(rows)
    except ValueError:  # ragged rows
        return None
    if parsed.dtype.kind != "f" or parsed.ndim != 2 or parsed.shape[1] != INPUT_DIM:
        return None
    return parsed.astype(np.float32)


def _is_plain_json(scope: Scope) -> bool:
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
    mime, *parameters = (part.strip().lower() for part in content_type.split(";"))
    return mime == "application/json" and all(parameter == "charset=utf-8" for parameter in parameters)


async def _whole_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def create_app() -> App:
    """uvicorn's factory, called in each worker process."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    from adapters.model_registry import SERVING_DEVICE

    model = mlflow.pyfunc.load_model(os.environ[MODEL_DIR_ENV], model_config={"device": SERVING_DEVICE})
    scoring = TensorRows(scoring_server.init(model), model)
    return StrictAnswers(BodyLimit(scoring, int(os.environ[MAX_BODY_ENV]), float(os.environ[BODY_TIMEOUT_ENV])))

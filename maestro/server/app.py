"""The FastAPI application: ``create_app(config)``.

Every endpoint under ``/v1`` needs ``Authorization: Bearer <token>``. Model calls validate
the inputs with the model's own validators (``prepare_inputs`` / ``prepare_labels``) and the
task's :class:`~maestro.ThreatModel`, then reserve the inputs against the caller's budget with
one atomic conditional UPDATE, and only then run the model. Errors: 401 (no or revoked token),
403 (beyond the task's access level), 404 (unknown task), 413 (request too large), 422 (bad
inputs, with the reason), 429 (budget spent, or the per-token rate limit).

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``)::

    GET  /v1/health                      no token needed
    GET  /v1/tasks, /v1/tasks/{task}     classes, shape, bounds, threat, access, budget left
    POST /v1/tasks/{task}/predict        labels                      (any access)
    POST /v1/tasks/{task}/proba|logits   scores                      (scores, white-box)
    POST /v1/tasks/{task}/gradient       input gradient (+ logits)   (white-box)
    POST /v1/tasks/{task}/tokenize|detokenize                        (text tasks)
    GET  /v1/tasks/{task}/embedding      embedding matrix V×D        (white-box text)
    POST /v1/tasks/{task}/embedding      input embeddings B×T×D      (white-box text)
    GET  /v1/usage                       usage per student and task  (instructors)
    POST /get_batch_output, /get_batch_input_gradient   the original seed's names (task in the body)

Arrays: JSON lists or ``{"npy_b64": ...}`` in requests; ``?format=npy`` for answers.

The rate limit is a token bucket per token kept in memory in each server process: with N
worker processes a token may reach N times the configured rate.
"""

import logging
import math
import threading
import time
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from .. import __version__
from ..text import TokenBatch
from ..wrapper import ACCESS_LEVELS
from . import arrays
from .config import ServerConfig, TaskConfig
from .db import Caller, Store

log = logging.getLogger("maestro.server")
_RANK = {a: i for i, a in enumerate(ACCESS_LEVELS)}
_ALLOWS = {
    "labels": ["predict", "tokenize", "detokenize"],
    "scores": ["predict", "proba", "logits", "tokenize", "detokenize"],
    "white-box": ["predict", "proba", "logits", "gradient", "tokenize", "detokenize", "embedding"],
}
Fmt = Literal["json", "npy"]


# -- request bodies (documented in the OpenAPI schema) ----------------------------------------
class ModelRequest(BaseModel):
    inputs: list[Any] | dict[str, Any] = Field(
        ...,
        description="Image tasks: N×C×H×W numbers as nested lists or {\"npy_b64\": <base64 .npy>}. "
        "Text tasks: a list of strings, or {\"input_ids\": B×T, \"attention_mask\": B×T} (each a "
        "list or {\"npy_b64\": ...}).",
    )


class GradientRequest(ModelRequest):
    labels: list[Any] | dict[str, Any] | int = Field(..., description="N class labels (or one for all)")
    loss: Literal["ce", "margin"] = "ce"
    targeted: bool = False
    return_logits: bool = Field(False, description="also return the logits of the same forward pass")


class TokenizeRequest(BaseModel):
    texts: list[str]


class DetokenizeRequest(BaseModel):
    inputs: dict[str, Any] = Field(..., description="{\"input_ids\": B×T, \"attention_mask\": B×T (optional)}")


class AliasOutputRequest(ModelRequest):
    task: str


class AliasGradientRequest(GradientRequest):
    task: str


# -- middleware ------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _plain(send, 400, "invalid Content-Length")
            if int(declared) > self.max_bytes:
                return await _plain(send, 413, self._message(int(declared)))
            return await self.app(scope, receive, send)
        # no declared length (chunked): read it, bounded, then replay it
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _plain(send, 413, self._message(None))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _message(self, size) -> str:
        got = f" ({size} bytes)" if size else ""
        return (f"request body too large{got}: the limit is {self.max_bytes} bytes; "
                "send fewer inputs per request or use {\"npy_b64\": ...}")


async def _plain(send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """A token bucket per token id: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int | None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, 2 * self.rate))
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}

    def check(self, key: int) -> float:
        """0 when the request may go ahead, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level >= 1:
                self._buckets[key] = (level - 1, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1 - level) / self.rate


# -- served tasks ----------------------------------------------------------------------------
class Served:
    """A task with its (white-box, unbudgeted) model; access and budgets are enforced here."""

    def __init__(self, cfg: TaskConfig, model) -> None:
        self.cfg = cfg
        self.model = model
        self.threat = cfg.threat_model(model.modality)
        if model.modality == "image" and tuple(self.threat.bounds) != tuple(model.input_bounds):
            raise ValueError(
                f"task {cfg.name!r}: threat bounds {self.threat.bounds} differ from the model's "
                f"input_bounds {model.input_bounds}"
            )

    @property
    def allows(self) -> list[str]:
        ops = _ALLOWS[self.cfg.access]
        if self.model.modality == "text":
            return list(ops)
        return [a for a in ops if a not in ("tokenize", "detokenize", "embedding")]

    def info(self, used: int, budget: int | None) -> dict:
        m = self.model
        out = {
            "name": self.cfg.name,
            "model": self.cfg.model,
            "dataset": self.cfg.dataset,
            "modality": m.modality,
            "access": self.cfg.access,
            "allows": self.allows,
            "num_classes": m.num_classes,
            "classes": list(m.classes),
            "input_shape": list(m.input_shape) if m.input_shape else None,
            "input_bounds": list(m.input_bounds),
            "threat": {"norm": self.threat.norm, "eps": self.threat.eps, "bounds": list(self.threat.bounds),
                       "query_budget": self.threat.query_budget, "access": self.threat.access},
            "budget": budget,
            "used": used,
            "remaining": None if budget is None else max(0, budget - used),
            "max_batch": self.max_batch,
        }
        if m.modality == "text":
            tok = m.tokenizer
            out["vocab_size"] = int(tok.vocab_size)
            out["pad_id"] = int(tok.pad_id)
        return out


def _unprocessable(msg: str) -> HTTPException:
    return HTTPException(status_code=422, detail=msg)


def create_app(config: ServerConfig, *, store: Store | None = None) -> FastAPI:
    """The Maestro model server for ``config`` (models are loaded now, once per model name)."""
    from ..models import load

    store = store or Store(config.database_url)
    cache: dict[str, Any] = {}
    served: dict[str, Served] = {}
    for name, cfg in config.tasks.items():
        if cfg.model not in cache:
            cache[cfg.model] = load(cfg.model, home=config.home)
        served[name] = Served(cfg, cache[cfg.model])
        served[name].max_batch = config.max_batch
    limiter = RateLimiter(config.rate_limit, config.rate_burst)

    app = FastAPI(
        title="Maestro model server",
        version=__version__,
        description="Query course models at the access level and budget each task allows. "
        "Authenticate with `Authorization: Bearer <token>` (from `maestro tokens create`).",
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.state.store = store
    app.state.config = config
    app.state.served = served
    bearer = HTTPBearer(auto_error=False, description="a token from `maestro tokens create`")

    def caller(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
        if creds is None or not creds.credentials:
            raise HTTPException(401, "missing token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        who = store.authenticate(creds.credentials)
        if who is None:
            raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
        wait = limiter.check(who.token_id)
        if wait > 0:
            raise HTTPException(
                429, f"rate limit: at most {limiter.rate:g} requests per second per token; retry in {wait:.2f}s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return who

    Who = Annotated[Caller, Depends(caller)]

    def budget_of(who: Caller, task: Served) -> int | None:
        return None if who.is_instructor else task.cfg.budget

    def get_task(name: str) -> Served:
        task = served.get(name)
        if task is None:
            raise HTTPException(404, f"unknown task {name!r}; tasks: {', '.join(sorted(served))}")
        return task

    def require(task: Served, op: str, level: str) -> None:
        if op in ("tokenize", "detokenize", "embedding") and task.model.modality != "text":
            raise HTTPException(404, f"{op} is for text tasks; task {task.cfg.name!r} is an image task")
        if _RANK[task.cfg.access] < _RANK[level]:
            raise HTTPException(
                403,
                f"{op} needs {level!r} access, but task {task.cfg.name!r} gives {task.cfg.access!r} "
                f"access, which allows: {', '.join(task.allows)}",
            )

    # -- input handling -------------------------------------------------------------------------
    def parse_inputs(task: Served, value):
        model = task.model
        if model.modality == "image":
            try:
                arr = arrays.decode(value, "inputs", np.float32)
            except ValueError as err:
                raise _unprocessable(str(err)) from None
            if arr.ndim == 0:
                raise _unprocessable("inputs: expected a batch N×C×H×W, got a single number")
            n = arr.shape[0]
            check_batch(n)
            x = torch.from_numpy(np.ascontiguousarray(arr))
            try:
                x = model.prepare_inputs(x, "inputs")
                task.threat.check_inputs(x, "inputs")
            except (TypeError, ValueError) as err:
                raise _unprocessable(str(err)) from None
            return x.float() if x.dtype != torch.float32 else x
        if isinstance(value, list):
            if not value or not all(isinstance(t, str) for t in value):
                raise _unprocessable("inputs: a text task expects a non-empty list of strings "
                                     "or {\"input_ids\": ..., \"attention_mask\": ...}")
            check_batch(len(value))
            try:
                return model.prepare_inputs(value, "inputs")
            except (TypeError, ValueError) as err:
                raise _unprocessable(str(err)) from None
        tb = token_batch(value)
        check_batch(len(tb))
        try:
            return model.prepare_inputs(tb, "inputs")
        except (TypeError, ValueError) as err:
            raise _unprocessable(str(err)) from None

    def token_batch(value) -> TokenBatch:
        if not isinstance(value, dict) or "input_ids" not in value or set(value) - {"input_ids", "attention_mask"}:
            raise _unprocessable("inputs: expected {\"input_ids\": B×T, \"attention_mask\": B×T}")
        try:
            ids = arrays.decode(value["input_ids"], "input_ids", np.int64)
            mask = (arrays.decode(value["attention_mask"], "attention_mask", np.int64)
                    if value.get("attention_mask") is not None else np.ones_like(ids))
        except ValueError as err:
            raise _unprocessable(str(err)) from None
        if ids.dtype.kind not in "iu" or mask.dtype.kind not in "iub":
            raise _unprocessable("input_ids and attention_mask must be integer arrays")
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise _unprocessable(f"input_ids: expected a non-empty B×T array, got shape {ids.shape}")
        if mask.shape != ids.shape:
            raise _unprocessable(f"attention_mask: expected shape {ids.shape}, got {mask.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise _unprocessable("attention_mask: values must be 0 or 1")
        try:
            return TokenBatch(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
        except TypeError as err:
            raise _unprocessable(str(err)) from None

    def check_batch(n: int) -> None:
        if n == 0:
            raise _unprocessable("inputs: empty batch")
        if n > config.max_batch:
            raise HTTPException(413, f"batch of {n} inputs: at most {config.max_batch} per request")

    def parse_labels(task: Served, value, n: int) -> torch.Tensor:
        try:
            y = value if isinstance(value, int) and not isinstance(value, bool) else arrays.decode(value, "labels", np.int64)
            return task.model.prepare_labels(y, n, "labels")
        except (TypeError, ValueError) as err:
            raise _unprocessable(str(err)) from None

    def charge(who: Caller, task: Served, n: int) -> None:
        budget = budget_of(who, task)
        if not store.reserve(who.token_id, task.cfg.name, n, budget):
            left = max(0, budget - store.used(who.token_id, task.cfg.name))
            raise HTTPException(
                429,
                f"budget spent: this request needs {n} queries but only {left} of your budget of "
                f"{budget} for task {task.cfg.name!r} are left; nothing was run",
            )

    def run_charged(who: Caller, task: Served, n: int, fn):
        charge(who, task, n)
        try:
            return fn()
        except Exception:
            store.refund(who.token_id, task.cfg.name, n)
            log.exception("model call failed on task %s", task.cfg.name)
            raise

    def answer(who: Caller, task: Served, n: int, out, fmt: str) -> dict:
        budget = budget_of(who, task)
        used = store.used(who.token_id, task.cfg.name)
        extra = {}
        if isinstance(out, tuple):
            out, logits_ = out
            extra["logits"] = arrays.encode(logits_.detach().cpu().numpy(), fmt)
        return {**extra,
            "task": task.cfg.name,
            "outputs": arrays.encode(out.detach().cpu().numpy(), fmt),
            "queries": n,
            "used": used,
            "budget": budget,
            "remaining": None if budget is None else max(0, budget - used),
        }

    def model_call(who: Caller, task: Served, op: str, body, fmt: str) -> dict:
        level = {"predict": "labels", "proba": "scores", "logits": "scores", "gradient": "white-box"}[op]
        require(task, op, level)
        x = parse_inputs(task, body.inputs)
        n = len(x)
        m = task.model
        if op == "gradient":
            y = parse_labels(task, body.labels, n)
            out = run_charged(who, task, n, lambda: m.gradient(
                x, y, loss=body.loss, targeted=body.targeted, return_logits=body.return_logits))
        elif op == "predict":
            out = run_charged(who, task, n, lambda: m.predict(x))
        elif op == "proba":
            out = run_charged(who, task, n, lambda: m.predict_proba(x))
        else:
            out = run_charged(who, task, n, lambda: m.logits(x))
        return answer(who, task, n, out, fmt)

    # -- routes ---------------------------------------------------------------------------------
    TaskName = Path(..., description="a task name from GET /v1/tasks")
    FormatQ = Query("json", description="'json' (nested lists) or 'npy' ({\"npy_b64\": ...})")

    @app.get("/v1/health", tags=["server"])
    def health() -> dict:
        return {"status": "ok", "version": __version__, "tasks": len(served)}

    @app.get("/v1/tasks", tags=["tasks"])
    def list_tasks(who: Who) -> dict:
        return {"tasks": [t.info(store.used(who.token_id, n), budget_of(who, t)) for n, t in served.items()]}

    @app.get("/v1/tasks/{task}", tags=["tasks"])
    def task_info(who: Who, task: str = TaskName) -> dict:
        t = get_task(task)
        return t.info(store.used(who.token_id, task), budget_of(who, t))

    @app.post("/v1/tasks/{task}/predict", tags=["model"], summary="predicted labels (any access)")
    def predict(who: Who, body: ModelRequest, task: str = TaskName, format: Fmt = FormatQ):
        return model_call(who, get_task(task), "predict", body, format)

    @app.post("/v1/tasks/{task}/proba", tags=["model"], summary="class probabilities (scores access)")
    def proba(who: Who, body: ModelRequest, task: str = TaskName, format: Fmt = FormatQ):
        return model_call(who, get_task(task), "proba", body, format)

    @app.post("/v1/tasks/{task}/logits", tags=["model"], summary="raw class scores (scores access)")
    def logits(who: Who, body: ModelRequest, task: str = TaskName, format: Fmt = FormatQ):
        return model_call(who, get_task(task), "logits", body, format)

    @app.post("/v1/tasks/{task}/gradient", tags=["model"], summary="input gradient of the loss (white-box)")
    def gradient(who: Who, body: GradientRequest, task: str = TaskName, format: Fmt = FormatQ):
        return model_call(who, get_task(task), "gradient", body, format)

    @app.post("/v1/tasks/{task}/tokenize", tags=["text"], summary="token ids and mask (text tasks)")
    def tokenize(who: Who, body: TokenizeRequest, task: str = TaskName, format: Fmt = FormatQ):
        t = get_task(task)
        require(t, "tokenize", "labels")
        if not body.texts:
            raise _unprocessable("texts: expected a non-empty list of strings")
        check_batch(len(body.texts))
        tb = t.model.tokenize(body.texts)
        return {"input_ids": arrays.encode(tb.input_ids.numpy(), format),
                "attention_mask": arrays.encode(tb.attention_mask.numpy(), format)}

    @app.post("/v1/tasks/{task}/detokenize", tags=["text"], summary="texts from token ids (text tasks)")
    def detokenize(who: Who, body: DetokenizeRequest, task: str = TaskName):
        t = get_task(task)
        require(t, "detokenize", "labels")
        tb = token_batch(body.inputs)
        check_batch(len(tb))
        vocab = t.model.tokenizer.vocab_size
        if int(tb.input_ids.min()) < 0 or int(tb.input_ids.max()) >= vocab:
            raise _unprocessable(f"input_ids: token ids must lie in [0, {vocab - 1}]")
        return {"texts": t.model.detokenize(tb)}

    @app.get("/v1/tasks/{task}/embedding", tags=["text"], summary="the input embedding matrix V×D (white-box)")
    def embedding(who: Who, task: str = TaskName, format: Fmt = FormatQ):
        t = get_task(task)
        require(t, "embedding", "white-box")
        return {"embedding": arrays.encode(t.model.embedding_matrix().cpu().numpy(), format)}

    @app.post("/v1/tasks/{task}/embedding", tags=["text"], summary="input token embeddings B×T×D (white-box)")
    def embeddings(who: Who, body: ModelRequest, task: str = TaskName, format: Fmt = FormatQ):
        t = get_task(task)
        require(t, "embedding", "white-box")
        x = parse_inputs(t, body.inputs)
        return {"embeddings": arrays.encode(t.model.embeddings(x).cpu().numpy(), format),
                "attention_mask": arrays.encode(x.attention_mask.cpu().numpy(), format)}

    @app.get("/v1/usage", tags=["server"], summary="usage per student and task (instructors)")
    def usage(who: Who):
        if not who.is_instructor:
            raise HTTPException(403, "usage needs an instructor token")
        return {"usage": store.usage_table()}

    # aliases for the original seed's names (task in the body)
    @app.post("/get_batch_output", tags=["aliases"], summary="alias: scores where allowed, else labels")
    def get_batch_output(who: Who, body: AliasOutputRequest, format: Fmt = FormatQ):
        t = get_task(body.task)
        op = "proba" if _RANK[t.cfg.access] >= _RANK["scores"] else "predict"
        return model_call(who, t, op, body, format)

    @app.post("/get_batch_input_gradient", tags=["aliases"], summary="alias of /v1/tasks/{task}/gradient")
    def get_batch_input_gradient(who: Who, body: AliasGradientRequest, format: Fmt = FormatQ):
        return model_call(who, get_task(body.task), "gradient", body, format)

    @app.exception_handler(Exception)
    async def server_fault(request: Request, exc: Exception):  # a bug, never bad input
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    return app


def app_from_env() -> FastAPI:
    """An app for ``uvicorn --factory``: the config path is in ``$MAESTRO_SERVER_CONFIG``."""
    import os

    path = os.environ.get("MAESTRO_SERVER_CONFIG")
    if not path:
        raise RuntimeError("set MAESTRO_SERVER_CONFIG to the server.toml (or its course directory)")
    return create_app(ServerConfig.load(path))

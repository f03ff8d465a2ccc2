"""The FastAPI application: ``create_app(config)``.

Every endpoint under ``/v1`` (but ``/v1/health``) needs ``Authorization: Bearer <token>``,
checked (with the rate limit) before the request body is even read. Model calls validate
the inputs with the model's own validators (``prepare_inputs`` / ``prepare_labels``) and the
task's :class:`~maestro.ThreatModel`, then reserve the inputs against the caller's budget with
one atomic conditional UPDATE, and only then run the model. Errors, each ``{"detail": "<the
reason>"}`` and declared in the OpenAPI schema: 401 (no or revoked token), 403 (beyond the
task's access level, another role's operation, uploads after the deadline), 404 (unknown task,
assignment or submission — another student's submission is "unknown" too), 413 (request too
large), 422 (bad inputs, with the reason), 429 (budget or daily uploads spent, or the
per-token rate limit).

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``)::

    GET  /v1/health                      no token needed
    GET  /v1/tasks, /v1/tasks/{task}     classes, shape, bounds, threat, access, budget left
    POST /v1/tasks/{task}/predict        labels                      (any access)
    POST /v1/tasks/{task}/proba|logits   scores                      (scores, white-box)
    POST /v1/tasks/{task}/gradient       input gradient (+ logits)   (white-box)
    POST /v1/tasks/{task}/tokenize|detokenize                        (text tasks)
    GET  /v1/tasks/{task}/tokenizer      the tokenizer as JSON data  (text tasks)
    GET  /v1/tasks/{task}/embedding      embedding matrix V×D        (white-box text)
    POST /v1/tasks/{task}/embedding      input embeddings B×T×D      (white-box text)
    POST /v1/tasks/{task}/generate       the assistant's answers     (chat tasks, any access)
    POST /v1/tasks/{task}/logprobs       target log-probabilities    (chat tasks, scores)
    GET  /v1/usage                       usage per student and task  (instructors)
    POST /get_batch_output, /get_batch_input_gradient   the original seed's names (task in the body)

With ``[submissions]`` in server.toml (see :mod:`maestro.server.submissions`)::

    GET  /v1/assignments, /v1/assignments/{id}     threat models, artifact specs, limits (the
                                                   list also names the boards-only assignments)
    GET  /v1/assignments/{id}/inputs               the hidden INPUTS (never labels), .npy;
                                                   the target classes if an artifact is targeted
    POST /v1/assignments/{id}/submissions          upload the artifacts: 202 + submission id
    GET  /v1/assignments/{id}/submissions          mine (instructors: everyone's)
    GET  /v1/submissions/{id}                      status and result (own only)
    GET  /v1/assignments/{id}/leaderboard          ranking JSON (instructors: ?final=true)
    GET  /leaderboard/{id}, /leaderboard/{id}.json the live page and its data (no token
                                                   needed with public_leaderboard = true); also
                                                   for [submissions] boards (the war: its matrix)

Arrays: JSON lists or ``{"npy_b64": ...}`` in requests; ``?format=npy`` for answers. predict,
proba and logits also take the inputs as the whole body, raw ``.npy`` bytes with ``Content-Type:
application/x-npy`` (no base64, no JSON: the fastest way for large batches, what
:mod:`maestro.remote` sends), and with ``Accept: application/x-npy`` any single-array answer comes
back as raw ``.npy`` with the counts in ``X-Maestro-Queries``, ``X-Maestro-Used``,
``X-Maestro-Budget`` and ``X-Maestro-Remaining`` headers (the last two only under a budget).

The rate limit is a token bucket per token kept in memory in each server process: with N
worker processes a token may reach N times the configured rate.
"""

import contextlib
import datetime as _dt
import hashlib
import html
import json
import logging
import math
import threading
import time
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..text import TokenBatch
from ..wrapper import ACCESS_LEVELS
from . import arrays
from .config import ServerConfig, TaskConfig
from .db import Caller, Store

log = logging.getLogger("maestro.server")
_RANK = {a: i for i, a in enumerate(ACCESS_LEVELS)}
NPY = arrays.NPY_MEDIA_TYPE
RAW_BODY_OPS = ("predict", "proba", "logits")  # may take the inputs as a raw .npy body
INLINE_SECONDS = 0.004  # model requests expected to cost less run on the event loop (see run_model)
_ALLOWS = {
    "labels": ["predict", "tokenize", "detokenize"],
    "scores": ["predict", "proba", "logits", "tokenize", "detokenize"],
    "white-box": ["predict", "proba", "logits", "gradient", "tokenize", "detokenize", "embedding"],
}
#: chat tasks (a query is one conversation sent forward; see maestro.chat)
_CHAT_ALLOWS = {
    "labels": ["generate", "tokenizer"],
    "scores": ["generate", "logprobs", "tokenizer"],
    "white-box": ["generate", "logprobs", "tokenizer"],
}
MAX_NEW_TOKENS = 256  # the most a chat request may ask for ([server] max_new_tokens may lower it)
MAX_CHAT_CHARS = 16_000  # per message, suffix or target
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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(..., description="the user's message; '{adv}' marks where the suffix goes "
                      "(default: at its end)")
    system: str | None = Field(None, description="the system message (default: the model's own)")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chats: list[ChatMessage | str] = Field(..., description="conversations (a str: the user's message)")
    adv: list[str | None] | str | None = Field(None, description="adversarial text for each chat's slot "
                                        "(one for all, or one per chat), within the task's threat model")


class GenerateRequest(ChatRequest):
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS)
    sample: bool = Field(False, description="false: greedy; true: sampled with the seed")
    temperature: float = Field(1.0, gt=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)


class LogprobsRequest(ChatRequest):
    targets: list[str] | str = Field(..., description="the continuation to score after each chat")


class NpyPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    npy_b64: str = Field(..., description="base64 of a .npy file (np.save(buf, x_adv); no pickle)")


class SubmissionRequest(BaseModel):
    """Exactly one of ``artifact`` and ``artifacts``."""

    model_config = ConfigDict(extra="forbid")
    artifact: NpyPayload | None = Field(
        None, description="the assignment's FIRST artifact (GET /v1/assignments/{id}: artifact: file, "
        "dtype, shape), row i made from row i of GET /v1/assignments/{id}/inputs; for an assignment "
        "with several artifacts the others then score 0")
    artifacts: dict[str, NpyPayload] | None = Field(
        None, description="several artifacts at once: artifact file name (or its key) -> its array "
        "(GET /v1/assignments/{id}: artifacts, each with its file, dtype, shape, threat model and "
        "whether it is targeted); at least one, any missing one scores 0 on its own terms")


# -- errors (one shape, declared in the OpenAPI schema) ---------------------------------------
class ErrorResponse(BaseModel):
    detail: str = Field(..., description="why the request was refused, in words")


_ERRORS = {
    400: "malformed request (an invalid Content-Length)",
    401: "no token, or an invalid or revoked one (sent before the body is read)",
    403: "not allowed: beyond the task's access level, an instructor's operation, or too late",
    404: "unknown task, assignment or submission (another student's is unknown too)",
    413: "request body or batch too large",
    415: "a request body in a media type the operation does not take (JSON, or application/x-npy "
         "where the operation says so)",
    422: "invalid request: the reason says which field and why",
    429: "budget, daily uploads or rate limit spent (Retry-After on the rate limit)",
    503: "the leaderboard is being computed for the first time (Retry-After says when to ask again)",
}


def _errors(*codes: int, token: bool = True) -> dict:
    """OpenAPI ``responses`` for the error codes an operation may answer (``token``: it needs one,
    so 401 and the rate limit's 429 apply)."""
    codes = {422, *codes} | ({401, 429} if token else set())
    return {c: {"model": ErrorResponse, "description": _ERRORS[c]} for c in sorted(codes)}


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


# -- middleware ------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (declared or streamed); ``limit_for``
    (scope -> bytes or None) may give some paths their own limit."""

    def __init__(self, app, max_bytes: int, limit_for=None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit_for = limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = (self.limit_for(scope) if self.limit_for else None) or self.max_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _plain(send, 400, "invalid Content-Length")
            if int(declared) > limit:
                return await _plain(send, 413, self._message(int(declared), limit))
            return await self.app(scope, receive, send)
        # no declared length (chunked): read it, bounded, then replay it
        body = await _read_body(receive, limit)
        if body is None:
            return
        if len(body) > limit:
            return await _plain(send, 413, self._message(None, limit))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _message(self, size, limit: int) -> str:
        got = f" ({size} bytes)" if size else ""
        hint = ("send fewer inputs per request or use {\"npy_b64\": ...}" if limit == self.max_bytes
                else "upload exactly the array the assignment asks for (GET /v1/assignments/{id})")
        return f"request body too large{got}: the limit is {limit} bytes; {hint}"


async def _read_body(receive, limit: int | None = None) -> bytes | None:
    """The request body from ASGI ``receive``; None if the client went away. Reading stops once
    past ``limit`` bytes (the caller then sees a body over its limit)."""
    chunks, size, more = [], 0, True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        more = msg.get("more_body", False)
        if limit is not None and size > limit:
            break
    return b"".join(chunks)


async def _plain(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class Authenticate:
    """Check the bearer token and the rate limit before anything reads the request body: no
    token, or a bad one, is a 401 whatever the body. Paths for which ``public(path)`` is true
    need no token. The caller is left in ``scope["state"]["caller"]``."""

    def __init__(self, app, *, store: Store, limiter: "RateLimiter", public) -> None:
        self.app = app
        self.store = store
        self.limiter = limiter
        self.public = public

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.public(scope["path"]):
            return await self.app(scope, receive, send)
        challenge = {"WWW-Authenticate": "Bearer"}
        value = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return await _plain(send, 401, "missing token: send 'Authorization: Bearer <token>'", challenge)
        who = self.store.cached_caller(token) or await run_in_threadpool(self.store.authenticate, token)
        if who is None:
            return await _plain(send, 401, "invalid or revoked token", challenge)
        wait = self.limiter.check(who.token_id)
        if wait > 0:
            return await _plain(
                send, 429, f"rate limit: at most {self.limiter.rate:g} requests per second per token; "
                f"retry in {wait:.2f}s", {"Retry-After": str(max(1, math.ceil(wait)))})
        scope.setdefault("state", {})["caller"] = who
        return await self.app(scope, receive, send)


class RawModelCalls:
    """A fast path for the hottest request there is, a raw ``.npy`` batch to predict, proba or
    logits with no query string: answered here, after the token and size checks, without
    FastAPI's routing and dependency machinery (the same parse, checks, charge and model call
    as the routes, which still serve every other form and document this one)."""

    def __init__(self, app, *, handle) -> None:
        self.app = app
        self.handle = handle

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["method"] == "POST" and not scope.get("query_string")
                and "caller" in scope.get("state", {}) and await self.handle(scope, receive, send)):
            return None
        return await self.app(scope, receive, send)


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
        chat = model.modality == "chat"
        self.threat = cfg.threat_model(model.modality, model.tokenizer if chat else None)
        if model.modality == "image" and tuple(self.threat.bounds) != tuple(model.input_bounds):
            raise ValueError(
                f"task {cfg.name!r}: threat bounds {self.threat.bounds} differ from the model's "
                f"input_bounds {model.input_bounds}"
            )

    @property
    def allows(self) -> list[str]:
        if self.model.modality == "chat":
            return list(_CHAT_ALLOWS[self.cfg.access])
        ops = _ALLOWS[self.cfg.access]
        if self.model.modality == "text":
            return list(ops)
        return [a for a in ops if a not in ("tokenize", "detokenize", "embedding")]

    def info(self, used: int, budget: int | None) -> dict:
        """What every task shows (name, access, threat, budget), then what its modality adds."""
        m = self.model
        threat = {"norm": self.threat.norm, "eps": self.threat.eps,
                  "query_budget": self.threat.query_budget, "access": self.threat.access}
        out = {
            "name": self.cfg.name,
            "model": self.cfg.model,
            "dataset": self.cfg.dataset,
            "modality": m.modality,
            "access": self.cfg.access,
            "allows": self.allows,
            "threat": threat,
            "budget": budget,
            "used": used,
            "remaining": None if budget is None else max(0, budget - used),
            "max_batch": self.max_batch,
        }
        if m.modality == "chat":
            out.update(vocab_size=m.vocab_size, max_new_tokens=self.max_new_tokens,
                       max_chat_tokens=self.max_chat_tokens,
                       query="one conversation sent forward (generated tokens are not counted)")
            return out
        threat["bounds"] = list(self.threat.bounds)
        out.update(num_classes=m.num_classes, classes=list(m.classes),
                   input_shape=list(m.input_shape) if m.input_shape else None,
                   input_bounds=list(m.input_bounds))
        if m.modality == "text":
            tok = m.tokenizer
            out["vocab_size"] = int(tok.vocab_size)
            out["pad_id"] = int(tok.pad_id)
        return out


def _unprocessable(msg: str) -> HTTPException:
    return HTTPException(status_code=422, detail=msg)


def create_app(config: ServerConfig, *, store: Store | None = None) -> FastAPI:
    """The Maestro model server for ``config`` (models, and the hidden data of the submitted
    assignments, are loaded now, once per model name). Graders start with the app (its
    lifespan) and stop with it, unfinished submissions going back to the queue."""
    from ..models import load

    store = store or Store(config.database_url)
    cache: dict[str, Any] = {}
    served: dict[str, Served] = {}
    for name, cfg in config.tasks.items():
        if cfg.model not in cache:
            cache[cfg.model] = load(cfg.model, home=config.home)
        served[name] = Served(cfg, cache[cfg.model])
        served[name].max_batch = config.max_batch
        served[name].max_new_tokens = min(config.max_new_tokens, MAX_NEW_TOKENS)
        served[name].max_chat_tokens = config.max_chat_tokens
    limiter = RateLimiter(config.rate_limit, config.rate_burst)

    subcfg = config.submissions
    assignments: dict = {}
    grader = subs = boards = None
    if subcfg is not None:
        from .db import Submissions
        from .submissions import Grader, Leaderboards, load_assignments, load_boards

        assignments = load_assignments(subcfg, config.course, config.home)
        subs = Submissions(store)
        grader = Grader(subs, assignments, subcfg.workers, refund=lambda row: store.refund(
            row["token_id"], _day_key(row["assignment"], row["created"]), 1))
        boards = Leaderboards(subs, assignments, load_boards(subcfg, config.course, config.home))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if grader is not None:
            await run_in_threadpool(grader.start)
            boards.warm(final=subcfg.is_final(), pseudonyms=subcfg.pseudonyms)
        try:
            yield
        finally:
            if grader is not None:
                await run_in_threadpool(grader.stop)

    app = FastAPI(
        title="Maestro model server",
        version=__version__,
        description="Query course models at the access level and budget each task allows; upload "
        "assignment artifacts to be graded; follow the leaderboards. "
        "Authenticate with `Authorization: Bearer <token>` (from `maestro tokens create`).",
        lifespan=lifespan,
    )
    public_paths = {"/v1/health", app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}

    def is_public(path: str) -> bool:
        if path in public_paths:
            return True
        return bool(subcfg and subcfg.public_leaderboard and path.startswith("/leaderboard/"))

    def body_limit(scope) -> int | None:
        parts = scope["path"].split("/")
        if (scope["method"] == "POST" and len(parts) == 5 and parts[1:3] == ["v1", "assignments"]
                and parts[4] == "submissions" and parts[3] in assignments):
            return assignments[parts[3]].max_upload_bytes
        return None

    app.add_middleware(RawModelCalls, handle=lambda *args: raw_model_call(*args))
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, limit_for=body_limit)
    app.add_middleware(Authenticate, store=store, limiter=limiter, public=is_public)  # outermost
    app.state.store = store
    app.state.config = config
    app.state.served = served
    app.state.assignments = assignments
    app.state.grader = grader
    bearer = HTTPBearer(auto_error=False, description="a token from `maestro tokens create`")

    async def caller(request: Request,
                     _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
        # async: FastAPI would run a plain function in its threadpool, a thread hop per request
        who = getattr(request.state, "caller", None)  # set by Authenticate, before the body was read
        if who is None:
            raise HTTPException(401, "missing token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        return who

    Who = Annotated[Caller, Depends(caller)]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    def budget_of(who: Caller, task: Served) -> int | None:
        return None if who.is_instructor else task.cfg.budget

    def get_task(name: str) -> Served:
        task = served.get(name)
        if task is None:
            raise HTTPException(404, f"unknown task {name!r}; tasks: {', '.join(sorted(served))}")
        return task

    def require(task: Served, op: str, level: str) -> None:
        modality = task.model.modality
        if (op in ("generate", "logprobs")) != (modality == "chat"):
            what = "chat tasks" if op in ("generate", "logprobs") else "classifier tasks"
            raise HTTPException(404, f"{op} is for {what}; task {task.cfg.name!r} is a {modality} "
                                "task" + (": use generate or logprobs" if modality == "chat" else ""))
        if op in ("tokenize", "detokenize", "embedding") and modality != "text":
            raise HTTPException(404, f"{op} is for text tasks; task {task.cfg.name!r} is "
                                f"{'an' if modality == 'image' else 'a'} {modality} task")
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
                arr = value if isinstance(value, np.ndarray) else arrays.decode(value, "inputs", np.float32)
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
        if isinstance(value, np.ndarray):
            raise HTTPException(415, f"task {task.cfg.name!r} is a text task: send JSON (texts, or "
                                "{\"input_ids\": ..., \"attention_mask\": ...}); a raw "
                                f"{arrays.NPY_MEDIA_TYPE} body carries image inputs only")
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

    def charge(who: Caller, task: Served, n: int) -> int:
        """Reserve ``n`` inputs of the budget (429 when it cannot cover them); returns the inputs used."""
        budget = budget_of(who, task)
        used = store.charge(who.token_id, task.cfg.name, n, budget)
        if used is None:
            left = max(0, budget - store.used(who.token_id, task.cfg.name))
            raise HTTPException(
                429,
                f"budget spent: this request needs {n} queries but only {left} of your budget of "
                f"{budget} for task {task.cfg.name!r} are left; nothing was run",
            )
        return used

    def run_charged(who: Caller, task: Served, n: int, fn):
        """(the answer of ``fn()``, inputs used after this charge); the charge is refunded if
        ``fn`` fails."""
        used = charge(who, task, n)
        try:
            return fn(), used
        except Exception:
            store.refund(who.token_id, task.cfg.name, n)
            log.exception("model call failed on task %s", task.cfg.name)
            raise

    def answer(who: Caller, task: Served, n: int, out, used: int, fmt: str, raw: bool) -> Response:
        budget = budget_of(who, task)
        remaining = None if budget is None else max(0, budget - used)
        if raw and not isinstance(out, tuple):
            headers = {"X-Maestro-Task": task.cfg.name, "X-Maestro-Queries": str(n), "X-Maestro-Used": str(used)}
            if budget is not None:
                headers.update({"X-Maestro-Budget": str(budget), "X-Maestro-Remaining": str(remaining)})
            return Response(arrays.to_npy_bytes(out.detach().cpu().numpy()), media_type=NPY, headers=headers)
        extra = {}
        if isinstance(out, tuple):
            out, logits_ = out
            extra["logits"] = arrays.encode(logits_.detach().cpu().numpy(), fmt)
        # a JSONResponse of our own: FastAPI would first walk the whole answer (jsonable_encoder)
        return JSONResponse({**extra,
            "task": task.cfg.name,
            "outputs": arrays.encode(out.detach().cpu().numpy(), fmt),
            "queries": n,
            "used": used,
            "budget": budget,
            "remaining": remaining,
        })

    def parse_body(media: str, raw: bytes, body_cls: type[BaseModel], op: str):
        """The request body: JSON validated as ``body_cls``, or (predict, proba, logits) the
        inputs array as a raw ``.npy`` body."""
        if media == NPY:
            if op not in RAW_BODY_OPS:
                raise HTTPException(415, f"{op} takes a JSON body ({body_cls.__name__}); raw "
                                    f"{NPY} bodies are for {', '.join(RAW_BODY_OPS)}")
            try:
                return body_cls.model_construct(inputs=arrays.from_npy_bytes(raw, "inputs"))
            except ValueError as err:
                raise _unprocessable(f"{err}; a {NPY} body is one .npy file") from None
        if media and media != "application/json" and not media.endswith("+json"):
            raise HTTPException(415, f"unsupported Content-Type {media!r}: send application/json"
                                + (f" or {NPY}" if op in RAW_BODY_OPS else ""))
        try:
            return body_cls.model_validate_json(raw)
        except ValidationError as err:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]) from None

    def model_call(who: Caller, task: Served, op: str, body, fmt: str, raw: bool = False) -> Response:
        level = {"predict": "labels", "proba": "scores", "logits": "scores", "gradient": "white-box"}[op]
        require(task, op, level)
        x = parse_inputs(task, body.inputs)
        n = len(x)
        m = task.model
        if op == "gradient":
            y = parse_labels(task, body.labels, n)
            out, used = run_charged(who, task, n, lambda: m.gradient(
                x, y, loss=body.loss, targeted=body.targeted, return_logits=body.return_logits))
        elif op == "predict":
            out, used = run_charged(who, task, n, lambda: m.predict(x))
        elif op == "proba":
            out, used = run_charged(who, task, n, lambda: m.predict_proba(x))
        else:
            out, used = run_charged(who, task, n, lambda: m.logits(x))
        return answer(who, task, n, out, used, fmt, raw)

    async def model_route(request: Request, who: Caller, op: str, body_cls: type[BaseModel], fmt: str,
                          task: str | None = None) -> Response:
        """Read the body, then parse, check, charge and run it (:func:`run_model`). ``task``
        None: the body names it (the seed's aliases); op ``output``: scores where the task
        allows them, else labels."""
        raw = await request.body()
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        raw_answer = NPY in request.headers.get("accept", "")
        return await run_model(who, op, body_cls, fmt, task, raw, media, raw_answer)

    costs: dict[tuple, float] = {}  # (task, op, raw .npy body?) -> seconds per body byte, averaged

    async def run_model(who: Caller, op: str, body_cls: type[BaseModel], fmt: str, task: str | None,
                        raw: bytes, media: str, raw_answer: bool) -> Response:
        """Parse, check, charge and run a model request. Where the same kind of request has
        cost under ``INLINE_SECONDS`` for a body this size, right here on the event loop (a
        thread hop costs a fair share of such a request); else in the threadpool, which keeps
        long calls off the loop and lets calls run side by side."""
        key = (task, op, media == NPY)  # not the raw media type: clients choose those freely

        def work() -> Response:
            start = time.perf_counter()
            body = parse_body(media, raw, body_cls, op)
            t = get_task(task if task is not None else body.task)
            the_op = op
            if op == "output":
                the_op = "proba" if _RANK[t.cfg.access] >= _RANK["scores"] else "predict"
            response = model_call(who, t, the_op, body, fmt, raw_answer)
            if task is not None:  # answered requests only: refusals are cheap and say nothing
                rate = (time.perf_counter() - start) / max(len(raw), 1)
                costs[key] = rate if key not in costs else 0.8 * costs[key] + 0.2 * rate
            return response

        rate = costs.get(key)
        if rate is not None and rate * len(raw) <= INLINE_SECONDS:
            return work()
        return await run_in_threadpool(work)

    async def raw_model_call(scope, receive, send) -> bool:
        """The fast path (see :class:`RawModelCalls`): True when it answered the request."""
        parts = scope["path"].split("/")
        if not (len(parts) == 5 and parts[1:3] == ["v1", "tasks"] and parts[4] in RAW_BODY_OPS):
            return False
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").partition(b";")[0].strip().lower() != NPY.encode():
            return False
        body = await _read_body(receive)  # its size was checked by BodyLimit, outside
        if body is None:
            return True
        raw_answer = NPY.encode() in headers.get(b"accept", b"")
        try:
            response = await run_model(scope["state"]["caller"], parts[4], ModelRequest, "json", parts[3],
                                       body, NPY, raw_answer)
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        await response(scope, receive, send)
        return True

    def model_doc(body_cls: type[BaseModel], op: str | None) -> dict:
        """OpenAPI for a model route that reads its body itself: JSON always, raw .npy for
        ``RAW_BODY_OPS``; answers in JSON or (``Accept: application/x-npy``) raw .npy."""
        content = {"application/json": {"schema": body_cls.model_json_schema()}}
        if op in RAW_BODY_OPS:
            content[NPY] = {"schema": {"type": "string", "format": "binary"}}
        return {"requestBody": {"required": True, "content": content}}

    ANSWERS = {200: {"description": "JSON; or, with `Accept: application/x-npy`, the outputs as a "
                     "raw .npy body, the counts in X-Maestro-Queries/-Used/-Budget/-Remaining headers",
                     "content": {NPY: {"schema": {"type": "string", "format": "binary"}}}}}

    # -- routes ---------------------------------------------------------------------------------
    TaskName = Path(..., description="a task name from GET /v1/tasks")
    FormatQ = Query("json", description="'json' (nested lists) or 'npy' ({\"npy_b64\": ...})")

    @app.get("/v1/health", tags=["server"])
    def health() -> dict:
        return {"status": "ok", "version": __version__, "tasks": len(served), "assignments": len(assignments)}

    @app.get("/v1/tasks", tags=["tasks"], responses=_errors())
    def list_tasks(who: Who) -> dict:
        return {"tasks": [t.info(store.used(who.token_id, n), budget_of(who, t)) for n, t in served.items()]}

    @app.get("/v1/tasks/{task}", tags=["tasks"], responses=_errors(404))
    def task_info(who: Who, task: str = TaskName) -> dict:
        t = get_task(task)
        return t.info(store.used(who.token_id, task), budget_of(who, t))

    @app.post("/v1/tasks/{task}/predict", tags=["model"], summary="predicted labels (any access)",
               responses={**_errors(400, 403, 404, 413, 415), **ANSWERS},
               openapi_extra=model_doc(ModelRequest, "predict"))
    async def predict(request: Request, who: Who, task: str = TaskName, format: Fmt = FormatQ):
        return await model_route(request, who, "predict", ModelRequest, format, task)

    @app.post("/v1/tasks/{task}/proba", tags=["model"], summary="class probabilities (scores access)",
               responses={**_errors(400, 403, 404, 413, 415), **ANSWERS},
               openapi_extra=model_doc(ModelRequest, "proba"))
    async def proba(request: Request, who: Who, task: str = TaskName, format: Fmt = FormatQ):
        return await model_route(request, who, "proba", ModelRequest, format, task)

    @app.post("/v1/tasks/{task}/logits", tags=["model"], summary="raw class scores (scores access)",
               responses={**_errors(400, 403, 404, 413, 415), **ANSWERS},
               openapi_extra=model_doc(ModelRequest, "logits"))
    async def logits(request: Request, who: Who, task: str = TaskName, format: Fmt = FormatQ):
        return await model_route(request, who, "logits", ModelRequest, format, task)

    @app.post("/v1/tasks/{task}/gradient", tags=["model"], summary="input gradient of the loss (white-box)",
               responses={**_errors(400, 403, 404, 413, 415), **ANSWERS},
               openapi_extra=model_doc(GradientRequest, "gradient"))
    async def gradient(request: Request, who: Who, task: str = TaskName, format: Fmt = FormatQ):
        return await model_route(request, who, "gradient", GradientRequest, format, task)

    @app.post("/v1/tasks/{task}/tokenize", tags=["text"], summary="token ids and mask (text tasks)",
               responses=_errors(400, 403, 404, 413))
    def tokenize(who: Who, body: TokenizeRequest, task: str = TaskName, format: Fmt = FormatQ):
        t = get_task(task)
        require(t, "tokenize", "labels")
        if not body.texts:
            raise _unprocessable("texts: expected a non-empty list of strings")
        check_batch(len(body.texts))
        tb = t.model.tokenize(body.texts)
        return {"input_ids": arrays.encode(tb.input_ids.numpy(), format),
                "attention_mask": arrays.encode(tb.attention_mask.numpy(), format)}

    tokenizer_cache: dict[str, dict] = {}

    @app.get("/v1/tasks/{task}/tokenizer", tags=["text"],
             summary="the model's tokenizer as JSON data (text tasks), so clients tokenize locally",
             responses=_errors(403, 404))
    def tokenizer(who: Who, task: str = TaskName):
        t = get_task(task)
        if t.model.modality != "chat":
            require(t, "tokenize", "labels")
        if task not in tokenizer_cache:
            from ..text import tokenizer_to_json

            try:
                tokenizer_cache[task] = tokenizer_to_json(t.model.tokenizer)
            except TypeError as err:
                raise HTTPException(404, f"task {task!r}: {err}") from None
        return tokenizer_cache[task]

    @app.post("/v1/tasks/{task}/detokenize", tags=["text"], summary="texts from token ids (text tasks)",
               responses=_errors(400, 403, 404, 413))
    def detokenize(who: Who, body: DetokenizeRequest, task: str = TaskName):
        t = get_task(task)
        require(t, "detokenize", "labels")
        tb = token_batch(body.inputs)
        check_batch(len(tb))
        vocab = t.model.tokenizer.vocab_size
        if int(tb.input_ids.min()) < 0 or int(tb.input_ids.max()) >= vocab:
            raise _unprocessable(f"input_ids: token ids must lie in [0, {vocab - 1}]")
        return {"texts": t.model.detokenize(tb)}

    @app.get("/v1/tasks/{task}/embedding", tags=["text"], summary="the input embedding matrix V×D (white-box)",
              responses=_errors(403, 404))
    def embedding(who: Who, task: str = TaskName, format: Fmt = FormatQ):
        t = get_task(task)
        require(t, "embedding", "white-box")
        return {"embedding": arrays.encode(t.model.embedding_matrix().cpu().numpy(), format)}

    @app.post("/v1/tasks/{task}/embedding", tags=["text"], summary="input token embeddings B×T×D (white-box)",
               responses=_errors(400, 403, 404, 413))
    def embeddings(who: Who, body: ModelRequest, task: str = TaskName, format: Fmt = FormatQ):
        t = get_task(task)
        require(t, "embedding", "white-box")
        x = parse_inputs(t, body.inputs)
        return {"embeddings": arrays.encode(t.model.embeddings(x).cpu().numpy(), format),
                "attention_mask": arrays.encode(x.attention_mask.cpu().numpy(), format)}

    # -- chat tasks --------------------------------------------------------------------------
    def chat_inputs(t: Served, body: ChatRequest, extra_tokens: int = 0):
        """The body's chats and suffixes, checked: batch size, text sizes, the threat model."""
        from ..chat import Chat

        n = len(body.chats)
        check_batch(n)
        advs = body.adv if isinstance(body.adv, list) else [body.adv] * n
        if len(advs) != n:
            raise _unprocessable(f"adv: {len(advs)} suffixes for {n} chats (give one, or one per chat)")
        chats = []
        for i, c in enumerate(body.chats):
            user, system = (c, None) if isinstance(c, str) else (c.user, c.system)
            if len(user) > MAX_CHAT_CHARS or len(system or "") > MAX_CHAT_CHARS:
                raise HTTPException(413, f"chats[{i}]: at most {MAX_CHAT_CHARS} characters a message")
            try:
                chats.append(Chat(user, system=system))
            except (TypeError, ValueError) as err:
                raise _unprocessable(f"chats[{i}]: {err}") from None
        if any(a is not None and len(a) > MAX_CHAT_CHARS for a in advs):
            raise HTTPException(413, f"adv: at most {MAX_CHAT_CHARS} characters a suffix")
        for i, (c, a) in enumerate(zip(chats, advs)):
            n_tokens = len(t.model.ids(c, a or None)) + extra_tokens
            if n_tokens > t.max_chat_tokens:
                raise HTTPException(413, f"chats[{i}]: {n_tokens} tokens, at most "
                                    f"{t.max_chat_tokens} a conversation on this server")
        given = [i for i, a in enumerate(advs) if a]
        if given:
            found = t.threat.violations([None] * len(given), [advs[i] for i in given])
            if found:
                raise _unprocessable("adv breaks the task's threat model (" + t.threat.describe() +
                                     "): " + "; ".join(str(v) for v in found))
        return chats, [a or None for a in advs]

    def chat_answer(who: Caller, t: Served, n: int, used: int, **out) -> dict:
        budget = budget_of(who, t)
        return {"task": t.cfg.name, **out, "queries": n, "used": used, "budget": budget,
                "remaining": None if budget is None else max(0, budget - used)}

    @app.post("/v1/tasks/{task}/generate", tags=["chat"], summary="the assistant's answers (chat tasks)",
              responses=_errors(403, 404, 413))
    def generate(who: Who, body: GenerateRequest, task: str = TaskName) -> dict:
        t = get_task(task)
        require(t, "generate", "labels")
        if body.max_new_tokens > t.max_new_tokens:
            raise _unprocessable(f"max_new_tokens: at most {t.max_new_tokens} on this server")
        chats, advs = chat_inputs(t, body)
        counts: list[int] = []
        answers, used = run_charged(who, t, len(chats), lambda: t.model.generate(
            chats, advs, max_new_tokens=body.max_new_tokens, sample=body.sample,
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, counts=counts))
        return chat_answer(who, t, len(chats), used, outputs=answers, generated_tokens=sum(counts))

    @app.post("/v1/tasks/{task}/logprobs", tags=["chat"],
              summary="teacher-forced log-probabilities of targets (chat tasks, scores access)",
              responses=_errors(403, 404, 413))
    def logprobs(who: Who, body: LogprobsRequest, task: str = TaskName) -> dict:
        t = get_task(task)
        require(t, "logprobs", "scores")
        n = len(body.chats)
        targets = [body.targets] * n if isinstance(body.targets, str) else body.targets
        if len(targets) != n or not all(targets):
            raise _unprocessable(f"targets: one non-empty str for each of the {n} chats")
        if any(len(x) > MAX_CHAT_CHARS for x in targets):
            raise HTTPException(413, f"targets: at most {MAX_CHAT_CHARS} characters a target")
        longest = max(len(t.model.tokenize(x)) for x in targets)
        chats, advs = chat_inputs(t, body, extra_tokens=longest)
        s, used = run_charged(who, t, len(chats), lambda: t.model.target_logprobs(chats, targets, advs))
        return chat_answer(who, t, len(chats), used, per_token=[p.tolist() for p in s.per_token],
                           total=s.total.tolist(), greedy=s.greedy.tolist())

    @app.get("/v1/usage", tags=["server"], summary="usage per student and task (instructors)",
             responses=_errors(403))
    def usage(who: Who):
        if not who.is_instructor:
            raise HTTPException(403, "usage needs an instructor token")
        return {"usage": store.usage_table()}

    # aliases for the original seed's names (task in the body)
    @app.post("/get_batch_output", tags=["aliases"], summary="alias: scores where allowed, else labels",
              responses={**_errors(400, 403, 404, 413, 415), **ANSWERS},
              openapi_extra=model_doc(AliasOutputRequest, None))
    async def get_batch_output(request: Request, who: Who, format: Fmt = FormatQ):
        return await model_route(request, who, "output", AliasOutputRequest, format)

    @app.post("/get_batch_input_gradient", tags=["aliases"], summary="alias of /v1/tasks/{task}/gradient",
              responses={**_errors(400, 403, 404, 413, 415), **ANSWERS},
              openapi_extra=model_doc(AliasGradientRequest, None))
    async def get_batch_input_gradient(request: Request, who: Who, format: Fmt = FormatQ):
        return await model_route(request, who, "gradient", AliasGradientRequest, format)

    if subcfg is not None:
        _submission_routes(app, Who, store, subcfg, assignments, subs, grader, boards)

    @app.exception_handler(Exception)
    async def server_fault(request: Request, exc: Exception):  # a bug, never bad input
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    return app


def _day_key(assignment: str, now: _dt.datetime) -> str:
    """The usage-table key counting a token's uploads of ``assignment`` on one UTC day."""
    key = f"submit:{now.date().isoformat()}:{assignment}"
    return key if len(key) <= 64 else key[:18] + hashlib.sha256(assignment.encode()).hexdigest()[:40]


def _submission_routes(app: FastAPI, Who, store: Store, subcfg, assignments: dict, subs, grader, boards) -> None:
    """The ``[submissions]`` endpoints (see the module docstring)."""
    from autograder.leaderboard import pseudonym, render_html

    from .submissions import ArtifactRejected, BoardNotReady, check_upload, student_view, uploads_of

    AssignmentId = Path(..., description="an assignment id from GET /v1/assignments")
    InputsFormat = Query("npy", description="'npy' ({\"npy_b64\": ...}, the default) or 'json'")

    def get_assignment(ident: str):
        a = assignments.get(ident)
        if a is None:
            if ident in boards.boards:
                raise HTTPException(404, f"{ident} takes no uploads here: it is graded by `maestro autograde` "
                                    f"(submit the notebook through nbgrader); its leaderboard is /leaderboard/{ident}")
            known = sorted(assignments) + sorted(boards.boards)
            raise HTTPException(404, f"unknown assignment {ident!r}; assignments: {', '.join(known) or 'none'}")
        return a

    def get_board(ident: str) -> None:
        if ident not in assignments and ident not in boards.boards:
            get_assignment(ident)  # the 404

    def board_of(ident: str, *, final: bool, pseudonyms: bool):
        try:
            return boards.board(ident, final=final, pseudonyms=pseudonyms)
        except BoardNotReady as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from None

    def name_of(who: Caller, a) -> str:
        return pseudonym(who.student, a.secret) if subcfg.pseudonyms else who.student

    def info(who: Caller, a) -> dict:
        out = a.info(subcfg)
        if not who.is_instructor:
            used = store.used(who.token_id, _day_key(a.id, _dt.datetime.now(_dt.UTC)))
            out["uploads_today"] = used
            out["uploads_left_today"] = max(0, subcfg.max_per_day - used) if subcfg.max_per_day else None
            out["leaderboard_name"] = name_of(who, a)
        return out

    def view(who: Caller, row: dict) -> dict:
        a = assignments.get(row["assignment"])
        name = None
        if a is not None and not who.is_instructor:
            name = name_of(who, a)
        return student_view(row, final=subcfg.is_final(), instructor=who.is_instructor, pseudonym=name)

    @app.get("/v1/assignments", tags=["submissions"], summary="the assignments that take uploads, and those with a leaderboard only",
             responses=_errors())
    def list_assignments(who: Who) -> dict:
        return {"assignments": [info(who, a) for a in assignments.values()],
                "boards": [b.info() for b in boards.boards.values()]}

    @app.get("/v1/assignments/{assignment}", tags=["submissions"],
             summary="threat model, artifact spec, limits and deadline", responses=_errors(404))
    def assignment_info(who: Who, assignment: str = AssignmentId) -> dict:
        return info(who, get_assignment(assignment))

    @app.get("/v1/assignments/{assignment}/inputs", tags=["submissions"],
             summary="the hidden inputs to attack (never their labels)", responses=_errors(404))
    def assignment_inputs(who: Who, assignment: str = AssignmentId,
                          format: Fmt = InputsFormat):
        a = get_assignment(assignment)
        x = {"npy_b64": a.inputs_npy_b64()} if format == "npy" else arrays.encode(
            a.hidden.x.numpy().astype(a.spec.dtype), "json")
        out = {"assignment": a.id, "inputs": x, "shape": list(a.hidden.x.shape), "dtype": a.spec.dtype,
               "threat": a.info(subcfg)["threat"]}
        targets = a.targets(format)
        if targets is not None:  # the target class of each input (int64), for targeted artifacts
            out["targets"] = targets
        return out

    @app.post("/v1/assignments/{assignment}/submissions", tags=["submissions"], status_code=202,
              summary="upload an artifact (or several); it is graded in the background",
              responses=_errors(400, 403, 404, 413))
    def submit(who: Who, body: SubmissionRequest, response: Response, assignment: str = AssignmentId) -> dict:
        a = get_assignment(assignment)
        now = _dt.datetime.now(_dt.UTC)
        if subcfg.past_deadline(now) and not who.is_instructor:
            raise HTTPException(403, f"the deadline of {a.id} ({subcfg.deadline.isoformat()}) has passed: "
                                "uploads are closed")
        try:
            uploads = uploads_of(a, None if body.artifact is None else body.artifact.npy_b64,
                                 None if body.artifacts is None else
                                 {k: v.npy_b64 for k, v in body.artifacts.items()})
            data, digest = check_upload(a, uploads)
        except ArtifactRejected as err:
            raise _unprocessable(str(err)) from None
        limit = None if who.is_instructor or not subcfg.max_per_day else subcfg.max_per_day
        key = _day_key(a.id, now)
        if not store.reserve(who.token_id, key, 1, limit):
            midnight = _dt.datetime.combine(now.date() + _dt.timedelta(days=1), _dt.time(), _dt.UTC)
            left = int((midnight - now).total_seconds())
            raise HTTPException(429, f"upload limit: at most {limit} uploads of {a.id} per day (UTC); "
                                f"the next one from 00:00 UTC, in {left // 3600}h{left % 3600 // 60:02d}m; "
                                "nothing was stored")
        try:
            row = subs.add(assignment=a.id, student=who.student, token_id=who.token_id, sha256=digest, data=data)
        except Exception:
            store.refund(who.token_id, key, 1)
            raise
        grader.wake()
        url = f"/v1/submissions/{row['id']}"
        response.headers["Location"] = url
        return {**view(who, row), "url": url}

    @app.get("/v1/assignments/{assignment}/submissions", tags=["submissions"],
             summary="my submissions (instructors: everyone's, or one student's)", responses=_errors(403, 404))
    def list_submissions(who: Who, assignment: str = AssignmentId,
                         student: str | None = Query(None, description="instructors: one student's only")) -> dict:
        get_assignment(assignment)
        if student is not None and not who.is_instructor:
            raise HTTPException(403, "student= needs an instructor token")
        rows = subs.list(assignment, student if who.is_instructor else who.student)
        return {"assignment": assignment, "submissions": [view(who, r) for r in rows]}

    @app.get("/v1/submissions/{submission}", tags=["submissions"], summary="a submission's status and result",
             responses=_errors(404))
    def get_submission(who: Who, submission: str = Path(..., description="the id POST .../submissions gave")) -> dict:
        row = subs.get(submission)
        if row is None or (not who.is_instructor and row["student"] != who.student):
            raise HTTPException(404, f"no submission {submission!r} of yours")
        return view(who, row)

    @app.get("/v1/assignments/{assignment}/leaderboard", tags=["leaderboard"],
             summary="the ranking: best graded submission per student", responses=_errors(403, 404, 503))
    def leaderboard(who: Who, assignment: str = AssignmentId,
                    final: bool | None = Query(None, description="instructors: the private-part ranking before "
                                               "the deadline (default: the server's)")) -> dict:
        get_board(assignment)
        is_final = subcfg.is_final()
        if final is not None and final != is_final and not who.is_instructor:
            raise HTTPException(403, "only instructors may choose final=; students see the server's ranking")
        final = is_final if final is None else final
        board = board_of(assignment, final=final, pseudonyms=subcfg.pseudonyms and not who.is_instructor)
        return board.as_dict()

    # public (no token) with public_leaderboard = true; else for token holders (API clients)
    public = subcfg.public_leaderboard
    guard = None if public else [Who.__metadata__[0]]

    @app.get("/leaderboard/{assignment}.json", tags=["leaderboard"], summary="the ranking the live page shows",
             responses=_errors(404, 503, token=not public), dependencies=guard)
    def public_leaderboard_json(assignment: str = AssignmentId) -> dict:
        get_board(assignment)
        return board_of(assignment, final=subcfg.is_final(), pseudonyms=subcfg.pseudonyms).as_dict()

    @app.get("/leaderboard/{assignment}", tags=["leaderboard"], response_class=HTMLResponse,
             summary="the live leaderboard page (phone-friendly; refreshes itself)",
             responses={**_errors(404, token=not public),
                        503: {"description": _ERRORS[503] + "; a page that reloads itself",
                              "content": {"text/html": {"schema": {"type": "string"}}}}},
             dependencies=guard)
    def public_leaderboard_page(assignment: str = AssignmentId):
        get_board(assignment)
        try:
            board = boards.board(assignment, final=subcfg.is_final(), pseudonyms=subcfg.pseudonyms)
        except BoardNotReady as err:  # a page that asks again by itself
            page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                    '<meta http-equiv="refresh" content="5"><meta name="viewport" '
                    f'content="width=device-width, initial-scale=1"><title>{html.escape(assignment)}'
                    f'</title></head><body><p>{html.escape(str(err))}.</p></body></html>\n')
            return HTMLResponse(page, status_code=503, headers={"Retry-After": "5", "Cache-Control": "no-store"})
        page = render_html(board, live_url=f"{assignment}.json", refresh_s=subcfg.refresh_s)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})


def app_from_env() -> FastAPI:
    """An app for ``uvicorn --factory``: the config path is in ``$MAESTRO_SERVER_CONFIG``."""
    import os

    path = os.environ.get("MAESTRO_SERVER_CONFIG")
    if not path:
        raise RuntimeError("set MAESTRO_SERVER_CONFIG to the server.toml (or its course directory)")
    return create_app(ServerConfig.load(path))

"""Clients for the Maestro model server: :class:`RemoteModel`, one task with the methods of
:class:`maestro.ModelWrapper`, and :class:`RemoteAssignment`, one assignment's graded uploads.

    oracle = maestro.remote.connect("http://127.0.0.1:8000", token, "digits-scores")
    oracle = maestro.remote.connect("unix:///run/maestro/oracle.sock", token, "digits-scores")
    oracle = maestro.remote.connect("https://maestro.example.edu", token, "digits-scores",
                                    ca="course-ca.pem")      # a course's own TLS certificate
    oracle.predict(x); oracle.remaining
    maestro.attacks.SquareAttack(threat)(oracle, x, y)      # attacks run unchanged

    course = maestro.remote.assignment(url, token, "01-whitebox")   # graded uploads
    x = course.inputs(); sub = course.submit(x_adv=x_adv); course.result(sub)["score"]

Methods beyond the task's access level raise :class:`~maestro.errors.AccessDenied` before
anything is sent; the server's 401/403 become ``AccessDenied``, 429 (budget spent)
``QueryBudgetExceeded``, 404/413/422 ``ValueError`` and other 429s (the day's upload limit)
``RemoteError``, each with the server's message. Image inputs to
predict/proba/logits travel as raw ``.npy`` bodies both ways (``application/x-npy``), other arrays
as base64 ``.npy`` in JSON. A rate-limited request (429 with Retry-After) is retried a few times.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from .chat import ChatText, TargetScores
from .errors import AccessDenied, MaestroError, QueryBudgetExceeded
from .text import TokenBatch
from .wrapper import _RANK

__all__ = ["RemoteAssignment", "RemoteChatModel", "RemoteError", "RemoteModel", "assignment",
           "connect"]


class RemoteError(MaestroError):
    """The server failed or could not be reached."""


_NPY = "application/x-npy"
_RAW_OPS = ("predict", "proba", "logits")  # the server takes raw .npy bodies for these


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> dict:
    return {"npy_b64": base64.b64encode(_npy_bytes(arr)).decode("ascii")}


def _from_npy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict):
        return np.load(io.BytesIO(base64.b64decode(value["npy_b64"])), allow_pickle=False)
    return np.asarray(value)


def _endpoint(url) -> str:
    """The server's URL, checked: ``http(s)://host:port[/prefix]`` or
    ``unix:///absolute/path/to/server.sock`` (a UNIX socket: how a sandbox without network
    reaches an oracle whose socket file is bound into it)."""
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url.rstrip("/")
    if isinstance(url, str) and url.startswith("unix://"):
        path = url[len("unix://"):]
        if not path.startswith("/") or path.endswith("/") or "?" in path or "#" in path:
            raise ValueError(f"a UNIX socket URL is unix:// + an absolute socket path, e.g. "
                             f"unix:///run/maestro/oracle.sock; got {url!r}")
        return url
    raise ValueError(f"url must start with http://, https:// or unix:// (a socket path), got {url!r}")


class _Server:
    """Requests to one Maestro server with one token; the server's errors become the kit's (see
    the module docstring)."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0, retries: int = 5,
                 ca: str | None = None) -> None:
        from ._http import HTTPClient

        if not isinstance(token, str) or not token:
            raise ValueError("token: pass the token from `maestro tokens create`")
        self.url = _endpoint(url)
        self.retries = int(retries)
        if ca is not None and not self.url.startswith("https://"):
            raise ValueError(f"ca= is the certificate of an https:// server; {self.url} is not one")
        self._http = HTTPClient(self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
                                connect_timeout=10.0, cafile=ca)

    def close(self) -> None:
        self._http.close()

    def json(self, method: str, path: str, **kw) -> dict:
        return self.send(method, path, **kw).json()

    def send(self, method: str, path: str, *, on_budget=None, **kw):
        """The server's answer (status under 400); errors raised as described in the module's
        docstring (``on_budget()`` runs before a spent budget is raised)."""
        from ._http import ConnectError, HTTPError, TLSError

        for attempt in range(self.retries + 1):
            try:
                r = self._http.request(method, path, **kw)
            except HTTPError as err:
                hint = ""
                if self.url.startswith("unix://") and isinstance(err, ConnectError):
                    hint = " (is the server running, and is its socket bound where you are?)"
                elif isinstance(err, TLSError) and err.untrusted:
                    hint = (" — if your course runs its own certificate, pass its file (from your "
                            "instructor) as ca='course-ca.pem' to maestro.remote.connect or .assignment")
                elif isinstance(err, TLSError):
                    hint = " — try the same address with http://"
                elif self.url.startswith("http://") and "closed the connection" in str(err):
                    hint = " (if the server serves HTTPS, its URL starts with https://)"
                raise RemoteError(f"cannot reach the Maestro server at {self.url}: {err}{hint}") from None
            if r.status_code == 429 and "Retry-After" in r.headers and attempt < self.retries:
                time.sleep(min(5.0, float(r.headers["Retry-After"])))  # rate limit, not budget
                continue
            break
        if r.status_code < 400:
            return r
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        if not isinstance(detail, str):  # FastAPI's own validation errors are a list
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail) \
                if isinstance(detail, list) else str(detail)
        if r.status_code in (401, 403):
            raise AccessDenied(f"server: {detail}")
        if r.status_code == 429:
            if "budget" in detail:
                if on_budget is not None:
                    on_budget()
                raise QueryBudgetExceeded(f"server: {detail}")
            raise RemoteError(f"server: {detail}")
        if r.status_code in (404, 413, 422):
            raise ValueError(f"server: {detail}")
        raise RemoteError(f"server answered {r.status_code}: {detail}")


class RemoteModel:
    """One task of a Maestro server, seen as a model wrapper (see :func:`connect`)."""

    def __init__(self, url: str, token: str, task: str, *, timeout: float = 60.0, retries: int = 5,
                 ca: str | None = None) -> None:
        self._server = _Server(url, token, timeout=timeout, retries=retries, ca=ca)
        self.url = self._server.url
        self.task = task
        self._lock = threading.Lock()
        self._queries = 0
        self._gradient_queries = 0
        self.refresh()
        self.batch_size = int(self._info.get("max_batch") or 256)  # inputs per request

    # -- transport -------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw) -> dict:
        return self._send(method, path, **kw).json()

    def _send(self, method: str, path: str, **kw):
        return self._server.send(method, path, on_budget=self._sync_remaining, **kw)

    def refresh(self) -> dict:
        """Fetch the task's description (classes, shape, bounds, access, budget left)."""
        info = self._request("GET", f"/v1/tasks/{self.task}")
        self._info = info
        self._remaining = info["remaining"]
        return info

    def _sync_remaining(self) -> None:
        try:
            self.refresh()
        except MaestroError:
            pass

    # -- properties --------------------------------------------------------------------------
    @property
    def info(self) -> dict:
        return dict(self._info)

    @property
    def name(self) -> str:
        return self.task

    @property
    def modality(self) -> str:
        return self._info["modality"]

    @property
    def access(self) -> str:
        return self._info["access"]

    @property
    def num_classes(self) -> int:
        return int(self._info["num_classes"])

    @property
    def classes(self) -> list[str]:
        return list(self._info["classes"])

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        s = self._info.get("input_shape")
        return tuple(s) if s else None

    @property
    def input_bounds(self) -> tuple[float, float]:
        lo, hi = self._info["input_bounds"]
        return (float(lo), float(hi))

    @property
    def threat(self):
        """The task's threat model as a :class:`maestro.ThreatModel`."""
        from .threat import ThreatModel

        t = self._info["threat"]
        return ThreatModel(t["norm"], t["eps"], bounds=tuple(t["bounds"]), query_budget=t["query_budget"],
                           access=t["access"])

    @property
    def budget(self) -> int | None:
        return self._info["budget"]

    @property
    def remaining(self) -> int | None:
        """Inputs your budget on the server still allows (as of the last answer)."""
        return self._remaining

    @property
    def queries(self) -> int:
        """Inputs this client sent forward so far."""
        return self._queries

    @property
    def gradient_queries(self) -> int:
        return self._gradient_queries

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __repr__(self) -> str:
        budget = "unlimited" if self.budget is None else f"{self.remaining}/{self.budget} left"
        return f"RemoteModel({self.task} at {self.url}, modality={self.modality}, access={self.access}, budget={budget})"

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- checks mirroring the wrapper's ------------------------------------------------------
    def _require(self, level: str, method: str) -> None:
        if _RANK[self.access] < _RANK[level]:
            raise AccessDenied(
                f"{method}() needs {level!r} access, but task {self.task!r} gives {self.access!r} access, "
                f"which allows: {', '.join(self._info.get('allows', []))}"
            )

    def _require_text(self, method: str) -> None:
        if self.modality != "text":
            raise TypeError(f"{method}() is for text models; this is an {self.modality} model")

    def prepare_inputs(self, x, arg: str = "x"):
        """Validate inputs the way the wrapper does (type, shape, finite values, bounds)."""
        if self.modality == "image":
            return _image_checker(self).prepare_inputs(x, arg)
        if isinstance(x, str):
            raise TypeError(f"{arg}: expected a list of str, got one str: use [{x[:20]!r}...]")
        if isinstance(x, TokenBatch):
            if len(x) == 0:
                raise ValueError(f"{arg}: expected a non-empty batch")
            vocab = self._info["vocab_size"]
            if int(x.input_ids.min()) < 0 or int(x.input_ids.max()) >= vocab:
                raise ValueError(f"{arg}: token ids must lie in [0, {vocab - 1}]")
            return x.to("cpu")
        if isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
            if not x:
                raise ValueError(f"{arg}: expected a non-empty list of str")
            return list(x)
        kind = type(x).__name__ + (f" {tuple(x.shape)}" if hasattr(x, "shape") else "")
        raise TypeError(f"{arg}: this text model expects a list of str or a TokenBatch, got {kind}")

    def prepare_labels(self, y, n: int, arg: str = "y") -> torch.Tensor:
        """Validate ``n`` integer class labels (or one int for all)."""
        return _image_checker(self).prepare_labels(y, n, arg) if self.modality == "image" \
            else _labels(y, n, self.num_classes, arg)

    # -- model calls -------------------------------------------------------------------------
    def _payload(self, x) -> dict | list:
        if isinstance(x, torch.Tensor):
            return _npy(x.detach().cpu().float().numpy())
        if isinstance(x, TokenBatch):
            return {"input_ids": _npy(x.input_ids.cpu().numpy()), "attention_mask": _npy(x.attention_mask.cpu().numpy())}
        return list(x)

    def _check_left(self, n: int) -> None:
        """Refuse (before sending anything) a call of ``n`` queries the budget cannot cover."""
        if self._remaining is not None and n > self._remaining:
            self._sync_remaining()  # others may share the token; the server has the last word
        if self._remaining is not None and n > self._remaining:
            raise QueryBudgetExceeded(
                f"this call needs {n} queries but only {self._remaining} of the budget of {self.budget} "
                "are left; nothing was run"
            )

    def _count(self, ans: dict, gradient: bool = False) -> None:
        """Add an answer's queries to this client's counts; its remaining budget is the server's."""
        with self._lock:
            self._queries += ans["queries"]
            if gradient:
                self._gradient_queries += ans["queries"]
            self._remaining = ans["remaining"]

    def _call(self, op: str, x, extra: dict | None = None, gradient: bool = False, with_logits: bool = False):
        n = len(x)
        self._check_left(n)
        outs, logits = [], []
        for start in range(0, n, self.batch_size):
            part = x[start:start + self.batch_size]
            path = f"/v1/tasks/{self.task}/{op}"
            if op in _RAW_OPS and isinstance(part, torch.Tensor):
                # raw .npy both ways: no base64, no JSON around the array
                r = self._send("POST", path, content=_npy_bytes(part.detach().cpu().float().numpy()),
                               headers={"Content-Type": _NPY, "Accept": _NPY})
                if r.headers.get("content-type", "").startswith(_NPY):
                    h = r.headers
                    ans = {"queries": int(h["X-Maestro-Queries"]),
                           "remaining": int(h["X-Maestro-Remaining"]) if "X-Maestro-Remaining" in h else None,
                           "outputs": np.load(io.BytesIO(r.content), allow_pickle=False)}
                else:
                    ans = r.json()
            else:
                body = {"inputs": self._payload(part), **(extra or {})}
                if "labels" in body:
                    body["labels"] = body["labels"][start:start + self.batch_size].tolist()
                ans = self._request("POST", path, params={"format": "npy"}, json=body)
            self._count(ans, gradient)
            outs.append(torch.from_numpy(_from_npy(ans["outputs"]).copy()))
            if with_logits:
                logits.append(torch.from_numpy(_from_npy(ans["logits"]).copy()))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if with_logits:
            return out, (logits[0] if len(logits) == 1 else torch.cat(logits))
        return out

    def predict(self, x) -> torch.Tensor:
        """Predicted labels, a LongTensor of N (any access level)."""
        return self._call("predict", self.prepare_inputs(x)).long()

    def predict_proba(self, x) -> torch.Tensor:
        """Class probabilities N×K (needs ``scores`` access)."""
        self._require("scores", "predict_proba")
        return self._call("proba", self.prepare_inputs(x))

    def logits(self, x) -> torch.Tensor:
        """Raw class scores N×K (needs ``scores`` access)."""
        self._require("scores", "logits")
        return self._call("logits", self.prepare_inputs(x))

    def gradient(self, x, y, loss: str = "ce", targeted: bool = False, *, return_logits: bool = False):
        """∇ of the loss w.r.t. the inputs (white-box); ``loss`` is ``"ce"`` or ``"margin"``
        (a callable loss cannot travel to the server)."""
        self._require("white-box", "gradient")
        if loss not in ("ce", "margin"):
            raise ValueError("a remote model's gradient takes loss='ce' or 'margin' (a callable cannot be sent)")
        x = self.prepare_inputs(x)
        y = self.prepare_labels(y, len(x))
        body = {"labels": y.cpu(), "loss": loss, "targeted": bool(targeted), "return_logits": bool(return_logits)}
        return self._call("gradient", x, body, gradient=True, with_logits=bool(return_logits))

    # -- text --------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The served model's tokenizer, rebuilt here from the JSON data the server sends
        (``GET /v1/tasks/{task}/tokenizer``, fetched once): text attacks map tokens back to the
        text with it exactly as they do on a local model."""
        self._require_text("tokenizer")
        if getattr(self, "_tokenizer", None) is None:
            from .text import tokenizer_from_json

            self._tokenizer = tokenizer_from_json(self._request("GET", f"/v1/tasks/{self.task}/tokenizer"))
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids and attention mask for ``texts`` (any access level; not charged)."""
        self._require_text("tokenize")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize(texts): expected a list of str")
        ans = self._request("POST", f"/v1/tasks/{self.task}/tokenize", params={"format": "npy"},
                            json={"texts": list(texts)})
        ids = torch.from_numpy(_from_npy(ans["input_ids"]).astype(np.int64))
        mask = torch.from_numpy(_from_npy(ans["attention_mask"]).astype(np.int64))
        return TokenBatch(ids, mask)

    def detokenize(self, tokens: TokenBatch | torch.Tensor) -> list[str]:
        """Readable strings back from a TokenBatch or a B×T id tensor (any access level)."""
        self._require_text("detokenize")
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2 and not tokens.is_floating_point():
            tokens = TokenBatch(tokens.long().cpu(), (tokens != self._info.get("pad_id", 0)).long().cpu())
        if not isinstance(tokens, TokenBatch):
            raise TypeError("detokenize(tokens): expected a TokenBatch or a B×T integer tensor")
        ans = self._request("POST", f"/v1/tasks/{self.task}/detokenize", json={"inputs": self._payload(tokens)})
        return list(ans["texts"])

    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding table V×D (white-box text tasks)."""
        self._require_text("embedding_matrix")
        self._require("white-box", "embedding_matrix")
        ans = self._request("GET", f"/v1/tasks/{self.task}/embedding", params={"format": "npy"})
        return torch.from_numpy(_from_npy(ans["embedding"]).copy())

    def embeddings(self, x) -> torch.Tensor:
        """Input token embeddings B×T×D of ``x`` (white-box text tasks; sends nothing forward)."""
        self._require_text("embeddings")
        self._require("white-box", "embeddings")
        x = self.prepare_inputs(x)
        ans = self._request("POST", f"/v1/tasks/{self.task}/embedding", params={"format": "npy"},
                            json={"inputs": self._payload(x)})
        return torch.from_numpy(_from_npy(ans["embeddings"]).copy())

    def restrict(self, access: str, budget=None):
        raise AccessDenied("a remote model's access level and budget are set by the server")


_CHECKERS: dict = {}


def _image_checker(model: RemoteModel):
    """A weightless ModelWrapper with the task's shape, bounds and classes: its validators are
    the wrapper's own, so remote and local inputs are checked the same way."""
    from .wrapper import ModelWrapper

    key = (model.num_classes, model.input_shape, model.input_bounds)
    if key not in _CHECKERS:
        _CHECKERS[key] = ModelWrapper(torch.nn.Identity(), modality="image", num_classes=model.num_classes,
                                      input_shape=model.input_shape, input_bounds=model.input_bounds)
    return _CHECKERS[key]


def _labels(y, n: int, k: int, arg: str) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if isinstance(y, int):
        y = torch.full((n,), y)
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{arg}: expected integer class labels, got {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{arg}: expected {n} labels (shape ({n},)), got shape {tuple(y.shape)}")
    lo, hi = (int(v) for v in torch.aminmax(y))
    if lo < 0 or hi >= k:
        raise ValueError(f"{arg}: labels must lie in [0, {k - 1}], got [{lo}, {hi}]")
    return y.long()


class RemoteAssignment:
    """One assignment of a Maestro server that takes uploads (see :func:`assignment`): its hidden
    inputs, uploads of its artifacts, their grades, the leaderboard."""

    def __init__(self, url: str, token: str, ident: str, *, timeout: float = 60.0, retries: int = 5,
                 ca: str | None = None) -> None:
        from urllib.parse import quote

        self._server = _Server(url, token, timeout=timeout, retries=retries, ca=ca)
        self.url = self._server.url
        self.id = ident
        self._path = f"/v1/assignments/{quote(ident, safe='')}"
        self._inputs: torch.Tensor | None = None
        self._targets: torch.Tensor | None = None
        self.refresh()

    def refresh(self) -> dict:
        """Fetch the assignment's description (artifacts, threat models, limits, uploads left)."""
        self.info = self._server.json("GET", self._path)
        return self.info

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> RemoteAssignment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        left = self.info.get("uploads_left_today")
        return (f"RemoteAssignment({self.id} at {self.url}, artifacts={list(self.files)}"
                + (f", uploads left today={left}" if left is not None else "") + ")")

    @property
    def files(self) -> tuple[str, ...]:
        """The artifact files the assignment grades, in order (the first is ``submit``'s default)."""
        return tuple(a["file"] for a in self.info["artifacts"])

    def threat_for(self, file: str | None = None):
        """The :class:`maestro.ThreatModel` of artifact ``file`` (default: the first)."""
        from .threat import ThreatModel

        art = self._artifact(file or self.files[0])
        t = art["threat"]
        return ThreatModel(t["norm"], t["eps"], bounds=tuple(t["bounds"]), atol=t.get("atol", 1e-6))

    @property
    def threat(self):
        """The first artifact's threat model."""
        return self.threat_for()

    def _artifact(self, file: str) -> dict:
        for a in self.info["artifacts"]:
            if a["file"] == file:
                return a
        raise ValueError(f"{self.id} has no artifact {file!r}; its artifacts: {', '.join(self.files)}")

    def _fetch_inputs(self) -> None:
        ans = self._server.json("GET", f"{self._path}/inputs")
        self._inputs = torch.from_numpy(_from_npy(ans["inputs"]).copy())
        if "targets" in ans:
            self._targets = torch.from_numpy(_from_npy(ans["targets"]).copy())

    def inputs(self) -> torch.Tensor:
        """The hidden inputs to attack, in the order the artifacts' rows must keep (never their
        labels). Fetched once."""
        if self._inputs is None:
            self._fetch_inputs()
        return self._inputs

    def targets(self) -> torch.Tensor | None:
        """The grader's target class of each input, for targeted artifacts (None without any)."""
        if self._inputs is None:
            self._fetch_inputs()
        return self._targets

    def submit(self, arrays: dict | None = None, *, check: bool = True, **named) -> dict:
        """Upload artifacts for grading: ``submit(x_adv=..., x_adv_l2=...)`` (a keyword is the
        file's name without ``.npy``) or ``submit({"x_adv.npy": ...})``; tensors or arrays, any
        that the assignment lists (a missing one scores 0 on its own terms). Returns the
        submission (``id``, ``status``); :meth:`result` waits for its grade.

        Each array is checked here first — shape, and with ``check`` its threat model against
        :meth:`inputs` — so a mistake costs no upload of the day's limit: ``ValueError`` or
        :class:`maestro.ThreatModelViolation` say what is wrong."""
        from .errors import ThreatModelViolation

        given = {**(arrays or {}), **{f"{k}.npy": v for k, v in named.items()}}
        if not given:
            raise ValueError(f"nothing to submit: pass the arrays, e.g. submit({self.files[0][:-4]}=x_adv)")
        body = {}
        for file, value in given.items():
            art = self._artifact(file if file.endswith(".npy") else f"{file}.npy")
            file = art["file"]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"{file}: expected a numeric array, got {arr.dtype}")
            arr = arr.astype(art["dtype"], copy=False)
            if list(arr.shape) != list(art["shape"]):
                raise ValueError(f"{file}: expected shape {tuple(art['shape'])} (one row per input, in the "
                                 f"order of inputs()), got {arr.shape}")
            if check:
                x = self.inputs()
                try:
                    self.threat_for(file).check(x, torch.from_numpy(arr).to(x.dtype))
                except ThreatModelViolation as err:
                    raise ThreatModelViolation(f"{file}: {err} (nothing was uploaded; check=False "
                                               "uploads it anyway, to be graded 0 on its terms)",
                                               violations=err.violations) from None
            body[file] = _npy(arr)
        ans = self._server.json("POST", f"{self._path}/submissions", json={"artifacts": body})
        if self.info.get("uploads_left_today") is not None:
            self.info["uploads_left_today"] = max(0, self.info["uploads_left_today"] - 1)
        return ans

    def result(self, submission, *, wait: bool = True, timeout: float = 600.0, poll: float = 1.0) -> dict:
        """A submission's status and grade (``submission``: the dict :meth:`submit` returned, or
        its id). ``wait``: until it is graded or failed, at most ``timeout`` seconds."""
        from urllib.parse import quote

        sid = submission["id"] if isinstance(submission, dict) else str(submission)
        deadline = time.monotonic() + float(timeout)
        while True:
            ans = self._server.json("GET", f"/v1/submissions/{quote(sid, safe='')}")
            if not wait or ans["status"] in ("graded", "failed"):
                return ans
            if time.monotonic() >= deadline:
                raise TimeoutError(f"submission {sid} is still {ans['status']} after {timeout:g} s; "
                                   "result(..., timeout=...) waits longer — nothing is lost meanwhile")
            time.sleep(poll)

    def submissions(self) -> list[dict]:
        """Your submissions of this assignment, newest first as the server lists them."""
        return self._server.json("GET", f"{self._path}/submissions")["submissions"]

    def leaderboard(self) -> dict:
        """The ranking (public part until the deadline)."""
        return self._server.json("GET", f"{self._path}/leaderboard")


def assignment(url: str, token: str, ident: str, *, timeout: float = 60.0, ca: str | None = None) -> RemoteAssignment:
    """A :class:`RemoteAssignment` for the assignment ``ident`` on the server at ``url``.

        course = maestro.remote.assignment(url, token, "01-whitebox")
        x, targets = course.inputs(), course.targets()
        sub = course.submit(x_adv=x_adv, x_adv_l2=x_adv_l2, x_adv_targeted=x_tgt)
        course.result(sub)["score"]

    ``ca`` as for :func:`connect`."""
    return RemoteAssignment(url, token, ident, timeout=timeout, ca=ca)


def connect(url: str, token: str, task: str, *, timeout: float = 60.0, ca: str | None = None):
    """A :class:`RemoteModel` for ``task`` on the server at ``url``, authenticated by ``token``
    (a :class:`RemoteChatModel` for a chat task).

    ``url``: ``http(s)://host:port`` or ``unix:///absolute/path/to/server.sock`` (a server on a
    UNIX socket, e.g. the grader's oracle bound into a sandbox that has no network).
    ``ca``: for an https server whose certificate the system does not trust (a course's own, as
    ``maestro serve --certfile`` may use), the PEM file of that certificate or of its authority."""
    model = RemoteModel(url, token, task, timeout=timeout, ca=ca)
    return RemoteChatModel(model) if model.modality == "chat" else model


class RemoteChatModel(ChatText):
    """A chat task of a Maestro server, with the methods of :class:`maestro.chat.ChatModel` that
    its access level allows (``generate``; ``target_logprobs`` from ``scores``), so black-box
    attacks (``RandomSearch``, ``PromptInjection`` through an ``Assistant``) and the defenses
    run on it unchanged. The tokenizer and chat template come from the server as data, so the
    chat is read as the same tokens here and there. A query is one conversation sent forward."""

    def __init__(self, model: RemoteModel) -> None:
        from .text import tokenizer_from_json

        self._remote = model
        self._init_text(tokenizer_from_json(model._request("GET", f"/v1/tasks/{model.task}/tokenizer")))
        self._generated = 0

    # -- the contract shared with ChatModel -------------------------------------------------
    task = property(lambda self: self._remote.task)
    name = property(lambda self: self._remote.task)
    url = property(lambda self: self._remote.url)
    access = property(lambda self: self._remote.access)
    budget = property(lambda self: self._remote.budget)
    remaining = property(lambda self: self._remote.remaining)
    queries = property(lambda self: self._remote.queries)
    gradient_queries = property(lambda self: 0)
    info = property(lambda self: self._remote.info)
    batch_size = property(lambda self: self._remote.batch_size)

    @property
    def vocab_size(self) -> int:
        return int(self._remote.info["vocab_size"])

    @property
    def generated_tokens(self) -> int:
        return self._generated

    @property
    def threat(self):
        """The task's threat model (a suffix of at most eps tokens of this tokenizer)."""
        from .threat import ThreatModel

        t = self._remote.info["threat"]
        return ThreatModel(t["norm"], t["eps"], query_budget=t["query_budget"], access=t["access"],
                           tokenizer=self.tokenizer)

    def __repr__(self) -> str:
        budget = "unlimited" if self.budget is None else f"{self.remaining}/{self.budget} left"
        return f"RemoteChatModel({self.task} at {self.url}, access={self.access}, budget={budget})"

    def close(self) -> None:
        self._remote.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def refresh(self) -> dict:
        return self._remote.refresh()

    def _post(self, op: str, chats, adv, extra: dict) -> list[dict]:
        """The answers of ``op`` for every chat, in requests of at most ``batch_size`` chats."""
        chats, advs = self._broadcast(chats, adv)
        advs = [a if a is None or isinstance(a, str) else self.detokenize(a) for a in advs]
        n = len(chats)
        r = self._remote
        r._check_left(n)
        answers = []
        for start in range(0, n, r.batch_size):
            part = slice(start, start + r.batch_size)
            body = {"chats": [{"user": c.user, "system": c.system} for c in chats[part]],
                    "adv": advs[part]}
            for key, value in extra.items():
                body[key] = value[part] if isinstance(value, list) else value
            ans = r._request("POST", f"/v1/tasks/{r.task}/{op}", json=body)
            r._count(ans)
            answers.append(ans)
        return answers

    def generate(self, chats, adv=None, *, max_new_tokens: int = 32, sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
        """The assistant's answers, generated on the server (see ``ChatModel.generate``)."""
        got = self._post("generate", chats, adv, {
            "max_new_tokens": max_new_tokens, "sample": sample, "temperature": temperature,
            "top_p": top_p, "seed": seed})
        self._generated += sum(a["generated_tokens"] for a in got)
        return [o for a in got for o in a["outputs"]]

    def target_logprobs(self, chats, targets, adv=None):
        """Teacher-forced log-probabilities of each target (``scores`` access; see
        ``ChatModel.target_logprobs``)."""
        if _RANK[self.access] < _RANK["scores"]:
            raise AccessDenied(f"target_logprobs() needs 'scores' access, but task {self.task!r} "
                               f"gives {self.access!r} access, which allows: "
                               f"{', '.join(self.info.get('allows', []))}")
        chats, advs = self._broadcast(chats, adv)
        if isinstance(targets, str):
            targets = [targets] * len(chats)
        got = self._post("logprobs", chats, advs, {"targets": list(targets)})
        per = [torch.tensor(p) for a in got for p in a["per_token"]]
        total = torch.tensor([t for a in got for t in a["total"]])
        greedy = torch.tensor([g for a in got for g in a["greedy"]])
        return TargetScores(per, total, greedy)



"""The trusted scorer: artifacts from a sandboxed run + the hidden data -> a score.

Runs outside the sandbox, on files the sandbox wrote, so it trusts nothing in them: each
``.npy`` is opened without following symlinks, its header is read and checked (dtype, shape,
no objects) before the data is, and ``np.load(allow_pickle=False)`` reads the rest.
``maestro.ThreatModel`` then validates ``x_adv`` against the clean hidden inputs; metrics are
computed on the hidden *labels* (which never enter the sandbox) separately for the public and
private parts of the hidden set, and the formula in grading.toml turns them into points.

Defense assignments (``[assignment] kind = "defense"``) submit model weights instead: a
``.safetensors`` file, read the same careful way (regular file, size-capped by what the
architecture needs; the header's tensor names, shapes and dtypes compared with the architecture
before any tensor is loaded; a pickle is recognised and refused; NaN/inf weights refused). The
weights go into a fresh instance of the zoo architecture, built here, and the reference attack
suite (``[defense] attacks``) runs here, on the hidden inputs with the hidden labels, through
:func:`maestro.evaluation.evaluate` (each attack on the points the previous ones left robust,
every ``x_adv`` validated by the threat model). Clean and robust accuracy are measured per part.

Nothing derived per example from the hidden labels leaves this module: reasons and outputs
hold aggregate metrics and, for threat-model violations, the row numbers of the student's own
``x_adv`` (never labels, predictions or pixel values).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .artifacts import ArtifactError, read_file
from .config import GradingConfig, ScoreTerm

__all__ = ["ArtifactRefused", "HiddenData", "Part", "ScoreResult", "load_artifact",
           "load_weights", "public_mask", "score_parts", "score_submission", "to_gradescope"]

_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
           "int64": np.int64, "int32": np.int32, "bool": np.bool_}
_HEADER_SLACK = 4096  # bytes a .npy header may add to the data
_ST_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16"}  # safetensors' dtype names
_ST_HEADER_MAX = 1 << 20  # bytes a .safetensors JSON header may take (names, shapes, metadata)


ArtifactRefused = ArtifactError  # one error type for every refused artifact


@dataclass
class HiddenData:
    """The hidden inputs ``x`` (N×C×H×W, the exact order the notebook was given) and labels ``y``.

    ``public``: boolean mask of the public part (see :func:`public_mask`); ``None`` treats the
    whole set as public. ``targets``: the target class of each input for targeted artifacts
    (see :meth:`with_targets`); the notebook is given them, like the inputs.
    """

    x: torch.Tensor | np.ndarray
    y: torch.Tensor | np.ndarray
    public: np.ndarray | None = None
    targets: torch.Tensor | None = None
    #: the model's readings of ``x``, per (model, dtype): the same for every submission scored
    _clean: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.x = torch.as_tensor(np.asarray(self.x) if not isinstance(self.x, torch.Tensor) else self.x)
        self.y = torch.as_tensor(np.asarray(self.y) if not isinstance(self.y, torch.Tensor) else self.y).long()
        if self.x.shape[0] != self.y.shape[0] or self.y.dim() != 1:
            raise ValueError(f"HiddenData: x has {self.x.shape[0]} rows, y has shape {tuple(self.y.shape)}")
        if self.public is None:
            self.public = np.ones(len(self.y), dtype=bool)
        self.public = np.asarray(self.public, dtype=bool)
        if self.public.shape != (len(self.y),):
            raise ValueError(f"HiddenData: public mask has shape {self.public.shape}, expected ({len(self.y)},)")

    def __repr__(self) -> str:  # never print the labels
        return f"HiddenData(n={len(self.y)}, x={tuple(self.x.shape)}, public={int(self.public.sum())})"

    def clean_predictions(self, model, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``model``'s reading of every hidden input (as ``dtype``), computed once per model."""
        key = (id(model), dtype)
        kept = self._clean.get(key)
        if kept is None or kept[0] is not model:
            kept = self._clean[key] = (model, model.predict(self.x.to(dtype)).cpu())
        return kept[1]

    def with_targets(self, config: GradingConfig, model, secret: str | bytes) -> HiddenData:
        """Set :attr:`targets` when ``config`` has a targeted artifact (else leave them None):
        for each input, the class ``(model reading + 1 + r) mod C`` with r uniform in
        [0, C − 2], drawn from the course secret — never the model's own reading, and made
        without the hidden labels (the model's reading is no secret in a white-box unit; on the
        examples that count, the clean-correct ones, it is the label). Returns ``self``."""
        if not config.targeted:
            return self
        from maestro.datasets.splits import secret_seed

        with torch.no_grad():
            pred = model.predict(self.x.to(torch.float32)).cpu().long()
        c = int(model.num_classes)
        gen = torch.Generator().manual_seed(secret_seed(secret, config.split.salt, domain="maestro-targets"))
        r = torch.randint(0, c - 1, pred.shape, generator=gen)
        self.targets = (pred + 1 + r) % c
        return self

    @classmethod
    def load(cls, config: GradingConfig, secret: str | bytes | None = None) -> HiddenData:
        """The instructor's hidden split of ``config.dataset`` with its public/private mask."""
        import maestro
        from maestro.datasets.splits import resolve_secret

        secret = resolve_secret(secret)
        data = maestro.datasets.load(config.dataset, split="hidden", secret=secret)
        return cls(data.x, data.y, public_mask(len(data), config, secret))


def public_mask(n: int, config: GradingConfig, secret: str | bytes) -> np.ndarray:
    """Which of ``n`` hidden examples are public: ``round(public_fraction · n)`` of them, chosen
    by a permutation seeded with sha256("maestro-split" ‖ salt ‖ secret) — students cannot
    reproduce it without the course secret, and it differs between assignments (salt)."""
    from maestro.datasets.splits import secret_seed

    gen = torch.Generator().manual_seed(secret_seed(secret, config.split.salt, domain="maestro-split"))
    order = torch.randperm(n, generator=gen).numpy()
    mask = np.zeros(n, dtype=bool)
    mask[order[: round(config.split.public_fraction * n)]] = True
    return mask


@dataclass
class Part:
    name: str
    points: float
    max_points: float
    reason: str
    visibility: str = "public"  # "public" or "private" (hidden from students until the deadline)


@dataclass
class ScoreResult:
    score: float
    max_score: float
    parts: list[Part]
    metrics: dict = field(default_factory=dict)
    public_metrics: dict = field(default_factory=dict)
    private_metrics: dict = field(default_factory=dict)
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    kind: str = "attack"  # grading.toml [assignment] kind


# -- artifacts ---------------------------------------------------------------------------
def load_artifact(path, *, dtype: str, shape: tuple[int, ...],
                  shape_hint: str = "the shape of the inputs you were given",
                  cast_hint: str = "x_adv.astype(np.float32)") -> np.ndarray:
    """Read one ``.npy`` safely: the file checks of :mod:`autograder.artifacts` (regular file,
    no symlink or hard link, size-capped), then the header (dtype, shape, no objects) before
    any data is loaded, never a pickle."""
    path = Path(path)
    name = path.name
    want = np.dtype(_DTYPES[dtype])
    limit = int(np.prod(shape, dtype=np.int64)) * want.itemsize + _HEADER_SLACK
    # headroom, so that a float64 or int64 array gets the dtype message from its header below
    data = read_file(path, 8 * limit, too_large=f"{name} is larger than an array of shape {tuple(shape)} "
                     f"and dtype {dtype} needs; save exactly that array")
    with io.BytesIO(data) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except Exception as err:
            raise ArtifactRefused(f"{name} is not a valid .npy file (save it with np.save): "
                                  f"{str(err)[:200]}") from None
        if got_dtype.hasobject:
            raise ArtifactRefused(f"{name} holds Python objects (a pickle); save a plain "
                                  f"{dtype} array")
        if got_dtype.kind != want.kind or got_dtype.itemsize != want.itemsize:
            raise ArtifactRefused(f"{name} has dtype {got_dtype}; expected {dtype} ({cast_hint})")
        if tuple(got_shape) != tuple(shape):
            raise ArtifactRefused(f"{name} has shape {tuple(got_shape)}; expected {tuple(shape)}, "
                                  f"{shape_hint}")
        exact = fh.tell() + int(np.prod(shape, dtype=np.int64)) * want.itemsize
        if len(data) != exact:
            raise ArtifactRefused(f"{name} is {len(data)} bytes, not the {exact} bytes of an array of "
                                  f"shape {tuple(shape)} and dtype {dtype}; save exactly that array")
        fh.seek(0)
        try:
            array = np.load(fh, allow_pickle=False)
        except Exception as err:
            raise ArtifactRefused(f"{name} could not be read: {str(err)[:200]}") from None
    if not isinstance(array, np.ndarray) or array.dtype.hasobject or array.shape != tuple(shape):
        raise ArtifactRefused(f"{name} is not a plain {dtype} array of shape {tuple(shape)}")
    return np.ascontiguousarray(array.astype(want.newbyteorder("="), copy=False))


# -- metrics -----------------------------------------------------------------------------
def _metrics(x, x_adv, y, clean_pred, adv_pred, rows: np.ndarray, targets=None) -> dict:
    """Aggregate metrics on the rows ``rows`` (numbers only: no per-example values); with
    ``targets``, also the share of clean-correct rows that ``x_adv`` sends to their target.
    ``clean_pred``, ``adv_pred``: the model's readings of every row of ``x`` and ``x_adv``."""
    idx = torch.from_numpy(np.flatnonzero(rows))
    xs, xa, ys = x[idx], x_adv[idx], y[idx]
    clean_ok = clean_pred[idx] == ys
    adv_pred = adv_pred[idx]
    adv_wrong = adv_pred != ys
    hit = clean_ok & adv_wrong
    delta = (xa.double() - xs.double()).flatten(1)
    linf = delta.abs().amax(1) if delta.shape[1] else torch.zeros(len(delta), dtype=torch.double)
    l2 = delta.norm(dim=1)
    n_ok = int(clean_ok.sum())

    def med(v):
        return float(v[hit].median()) if hit.any() else float("nan")

    out = {
        "n": len(idx),
        "clean_accuracy": float(clean_ok.float().mean()) if len(idx) else float("nan"),
        "robust_accuracy": float((~adv_wrong).float().mean()) if len(idx) else float("nan"),
        "success_rate": float(hit.sum()) / n_ok if n_ok else float("nan"),
        "median_linf": med(linf),
        "median_l2": med(l2),
        "queries": None,  # white-box artifact: queries are not counted
    }
    if targets is not None:
        on_target = clean_ok & (adv_pred == torch.as_tensor(targets)[idx].cpu())
        out["targeted_success_rate"] = float(on_target.sum()) / n_ok if n_ok else float("nan")
    return out


def _readings(model, x_adv: torch.Tensor, violations) -> torch.Tensor:
    """The model's reading of each row of ``x_adv``; -1 for the rows that break the threat
    model (``violations``, per row): the model may refuse them (NaN, out of bounds), and no
    part that holds one is scored."""
    from maestro.threat import valid_rows

    ok = valid_rows(violations, len(x_adv))
    if bool(ok.all()):
        return model.predict(x_adv).cpu()
    out = torch.full((len(x_adv),), -1, dtype=torch.long)
    if bool(ok.any()):
        out[ok] = model.predict(x_adv[ok]).cpu().long()
    return out


def _query_metrics(queries: int | None, n: int) -> dict:
    """The oracle's count for the whole run: it cannot be split between the parts."""
    if queries is None:
        return {}
    return {"queries": int(queries), "queries_per_example": int(queries) / n if n else float("nan")}


def _fmt(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if (metric.endswith(("_rate", "_accuracy", "soundness")) or metric.startswith(("tpr_", "certified_accuracy"))):
        return f"{100 * value:.1f}%"
    if metric == "queries_per_example":
        return f"{value:.1f}"
    return f"{value:.3f}"


def _term_parts(terms: tuple[ScoreTerm, ...], metrics: dict, share: float, label: str,
                visibility: str, *, refused: dict | None = None, first: str | None = None) -> list[Part]:
    """One Part per term; ``refused`` (artifact key -> reason; ``first``: the key of the artifact
    of the terms that name none): a term whose artifact is refused earns 0 with that reason."""
    earned: dict[str, float] = {}
    parts = []
    for term in terms:
        max_pts = term.points * share
        why = (refused or {}).get(term.artifact or first)
        if why is not None:
            earned[term.name] = 0.0
            parts.append(Part(f"{label}: {term.name}", 0.0, round(max_pts, 4), why, visibility))
            continue
        value = metrics.get(term.key)
        where = f"{term.artifact}: " if term.artifact else ""
        frac = term.fraction(value)
        direction = "≥" if term.full_at > term.zero_at else "≤"
        reason = (f"{where}{term.metric} = {_fmt(term.metric, value)} on the {label} part "
                  f"(0 points at {_fmt(term.metric, term.zero_at)}, full points at "
                  f"{direction} {_fmt(term.metric, term.full_at)})")
        if term.requires is not None and earned.get(term.requires, 0.0) <= 0:
            frac = 0.0
            reason += f"; counts only once '{term.requires}' earns points"
        pts = round(max_pts * frac, 4)
        earned[term.name] = pts
        parts.append(Part(f"{label}: {term.name}", pts, round(max_pts, 4), reason, visibility))
    return parts


def _zero_parts(config: GradingConfig, share: float, label: str, visibility: str,
                reason: str) -> list[Part]:
    return [Part(f"{label}: {t.name}", 0.0, round(t.points * share, 4), reason, visibility)
            for t in config.terms]


def score_parts(config: GradingConfig, metrics: dict, problems: list[str], *, kind: str | None = None,
                overall: dict | None = None, extra: dict | None = None) -> ScoreResult:
    """The :class:`ScoreResult` of per-part metrics, for the unit kinds (:mod:`autograder.units`).

    ``metrics``: ``{"public": dict | None, "private": dict | None}``: a part whose metrics are None
    (its artifact was refused, say) earns 0 on every term with ``problems[0]`` as the reason (or
    the part's own reason, ``problems`` entries starting with "public part:"/"private part:").
    ``overall``: metrics on the whole hidden set (default: none). ``extra``: more
    ``{"public": [Part, ...], ...}`` rows shown after a part's terms (e.g. per-defense results).
    """
    shares = {"public": config.split.public_weight, "private": 1.0 - config.split.public_weight}
    parts: list[Part] = []
    split: dict[str, dict] = {}
    for label in ("public", "private"):
        m = metrics.get(label)
        if m is None:
            split[label] = {"valid": False}
            if shares[label] > 0:
                own = [p[len(label) + 7:] for p in problems if p.startswith(f"{label} part: ")]
                reason = own[0] if own else (problems[0] if problems else "not scored")
                parts += _zero_parts(config, shares[label], label, label, reason)
            continue
        split[label] = {**m, "valid": True}
        if shares[label] > 0:
            parts += _term_parts(config.terms, m, shares[label], label, label)
            parts += list((extra or {}).get(label, ()))
    score = round(sum(p.points for p in parts), 4)
    whole = {**overall, "valid": True} if overall is not None else {"valid": False}
    return ScoreResult(score, config.max_score, parts, whole, split["public"], split["private"],
                       passed=score >= config.pass_score, problems=list(problems),
                       kind=kind or config.kind)


MISSING = "was not produced: the notebook must save it in output_dir (did every cell run without an error?)"


def score_submission(config: GradingConfig, artifacts: dict, hidden: HiddenData, model, *,
                     queries: int | None = None, missing: str = MISSING) -> ScoreResult:
    """Score one submission.

    ``artifacts``: artifact file name (or its key in grading.toml) -> path of the file the
    sandbox wrote (already copied out of it); a missing entry or file scores 0 with a reason.
    ``hidden``: the hidden inputs in the order the notebook saw them, their labels and the
    public/private mask. ``model``: the assignment's model (a maestro ModelWrapper); for a defense,
    the undefended zoo model (its metadata names the architecture the weights must fit); for a
    black-box unit, the ORACLE's model (the private build it served).
    ``queries``: what the grader's oracle counted for this run's token (black-box units); the
    ``queries_per_example`` metric is ``queries / len(hidden.x)`` for both parts (None: not
    counted, and a queries term earns nothing). ``missing``: what a missing attack artifact's
    reason says after its file name (the server's uploads say how to send it).
    """
    if config.kind == "defense":
        return _score_defense(config, artifacts, hidden, model)
    x = hidden.x
    shares = {"public": config.split.public_weight, "private": 1.0 - config.split.public_weight}
    rows = {"public": hidden.public, "private": ~hidden.public}
    problems: list[str] = []
    if config.targeted and hidden.targets is None:
        raise ValueError(f"{config.id}: a targeted artifact needs the grader's targets "
                         "(HiddenData.with_targets)")

    # every artifact: its array, or why it scores nothing; then its threat-model violations
    loaded: dict[str, torch.Tensor] = {}
    refused: dict[str, str] = {}  # artifact key -> reason (whole artifact)
    found: dict[str, list] = {}
    for spec in config.artifacts:
        path = artifacts.get(spec.file, artifacts.get(spec.key))
        if path is None:
            refused[spec.key] = f"{spec.file} {missing}"
            problems.append(refused[spec.key])
            continue
        try:
            loaded[spec.key] = torch.from_numpy(load_artifact(path, dtype=spec.dtype,
                                                              shape=spec.expected_shape(x.shape)))
        except ArtifactRefused as err:
            refused[spec.key] = str(err)
            problems.append(refused[spec.key])
            continue
        found[spec.key] = config.threat_for(spec).threat_model().violations(
            x.to(loaded[spec.key].dtype), loaded[spec.key])

    parts: list[Part] = []
    split_metrics: dict[str, dict] = {}
    readings: dict[str, torch.Tensor] = {}  # artifact key -> the model's reading of each row
    for label in ("public", "private"):
        if shares[label] <= 0:
            continue
        m, why = _artifact_metrics(config, loaded, found, hidden, model, rows[label], readings)
        why = {**refused, **why}
        problems += [f"{label} part: {r}" for k, r in why.items() if k not in refused]
        if m:
            m.update(_query_metrics(queries, len(x)))
        m["valid"] = config.artifacts[0].key not in why
        split_metrics[label] = m
        parts += _term_parts(config.terms, m, shares[label], label, label, refused=why,
                             first=config.artifacts[0].key)

    score = round(sum(p.points for p in parts), 4)
    # the whole set: every artifact that keeps the threat model on all rows (whichever is first)
    overall: dict = {"valid": False}
    if loaded:
        overall, why = _artifact_metrics(config, loaded, found, hidden, model,
                                         np.ones(len(x), dtype=bool), readings)
        if overall:
            overall.update(_query_metrics(queries, len(x)))
        overall["valid"] = config.artifacts[0].key in loaded and config.artifacts[0].key not in why
    return ScoreResult(score, config.max_score, parts, overall, split_metrics.get("public", {}),
                       split_metrics.get("private", {}), passed=score >= config.pass_score,
                       problems=problems)


def _artifact_metrics(config: GradingConfig, loaded: dict, found: dict, hidden: HiddenData, model,
                      rows: np.ndarray, readings: dict) -> tuple[dict, dict]:
    """(metrics of every valid artifact on ``rows``, named as :attr:`ScoreTerm.key` does;
    {artifact key: why it is not scored on these rows}) — violations are checked per part.
    ``readings``: the model's reading of every row of each artifact, filled on first use (the
    model reads each artifact once, whole, whatever the parts)."""
    x = hidden.x
    metrics: dict = {}
    why: dict[str, str] = {}
    for spec in config.artifacts:
        if spec.key not in loaded:
            continue
        x_adv = loaded[spec.key]
        threat = config.threat_for(spec).threat_model()
        violations = found.get(spec.key, ())
        whole = [v for v in violations if not v.indices]
        broken = [t for v in violations if (t := broken_rows(v, rows, spec.file, threat))]
        if whole or broken:
            text = "; ".join([str(v) for v in whole] + broken)
            norm_rows = [i for v in violations if v.rule == "norm" for i in v.indices]
            if len(norm_rows) > len(x) // 2:
                text += (" — most rows are far from their inputs: x_adv must keep the row "
                         "order of the inputs the notebook was given")
            why[spec.key] = f"{spec.file} breaks the threat model ({threat.describe()}): {text}"
            continue
        targets = hidden.targets if spec.targeted else None
        if spec.key not in readings:
            readings[spec.key] = _readings(model, x_adv, violations)
        m = _metrics(x.to(x_adv.dtype), x_adv, hidden.y, hidden.clean_predictions(model, x_adv.dtype),
                     readings[spec.key], rows, targets)
        prefix = config.metric_prefix(spec)
        metrics.update({prefix + k: v for k, v in m.items() if not (prefix and k in ("n", "queries"))})
    return metrics, why


def broken_rows(violation, rows: np.ndarray, file: str, threat) -> str:
    """What ``violation`` (of ``threat.violations``) breaks among the ``rows`` (a mask) of an
    artifact, in words ("norm: rows 3, 17 of x_adv.npy (linf distance > eps 0.1)"); '' if none."""
    bad = [i for i in violation.indices if rows[i]]
    if not bad:
        return ""
    shown = ", ".join(map(str, bad[:10])) + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else "")
    lo, hi = threat.bounds
    rule = {
        "finite": "NaN or infinite values",
        "bounds": f"pixels outside [{lo:g}, {hi:g}]",
        "norm": f"{threat.norm} distance > eps {threat.eps:g}",
    }.get(violation.rule, violation.rule)
    return f"{violation.rule}: rows {shown} of {file} ({rule})"


# -- defense: model weights ---------------------------------------------------------------
def _architecture(spec, model) -> dict:
    """Metadata (arch, config, num_classes, input_shape, input_bounds) of the zoo model whose
    architecture the weights must fit: the assignment's loaded model when it is that one."""
    info = getattr(model, "info", None) or {}
    if info.get("name") == spec.architecture and "arch" in info:
        return info
    import maestro

    return maestro.models.info(spec.architecture)


def _shape_list(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _listing(names, limit=8) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_weights(path, *, arch: str, config: dict, dtype: str = "float32", label: str = ""):
    """Read a ``.safetensors`` file of weights for architecture ``arch`` (``config``) safely and
    return the module (eval mode) with those weights. Refuses (ArtifactRefused, a message for the
    student) a link or non-regular file, a file larger than the architecture needs, a pickle, a
    header that does not parse, missing / unexpected / mis-shaped tensors or another dtype, and
    NaN or infinite values — all checked on the header before any tensor is read."""
    from maestro.models.archs import build_arch

    path = Path(path)
    name = path.name
    what = f"the {label} architecture" if label else f"the {arch!r} architecture"
    module = build_arch(arch, config)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    want = _ST_DTYPES[dtype]
    need = sum(int(np.prod(s, dtype=np.int64)) for s in expected.values()) * np.dtype(_DTYPES[dtype]).itemsize
    # headroom: a float64 file of the right tensors still gets the dtype message below
    data = read_file(path, 8 + _ST_HEADER_MAX + 2 * need,
                     too_large=f"{name} is much larger than the weights of {what} ({need} bytes as "
                     f"{dtype}); save only the trained module's state_dict")
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise ArtifactRefused(f"{name} is a PyTorch/pickle file (torch.save), not safetensors; pickles "
                              "are never loaded. Save with safetensors.torch.save_file("
                              "module.state_dict(), path)")
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    header = None
    if 0 < n <= min(_ST_HEADER_MAX, len(data) - 8):
        try:
            header = json.loads(data[8:8 + n].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            header = None
    if not isinstance(header, dict):
        raise ArtifactRefused(f"{name} is not a valid .safetensors file (its header does not parse); "
                              "save it with safetensors.torch.save_file(module.state_dict(), path)")
    header.pop("__metadata__", None)
    got = {}
    for key, entry in header.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str)
                or not isinstance(entry.get("shape"), list)
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in entry["shape"])):
            raise ArtifactRefused(f"{name} is not a valid .safetensors file (entry {key[:80]!r})")
        got[key] = (entry["dtype"], tuple(entry["shape"]))
    missing = [k for k in expected if k not in got]
    extra = [k[:80] for k in got if k not in expected]
    shapes = [f"{k} is {_shape_list(got[k][1])}, expected {_shape_list(expected[k])}"
              for k in expected if k in got and got[k][1] != expected[k]]
    if missing or extra or shapes:
        why = []
        if missing:
            why.append(f"missing tensors: {_listing(missing)}")
        if extra:
            why.append(f"unexpected tensors: {_listing(extra)}")
        if shapes:
            why.append(f"wrong shapes: {_listing(shapes, 4)}")
        raise ArtifactRefused(f"{name} does not fit {what} ({'; '.join(why)}); save the state_dict "
                              "of a module built with that architecture, unchanged names")
    dtypes = sorted({f"{k} is {got[k][0]}" for k in expected if got[k][0] != want})
    if dtypes:
        raise ArtifactRefused(f"{name}: the weights must be {dtype} ({want}); {_listing(dtypes, 3)} "
                              "(module.float() before saving)")
    try:
        from safetensors.torch import load as load_safetensors

        tensors = load_safetensors(data)
    except Exception as err:
        raise ArtifactRefused(f"{name} is not a valid .safetensors file: {str(err)[:200]}") from None
    bad = [k for k in expected if not bool(torch.isfinite(tensors[k]).all())]
    if bad:
        raise ArtifactRefused(f"{name}: NaN or infinite values in {_listing(bad, 4)} (did the "
                              "training diverge?); the weights cannot be graded")
    try:
        module.load_state_dict({k: tensors[k] for k in expected}, strict=True)
    except Exception as err:  # the checks above should make this unreachable
        raise ArtifactRefused(f"{name} could not be loaded into {what}: {str(err)[:200]}") from None
    from maestro.models.store import flush_subnormals_

    flush_subnormals_(module)  # subnormal weights would slow the grader's attacks several-fold
    return module.eval()


def suite_metrics(report, x, rows: np.ndarray) -> dict:
    """Aggregate metrics of the suite's report on the rows ``rows`` (numbers only)."""
    mask = torch.from_numpy(rows)
    n = int(mask.sum())
    ok = report.clean_correct.cpu() & mask
    robust = report.robust.cpu() & mask
    hit = ok & ~robust
    n_ok = int(ok.sum())
    delta = (report.x_adv[hit].double() - x[hit].double()).flatten(1)
    linf = delta.abs().amax(1) if delta.shape[1] else torch.zeros(len(delta), dtype=torch.double)
    l2 = delta.norm(dim=1)

    def med(v):
        return float(v.median()) if len(v) else float("nan")

    return {
        "n": n,
        "clean_accuracy": n_ok / n if n else float("nan"),
        "robust_accuracy": int(robust.sum()) / n if n else float("nan"),
        "success_rate": int(hit.sum()) / n_ok if n_ok else float("nan"),
        "median_linf": med(linf),
        "median_l2": med(l2),
        "queries": None,  # the grader's own attacks: no student queries
    }


def suite_part(report, rows: np.ndarray, label: str, visibility: str) -> Part:
    """A 0-point line for the feedback: the part's accuracy after each attack of the suite."""
    mask = torch.from_numpy(rows)
    n = max(int(mask.sum()), 1)
    left = report.clean_correct.cpu() & mask
    steps = [f"clean {100 * int(left.sum()) / n:.1f}%"]
    for row in report.rows:
        broken = torch.tensor([b == row.attack for b in report.broken_by]) & mask
        left = left & ~broken
        steps.append(f"{row.attack} {100 * int(left.sum()) / n:.1f}%")
    return Part(f"{label}: robustness under the attack suite", 0.0, 0.0,
                "accuracy after each attack (each on what the previous left): " + " → ".join(steps),
                visibility)


def _score_defense(config: GradingConfig, artifacts: dict, hidden: HiddenData, model) -> ScoreResult:
    import maestro
    from maestro.evaluation import evaluate

    spec = config.artifact()
    threat = config.threat.threat_model()
    shares = {"public": config.split.public_weight, "private": 1.0 - config.split.public_weight}
    rows = {"public": hidden.public, "private": ~hidden.public}
    path = artifacts.get(spec.file, artifacts.get(spec.key))
    problems: list[str] = []
    wrapped = None
    if path is None:
        problems.append(f"{spec.file} was not produced: the notebook must save the trained "
                        "weights in output_dir (did every cell run without an error?)")
    else:
        meta = _architecture(spec, model)
        try:
            module = load_weights(path, arch=meta["arch"], config=meta["config"], dtype=spec.dtype,
                                  label=f"{spec.architecture} ({meta['arch']})")
            wrapped = maestro.models.wrap(
                module, num_classes=meta["num_classes"], input_shape=meta.get("input_shape"),
                input_bounds=tuple(meta.get("input_bounds") or (0.0, 1.0)), name="submission")
            x = hidden.x.to(torch.float32)
            if not bool(torch.isfinite(wrapped.logits(x)).all()):
                raise ArtifactRefused(f"{spec.file}: the model outputs NaN or infinite logits on the "
                                      "hidden inputs; the weights cannot be graded")
        except ArtifactRefused as err:
            problems.append(str(err))
            wrapped = None

    parts: list[Part] = []
    split_metrics: dict[str, dict] = {}
    overall: dict = {"valid": False}
    if wrapped is None:
        for label in ("public", "private"):
            if shares[label] > 0:
                parts += _zero_parts(config, shares[label], label, label, problems[0])
            split_metrics[label] = {"valid": False}
    else:
        from maestro.models.train import num_threads

        # one torch thread: these models are tiny, and on a grading machine busy with sandboxes
        # more threads only contend (measured ~5x slower with 2 threads on 2 busy cores)
        with num_threads(1):
            report = evaluate(wrapped, (x, hidden.y), threat=threat,
                              attacks=config.defense.suite(threat), progress=False)
        for label in ("public", "private"):
            if shares[label] <= 0:
                continue
            m = suite_metrics(report, x, rows[label])
            m["valid"] = True
            split_metrics[label] = m
            parts += _term_parts(config.terms, m, shares[label], label, label)
            parts.append(suite_part(report, rows[label], label, label))
        overall = suite_metrics(report, x, np.ones(len(x), dtype=bool))
        overall["valid"] = True
    score = round(sum(p.points for p in parts), 4)
    return ScoreResult(score, config.max_score, parts, overall, split_metrics.get("public", {}),
                       split_metrics.get("private", {}), passed=score >= config.pass_score,
                       problems=problems, kind="defense")


# -- Gradescope ----------------------------------------------------------------------------
def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def to_gradescope(result: ScoreResult, *, deadline_passed: bool = False) -> dict:
    """The Gradescope ``results.json`` dict: ``score``, ``output``, ``tests`` (name, score,
    max_score, output, visibility) and a public ``leaderboard``. Private parts are
    ``"hidden"`` before the deadline (and their points are then not in the visible summary)."""
    tests = []
    for i, p in enumerate(result.parts, 1):
        private = p.visibility == "private"
        tests.append({
            "name": p.name,
            "number": str(i),
            "score": float(p.points),
            "max_score": float(p.max_points),
            "output": p.reason,
            "visibility": "hidden" if private and not deadline_passed else "visible",
        })
    pub = result.public_metrics
    defense = result.kind == "defense"
    unit = None
    if result.kind not in ("attack", "defense"):
        from . import units

        unit = units.get(result.kind)

    def summary(m) -> str:
        if unit is not None:
            return unit.summary(m)
        if defense:
            return (f"clean accuracy {_fmt('clean_accuracy', m.get('clean_accuracy'))}, "
                    f"robust accuracy {_fmt('robust_accuracy', m.get('robust_accuracy'))}")
        text = (f"success {_fmt('success_rate', m.get('success_rate'))}, "
                f"median L2 {_fmt('median_l2', m.get('median_l2'))}")
        if m.get("queries_per_example") is not None:
            text += f", {_fmt('queries_per_example', m['queries_per_example'])} queries per example"
        return text

    lines = [f"public part: {summary(pub)}" if pub.get("valid")
             else "public part: not scored (see the tests below)"]
    if deadline_passed:
        priv = result.private_metrics
        lines.append(f"private part: {summary(priv)}" if priv.get("valid") else "private part: not scored")
        lines.append(f"total: {result.score:g} / {result.max_score:g}")
    else:
        lines.append("private part: scored after the deadline")
    leaderboard = []
    if pub.get("valid") and unit is not None:
        leaderboard = [{"name": f"{name} (public)", "value": round(float(pub[metric]), 4), "order": order}
                       for metric, name, order in unit.leaderboard_columns() if _is_num(pub.get(metric))]
    elif pub.get("valid") and defense:
        leaderboard = [
            {"name": "robust accuracy (public)", "value": round(100 * pub["robust_accuracy"], 2), "order": "desc"},
            {"name": "clean accuracy (public)", "value": round(100 * pub["clean_accuracy"], 2), "order": "desc"},
        ]
    elif pub.get("valid"):
        leaderboard = [
            {"name": "success rate (public)", "value": round(100 * pub["success_rate"], 2), "order": "desc"},
            {"name": "median L2 (public)", "value": round(pub["median_l2"], 4)
             if math.isfinite(pub["median_l2"]) else 0.0, "order": "asc"},
        ]
        if pub.get("queries_per_example") is not None:
            leaderboard.append({"name": "queries per example", "value": round(pub["queries_per_example"], 1),
                                "order": "asc"})
    return {
        "score": float(result.score),
        "output": "\n".join(lines),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
        "leaderboard": leaderboard,
    }

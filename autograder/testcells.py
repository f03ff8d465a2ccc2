"""Which of a submission's test cells the grader may leave unrun.

Maestro grades the files a notebook saves, not the asserts of its test cells: every graded cell
of the gradebook gets the same fraction of its points (see :mod:`autograder.driver`). Running
the test cells again on the hidden inputs costs time (about a third of 01-whitebox's run) and
changes no grade, so with ``[notebook] test_cells = "skip"`` (the default) the driver marks a
test cell to be skipped when all of these hold:

* it is a test cell of the released notebook (nbgrader ``grade`` without ``solution``), and the
  submission holds it unchanged (same ``grade_id``, same source, the id used once);
* no cell that will run reads a name the test cell binds (or changes: ``x[0] = ...``) —
  ``x_pgd = pgd(...)`` in a test cell and ``x_adv = x_pgd`` in the student's final cell keep
  the test cell running; reads inside function bodies count, a function's own locals do not —
  found with :mod:`ast` after IPython turns magics into Python; a cell that looks names up in
  ``globals()`` reads every name the notebook writes as a string (01's ``save("x_adv", ...)``);
* neither it nor a cell that will run does something the analysis cannot follow: ``exec``,
  ``eval``, writing to ``globals()``, ``from m import *``, ``%run``, shell escapes, a cell that
  does not parse... One such cell that will run keeps every test cell running (the bodies of
  ``%%time``/``%time``/``%timeit``/``%%capture`` are followed, and magics such as
  ``%matplotlib`` change no names).

What the analysis cannot see is a test cell's effect through an object it does not name: a
student function that changes its input in place, the global random state. An instructor whose
test cells must run sets ``test_cells = "run"``.

The runner (``_runner.py``) skips cells tagged :data:`SKIP_TAG`; the driver removes the tag
again from the copies it keeps and says in the feedback which cells were not run.
"""

from __future__ import annotations

import ast
import functools
import re

__all__ = ["SKIP_TAG", "mark_skipped", "plan_skips", "unmark_skipped"]

#: the tag the sandbox's runner skips (nbclient's ``skip_cells_with_tag``)
SKIP_TAG = "maestro-skip"

#: calls whose effect on names cannot be followed statically (builtins called by name; module
#: functions called as attributes)
_DYNAMIC = frozenset({"eval", "exec", "__import__", "execfile", "compile"})
_DYNAMIC_ATTRS = frozenset({"run_path", "run_module", "import_module"})
#: namespace views: read-only lookups are followed (see :func:`_names`), anything else is not
_NAMESPACES = frozenset({"globals", "locals", "vars"})
#: stands for "a name looked up by its string": see :func:`_names`
ANY_NAMED = "<any name written as a string>"
#: magics with no effect on the notebook's names
_HARMLESS_MAGICS = frozenset({"matplotlib", "config", "load_ext", "reload_ext", "autoreload",
                              "precision", "pprint", "xmode", "env", "who", "whos", "pwd", "pdb"})
#: magics whose argument (line magic) or body (cell magic) is Python run in the notebook
_CODE_MAGICS = frozenset({"time", "timeit", "prun", "capture"})
_OPTIONS = re.compile(r"\s*(?:-\w+(?:\s+\d+)?\s+)*")


class _Unknown(Exception):
    """The cell does something the analysis cannot follow."""


@functools.lru_cache(maxsize=4096)
def _parse(source: str) -> ast.Module:
    """The cell's syntax tree: plain Python as it is, else after IPython turns its magics and
    shell escapes into calls (cached: a course's submissions share most of their cells)."""
    try:
        return ast.parse(source)
    except SyntaxError:
        pass
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(source))
    except Exception:
        raise _Unknown from None


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names the cell binds in the notebook's namespace, names of that namespace it reads,
    function bodies included); raises :class:`_Unknown` where it cannot tell. Names local to a
    function, lambda or comprehension are neither. A cell that only LOOKS names up in
    ``globals()`` (``globals()[name]``, ``name in globals()``, ``globals().get(name)``) reads
    :data:`ANY_NAMED`: the caller counts every identifier written as a string in the notebook."""
    try:
        tree = _parse(source)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        binds: set[str] = set()
        reads: set[str] = set()
        for stmt in tree.body:
            _visit(stmt, binds, reads, None, parents)
    except (RecursionError, MemoryError, ValueError):  # too deep for the parser, a NUL byte
        raise _Unknown from None
    return binds, reads


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _own_scope(nodes):
    """The nodes of one scope: nested functions, classes and comprehensions are yielded but
    not entered."""
    stack = list(nodes)
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, (*_FUNCTIONS, ast.ClassDef, *_COMPREHENSIONS)):
            stack.extend(ast.iter_child_nodes(n))


def _bound_name(n) -> str | None:
    """The name the node ``n`` binds in its own scope (an assignment target, a def or class, an
    import, ``except ... as``, a match capture), or None."""
    if isinstance(n, ast.Name):
        return None if isinstance(n.ctx, ast.Load) else n.id
    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return n.name
    if isinstance(n, ast.alias):
        return n.asname or n.name.split(".")[0]
    if isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
        return n.name
    return None


def _stored(nodes) -> tuple[set[str], set[str]]:
    """(names a scope binds, names it declares global/nonlocal)."""
    bound, declared = set(), set()
    for n in _own_scope(nodes):
        if isinstance(n, (ast.Global, ast.Nonlocal)):
            declared.update(n.names)
        elif (name := _bound_name(n)) is not None:
            bound.add(name)
    return bound, declared


def _visit(n, binds: set, reads: set, local: set | None, parents: dict) -> None:
    """Collect ``n``'s notebook-level binds and reads; ``local``: the names local to the
    function being visited (None: the notebook's own level)."""
    def bind(name):
        if local is None or name not in local:
            binds.add(name)

    def each(nodes, scope=local):
        for child in nodes:
            if child is not None:
                _visit(child, binds, reads, scope, parents)

    if isinstance(n, _FUNCTIONS):
        args = n.args
        if not isinstance(n, ast.Lambda):
            bind(n.name)
            each(n.decorator_list)
        each(args.defaults + args.kw_defaults)
        params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        body = n.body if isinstance(n.body, list) else [n.body]
        bound, declared = _stored(body)
        reads.update(declared)
        each(body, (params | bound) - declared)
        return
    if isinstance(n, ast.ClassDef):
        bind(n.name)
        each(n.decorator_list + n.bases + [k.value for k in n.keywords])
        bound, declared = _stored(n.body)
        each(n.body, (local or set()) | (bound - declared))
        return
    if isinstance(n, _COMPREHENSIONS):
        targets = {t.id for g in n.generators for t in ast.walk(g.target) if isinstance(t, ast.Name)}
        inner = (local or set()) | targets
        for g in n.generators:
            each([g.iter])  # the first is evaluated outside; the others may read the targets
            each(g.ifs, inner)
        each([n.key, n.value] if isinstance(n, ast.DictComp) else [n.elt], inner)
        return
    if isinstance(n, ast.Call):
        f = n.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if isinstance(f, ast.Name) and name in _NAMESPACES and not n.args:
            if not _looked_up(n, parents):
                raise _Unknown
            reads.add(ANY_NAMED)
        elif (name in _DYNAMIC and isinstance(f, ast.Name)) or (
                name in _DYNAMIC_ATTRS and isinstance(f, ast.Attribute)):
            raise _Unknown
        elif name in ("run_line_magic", "run_cell_magic") and _is_ipython(f):
            _magic(n, binds, reads)
        elif name in ("system", "getoutput", "run_cell", "ex", "ev", "push") and _is_ipython(f):
            raise _Unknown
    elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
        if local is None or n.id not in local:
            reads.add(n.id)
    elif isinstance(n, ast.NamedExpr):
        binds.add(n.target.id)  # binds in the enclosing function or the notebook: count it
    elif isinstance(n, (ast.Global, ast.Nonlocal)):
        reads.update(n.names)
    elif isinstance(n, ast.alias) and n.name == "*":
        raise _Unknown
    elif (name := _bound_name(n)) is not None:
        bind(name)
    elif isinstance(n, (ast.Attribute, ast.Subscript)) and not isinstance(n.ctx, ast.Load):
        base = n.value  # x[0] = ..., model.eps = ...: the object behind the name changes
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            base = base.value
        if isinstance(base, ast.Name):
            bind(base.id)
    each(ast.iter_child_nodes(n))


def _looked_up(call: ast.Call, parents: dict) -> bool:
    """Whether ``globals()`` (``call``) is only read from: subscripted, tested with ``in``, or
    asked ``.get`` / ``.keys`` / ..."""
    up = parents.get(call)
    if isinstance(up, ast.Subscript) and up.value is call:
        return isinstance(up.ctx, ast.Load)
    if isinstance(up, ast.Compare) and call in up.comparators:
        return all(isinstance(op, (ast.In, ast.NotIn)) for op in up.ops)
    if isinstance(up, ast.Attribute) and up.attr in ("get", "keys", "items", "values", "copy"):
        return isinstance(parents.get(up), ast.Call) and parents[up].func is up
    return False


def _strings(source: str) -> set[str]:
    """The identifiers written as string constants in a cell (what ``globals()[name]`` may
    look up)."""
    try:
        tree = _parse(source)
    except _Unknown:
        return set()
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier()}


def _is_ipython(func) -> bool:
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name) and func.value.func.id == "get_ipython")


def _magic(call: ast.Call, binds: set, reads: set) -> None:
    args = call.args
    if not args or not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
        raise _Unknown
    name = args[0].value
    if name in _HARMLESS_MAGICS:
        return
    if name not in _CODE_MAGICS:
        raise _Unknown
    # line magic: (name, line); cell magic: (name, line, body). Options (-n 3, -o ...) come first
    line = args[1].value if len(args) > 1 else ""
    rest = _OPTIONS.match(line)
    if len(args) > 2:
        code = args[2].value
        if name == "capture" and line[rest.end():].strip():  # %%capture NAME binds NAME
            binds.add(line[rest.end():].split()[0])
    else:
        code = line[rest.end():]
    b, r = _names(code)
    binds |= b
    reads |= r


def _code_cells(nb):
    return [c for c in nb.cells if c.get("cell_type") == "code"]


def _grade_id(cell):
    return (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")


def _is_test(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader") or {}
    return bool(meta.get("grade")) and not meta.get("solution") and cell.get("cell_type") == "code"


def plan_skips(submitted, released) -> list[str]:
    """The grade_ids of the test cells of ``submitted`` (a notebook node) that the grader may
    leave unrun (see the module docstring); ``released``: the notebook the students got."""
    if released is None:
        return []
    reference = {_grade_id(c): c.get("source", "").strip() for c in _code_cells(released) if _is_test(c)}
    reference.pop(None, None)
    cells = _code_cells(submitted)
    ids = [_grade_id(c) for c in cells]
    candidates = {i for i, c in enumerate(cells)
                  if _is_test(c) and ids[i] in reference and ids.count(ids[i]) == 1
                  and c.get("source", "").strip() == reference[ids[i]]}
    if not candidates:
        return []
    names = []
    for i, c in enumerate(cells):
        try:
            names.append(_names(c.get("source", "")))
        except _Unknown:
            if i not in candidates:
                return []  # a cell that will run does what cannot be followed: run every test
            names.append(None)  # this test cell cannot be followed: it runs
    named = set().union(*(_strings(c.get("source", "")) for c in cells))
    for pair in names:
        if pair is not None and ANY_NAMED in pair[1]:
            pair[1].update(named)
    skip = {i for i in candidates if names[i] is not None}
    while True:  # a cell that runs may need a skipped one; that one then runs too, and so on
        read = set().union(*(names[i][1] for i in range(len(cells)) if i not in skip and names[i]))
        keep = {i for i in skip if names[i][0] & read}
        if not keep:
            break
        skip -= keep
    return [ids[i] for i in sorted(skip)]


def mark_skipped(nb, grade_ids) -> None:
    """Tag the test cells ``grade_ids`` of ``nb`` (a notebook node) for the runner to skip."""
    wanted = set(grade_ids)
    for cell in _code_cells(nb):
        if _grade_id(cell) in wanted:
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if SKIP_TAG not in tags:
                tags.append(SKIP_TAG)


#: the output a skipped cell gets in the copies the driver keeps
NOTE = ("[maestro: the grader did not run this test cell (unchanged from the release, and no other "
        "cell uses what it defines): grades come from the files the notebook saves]\n")


def unmark_skipped(nb, grade_ids) -> None:
    """Undo :func:`mark_skipped` on an executed copy, giving each such cell an output that says
    it was not run (:data:`NOTE`)."""
    wanted = set(grade_ids)
    for cell in _code_cells(nb):
        tags = cell.get("metadata", {}).get("tags")
        if _grade_id(cell) in wanted and tags is not None and SKIP_TAG in tags:
            tags.remove(SKIP_TAG)
            if not tags:
                cell["metadata"].pop("tags")
            from nbformat.v4 import new_output

            cell["outputs"] = [new_output("stream", name="stdout", text=NOTE)]

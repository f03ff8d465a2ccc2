"""``maestro demo``: a whole term of one assignment in a couple of minutes, end to end.

Two acts: ``01-whitebox`` (images, the default) and, with ``--llm``, ``11-llm-suffix``
(adversarial suffixes against the zoo's chat model: the reference, a hand-written suffix, the
stub and suffixes over the token budget). The steps are the same:

1. ``maestro course init``: a demo nbgrader course (``.maestro-demo`` marks it as ours);
2. ``nbgrader generate_assignment`` and ``release_assignment`` of the act's assignment (an
   exchange folder inside the course);
3. simulated students ``fetch_assignment``, work in their copy and ``submit``. In ``01-whitebox``
   seven: the reference solution, a weaker one (one-step attacks), a partial one (PGD with too few
   steps), the untouched stub, one whose kernel crashes, one that never ends, and one that quietly
   uses a larger eps;
4. ``nbgrader collect``, then ``maestro autograde`` (sandboxed, 2 workers, hidden data);
5. ``nbgrader generate_feedback`` beside Maestro's own feedback pages;
6. ``maestro leaderboard``: printed, and written as CSV, HTML and PNG.

Everything runs through nbgrader's own Python API and the same functions the ``maestro``
commands call. The result of every student is checked against what the demo expects, so the
demo is also an end-to-end check: it exits non-zero if any outcome is wrong.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .sandbox import _FALLBACK_WARNING

A = "01-whitebox"
MARKER = ".maestro-demo"


@dataclass(frozen=True)
class Student:
    id: str
    story: str
    code: dict | None        # grade_id -> code replacing the solution; None: hand in the stub
    expect: str              # "full" (≥ 95), "pass" (pass_score..95), "passes" (≥ pass_score),
                             # "below" (0 < score < pass), "zero"
    why: str = ""            # words that must appear in the reason (first score line) of a zero or below


STUDENTS = (
    Student("ada", "reference solution: PGD-40, then random restarts", {}, "full"),
    Student("ben", "weaker: one step in every part (FGSM and its L2 and targeted cousins)",
            {"final_attack": "x_adv = fgsm(model, x, y, threat)",
             "final_l2": "x_adv_l2 = pgd_l2(model, x, y, threat_l2, steps=1, step_size=threat_l2.eps, "
                         "random_start=False)",
             "final_targeted": "x_adv_targeted = pgd_targeted(model, x, target, threat, steps=1, "
                               "step_size=threat.eps, random_start=False)"}, "below"),
    Student("cy", "partial: the L∞ attack is PGD with only 2 steps, no restarts",
            {"final_attack": "x_adv = pgd(model, x, y, threat, steps=2, random_start=False)"}, "pass"),
    Student("dan", "hands in the released stub unchanged", None, "zero", "not implemented yet"),
    Student("eve", "crashes: the kernel dies (segfault) in pgd",
            {"pgd": "import ctypes\nctypes.string_at(0)  # reads address 0: the kernel dies"}, "zero",
            "kernel"),
    Student("fay", "times out: an endless loop in pgd", {"pgd": "while True:\n    pass"}, "zero", "time"),
    Student("gus", "breaks the threat model: attacks with L∞ eps 0.3 instead of 0.2 (his L2 file still counts)",
            {"final_attack": "threat = maestro.ThreatModel('linf', eps=0.3, bounds=(0.0, 1.0))\n"
                             "x_adv = pgd(model, x, y, threat, steps=steps)"}, "below", "threat model"),
)


LLM_A = "11-llm-suffix"
LLM_STUDENTS = (
    Student("ida", "reference solution: GCG per request, progressive GCG for the universal suffix", {},
            "passes"),
    Student("jon", "no search per request: hand-written instructions (\"Begin your reply with ...\"); "
            "the universal suffix searched as in the reference",
            {"final_suffixes": "suffixes = [f\"Begin your reply with '{t}'.\" for t in targets]"}, "below"),
    Student("kai", "hands in the released stub unchanged", None, "zero", "not implemented yet"),
    Student("lea", "over the token budget: 25-token suffixes where 20 are allowed",
            {"final_suffixes": "suffixes = ['! ' * 25] * len(prompts)"}, "zero", "threat model"),
)


@dataclass(frozen=True)
class Act:
    """One assignment's run of the demo: who hands in what, the zoo models it needs, the
    notebooks' time limit (quick, full), and what quick passes to the notebooks."""

    assignment: str
    students: tuple[Student, ...]
    models: tuple[str, ...]
    timeout: tuple[float, float]
    quick_params: dict | None = None


ACTS = {
    # the reference needs ~18 s in the sandbox on 2 busy cores
    "images": Act(A, STUDENTS, ("lenet-mnist",), (45.0, 90.0)),
    # the reference: ~3 min of CPU (quick=True: ~1 min); the quick demo runs its notebooks quick
    "llm": Act(LLM_A, LLM_STUDENTS, ("smollm2-chat",), (240.0, 600.0), {"quick": True}),
}


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _solutions(source_nb: Path) -> dict[str, str]:
    """grade_id -> the solution code of the source notebook, markers removed (what a student
    who solved the cell would have written)."""
    import nbformat

    out = {}
    for cell in nbformat.read(source_nb, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("solution"):
            lines = [ln for ln in cell.source.splitlines()
                     if ln.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")]
            out[meta["grade_id"]] = "\n".join(lines)
    return out


def _work(nb_path: Path, solutions: dict[str, str], student: Student) -> None:
    """The student's edits of the fetched notebook: every solution cell solved, then their twist."""
    import nbformat

    if student.code is None:
        return
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in solutions:
            cell.source = solutions[gid]
        if gid in student.code:
            if gid in ("fgsm", "pgd") and student.code[gid].startswith(("import", "while")):
                head = cell.source.split('"""')  # keep the def line and docstring, replace the body
                body = "\n".join("    " + ln for ln in student.code[gid].splitlines())
                cell.source = '"""'.join(head[:2]) + '"""\n' + body
            else:
                cell.source = student.code[gid]
    nbformat.write(nb, nb_path)


def _prepare(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise SystemExit(f"maestro demo: {folder} exists and is not a demo course; "
                             "give another folder with --dir (nothing was changed)")
        shutil.rmtree(folder)


def run_course_demo(folder="maestro-demo-course", *, quick: bool = False, workers: int = 2,
                    home=None, llm: bool = False, students=None) -> int:
    """Run the demo in ``folder`` (replaced if it is an earlier demo course); returns an exit code.
    ``quick``: a shorter notebook time limit (the endless loop is stopped sooner; the LLM act's
    notebooks run with ``quick = True``). ``llm``: the act of ``11-llm-suffix`` instead of
    ``01-whitebox``. ``students``: the ids of the act's simulated students who hand in (default:
    all of them; an unknown id is refused)."""
    from traitlets.config import Config

    from maestro.models import build

    from .cli import print_board
    from .course import CourseSettings, init_course
    from .driver import autograde
    from .leaderboard import from_course, write_all

    t0 = time.perf_counter()
    act = ACTS["llm" if llm else "images"]
    a = act.assignment
    known = [s.id for s in act.students]
    if students is not None:
        unknown = [s for s in students if s not in known]
        if unknown or not students:
            raise SystemExit(f"maestro demo: --students: {', '.join(unknown) or 'none given'}; the "
                             f"students of {a} are {', '.join(known)}")
    students = tuple(s for s in act.students if students is None or s.id in students)
    folder = Path(folder).expanduser().resolve()
    _prepare(folder)
    timeout = act.timeout[0] if quick else act.timeout[1]
    params = act.quick_params if quick else None

    _say(f"Maestro demo: one assignment ({a}), {len(students)} students, graded end to end.\n")
    _say("[0] the model zoo (built once, skipped when present)")
    build(list(act.models), home=home, progress=False)

    _say(f"[1] maestro course init {folder}")
    info = init_course(folder, settings=CourseSettings(workers=workers))
    (folder / MARKER).write_text("made by `maestro demo`; the demo replaces this folder when run again\n")
    exchange = folder / "exchange"
    exchange.mkdir(mode=0o777)
    with open(folder / "nbgrader_config.py", "a", encoding="utf-8") as fh:
        fh.write("# demo only: the exchange lives in the course, and the simulated students share\n"
                 "# one OS account, so nbgrader collect must not check file owners\n"
                 f"c.Exchange.root = {str(exchange)!r}\n"
                 f"c.Exchange.cache = {str(folder / 'students' / '.nbgrader-cache')!r}\n"
                 "c.CollectApp.check_owner = False\n")
    cfg = _nbgrader_config(folder, Config)
    from nbgrader.apps.api import NbGraderAPI
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.exchange.default import ExchangeFetchAssignment, ExchangeSubmit

    api = NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)
    _say(f"[2] nbgrader generate_assignment {a} && nbgrader release_assignment {a}")
    for step, res in (("generate_assignment", api.generate_assignment(a)),
                      ("release_assignment", api.release_assignment(a))):
        if not res["success"]:
            _say(res.get("log", "") + res.get("error", ""))
            raise SystemExit(f"maestro demo: nbgrader {step} failed (log above)")

    _say(f"[3] {len(students)} students: nbgrader fetch_assignment {a}, their work, nbgrader submit {a}")
    solutions = _solutions(folder / "source" / a / f"{a}.ipynb")
    for s in students:
        scfg = Config(cfg)
        scfg.Exchange.assignment_dir = str(folder / "students" / s.id)
        Path(scfg.Exchange.assignment_dir).mkdir(parents=True)
        coursedir = CourseDirectory(config=scfg)
        coursedir.assignment_id, coursedir.student_id = a, s.id
        auth = Authenticator(config=scfg)
        ExchangeFetchAssignment(coursedir=coursedir, authenticator=auth, config=scfg).start()
        _work(folder / "students" / s.id / a / f"{a}.ipynb", solutions, s)
        ExchangeSubmit(coursedir=coursedir, authenticator=auth, config=scfg).start()
        _say(f"      {s.id:<4} {s.story}")

    _say(f"[4] nbgrader collect {a}")
    res = api.collect(a)
    if not res["success"]:
        raise SystemExit("maestro demo: nbgrader collect failed:\n" + res.get("log", ""))

    _say(f"[5] maestro autograde {a} --course {folder} --workers {workers} --timeout {timeout:g}"
         "   (sandboxed; hidden data; scored outside the sandbox)"
         + (f"; notebooks run with {params}" if params else ""))
    outcomes = autograde(folder, a, workers=workers, timeout=timeout, home=home,
                         log=lambda msg: _say("      " + msg), params=params)

    _say(f"[6] nbgrader generate_feedback {a}   (nbgrader's page, with Maestro's feedback.html copied beside it)")
    res = api.generate_feedback(a)
    feedback_ok = bool(res["success"])
    if not feedback_ok:
        _say("      nbgrader generate_feedback failed:\n" + res.get("log", "")[-2000:])

    _say(f"[7] maestro leaderboard {a} --course {folder}\n")
    board = from_course(folder, a)
    paths = write_all(board, folder / "leaderboard" / a)
    print_board(board)

    # the check: every student got what the demo expects
    from .config import load_config

    pass_score = load_config(folder / "source" / a / "grading.toml").pass_score
    by_id = {o.student: o for o in outcomes}
    _say("\nstudent  expected  score   outcome")
    wrong = 0
    for s in students:
        o = by_id.get(s.id)
        if o is None:
            ok, line = False, "not graded"
        else:
            ok = {"full": o.score >= 95, "pass": pass_score <= o.score < 95, "passes": o.score >= pass_score,
                  "below": 0 < o.score < pass_score,
                  "zero": o.score == 0}[s.expect] and s.why.lower() in _reason(folder, s.id, a).lower()
            ok = ok and o.state in ("graded", "failed")
            line = (_reason(folder, s.id, a) or "graded").replace("\n", " ")
            line = line.replace(_FALLBACK_WARNING + ". ", "")[:110]  # said once, above
        wrong += not ok
        _say(f"{s.id:<8} {s.expect:<9} {o.score if o else 0:5.1f}   {'ok ' if ok else 'WRONG'} {line}")
    wrong += not feedback_ok
    took = time.perf_counter() - t0
    _say(f"\nThe course is in {folder} (an ordinary nbgrader course: try `nbgrader formgrader` or "
         "`maestro leaderboard --final`).")
    _say(f"  feedback: {folder}/feedback/<student>/{a}/feedback.html and {a}.html (nbgrader's)")
    _say(f"  leaderboard: {paths['html']} · {paths['png']} · {paths['csv']}")
    _say(f"  gradebook: {info['gradebook']}")
    _say(f"demo finished in {took:.0f} s: " + ("every outcome as expected" if not wrong
                                                  else f"{wrong} outcome(s) NOT as expected"))
    return 1 if wrong else 0


def _reason(folder: Path, who: str, assignment: str = A) -> str:
    import json

    path = folder / "autograded" / who / assignment / "results.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    meta = d.get("extra_data", {}).get("maestro", {})
    first = d.get("tests", [{}])[0].get("output", "") if d.get("tests") else ""
    return f"{meta.get('status', '?')}: {first}"


def _nbgrader_config(folder: Path, Config):
    """The course's nbgrader_config.py, loaded the way nbgrader loads it."""
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(folder)).load_config()
    return Config(cfg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_course_demo(quick="--quick" in sys.argv, llm="--llm" in sys.argv))

"""``maestro course init`` and ``maestro autograde``: the instructor's grading commands.

    maestro course init DIR [--assignments PATH] [--course-id ID] [--workers N] [--db-url URL]
    maestro autograde ASSIGNMENT --course DIR [--student ID] [--workers N] [--timeout S] [--force]
                      [--scheduler tcp://HOST:PORT]
    maestro leaderboard ASSIGNMENT --course DIR [--final] [--pseudonyms] [--out DIR]

See :mod:`autograder.course` (the course folder) and :mod:`autograder.driver` (grading).
"""

from __future__ import annotations

import argparse
import sys


def _course_init(args: argparse.Namespace) -> int:
    from .course import CourseSettings, init_course

    info = init_course(args.dir, args.assignments, course_id=args.course_id,
                       settings=CourseSettings(workers=args.workers), db_url=args.db_url)
    print(f"course {info['course_id']} in {info['course']}: {len(info['assignments'])} "
          f"assignment(s) ({', '.join(info['assignments'])})")
    print(f"gradebook: {info['gradebook']}")
    print("course secret written to .maestro/secret (0600; keep it private, back it up)")
    print(f"next: cd {info['course']} && nbgrader generate_assignment {info['assignments'][0]}")
    return 0


def skip_slow_optional_imports() -> None:
    """For the grading commands' own process: nbformat (which nbgrader and the driver import)
    loads jsonschema, whose optional IRI format checker ``rfc3987_syntax`` builds a lark grammar
    at import, ~0.9 s of every command's start before the first notebook runs. Notebook schemas
    never use that format; blocked, jsonschema counts it as not installed. A library import of
    :mod:`autograder` leaves the process's imports alone."""
    sys.modules.setdefault("rfc3987_syntax", None)


def _autograde(args: argparse.Namespace) -> int:
    skip_slow_optional_imports()
    from .driver import autograde

    outcomes = autograde(args.course, args.assignment, student=args.student, workers=args.workers,
                         timeout=args.timeout, force=args.force, scheduler=args.scheduler,
                         home=getattr(args, "home", None))
    if not outcomes:
        print(f"no submissions of {args.assignment} under {args.course}/submitted/")
        return 0
    width = max(len(o.student) for o in outcomes)
    for o in outcomes:
        line = f"{o.student:<{width}}  {o.state:<7}  {o.score:6.1f} / {o.max_score:g}"
        if o.state in ("failed", "error"):
            line += f"  {o.reason[:160]}"
        elif o.state == "graded" and o.problems and not o.passed:
            line += f"  {o.problems[0][:160]}"
        print(" ".join(line.split("\n")))  # a reason may hold newlines: one line per student
    sys.stdout.flush()  # the summary goes to stderr: keep it after the table when both are captured
    counts = {s: sum(o.state == s for o in outcomes) for s in ("graded", "failed", "skipped", "error")}
    print(f"{counts['graded']} graded, {counts['failed']} failed (score 0), {counts['skipped']} "
          "skipped (unchanged; --force regrades)"
          + (f", {counts['error']} NOT RECORDED (grader errors above)" if counts["error"] else ""),
          file=sys.stderr)
    return 1 if counts["error"] else 0


def print_board(board, file=None) -> None:
    """The leaderboard as a plain-text table."""
    rows = [r.as_dict(board.final) for r in board.rows]
    part = "private part (final)" if board.final else "public part"
    print(f"{board.title}: {len(rows)} student(s), ranked on the {part}, out of {board.max_score:g}",
          file=file)
    if not rows:
        print("  no graded submissions yet", file=file)
        return
    width = max(len(str(d["name"])) for d in rows)
    from .leaderboard import metric_column

    extra = [k for k in ("success_rate", "robust_accuracy", "clean_accuracy", "auc", "attack_score",
                         "defense_score") if k in rows[0]]
    # another artifact's scored rate, e.g. "success (x_adv_l2)"
    extra += [k for k in board.metrics if "." in k and k in rows[0] and metric_column(k)[1] == "pct"]
    titles = {k: (metric_column(k)[0] if "." in k else k.replace("_", " ")) for k in extra}
    for d in rows:
        line = f"{d['rank']:>3}. {d['name']:<{width}}  {d['score']:6.1f}"
        if board.final:
            line += f"  (public {d['public_score']:5.1f}, total {d['total_score']:5.1f})"
        line += "".join(f"  {titles[k]} {100 * d[k]:5.1f}%" for k in extra if d.get(k) is not None)
        line += f"  ({d['submissions']} sub.)"
        print(line, file=file)


def _leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .leaderboard import from_course, write_all

    board = from_course(args.course, args.assignment, final=args.final, pseudonyms=args.pseudonyms)
    out = Path(args.out) if args.out else Path(args.course) / "leaderboard" / args.assignment
    paths = write_all(board, out)
    print_board(board)
    print("written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    """Register ``course`` and ``autograde`` on the ``maestro`` command's sub-parsers."""
    course = sub.add_parser("course", help="create and manage an nbgrader course folder")
    actions = course.add_subparsers(dest="action", metavar="ACTION")
    init = actions.add_parser("init", help="a new course folder (nbgrader + Maestro grading)")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--assignments", default=None, metavar="PATH",
                      help="folder of assignments (default: the repository's assignments/)")
    init.add_argument("--course-id", default=None, metavar="ID",
                      help="nbgrader course id (default: the folder's name)")
    init.add_argument("--workers", type=int, default=1,
                      help="default for maestro autograde --workers (written to maestro.toml)")
    init.add_argument("--db-url", default=None, metavar="URL",
                      help="the nbgrader gradebook's database (default: gradebook.db, SQLite, in DIR), "
                           "e.g. postgresql://USER@HOST/DB; written to nbgrader_config.py")
    init.set_defaults(func=_course_init)

    ag = sub.add_parser("autograde", help="grade the submissions of an assignment (sandboxed)")
    ag.add_argument("assignment", metavar="ASSIGNMENT")
    ag.add_argument("--course", default=".", metavar="DIR",
                    help="course folder from maestro course init (default: the current directory)")
    ag.add_argument("--student", default=None, metavar="ID", help="grade only this student")
    ag.add_argument("--workers", type=int, default=None,
                    help="notebooks run in parallel (default: maestro.toml [grading] workers)")
    ag.add_argument("--timeout", type=float, default=None, metavar="S",
                    help="wall-clock seconds per notebook (default: maestro.toml, else grading.toml)")
    ag.add_argument("--force", action="store_true", help="regrade submissions already graded")
    ag.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                    help="run each submission as a task on this Dask distributed scheduler's workers "
                         "(each needs Maestro, bubblewrap and the model zoo); scoring stays here")
    ag.set_defaults(func=_autograde)

    lb = sub.add_parser("leaderboard", help="rank the best graded submission per student (CSV, HTML, PNG)")
    lb.add_argument("assignment", metavar="ASSIGNMENT")
    lb.add_argument("--course", default=".", metavar="DIR",
                    help="course folder from maestro course init (default: the current directory)")
    lb.add_argument("--final", action="store_true",
                    help="after the deadline: rank on the private part of the hidden set")
    lb.add_argument("--pseudonyms", action="store_true",
                    help="show stable made-up names instead of student ids (keyed by the course secret)")
    lb.add_argument("--out", default=None, metavar="DIR",
                    help="where to write leaderboard.csv/.html/.png/.json (default: COURSE/leaderboard/ASSIGNMENT)")
    lb.set_defaults(func=_leaderboard)

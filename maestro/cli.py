"""The ``maestro`` command line: datasets, the model zoo and the demo.

    maestro datasets list
    maestro models list | build [NAME ...] [--force] | info NAME
    maestro demo [--quick] [--llm] [--students ID,ID] [--dir DIR] [--zoo]
    maestro serve [COURSE_DIR]            (the model server; see maestro.server)
    maestro tokens create|list|revoke|import|usage
    maestro course init DIR [--assignments PATH]   (an nbgrader course folder; see autograder.course)
    maestro autograde ASSIGNMENT --course DIR [--student ID] [--workers N] [--timeout S] [--force]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .errors import MaestroError


def _datasets_list(args: argparse.Namespace) -> int:
    from .datasets import list_datasets

    names = list_datasets()
    width = max(map(len, names))
    for name, text in names.items():
        print(f"{name:<{width}}  {text}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from .models import info, list_models

    names = list_models()
    width = max(map(len, names))
    for name, text in names.items():
        try:
            meta = info(name, home=args.home)
            state = f"built, {_quality(meta)}"
        except MaestroError:
            state = "not built"
        print(f"{name:<{width}}  {text} [{state}]")
    print("\nAlso: hf:<model id> (Hugging Face hub), file:<path> (a checkpoint written by Maestro).")
    return 0


def _models_build(args: argparse.Namespace) -> int:
    from .models import build, list_models

    names = args.names or list(list_models())
    # progress bars on a terminal only: in CI logs they print a line per update
    metas = build(names, home=args.home, force=args.force, progress=not args.quiet and sys.stderr.isatty())
    for name, meta in metas.items():
        print(f"{name}: {_quality(meta)}, built in {meta['build_seconds']:.1f}s")
    return 0


def _quality(meta: dict) -> str:
    """How good a built model is, in a few words."""
    if meta.get("modality") == "chat":
        s = meta.get("sanity", {})
        return f"sanity {s.get('correct')}/{s.get('of')} simple questions answered"
    return (f"test accuracy {meta['test_accuracy']:.1%} "
            f"(majority class {meta['majority_accuracy']:.1%})")


def _models_info(args: argparse.Namespace) -> int:
    from .models import info

    meta = info(args.name, home=args.home)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    width = max(map(len, meta))
    for key in sorted(meta):
        value = meta[key]
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        print(f"{key:<{width}}  {value}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.zoo:
        from .demo import run_demo

        return run_demo(quick=args.quick, home=args.home)
    from autograder.cli import skip_slow_optional_imports

    skip_slow_optional_imports()
    from autograder.demo import run_course_demo

    students = args.students.split(",") if args.students else None
    return run_course_demo(args.dir, quick=args.quick, workers=args.workers, home=args.home, llm=args.llm,
                           students=students)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maestro",
        description="Maestro: a teaching kit for adversarial machine learning.",
    )
    parser.add_argument("--version", action="version", version=f"maestro {__version__}")
    parser.add_argument("--home", default=None, help="model/data folder (default: $MAESTRO_HOME or ~/.cache/maestro)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ds = sub.add_parser("datasets", help="list the data sets").add_subparsers(dest="action", metavar="ACTION")
    ds.add_parser("list", help="built-in data sets and adapters").set_defaults(func=_datasets_list)

    models = sub.add_parser("models", help="the model zoo").add_subparsers(dest="action", metavar="ACTION")
    models.add_parser("list", help="zoo models and whether they are built").set_defaults(func=_models_list)
    build = models.add_parser("build", help="train and store zoo models (all by default)")
    build.add_argument("names", nargs="*", metavar="NAME")
    build.add_argument("--force", action="store_true", help="rebuild models that are already built")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_models_build)
    info = models.add_parser("info", help="metadata of a built model (accuracy, data, seed, sha256)")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_models_info)

    demo = sub.add_parser("demo", help="the end-to-end demo: a course, seven students, autograding, leaderboard")
    demo.add_argument("--quick", action="store_true", help="a shorter, faster run (what CI uses)")
    demo.add_argument("--dir", default="maestro-demo-course", metavar="DIR",
                      help="the demo course folder (replaced if it holds an earlier demo; default: %(default)s)")
    demo.add_argument("--workers", type=int, default=2, help="notebooks graded in parallel (default: 2)")
    demo.add_argument("--llm", action="store_true",
                      help="the language-model act: 11-llm-suffix (adversarial suffixes on the chat model, "
                      "four students) instead of 01-whitebox")
    demo.add_argument("--students", metavar="ID,ID", default=None,
                      help="only these simulated students hand in (default: all of the act's)")
    demo.add_argument("--zoo", action="store_true",
                      help="instead: attack every zoo model once and print a table (the student's view)")
    demo.set_defaults(func=_demo)

    from .server.cli import add_commands as add_server_commands  # light: no fastapi/torch import

    add_server_commands(sub)

    from autograder.cli import add_commands as add_autograder_commands  # light: argparse only

    add_autograder_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a group without an action, or no command at all: show the relevant help
        if args.command:
            parser.parse_args([args.command, "--help"])
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except (MaestroError, ValueError, TypeError, PermissionError) as err:
        print(f"maestro: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("maestro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

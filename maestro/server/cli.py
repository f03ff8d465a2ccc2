"""``maestro serve`` and ``maestro tokens``: run the model server and manage student tokens.

    maestro serve [COURSE_DIR | --course DIR] [--host 127.0.0.1] [--port 8000] [--workers 1]
                  [--certfile CERT.pem --keyfile KEY.pem]
    maestro tokens create STUDENT [--instructor] [--course DIR]
    maestro tokens list | revoke STUDENT_OR_ID | import STUDENTS.csv | usage

The course directory holds ``server.toml`` (see :mod:`maestro.server.config`); a course folder
made by ``maestro course init`` needs none: it is served with submissions (and a live
leaderboard) for every assignment. Tokens are printed once, at creation, and only their sha256
is stored.

Students send their token with every request: a server other machines reach should serve https
(``--certfile``/``--keyfile``, or behind an HTTPS proxy); ``maestro serve`` warns when it listens
beyond this machine over plain http.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _config(path):
    from .config import ServerConfig

    try:
        return ServerConfig.load(path or os.getcwd())
    except FileNotFoundError as err:  # the command line reports it as a plain error
        raise ValueError(f"{err} (or pass the course directory)") from None


def _store(args):
    from .db import Store

    return Store(_config(args.course).database_url)


def _tls(certfile, keyfile) -> dict:
    """uvicorn's TLS settings for ``--certfile``/``--keyfile``, checked before the server starts
    (a bad file is a clear error here, not a traceback in every worker)."""
    import ssl
    from pathlib import Path

    if certfile is None:
        if keyfile is not None:
            raise ValueError("--keyfile needs --certfile (the server's certificate chain, PEM)")
        return {}
    cert = Path(certfile).expanduser().resolve()
    key = Path(keyfile).expanduser().resolve() if keyfile else None
    for flag, path in (("--certfile", cert), ("--keyfile", key)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag}: no file at {path}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as err:
        raise ValueError(f"--certfile {cert}{f' --keyfile {key}' if key else ''}: not a usable PEM "
                         f"certificate chain and private key ({err.strerror or err}); the key must be "
                         "unencrypted and match the certificate") from None
    return {"ssl_certfile": str(cert), **({"ssl_keyfile": str(key)} if key else {})}


def plain_http_warning(host: str, tls: bool) -> str | None:
    """The warning ``maestro serve`` prints when it listens beyond this machine without TLS."""
    import ipaddress

    if tls or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: whoever resolves it may be elsewhere
        pass
    return (f"WARNING: serving plain http on {host}: student tokens and uploads cross the network "
            "unencrypted. Pass --certfile/--keyfile (the course's TLS certificate and key), or "
            "serve behind an HTTPS proxy and keep --host 127.0.0.1.")


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("maestro serve needs the server extra: pip install 'maestro-aml[server]'", file=sys.stderr)
        return 1
    from pathlib import Path

    if args.course and args.course_option and Path(args.course) != Path(args.course_option):
        raise ValueError("give the course directory once: COURSE_DIR or --course DIR")
    course = args.course or args.course_option
    cfg = _config(course)  # fail early, with a clear message, on a bad config
    tls = _tls(args.certfile, args.keyfile)
    if args.home:
        os.environ["MAESTRO_HOME"] = str(Path(args.home).expanduser())
    toml = cfg.course_dir / "server.toml"
    os.environ["MAESTRO_SERVER_CONFIG"] = str(toml if toml.is_file() else cfg.course_dir)
    what = [f"{len(cfg.tasks)} task(s)" + (f" ({', '.join(cfg.tasks)})" if cfg.tasks else "")]
    if cfg.submissions and cfg.submissions.assignments:
        what.append(f"submissions for {', '.join(cfg.submissions.assignments)}")
    if cfg.submissions and cfg.submissions.boards:
        what.append(f"leaderboards of {', '.join(cfg.submissions.boards)}")
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"{'https' if tls else 'http'}://{host}:{args.port}"
    print(f"maestro server: {'; '.join(what)} on {base}", file=sys.stderr)
    warning = plain_http_warning(args.host, bool(tls))
    if warning:
        print(warning, file=sys.stderr)
    if cfg.submissions and cfg.submissions.public_leaderboard:
        for a in cfg.submissions.assignments + cfg.submissions.boards:
            print(f"  leaderboard: {base}/leaderboard/{a}", file=sys.stderr)
    uvicorn.run("maestro.server.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, **tls)
    return 0


def _tokens_create(args: argparse.Namespace) -> int:
    token = _store(args).create_token(args.student, "instructor" if args.instructor else "student")
    print(f"token for {args.student} (shown once, keep it secret):", file=sys.stderr)
    print(token)
    return 0


def _tokens_list(args: argparse.Namespace) -> int:
    rows = _store(args).list_tokens()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = "revoked" if r["revoked"] else "active"
        print(f"{r['id']:>5}  {r['student']:<24} {r['role']:<10} {state:<8} {r['created']}")
    return 0


def _tokens_revoke(args: argparse.Namespace) -> int:
    n = _store(args).revoke(args.who)
    if n == 0:
        raise ValueError(f"no active token for {args.who!r}")
    print(f"revoked {n} token(s) of {args.who}")
    return 0


def _tokens_import(args: argparse.Namespace) -> int:
    made = _store(args).import_students(args.csv, "instructor" if args.instructor else "student")
    print(f"created {len(made)} token(s); give each student theirs (shown once):", file=sys.stderr)
    print("student,token")
    for student, token in made.items():
        print(f"{student},{token}")
    return 0


def _tokens_usage(args: argparse.Namespace) -> int:
    for r in _store(args).usage_table():
        print(f"{r['student']:<24} {r['task']:<24} {r['used']:>8} inputs  {r['requests']:>6} requests")
    return 0


def add_commands(sub) -> None:
    """Register ``serve`` and ``tokens`` on the ``maestro`` command's sub-parsers."""
    course = argparse.ArgumentParser(add_help=False)
    course.add_argument("--course", default=None, metavar="DIR",
                        help="course directory with server.toml (default: the current directory)")

    serve = sub.add_parser("serve", help="run the model server for a course directory")
    serve.add_argument("course", nargs="?", default=None, metavar="COURSE_DIR",
                       help="directory with server.toml, or a `maestro course init` course "
                       "(default: the current directory)")
    serve.add_argument("--course", dest="course_option", default=None, metavar="DIR",
                       help="the same as COURSE_DIR")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (budgets stay exact)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--certfile", default=None, metavar="CERT.pem",
                       help="serve https with this certificate chain (PEM); students then connect "
                       "with https:// (and ca=... for a certificate their system does not trust)")
    serve.add_argument("--keyfile", default=None, metavar="KEY.pem",
                       help="the certificate's private key, unencrypted (PEM; omit if CERT.pem holds it)")
    serve.set_defaults(func=_serve)

    tokens = sub.add_parser("tokens", help="student and instructor tokens for the model server")
    actions = tokens.add_subparsers(dest="action", metavar="ACTION")
    create = actions.add_parser("create", parents=[course], help="create a token (printed once)")
    create.add_argument("student", metavar="STUDENT")
    create.add_argument("--instructor", action="store_true", help="an instructor token (no budget)")
    create.set_defaults(func=_tokens_create)
    lst = actions.add_parser("list", parents=[course], help="tokens (never the tokens themselves)")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_tokens_list)
    revoke = actions.add_parser("revoke", parents=[course], help="revoke a student's tokens (or one by id)")
    revoke.add_argument("who", metavar="STUDENT_OR_ID")
    revoke.set_defaults(func=_tokens_revoke)
    imp = actions.add_parser("import", parents=[course], help="one token per student of a CSV / nbgrader list")
    imp.add_argument("csv", metavar="STUDENTS.csv")
    imp.add_argument("--instructor", action="store_true")
    imp.set_defaults(func=_tokens_import)
    actions.add_parser("usage", parents=[course], help="inputs used per student and task").set_defaults(
        func=_tokens_usage)

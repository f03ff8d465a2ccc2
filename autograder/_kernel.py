"""Starts the notebook's IPython kernel INSIDE the sandbox (the runner's kernel command).

Usage: ``python _kernel.py -f CONNECTION_FILE`` — what ``python -m ipykernel_launcher`` does
(the notebook sees the same kernel, ``sys.path`` and working folder), with two changes that
only save time:

* ipykernel does not import its debugger (debugpy, ~40 ms of every start): nothing debugs a
  graded run. The block is lifted once the kernel is loaded, so a notebook may import debugpy.
* once the kernel has stopped on the runner's shutdown request, the process leaves without
  the interpreter's teardown, which with torch loaded costs ~0.3 s of CPU per run (repeated
  garbage collections and libtorch's operator registry). Before it leaves it does what the
  teardown would do for the notebook's results: the atexit handlers run (IPython's clears the
  notebook's namespace, which releases and closes what the notebook made), then every file
  object still open is closed, wrappers first, so an ``open()`` the notebook never closed is
  written out in full. A kernel that stops any other way (an error, a non-daemon thread still
  running) exits the ordinary way.

Only the standard library and ipykernel are imported here.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading


def _close_open_files() -> None:
    """Close every file object still open but the process's standard streams, outer layers
    first: Python-level wrappers (gzip, bz2, ...), then text, then buffered."""
    import io

    base = io.IOBase.__mro__[1]  # _io._IOBase: a plain type; type(o), as o.__class__ may be
    found = [o for o in gc.get_objects() if issubclass(type(o), base)]  # a (noisy) property

    streams = {id(s) for s in (sys.stdin, sys.stdout, sys.stderr,
                               sys.__stdin__, sys.__stdout__, sys.__stderr__)}

    def standard(obj) -> bool:
        # the standard streams and ipykernel's own are left alone: fds 1 and 2 are its capture
        # pipes, whose reader and IOPub have stopped by now
        if id(obj) in streams or type(obj).__module__.startswith("ipykernel."):
            return True
        try:
            return obj.fileno() in (0, 1, 2)
        except Exception:
            return False

    def layer(obj) -> int:
        if isinstance(obj, io.FileIO):
            return 3
        if isinstance(obj, (io.BufferedWriter, io.BufferedRandom, io.BufferedReader)):
            return 2
        return 1 if isinstance(obj, io.TextIOWrapper) else 0

    for obj in sorted(found, key=layer):
        try:
            if layer(obj) < 3 and not obj.closed and not standard(obj):
                obj.close()  # a raw FileIO holds no buffer: its fd closes with the process
        except Exception:  # a broken stream must not keep the others from being written
            pass


def _leave() -> None:
    """Leave now, if nothing the ordinary exit would wait for is still running."""
    main = threading.main_thread()
    if any(t.is_alive() and not t.daemon and t is not main for t in threading.enumerate()):
        return  # Python's exit waits for these threads: let it
    atexit._run_exitfuncs()
    _close_open_files()
    os._exit(0)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # IPython puts the working folder back, as for ipykernel_launcher
    blocked = "debugpy" not in sys.modules
    if blocked:
        sys.modules["debugpy"] = None  # ipykernel: "debugpy not installed", no debugger
    import ipykernel.debugger  # noqa: F401  (decides "no debugpy" once, here)
    from ipykernel import kernelapp

    if blocked and sys.modules.get("debugpy", 0) is None:
        del sys.modules["debugpy"]
    kernelapp.launch_new_instance()
    _leave()


if __name__ == "__main__":
    main()

"""Runs INSIDE the sandbox: papermill + the kernel, with notebook outputs capped.

Usage: ``python _runner.py CONFIG_JSON STATUS_FD``. Writes JSON lines on STATUS_FD (a pipe the
kernel does not inherit): ``{"stage": ...}`` as the run gets on (``notebook``: the submission is
a readable notebook; ``kernel``: its kernel started and answered; ``code``: its first cell went
to the kernel), then one report, ``{"status": "ok"|"error"|"crashed"|"invalid", ...}``. The
grader tells its own failures (before ``code``) from the submission's by these stages.
The kernel is started from ``config["kernel"]`` (autograder/_kernel.py, bound beside this file).
Only the standard library, papermill, nbclient and jupyter_client are imported here.
"""

from __future__ import annotations

import json
import os
import sys

# Optional imports of papermill's and jsonschema's that a run never uses, each taken as "not
# installed" when blocked: jsonschema's format checkers (rfc3987_syntax alone builds a lark
# grammar at import: ~1 s of every run's start; notebook schemas use none of these formats) and
# pyarrow (papermill's HDFS paths; it brings numpy): ~0.1 s more of every run's start.
for _optional in ("rfc3987_syntax", "rfc3986_validator", "rfc3339_validator", "isoduration",
                  "webcolors", "fqdn", "uri_template", "jsonpointer", "pyarrow"):
    sys.modules.setdefault(_optional, None)


def _stage(name: str) -> None:
    """Tell the grader how far the run got (see the module docstring)."""
    if _STATUS_FD is not None:
        try:
            os.write(_STATUS_FD, (json.dumps({"stage": name}) + "\n").encode())
        except OSError:
            pass


_STATUS_FD: int | None = None


def _kernel_classes(kernel_script: str):
    """The kernel manager nbclient uses here: the kernel is ``kernel_script`` (autograder/
    _kernel.py: ipykernel without its debugger, and a quick exit), spoken to over Unix sockets,
    and waited for without idle time at start and at shutdown."""
    import time
    from queue import Empty

    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class Specs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[sys.executable, kernel_script, "-f", "{connection_file}"],
                              display_name="Python 3 (ipykernel)", language="python")

    class Client(AsyncKernelClient):
        async def wait_for_ready(self, timeout=None):
            """Ready once a kernel_info request has its reply on the shell channel and its
            "idle" on IOPub: both channels work. jupyter_client's own wait also listens 0.2 s
            for IOPub to fall silent (nbclient ignores messages that are not its cells' own:
            idle time), and waits that long again whenever the first request's status went out
            before the IOPub subscription took hold. Here the subscription's welcome message
            means "ask again now"; ~0.2-0.4 s less idle time per run."""
            deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
            while True:
                asked = self.kernel_info()
                reply = await self._reply_to(asked, seconds=1.0)
                while reply is not None:
                    try:
                        msg = await self.iopub_channel.get_msg(timeout=0.2)
                    except Empty:
                        break
                    if (msg.get("parent_header", {}).get("msg_id") == asked
                            and msg.get("msg_type") == "status"
                            and msg.get("content", {}).get("execution_state") == "idle"):
                        self._handle_kernel_info_reply(reply)
                        _stage("kernel")
                        return
                    if msg.get("msg_type") == "iopub_welcome":
                        break  # subscribed now: this request's status may have gone before
                if not await self._async_is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")

        async def _reply_to(self, msg_id, seconds):
            """The shell reply to ``msg_id`` (replies to earlier requests are passed over), or
            None after ``seconds``."""
            until = time.monotonic() + seconds
            while True:
                try:
                    msg = await self.shell_channel.get_msg(timeout=max(0.0, until - time.monotonic()))
                except Empty:
                    return None
                if msg.get("parent_header", {}).get("msg_id") == msg_id:
                    return msg

    class Manager(AsyncKernelManager):
        async def _async_finish_shutdown(self, waittime=None, pollinterval=0.01, restart=False):
            # polls every 10 ms for the kernel's exit, not every 100 ms
            await super()._async_finish_shutdown(waittime, pollinterval, restart)

    return Manager, Client, Specs


def _capped_engine(max_bytes: int, iopub_seconds: float, skip_tag: str, kernel_script: str,
                   ipc_dir: str):
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine

    manager_class, client_class, specs_class = _kernel_classes(kernel_script)

    class CappedClient(PapermillNotebookClient):
        """Keeps at most ``max_bytes`` of cell output in the notebook; drops the rest."""

        _kept = 0
        _truncated = False

        def create_kernel_manager(self):
            self.kernel_manager_class = manager_class
            km = super().create_kernel_manager()
            km.kernel_spec_manager = specs_class()
            km.client_factory = client_class
            # Unix sockets, not TCP: works without a loopback interface (unshare --net) and
            # keeps the kernel's ports off any network. In a short folder the grader chose: a
            # socket's path may not exceed 107 bytes, whatever the course folder's depth.
            km.transport = "ipc"
            km.ip = os.path.join(ipc_dir, "kernel")
            return km

        def execute_cell(self, cell, cell_index, *args, **kwargs):  # papermill's way in
            runs = (cell.cell_type == "code" and cell.source.strip()
                    and self.skip_cells_with_tag not in cell.metadata.get("tags", []))
            if runs and not self._code_started:  # the submission's code from here on
                self._code_started = True
                _stage("code")
            return super().execute_cell(cell, cell_index, *args, **kwargs)

        _code_started = False

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            size = len(content.get("text", "")) if "text" in content else len(json.dumps(content))
            if self._kept + size > max_bytes:
                if not self._truncated:
                    self._truncated = True
                    from nbformat.v4 import new_output

                    outs.append(new_output("stream", name="stderr", text=(
                        f"\n[maestro sandbox: output over {max_bytes} bytes; the rest is dropped]\n")))
                return None
            self._kept += size
            return super().output(outs, msg, display_id, cell_index)

    class CappedEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None,
                                     **kwargs):
            kwargs.pop("input_path", None)
            kwargs.pop("timeout", None)
            kwargs.pop("startup_timeout", None)
            from papermill.engines import logger

            # nbclient waits only 4 s, after a cell's reply, for the output still queued; a
            # busy machine draining a cell that printed a lot needs longer (CI saw exactly
            # that). The sandbox's wall clock bounds the whole run anyway. Cells tagged
            # `skip_tag` (the grader's, autograder/testcells.py) are not run; a student's own
            # "skip-execution" tags are ignored, as in their JupyterLab.
            return CappedClient(nb_man, timeout=execution_timeout, startup_timeout=start_timeout,
                                kernel_name=kernel_name, log=logger, log_output=False,
                                iopub_timeout=iopub_seconds, skip_cells_with_tag=skip_tag,
                                **kwargs).execute()

    return CappedEngine


_KERNELS: list = []  # the kernel's Popen, to tell how it died


def _record_kernel_processes() -> None:
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    launch = LocalProvisioner.launch_kernel

    async def launch_kernel(self, cmd, **kwargs):
        info = await launch(self, cmd, **kwargs)
        _KERNELS.append(self.process)
        return info

    LocalProvisioner.launch_kernel = launch_kernel


def _kernel_returncode() -> int | None:
    try:
        return _KERNELS[-1].poll() if _KERNELS else None
    except Exception:
        return None


def _first_error(cells) -> dict | None:
    """The report of the first cell with an error output (e.g. sys.exit(): later cells
    skipped; or a cell tagged raises-exception), or None."""
    for cell in cells:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            return {"status": "error", "ename": str(errors[0].get("ename"))[:200],
                    "evalue": str(errors[0].get("evalue"))[:2000]}
    return None


# machine -> (its seccomp audit arch, shmget, memfd_create)
_SYSCALLS = {"x86_64": (0xC000003E, 29, 319), "aarch64": (0xC00000B7, 194, 279)}


def _deny_shared_memory() -> bool:
    """Install a seccomp filter (on this process and all it starts, for good) answering ENOSYS
    to ``shmget`` and ``memfd_create``: memory held there escapes RLIMIT_AS, and the grader
    found no memory cgroup to count it. Other ABIs of the machine (i386 on x86-64, x32) get
    ENOSYS for every call. False where the machine or the kernel does not allow it."""
    import ctypes
    import platform
    import struct

    known = _SYSCALLS.get(platform.machine())
    if known is None:
        return False
    arch, shmget, memfd = known
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K
    allow, enosys = 0x7FFF0000, 0x00050000 | 38  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | ENOSYS
    program = [
        (ld, 0, 0, 4),              # 0: seccomp_data.arch
        (jeq, 1, 0, arch),          # 1: this machine's ABI: on to 3
        (ret, 0, 0, enosys),        # 2: another ABI: nothing at all
        (ld, 0, 0, 0),              # 3: seccomp_data.nr
        (jge, 3, 0, 0x40000000),    # 4: x32 numbers: to 8
        (jeq, 2, 0, shmget),        # 5: to 8
        (jeq, 1, 0, memfd),         # 6: to 8
        (ret, 0, 0, allow),         # 7
        (ret, 0, 0, enosys),        # 8
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Program(len(program), ctypes.addressof(code))
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    if libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    return libc.prctl(22, ulong(2), ctypes.c_void_p(ctypes.addressof(prog)), ulong(0),
                      ulong(0)) == 0


def _read_notebook(path: str) -> dict | None:
    """None if ``path`` is a notebook papermill can run, else the report saying why not (the
    submission's own fault: no kernel is started for it)."""
    import nbformat

    try:
        with open(path, encoding="utf-8") as fh:
            nbformat.read(fh, as_version=4)
    except Exception as err:  # not JSON, not UTF-8, not a notebook: the file itself
        return {"status": "invalid", "ename": type(err).__name__, "evalue": str(err)[:500]}
    return None


def main() -> int:
    global _STATUS_FD
    config = json.loads(sys.argv[1])
    status_fd = int(sys.argv[2])
    os.set_inheritable(status_fd, False)
    _STATUS_FD = status_fd
    report: dict = {"status": "crashed", "reason": "the runner stopped before reporting"}
    if config.get("deny_shared_memory") and not _deny_shared_memory():
        print("maestro: could not refuse shared memory (no seccomp here); its use is not capped",
              file=sys.stderr)
    try:
        import papermill
        from papermill.engines import papermill_engines

        kernel = config.get("kernel") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "_kernel.py")
        papermill_engines.register("maestro-capped", _capped_engine(
            int(config["output_bytes"]), int(config.get("wall_seconds", 3600)) + 1,
            str(config.get("skip_tag", "maestro-skip")), kernel,
            str(config.get("ipc_dir") or os.environ.get("TMPDIR", "/tmp"))))
        _record_kernel_processes()
        invalid = _read_notebook(config["input"])
        if invalid is not None:
            report = invalid
            return 0
        _stage("notebook")
        try:
            nb = papermill.execute_notebook(
                config["input"], config["output"], parameters=config["parameters"],
                engine_name="maestro-capped", kernel_name="python3", progress_bar=False,
                log_output=False, cwd=config["cwd"], start_timeout=120,
            )
            report = _first_error(nb.cells) or {"status": "ok", "reason": "the notebook ran to the end"}
        except papermill.PapermillExecutionError as err:
            # papermill names the LAST failed cell; the first one (a stub, say) explains the rest
            try:
                with open(config["output"], encoding="utf-8") as fh:
                    report = _first_error(json.load(fh).get("cells", []))
            except (OSError, ValueError, AttributeError):
                report = None
            report = report or {"status": "error", "ename": str(err.ename)[:200],
                                "evalue": str(err.evalue)[:2000]}
        except Exception as err:  # DeadKernelError and friends: the kernel is gone
            name = type(err).__name__
            status = "crashed" if "DeadKernel" in name or "Dead" in str(err) else "error"
            report = {"status": status, "ename": name, "evalue": str(err)[:2000],
                      "kernel_returncode": _kernel_returncode()}
    finally:
        data = (json.dumps(report) + "\n").encode()[:65536]
        try:
            os.write(status_fd, data)
            os.close(status_fd)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    code = main()
    # everything is written (the executed notebook by papermill, the report above) and the
    # kernel is gone: skip the interpreter's teardown of zmq, asyncio and friends
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

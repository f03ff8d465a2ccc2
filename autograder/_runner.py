"""Runs INSIDE the sandbox: papermill + the kernel, with notebook outputs capped.

Usage: ``python _runner.py CONFIG_JSON STATUS_FD``. Reports one JSON line on STATUS_FD
(a pipe the kernel does not inherit): ``{"status": "ok"|"error"|"crashed", ...}``.
Only the standard library, papermill and nbclient are imported here.
"""

from __future__ import annotations

import json
import os
import sys

# jsonschema (through nbformat's validator) imports its optional IRI format checker, which
# builds a lark grammar at import (~1 s of every run's start); notebook schemas never use that
# format and jsonschema treats a failed import as "not installed"
sys.modules.setdefault("rfc3987_syntax", None)


def _capped_engine(max_bytes: int, iopub_seconds: float, skip_tag: str):
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine

    class CappedClient(PapermillNotebookClient):
        """Keeps at most ``max_bytes`` of cell output in the notebook; drops the rest."""

        _kept = 0
        _truncated = False

        def create_kernel_manager(self):
            # Unix sockets, not TCP: works without a loopback interface (unshare --net) and
            # keeps the kernel's ports off any network.
            km = super().create_kernel_manager()
            km.transport = "ipc"
            km.ip = os.path.join(os.environ.get("TMPDIR", "/tmp"), "kernel-ipc")
            return km

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


def main() -> int:
    config = json.loads(sys.argv[1])
    status_fd = int(sys.argv[2])
    os.set_inheritable(status_fd, False)
    report: dict = {"status": "crashed", "reason": "the runner stopped before reporting"}
    try:
        import papermill
        from papermill.engines import papermill_engines

        papermill_engines.register("maestro-capped", _capped_engine(
            int(config["output_bytes"]), int(config.get("wall_seconds", 3600)) + 1,
            str(config.get("skip_tag", "maestro-skip"))))
        _record_kernel_processes()
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
    sys.exit(main())

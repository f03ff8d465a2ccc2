"""Run one student notebook in a sandbox and bring back only validated data.

``run_notebook`` executes the notebook with papermill; papermill and the Jupyter kernel run
together INSIDE the sandbox (one process tree), started by ``_runner.py``.

Isolation with bubblewrap (``sandbox="bwrap"``): new user, pid, net, ipc, uts and cgroup
namespaces; no network at all (not even loopback to the host); a fresh root holding read-only
binds of ``/usr`` (+ the ``/lib*``, ``/bin`` links), ``/etc/ld.so.cache``, the Python
installation, the virtual environment, the ``maestro`` package source and, if asked, the model
zoo; a private size-capped tmpfs ``/tmp``; ``/sandbox/work`` (this submission and its
``outputs/`` folder) as the only writable folder; the inputs read-only under
``/sandbox/inputs``. Nothing else of the host is visible: not ``/``, not the course folder,
not other students. The sandbox runs as uid 1000 inside, with an explicit environment.
The one way out, if asked (``sockets=``): UNIX socket files bound read-only at their own
absolute paths, e.g. the grader's model oracle for black-box units (``autograder.oracle``);
a socket is reachable through its file, whatever the network namespace.

Limits (``Limits``): RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE and RLIMIT_NPROC per process, a
wall-clock deadline for the WHOLE notebook (the process tree is killed; with bwrap the pid
namespace dies with it), a cap on the bytes in the work folder (checked every second), a cap on
the notebook outputs kept and on the log captured.

Process limit: RLIMIT_NPROC counts tasks per *real* uid and does not bind root, and bwrap run
by root maps the sandbox user to root outside. So: as non-root, RLIMIT_NPROC is set to the
tasks the uid already has plus ``Limits.processes`` (the kernel refuses further fork()/clone(),
threads count too); as root, a per-run pids cgroup (v1, or v2 with the pids controller) with
``pids.max`` set, where the cgroup file system is writable, and in any case a watchdog thread
that counts the tasks of the process tree every 0.1 s and kills the tree above the limit.
Killing the tree is complete: bwrap's pid namespace (or ``unshare --pid --kill-child``) dies
with its first process.

Memory: RLIMIT_AS caps each process's address space, but not what a notebook can hold outside
it — files in a tmpfs, SysV shared memory, memfds. With bwrap, its own root and ``/dev`` are
read-only and ``/tmp`` and ``/dev/shm`` are sized; where a memory cgroup can be made (root, a
writable cgroup file system, as for pids), it caps everything together
(``total_memory_bytes``) and a run it stops is reported as over its memory limit. Without
one, the runner installs a seccomp filter before papermill starts (inherited by the kernel
and everything it starts, and irremovable) that answers ENOSYS to ``shmget`` and
``memfd_create`` (x86-64 and arm64; other ABIs of the same machine get ENOSYS for everything),
the two ways to hold unbounded memory that remain there. GPU runs do not get it.

Processor: as root, each run also gets a cpu cgroup of its own, so runs side by side share the
processors as equals however many busy processes one of them starts. Without one, the kernel's
per-session autogroups give the same fairness only until a notebook gives each of its
processes a session of its own (``os.setsid``): then its neighbours slow down in proportion.

Fallback without bwrap (``sandbox="fallback"``): the same rlimits and deadline, ``unshare``
for a new network, pid (with its own /proc) and IPC namespace where the system allows it, and a
LOUD warning in the result: the notebook then sees the host file system. Its kernel's sockets
are in a fresh private folder under /tmp, not in the run's work folder: that lies in the course,
and a UNIX socket's path may not exceed 107 bytes. ``$MAESTRO_SANDBOX=fallback`` (or
maestro.toml's ``[grading] sandbox``) chooses it on a machine that has bubblewrap.

Whose failure: the runner tells the grader how far a run got (``RunResult.stage``); a run that
failed before the submission's first cell reached a started kernel is the grader's failure
(``RunResult.grader_fault``), recorded nowhere and graded again on the next run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autograder import artifacts as _artifacts
from autograder.testcells import SKIP_TAG

STATUSES = ("ok", "error", "timeout", "killed", "crashed", "invalid")
_RUNNER = Path(__file__).with_name("_runner.py")
_KERNEL = Path(__file__).with_name("_kernel.py")  # the runner's kernel command
_FALLBACK_WARNING = ("WARNING: no bubblewrap sandbox: the notebook ran with resource limits only "
                     "and could read the host file system")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one notebook run (bytes, seconds, tasks).

    Where the grader may make a memory cgroup (root, a writable cgroup file system), the run's
    memory all together — its processes, files in its /tmp and /dev/shm, shared memory — is
    capped at ``total_memory_bytes(limits)``: ``memory_bytes`` + both tmpfs + 1 GiB for
    papermill and the kernel themselves."""

    cpu_seconds: int = 600            # RLIMIT_CPU, per process
    memory_bytes: int = 4 * 2**30     # RLIMIT_AS, per process (virtual memory)
    processes: int = 256              # tasks (processes + threads) the run may add
    file_size_bytes: int = 256 * 2**20  # RLIMIT_FSIZE: largest file it may write
    wall_seconds: float = 900.0       # the whole notebook, start to end
    output_bytes: int = 1 * 2**20     # cell outputs kept in the executed notebook; log kept
    tmp_bytes: int = 256 * 2**20      # size of the private /tmp, and of /dev/shm (bwrap only)
    disk_bytes: int = 1 * 2**30       # all files in the work folder (checked every second)
    artifact_bytes: int = 64 * 2**20  # largest artifact accepted


def total_memory_bytes(limits: Limits) -> int:
    """What a run's memory cgroup allows (0: no cap, as ``memory_bytes`` 0)."""
    if not limits.memory_bytes:
        return 0
    return limits.memory_bytes + 2 * limits.tmp_bytes + 2**30


#: how far a run got, in order (the runner says so as it goes; ``_runner.py``)
STAGES = ("", "notebook", "kernel", "code")


@dataclass
class RunResult:
    """What a run gives back. ``reason`` is written for the student.

    ``stage``: how far the run got — ``""`` (the sandbox or the runner did not start),
    ``"notebook"`` (the submission is a notebook that can be run), ``"kernel"`` (its kernel
    started and answered), ``"code"`` (its first cell went to the kernel)."""

    status: str
    reason: str
    duration: float
    artifacts: dict[str, Path] = field(default_factory=dict)
    artifact_errors: dict[str, str] = field(default_factory=dict)
    executed_notebook: Path | None = None
    log_tail: str = ""
    sandbox: str = "bwrap"
    stage: str = "code"

    @property
    def ok(self) -> bool:
        return self.status == "ok" and not self.artifact_errors

    @property
    def grader_fault(self) -> str:
        """Why this run tells nothing about the submission, or ``""`` when it does.

        Decided by the evidence of how far it got, not by its error's text: a run that failed
        before the submission's first cell reached a started kernel failed because of the
        sandbox, the kernel or the grader's machine (a kernel that cannot start, a sandbox that
        cannot be made). A submission that is not a readable notebook is its own fault
        (``status == "invalid"``), and so is everything once its code runs."""
        if self.status in ("ok", "invalid") or self.stage == "code":
            return ""
        where = {"": "the sandbox did not start the notebook runner",
                 "notebook": "the notebook's kernel did not start",
                 "kernel": "the kernel started, but the notebook's first cell never ran"}
        why = where.get(self.stage, f"the run stopped at stage {self.stage!r}")
        tail = self.log_tail.strip().splitlines()[-3:]
        return f"{why}: {self.reason}" + (f" (log: {' | '.join(tail)[-600:]})" if tail else "")


# ----------------------------------------------------------------------------- probing

_probe_cache: dict[str, tuple[bool, str]] = {}


def probe_bwrap() -> tuple[bool, str]:
    """Can bubblewrap start a user-namespace sandbox here? ``(works, why not)``; cached."""
    key = "bwrap"
    if key not in _probe_cache:
        exe = shutil.which("bwrap")
        if exe is None:
            _probe_cache[key] = (False, "bwrap is not installed (apt-get install bubblewrap)")
        else:
            argv = [exe, "--unshare-all", "--unshare-user", "--die-with-parent",
                    "--ro-bind", "/usr", "/usr", *_lib_links(), "--proc", "/proc",
                    "--dev", "/dev", "true"]
            try:
                proc = subprocess.run(argv, check=False, capture_output=True, timeout=30)
                ok = proc.returncode == 0
                why = "" if ok else proc.stderr.decode(errors="replace").strip()[:500]
            except (OSError, subprocess.SubprocessError) as err:
                ok, why = False, str(err)
            _probe_cache[key] = (ok, why and f"bwrap cannot start here: {why}")
    return _probe_cache[key]


def _probe_unshare(args: list[str]) -> bool:
    key = "unshare:" + " ".join(args)
    if key not in _probe_cache:
        ok = False
        if shutil.which("unshare"):
            try:
                ok = subprocess.run(["unshare", *args, "true"], check=False, capture_output=True,
                                    timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
        _probe_cache[key] = (ok, "")
    return _probe_cache[key][0]


def _lib_links() -> list[str]:
    """``/bin``, ``/lib*``, ``/sbin``: symlinks into /usr on merged-/usr systems, else binds."""
    argv: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    return argv


# ----------------------------------------------------------------------------- limits

def _count_tasks(uid: int) -> int:
    """Tasks (threads included) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                text = fh.read().decode(errors="replace")
        except OSError:
            continue
        uid_line = next((ln for ln in text.splitlines() if ln.startswith("Uid:")), "")
        threads = next((ln for ln in text.splitlines() if ln.startswith("Threads:")), "")
        if uid_line.split()[1:2] == [str(uid)]:
            total += int(threads.split()[1]) if threads else 1
    return total


def _limited(argv: list[str], limits: Limits, nproc: int) -> list[str]:
    """Wrap ``argv``: wait for the gate (the parent puts us in the cgroup first), set rlimits.

    A shell + ``prlimit`` instead of a ``preexec_fn``: preexec_fn is not safe when the grader
    has threads (and it has: several runs may share a process).
    """
    cpu = max(1, int(limits.cpu_seconds))
    prlimit = ["prlimit", f"--cpu={cpu}:{cpu + 5}",
               f"--as={limits.memory_bytes or 'unlimited'}",
               f"--fsize={limits.file_size_bytes}", f"--nproc={nproc}", "--core=0", "--"]
    script = 'read -r _ || exit 111; exec </dev/null; exec "$@"'  # the gate is stdin
    return ["/bin/sh", "-c", script, "maestro-sandbox", *prlimit, *argv]


class _RunCgroup:
    """Per-run cgroups (v1 or v2), where the cgroup file system lets the grader make them:
    ``pids`` caps the tasks of the whole sandbox, ``memory`` all the memory it holds, with what
    RLIMIT_AS does not count (files in its tmpfs, shared memory, memfds), and ``cpu`` makes
    the runs share the processors as equals, however many threads each one starts (else a
    notebook with 200 busy threads would slow its neighbours past their wall-clock limit)."""

    _PREFIX = "maestro-sandbox-"

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs  # controller -> its folder (one folder for both under v2)
        self.hit = False  # pids.max was reached
        self.oom = False  # the memory limit killed something

    def attach(self, pid: int) -> None:
        for path in dict.fromkeys(self.dirs.values()):
            _try_write(path / "cgroup.procs", str(pid))

    @staticmethod
    def _bases() -> dict[str, Path]:
        """Where this process's cgroups are, per controller we use (``_CONTROLLERS``)."""
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return {}
        bases: dict[str, Path] = {}
        for line in lines:
            _, controllers, rel = line.split(":", 2)
            for name in _CONTROLLERS:
                if name in controllers.split(",") and Path(f"/sys/fs/cgroup/{name}").is_dir():
                    bases[name] = Path(f"/sys/fs/cgroup/{name}") / rel.lstrip("/")
        for line in lines:
            _, controllers, rel = line.split(":", 2)
            if controllers == "":
                v2 = Path("/sys/fs/cgroup") / rel.lstrip("/")
                try:
                    enabled = (v2 / "cgroup.subtree_control").read_text().split()
                except OSError:
                    enabled = []
                for name in _CONTROLLERS:
                    if name in enabled:
                        bases.setdefault(name, v2)
        return bases

    @classmethod
    def _sweep(cls, base: Path) -> None:
        """Remove the empty cgroups of graders that died before they could (SIGKILL, OOM)."""
        try:
            entries = list(base.glob(cls._PREFIX + "*"))
        except OSError:
            return
        for path in entries:
            pid = path.name[len(cls._PREFIX):].split("-")[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                try:
                    path.rmdir()
                except OSError:
                    pass
            except OSError:
                pass

    @classmethod
    def create(cls, max_tasks: int, memory_bytes: int = 0) -> _RunCgroup | None:
        """``memory_bytes``: 0 for no memory limit."""
        name = f"{cls._PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        dirs: dict[str, Path] = {}
        for controller, base in cls._bases().items():
            if controller == "memory" and not memory_bytes:
                continue
            path = base / name
            made = False
            try:
                if not path.is_dir():
                    cls._sweep(base)
                    path.mkdir()
                    made = True
                if controller == "cpu":
                    pass  # a group of its own, with the default weight, is the whole point
                elif controller == "pids":
                    (path / "pids.max").write_text(str(max_tasks))
                elif (path / "memory.max").exists():  # v2; and no swapping past it
                    (path / "memory.max").write_text(str(memory_bytes))
                    _try_write(path / "memory.swap.max", "0")
                else:  # v1
                    (path / "memory.limit_in_bytes").write_text(str(memory_bytes))
                    _try_write(path / "memory.memsw.limit_in_bytes", str(memory_bytes))
            except OSError:
                if made:
                    try:
                        path.rmdir()
                    except OSError:
                        pass
                continue
            dirs[controller] = path
        return cls(dirs) if dirs else None

    def destroy(self) -> None:
        self.hit = _event_count(self.dirs.get("pids"), "pids.events", "max") > 0
        memory = self.dirs.get("memory")
        self.oom = (_event_count(memory, "memory.events", "oom_kill")
                    + _event_count(memory, "memory.oom_control", "oom_kill")) > 0
        for path in dict.fromkeys(self.dirs.values()):
            for _ in range(50):
                try:
                    pids = (path / "cgroup.procs").read_text().split()
                except OSError:
                    break
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


_CONTROLLERS = ("pids", "memory", "cpu")


def _try_write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def _event_count(folder: Path | None, file: str, key: str) -> int:
    """The count after ``key`` in a cgroup's ``key N`` lines (0 where there is none)."""
    if folder is None:
        return 0
    try:
        for line in (folder / file).read_text().splitlines():
            k, _, n = line.partition(" ")
            if k == key and n.strip().isdigit():
                return int(n)
    except OSError:
        pass
    return 0


# ----------------------------------------------------------------------------- the run

def _sandbox_env(home: str, tmp: str, maestro_home: str | None, venv_bin: str) -> dict[str, str]:
    env = {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "JUPYTER_RUNTIME_DIR": f"{tmp}/jupyter-runtime",
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": f"{tmp}/ipython",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{tmp}/matplotlib",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": f"{tmp}/hf",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    if maestro_home:
        env["MAESTRO_HOME"] = maestro_home
    return env


class _Tail:
    """Reads a pipe to the end, keeping only the last ``keep`` bytes (and counting the rest)."""

    def __init__(self, stream, keep: int) -> None:
        self.buf: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.total = 0
        self.keep = keep
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream) -> None:
        while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
            self.total += len(chunk)
            self.buf.append(chunk)
            self.size += len(chunk)
            while self.size - len(self.buf[0]) >= self.keep:
                self.size -= len(self.buf.popleft())

    def text(self) -> str:
        self.thread.join(timeout=5)
        data = b"".join(self.buf)[-self.keep:]
        head = f"[{self.total - len(data)} earlier bytes dropped]\n" if self.total > len(data) else ""
        return head + data.decode(errors="replace")


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def run_notebook(
    notebook_path: str | os.PathLike[str],
    *,
    workdir: str | os.PathLike[str],
    parameters: dict[str, Any] | None = None,
    inputs: dict[str, str | os.PathLike[str]] | None = None,
    outputs: list[str] | None = None,
    limits: Limits | None = None,
    sandbox: str = "auto",
    gpu: bool = False,
    maestro_home: str | os.PathLike[str] | None = None,
    sockets: list[str | os.PathLike[str]] | tuple[str | os.PathLike[str], ...] | None = None,
) -> RunResult:
    """Execute ``notebook_path`` in a sandbox; return status, reason and validated artifacts.

    The notebook gets papermill parameters: ``parameters``, plus ``inputs`` (name -> path of
    each input file as seen inside the sandbox, read-only) and ``output_dir`` (where it must
    write the ``outputs`` artifacts). ``workdir`` is a fresh host folder for this run (the
    grader's, never the course folder): it receives ``work/`` (the sandbox's only writable
    folder), ``artifacts/`` (validated copies) and ``executed.ipynb``.
    ``maestro_home``: the model zoo folder, bound read-only as ``$MAESTRO_HOME`` if given;
    leave it out (None) and the notebook sees no zoo at all (black-box units).
    ``sockets``: absolute paths of UNIX sockets the notebook may connect to (the grader's
    oracle), each bound read-only at the SAME path inside, so a URL such as
    ``unix:///tmp/maestro-oracle-x/oracle.sock`` works unchanged inside and outside.
    """
    limits = limits or Limits()
    parameters = dict(parameters or {})
    inputs = {k: Path(v) for k, v in (inputs or {}).items()}
    outputs = list(outputs or [])
    for reserved in ("inputs", "output_dir"):
        if reserved in parameters:
            raise ValueError(f"parameter name {reserved!r} is reserved by the sandbox")
    for name in [*inputs, *outputs]:
        _artifacts.check_name(name) if name in outputs else _check_input_name(name)
    socket_paths = [_check_socket(p) for p in (sockets or ())]
    try:
        gpu_devices = gpu_sandbox_nodes() if gpu else []
    except RuntimeError as e:
        raise RuntimeError(f"gpu=True, but {e}. To grade on the CPU instead: maestro.toml "
                           "[grading] gpu = false") from None
    memory_cap = total_memory_bytes(limits)
    if gpu:
        # CUDA reserves tens of GiB of virtual address space at start: an RLIMIT_AS cap would
        # stop it, so a GPU run has no address-space limit (CPU time, processes, files, wall
        # clock, the disk quota and a memory cgroup still hold; GPU memory is the card's)
        limits = dataclasses.replace(limits, memory_bytes=0)
    if sandbox not in ("auto", "bwrap", "fallback"):
        raise ValueError(f"sandbox must be 'auto', 'bwrap' or 'fallback', not {sandbox!r}")

    if shutil.which("prlimit") is None:
        raise RuntimeError("prlimit (util-linux) is needed to set the sandbox's resource limits")
    warning = ""
    if sandbox in ("auto", "bwrap"):
        works, why = probe_bwrap()
        if not works and sandbox == "bwrap":
            raise RuntimeError(why)
        if not works:
            sandbox, warning = "fallback", f"{_FALLBACK_WARNING} ({why})"
        else:
            sandbox = "bwrap"
    else:
        warning = _FALLBACK_WARNING

    workdir = Path(workdir).resolve()
    work = workdir / "work"
    if work.exists():
        shutil.rmtree(work)
    (work / "outputs").mkdir(parents=True)
    (work / "home").mkdir()
    os.chmod(work, 0o700)  # what the sandbox writes is owned by the grader's uid: keep it private
    shutil.copyfile(notebook_path, work / "submission.ipynb")
    staged_inputs = workdir / "inputs"
    if staged_inputs.exists():
        shutil.rmtree(staged_inputs)
    staged_inputs.mkdir(parents=True)
    for name, src in inputs.items():  # a copy: readable by the sandbox uid, never the original
        shutil.copyfile(src, staged_inputs / name)
        os.chmod(staged_inputs / name, 0o444)
    os.chmod(staged_inputs, 0o755)

    ipc_host = None  # the fallback's folder for the kernel's sockets, removed after the run
    if sandbox == "bwrap":
        root_work, root_inputs, tmp = "/sandbox/work", "/sandbox/inputs", "/tmp"
        zoo = "/sandbox/maestro-home" if maestro_home else None
        runner, kernel = "/sandbox/runner.py", "/sandbox/kernel.py"
        ipc = "/tmp"  # its own private tmpfs: a short path wherever the course lives
    else:
        root_work, root_inputs = str(work), str(staged_inputs)
        (work / "tmp").mkdir()
        tmp = str(work / "tmp")
        zoo = str(maestro_home) if maestro_home else None
        runner, kernel = str(_RUNNER), str(_KERNEL)
        ipc_host = _short_private_dir()
        ipc = str(ipc_host)
    nb_params = {**parameters, "inputs": {n: f"{root_inputs}/{n}" for n in inputs},
                 "output_dir": f"{root_work}/outputs"}
    config = {"input": f"{root_work}/submission.ipynb", "output": f"{root_work}/executed.ipynb",
              "parameters": nb_params, "cwd": root_work, "output_bytes": limits.output_bytes,
              "wall_seconds": limits.wall_seconds, "skip_tag": SKIP_TAG, "kernel": kernel,
              "ipc_dir": ipc}
    python = sys.executable
    env = _sandbox_env(f"{root_work}/home", tmp, zoo, str(Path(python).parent))
    gpu_libraries = gpu_library_dirs() if gpu_devices else []
    if gpu_devices:  # the grader's choice of cards (all of them if it made none)
        env.pop("CUDA_VISIBLE_DEVICES")
        if "CUDA_VISIBLE_DEVICES" in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        if gpu_libraries:
            env["LD_LIBRARY_PATH"] = ":".join(gpu_libraries)

    read_fd, write_fd = os.pipe()
    gate_r, gate_w = os.pipe()
    cgroup, proc = None, None
    opened: list[int] = []
    try:
        if sandbox == "bwrap":
            argv, opened = _bwrap_argv(limits, python, work, staged_inputs, maestro_home,
                                       socket_paths, gpu_devices, gpu_libraries)
        else:
            argv = _fallback_argv()
        cgroup = _RunCgroup.create(limits.processes + 16, memory_cap)
        # no memory cgroup to count them, or no IPC namespace of its own (SysV segments would
        # outlive the run): the runner refuses SysV shared memory and memfds (not on GPU runs,
        # whose driver is not ours to second-guess)
        uncounted = memory_cap and (cgroup is None or "memory" not in cgroup.dirs)
        config["deny_shared_memory"] = bool(not gpu_devices and (uncounted or not argv))
        argv += [python, "-I", runner, json.dumps(config), str(write_fd)]
        root = os.geteuid() == 0
        baseline = 0 if root else _count_tasks(os.getuid())
        argv = _limited(argv, limits, baseline + limits.processes)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=gate_r, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, cwd=str(work), start_new_session=True, pass_fds=(write_fd, *opened))
        if cgroup is not None:
            cgroup.attach(proc.pid)
        os.write(gate_w, b"go\n")
    except BaseException:
        os.close(read_fd)
        if proc is not None:
            _kill_tree(proc)
            proc.wait()
        if cgroup is not None:
            cgroup.destroy()
        if ipc_host is not None:
            shutil.rmtree(ipc_host, ignore_errors=True)
        raise
    finally:
        for fd in (write_fd, gate_r, gate_w, *opened):
            os.close(fd)
    tail = _Tail(proc.stdout, limits.output_bytes)
    # RLIMIT_NPROC does not bind root; a pids cgroup does; the watchdog backs both up
    watchdog = _Watchdog(proc, limits.processes + 16, work, limits.disk_bytes)
    report_box: list[bytes] = []
    reader = threading.Thread(target=lambda: report_box.append(_read_capped(read_fd)), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        watchdog.stop.set()
        _kill_tree(proc)  # whatever is left (the pid namespace dies with its first process)
        proc.wait()
        if cgroup is not None:
            cgroup.destroy()
        if ipc_host is not None:
            shutil.rmtree(ipc_host, ignore_errors=True)
    duration = time.monotonic() - start
    reader.join(timeout=5)
    if not reader.is_alive():
        os.close(read_fd)
    log = tail.text()

    report, stage = _parse_report(report_box[0] if report_box else b"")
    status, reason = _status(report, timed_out, proc.returncode, limits, log)
    if watchdog.tripped == "disk":
        status, reason = "killed", (f"the notebook wrote more than {limits.disk_bytes} bytes to "
                                    f"its work folder (each file counting at least "
                                    f"{_ENTRY_BYTES // 1024} KiB) and was stopped (disk limit)")
    elif cgroup is not None and cgroup.oom:
        status, reason = "killed", (f"the notebook used more than {memory_cap / 2**30:.1f} GiB of "
                                    "memory in all (its processes, /tmp, /dev/shm and shared "
                                    "memory) and was stopped (memory limit)")
    elif watchdog.tripped or (cgroup is not None and cgroup.hit):
        by = "a pids cgroup" if cgroup is not None and cgroup.hit else "the watchdog"
        status, reason = "killed", (f"the notebook started more than {limits.processes} "
                                    f"processes/threads and was stopped (process limit, {by})")
    _strip_setid_bits(work)
    dest = workdir / "artifacts"
    if dest.exists():
        shutil.rmtree(dest)
    found, problems = _artifacts.collect(work / "outputs", outputs, dest,
                                         max_bytes=limits.artifact_bytes)
    executed = _copy_executed(work, workdir / "executed.ipynb", limits)
    if problems:
        reason += "; " + "; ".join(problems[n] for n in outputs if n in problems)
    if warning:
        reason = f"{warning}. {reason}"
        log = f"{warning}\n{log}"
    return RunResult(status=status, reason=reason, duration=duration, artifacts=found,
                     artifact_errors=problems, executed_notebook=executed, log_tail=log,
                     sandbox=sandbox, stage=stage)


def _strip_setid_bits(folder: Path) -> None:
    """The sandbox's files belong to the grader's uid (root, maybe) outside: no setuid left."""
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(parent, name)
            try:
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                    os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
            except OSError:
                pass


_SOCKET_FORBIDDEN = ("/sandbox", "/usr", "/proc", "/dev", "/etc", "/bin", "/sbin", "/lib", "/lib32",
                     "/lib64", "/libx32")


def _check_socket(path: str | os.PathLike[str]) -> Path:
    """An absolute path to an existing UNIX socket (not a symlink), outside the sandbox's own
    mount points, with no '..' (the sandbox binds it at the same path)."""
    p = Path(path)
    if not p.is_absolute() or ".." in p.parts:
        raise ValueError(f"sockets: {str(path)!r} must be an absolute path without '..'")
    if any(p == Path(top) or Path(top) in p.parents for top in _SOCKET_FORBIDDEN):
        raise ValueError(f"sockets: {str(path)!r} lies under a folder the sandbox mounts itself "
                         f"({', '.join(_SOCKET_FORBIDDEN)}); put the socket elsewhere, e.g. /tmp")
    try:
        mode = os.lstat(p).st_mode
    except FileNotFoundError:
        raise ValueError(f"sockets: {str(path)!r} does not exist (is the server running?)") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"sockets: {str(path)!r} is not a UNIX socket")
    return p


def _check_input_name(name: str) -> None:
    if not _artifacts._NAME.match(name) or ".." in name:
        raise ValueError(f"input name {name!r} must be a plain file name")


def _read_capped(fd: int, cap: int = 65536) -> bytes:
    data = b""
    while len(data) < cap:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data[:cap]


def _parse_report(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The runner's report (None if it wrote none) and the last stage it reached."""
    report, stage = None, ""
    for line in raw.decode(errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if msg.get("stage") in STAGES and STAGES.index(msg["stage"]) > STAGES.index(stage):
            stage = msg["stage"]
        elif "status" in msg and report is None:
            report = msg
    return report, stage


def _status(report: dict | None, timed_out: bool, returncode: int, limits: Limits,
            log: str) -> tuple[str, str]:
    if timed_out:
        return "timeout", (f"the notebook did not finish within {limits.wall_seconds:g} s "
                           "(wall-clock limit) and was stopped")
    if report is None:
        if returncode < 0 or returncode >= 128:
            sig = -returncode if returncode < 0 else returncode - 128
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            why = {"SIGXCPU": f" (CPU time limit {limits.cpu_seconds} s)",
                   "SIGXFSZ": f" (file size limit {limits.file_size_bytes} bytes)"}.get(name, "")
            return "killed", f"the notebook runner was killed by {name}{why}"
        return "crashed", ("the notebook runner stopped without reporting (exit code "
                           f"{returncode}); it may have hit the memory limit "
                           f"({limits.memory_bytes // 2**20} MiB)")
    status = report.get("status")
    if status == "ok":
        return "ok", "the notebook ran to the end"
    if status == "invalid":
        return "invalid", (f"the submitted file is not a notebook that can be run "
                           f"({report.get('ename')}: {report.get('evalue')}): save it again from "
                           "JupyterLab (File > Save Notebook) and submit that file")[:2000]
    ename, evalue = str(report.get("ename", "")), str(report.get("evalue", ""))
    if status == "crashed":
        return _kernel_death(report.get("kernel_returncode"), limits, f"{ename}: {evalue}")
    hint = ""
    if ename == "MemoryError" or "Cannot allocate memory" in evalue:
        hint = f" (memory limit {limits.memory_bytes // 2**20} MiB)"
    elif ename == "BlockingIOError" or "Resource temporarily unavailable" in evalue:
        hint = f" (process limit: {limits.processes} processes/threads)"
    elif ename == "SystemExit":
        hint = " (sys.exit() stops the notebook: the cells after it did not run)"
    elif "File too large" in evalue:
        hint = f" (file size limit {limits.file_size_bytes} bytes)"
    raised = f"{ename}: {evalue}" if evalue.strip() else ename
    if ename == "NotImplementedError" and not evalue.strip():
        hint = " (a part of the assignment is not implemented yet)"
    return "error", f"the notebook raised {raised}{hint}"[:2000]


def _kernel_death(code: Any, limits: Limits, detail: str) -> tuple[str, str]:
    """Status and reason for a kernel that died, from its exit code (negative: a signal)."""
    mem = f"{limits.memory_bytes // 2**20} MiB"
    if isinstance(code, int) and code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else -code
        if sig == "SIGXCPU":
            return "killed", f"the kernel used up its CPU time limit ({limits.cpu_seconds} s)"
        if sig == "SIGXFSZ":
            return "killed", ("the kernel wrote a file over the size limit "
                              f"({limits.file_size_bytes} bytes)")
        if sig == "SIGKILL":
            return "killed", ("the kernel was killed (SIGKILL): out of memory (limit "
                              f"{mem}) or past its hard CPU limit ({limits.cpu_seconds} s)")
        if sig == "SIGSEGV":
            return "crashed", "the kernel died of a segmentation fault (SIGSEGV)"
        return "crashed", f"the kernel died of signal {sig}"
    if isinstance(code, int):
        return "crashed", (f"the kernel died: it exited with code {code} (os._exit, or an "
                           "exit from native code)")
    return "crashed", (f"the kernel died (a segfault, os._exit, or a resource limit: CPU "
                       f"{limits.cpu_seconds} s, memory {mem}): {detail}")[:1500]


def _copy_executed(work: Path, dest: Path, limits: Limits) -> Path | None:
    try:
        dir_fd = _artifacts.open_folder(work)
        try:
            data = _artifacts.read_regular(dir_fd, "executed.ipynb",
                                           limits.output_bytes * 4 + 2**20)
        finally:
            os.close(dir_fd)
    except _artifacts.ArtifactError:
        return None
    dest.write_bytes(data)
    return dest


_GPU_SYSFS = ("/sys/bus", "/sys/class", "/sys/dev", "/sys/devices", "/sys/module")


def _bwrap_argv(limits: Limits, python: str, work: Path, staged_inputs: Path,
                maestro_home: str | os.PathLike[str] | None,
                sockets: list[Path] = (), devices: list[str] = (),
                libraries: list[str] = ()) -> tuple[list[str], list[int]]:
    """The bwrap command line; host folders travel as O_PATH fds (opened here, as root).
    ``devices``: the GPU's device nodes; ``libraries``: folders of its driver's libraries."""
    fds: list[int] = []

    def ro(src: str | Path, dest: str | Path) -> list[str]:
        fd = os.open(src, os.O_PATH)
        fds.append(fd)
        return ["--ro-bind-fd", str(fd), str(dest)]

    import maestro

    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--uid", "1000", "--gid", "1000", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr", *_lib_links(), "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    for etc in ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime"):
        argv += ["--ro-bind-try", etc, etc]
    prefixes = {Path(sys.base_prefix), Path(sys.prefix)}
    for prefix in sorted(prefixes):
        if not str(prefix).startswith("/usr/"):
            argv += ro(prefix, prefix)
    if Path(python).resolve().parent not in {p / "bin" for p in prefixes}:
        raise RuntimeError(f"{python} is not inside {sorted(map(str, prefixes))}")
    package = Path(maestro.__file__).resolve().parent
    argv += ro(package, package)
    argv += ro(_RUNNER, "/sandbox/runner.py")
    argv += ro(_KERNEL, "/sandbox/kernel.py")
    fd = os.open(work, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    fds.append(fd)
    argv += ["--bind-fd", str(fd), "/sandbox/work"]
    argv += ro(staged_inputs, "/sandbox/inputs")
    if maestro_home:
        argv += ro(Path(maestro_home).resolve(), "/sandbox/maestro-home")
    for sock in sockets:  # connect() needs no write access to the mount: read-only is enough
        fd = os.open(sock, os.O_PATH | os.O_NOFOLLOW)
        fds.append(fd)
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ValueError(f"sockets: {str(sock)!r} is no longer a UNIX socket")
        argv += ["--ro-bind-fd", str(fd), str(sock)]
    for dev in devices:  # the GPU: its device nodes
        argv += ["--dev-bind", dev, dev]
    if devices:  # and the hardware tree CUDA reads at start (cuInit fails with 304 without it):
        for sys_dir in _GPU_SYSFS:  # read-only, and not /sys/fs (cgroups), firmware or kernel
            argv += ["--ro-bind-try", sys_dir, sys_dir]
    for lib in libraries:  # and its driver's libraries where /usr does not hold them
        if not lib.startswith("/usr/"):
            argv += ro(lib, lib)
    # bwrap's own root and /dev are tmpfs the sandbox uid may write to, with no size limit: host
    # memory a notebook could fill past every other limit. Read-only both (the binds above keep
    # their own modes), and /dev/shm (torch's worker processes share tensors there) sized like /tmp.
    argv += ["--remount-ro", "/dev", "--size", str(limits.tmp_bytes), "--tmpfs", "/dev/shm",
             "--remount-ro", "/", "--chdir", "/sandbox/work"]
    return argv, fds


def gpu_library_dirs(env=None) -> list[str]:
    """The folders of ``LD_LIBRARY_PATH`` (the grader's, or ``env``'s) that hold the NVIDIA
    driver's user-space library (``libcuda.so*``): hosts that keep it outside the linker's cache
    (``/usr/local/nvidia/lib64`` in many GPU containers) find it only there, so a GPU sandbox
    gets those folders (read-only) and the same path, or its CUDA would silently be missing."""
    env = os.environ if env is None else env
    out: list[str] = []
    for d in env.get("LD_LIBRARY_PATH", "").split(":"):
        d = os.path.normpath(d) if d and os.path.isabs(d) else ""
        if d and d not in out and os.path.isdir(d) and any(Path(d).glob("libcuda.so*")):
            out.append(d)
    return out


def gpu_device_nodes(dev: str = "/dev") -> list[str]:
    """The NVIDIA device nodes under ``dev`` (control, UVM, the cards, capabilities); empty
    when the host has no NVIDIA GPU. ``CUDA_VISIBLE_DEVICES`` in the grader's environment
    still chooses among the cards inside the sandbox."""
    nodes = sorted(str(p) for p in Path(dev).glob("nvidia*") if p.is_char_device())
    caps = Path(dev) / "nvidia-caps"
    if caps.is_dir():
        nodes += sorted(str(p) for p in caps.iterdir() if p.is_char_device())
    names = [os.path.basename(n) for n in nodes]
    if "nvidiactl" not in names or not any(n[len("nvidia"):].isdigit() for n in names):
        return []
    return nodes


def gpu_sandbox_nodes(dev: str = "/dev") -> list[str]:
    """The device nodes a GPU sandbox gets, or a RuntimeError saying why this host cannot give
    one. CUDA cannot start without ``nvidia-uvm``, which the driver creates only when a CUDA
    program first runs on the host (through the setuid ``nvidia-modprobe``, which a sandbox
    cannot use): so it is created here the same way if it is missing."""
    nodes = gpu_device_nodes(dev)
    if not nodes:
        raise RuntimeError(f"this host has no NVIDIA GPU (no {dev}/nvidiactl, {dev}/nvidia0, ...)")
    if "nvidia-uvm" not in map(os.path.basename, nodes):
        modprobe = shutil.which("nvidia-modprobe")
        if dev == "/dev" and modprobe:
            subprocess.run([modprobe, "-u", "-c=0"], capture_output=True, timeout=60, check=False)
            nodes = gpu_device_nodes(dev)
        if "nvidia-uvm" not in map(os.path.basename, nodes):
            raise RuntimeError(f"{dev}/nvidia-uvm is missing, and CUDA cannot start without it (a "
                               "sandbox cannot create it): run `nvidia-modprobe -u -c=0` as root, or "
                               "any CUDA program once, on this host")
    return nodes


#: a UNIX socket's path may not exceed this many bytes (sun_path, with its NUL)
_SOCKET_PATH_MAX = 107
_KERNEL_SOCKET = "kernel-99"  # the longest name the kernel's sockets get in their folder


def _short_private_dir() -> Path:
    """A fresh private (0700) folder for the fallback's kernel sockets, in ``/tmp`` (else the
    system's temp folder): the run's own work folder lies under the course, often too deep for
    a UNIX socket's path (``_SOCKET_PATH_MAX``)."""
    base = "/tmp" if os.access("/tmp", os.W_OK | os.X_OK) else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="maestro-ipc-", dir=base))
    if len(os.fsencode(path / _KERNEL_SOCKET)) > _SOCKET_PATH_MAX:
        shutil.rmtree(path, ignore_errors=True)
        raise RuntimeError(f"no short folder for the kernel's sockets: {path} is too long for a "
                           f"UNIX socket (at most {_SOCKET_PATH_MAX} bytes); make /tmp writable")
    return path


def _fallback_argv() -> list[str]:
    """``unshare`` a network, pid and IPC namespace where the system allows it (else nothing).
    The IPC one takes the run's SysV shared memory away with it: in the host's, segments
    outlive the run that made them. The pid namespace gets a /proc of its own where a mount
    namespace can be made: with the host's, a pid read there names another process, and the
    kernel's own shutdown (ipykernel signals the children it finds in /proc) sent SIGTERM to
    itself before it could write out the files the notebook left open."""
    base = ["--net", "--pid", "--ipc", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        base = ["--user", "--map-root-user", *base]
    for argv in (["--mount-proc", *base], base):
        if _probe_unshare(argv):
            return ["unshare", *argv, "--"]
    return []


def _tree_size(root: int) -> int:
    """Tasks (threads included) in the process tree under ``root``."""
    children: dict[int, list[int]] = {}
    threads: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        threads[pid] = int(fields[17])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += threads.get(pid, 1)
        stack.extend(children.get(pid, ()))
    return total


_ENTRY_BYTES = 4096  # what an entry costs at least (its inode): empty files are not free


def _disk_usage(folder: Path) -> int:
    """Bytes allocated under ``folder`` (symlinks not followed), each entry counted as at least
    ``_ENTRY_BYTES``: a million empty files would use up the host's inodes."""
    total = 0
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                total += max(os.lstat(os.path.join(parent, name)).st_blocks * 512, _ENTRY_BYTES)
            except OSError:
                pass
    return total


class _Watchdog:
    """Kills the tree over the task limit (every 0.1 s) or the disk limit (every second).

    Tasks: the backstop where RLIMIT_NPROC does not bind (root) and no pids cgroup could be
    made. Disk: RLIMIT_FSIZE caps one file; this caps the whole work folder.
    """

    def __init__(self, proc: subprocess.Popen, limit: int, work: Path, disk_bytes: int) -> None:
        self.tripped = ""
        self.proc, self.limit, self.work, self.disk_bytes = proc, limit, work, disk_bytes
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        tick = 0
        while not self.stop.wait(0.1):
            tick += 1
            if _tree_size(self.proc.pid) > self.limit:
                self.tripped = "processes"
            elif tick % 10 == 0 and _disk_usage(self.work) > self.disk_bytes:
                self.tripped = "disk"
            if self.tripped:
                _kill_tree(self.proc)
                return

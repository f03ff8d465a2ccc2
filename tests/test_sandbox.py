"""The sandboxed notebook executor: real papermill, a real kernel, inside real bubblewrap.

Every notebook is generated here with nbformat; nothing is mocked. Several checks share one
run (a run costs ~2 s of kernel start-up).
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import socket
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import autograder
import autograder.sandbox
from autograder import ArtifactError, Limits, collect, load, probe_bwrap, run_notebook

BWRAP_OK, BWRAP_WHY = probe_bwrap()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap cannot start: {BWRAP_WHY}")


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI promises bubblewrap (make test installs it there)")
def test_ci_runs_the_bubblewrap_path():
    assert BWRAP_OK, f"CI must test the strong sandbox, but bubblewrap cannot start: {BWRAP_WHY}"
FAST = Limits(wall_seconds=60, memory_bytes=3 * 2**30, cpu_seconds=60, processes=256,
              output_bytes=256 * 2**10, artifact_bytes=2**20)


def make_notebook(folder: Path, *cells: str) -> Path:
    nb = new_notebook(cells=[
        new_code_cell("inputs = {}\noutput_dir = '.'", metadata={"tags": ["parameters"]}),
        *(new_code_cell(c) for c in cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = folder / "student.ipynb"
    nbformat.write(nb, path)
    return path


def run(tmp_path: Path, *cells: str, limits: Limits = FAST, **kw):
    nb = make_notebook(tmp_path, *cells)
    return run_notebook(nb, workdir=tmp_path / "run", limits=limits,
                        sandbox=kw.pop("sandbox", "bwrap"), **kw)


SAVE = "import numpy as np\nnp.save(output_dir + '/x_adv.npy', np.arange(6.0).reshape(2, 3))"


# ----------------------------------------------------------------------------- runs

@pytest.fixture(params=["bwrap", "fallback"])
def sandbox(request):
    """Both sandboxes, for what a notebook meets in either (statuses, limits, artifacts, the
    kernel's start): the fallback is the path a machine without bubblewrap takes. What only
    bubblewrap isolates is tested with it alone."""
    if request.param == "bwrap" and not BWRAP_OK:
        pytest.skip(f"bubblewrap cannot start: {BWRAP_WHY}")
    return request.param


def test_good_notebook_with_inputs_and_parameters(tmp_path, sandbox):
    data = tmp_path / "clean.npy"
    np.save(data, np.full((2, 3), 0.5))
    result = run(tmp_path,
                 "import numpy as np\nx = np.load(inputs['clean.npy'])\n"
                 "np.save(output_dir + '/x_adv.npy', x + eps)\nprint('done', eps)",
                 parameters={"eps": 0.25}, inputs={"clean.npy": data},
                 outputs=["x_adv.npy"], sandbox="auto" if sandbox == "bwrap" else sandbox)
    assert result.status == "ok", result.reason + result.log_tail
    assert result.sandbox == sandbox and not result.artifact_errors
    x = load(result.artifacts["x_adv.npy"])
    np.testing.assert_allclose(x, np.full((2, 3), 0.75))
    executed = json.loads(result.executed_notebook.read_text())
    assert "done 0.25" in json.dumps(executed)


def test_exception_is_an_error_with_its_message(tmp_path, sandbox):
    result = run(tmp_path, "raise ValueError('eps must be positive, got -1')",
                 outputs=["x_adv.npy"], sandbox=sandbox)
    assert result.status == "error"
    assert "ValueError" in result.reason and "eps must be positive, got -1" in result.reason
    assert "x_adv.npy" in result.artifact_errors and "missing" in result.reason
    assert result.stage == "code" and result.grader_fault == ""  # the student's own doing


@pytest.mark.parametrize("code", ["import os\nos._exit(1)",
                                  "import ctypes\nctypes.string_at(0)"],
                         ids=["os_exit", "segfault"])
def test_dying_kernel_is_crashed(tmp_path, code, sandbox):
    result = run(tmp_path, code, outputs=["x_adv.npy"], sandbox=sandbox)
    assert result.status == "crashed", result.reason
    assert "kernel died" in result.reason
    assert ("code 1" if "exit" in code else "segmentation fault") in result.reason
    assert result.stage == "code" and result.grader_fault == ""  # its code killed it


DEEP = "/".join(f"a-course-folder-{i:02d}-of-an-instructor-who-keeps-things-tidy" for i in range(4))


def test_a_course_folder_deep_below_the_root_runs(tmp_path, sandbox, monkeypatch):
    """The kernel's UNIX sockets never live under the course (a socket's path may not exceed
    107 bytes): a work folder far deeper than that runs as well as any other."""
    deep = tmp_path / DEEP
    deep.mkdir(parents=True)
    assert len(str(deep / "run" / "work" / "tmp")) >= 150
    made = []
    short_dir = autograder.sandbox._short_private_dir
    monkeypatch.setattr(autograder.sandbox, "_short_private_dir",
                        lambda: made.append(short_dir()) or made[-1])
    result = run(deep, SAVE, outputs=["x_adv.npy"], sandbox=sandbox)
    assert result.status == "ok", result.reason + result.log_tail
    assert result.stage == "code" and "x_adv.npy" in result.artifacts
    assert len(made) == (sandbox == "fallback")  # bubblewrap's are in its own /tmp
    assert not any(p.exists() for p in made)  # the sockets' folder went with the run


def _grader_fault(result, detail: str) -> None:
    """Nothing of the submission ran: the run says it is the grader's failure from how far it
    got (the runner's stages), not from the error's text."""
    assert result.status != "ok" and result.stage == "notebook", (result.status, result.stage)
    assert "kernel did not start" in result.grader_fault, result.grader_fault
    assert detail in result.grader_fault + result.log_tail, result.grader_fault + result.log_tail


def test_a_kernel_that_cannot_start_is_the_graders_fault(tmp_path, sandbox, monkeypatch):
    script = tmp_path / "broken_kernel.py"
    script.write_text("import sys\nprint('this kernel cannot start', file=sys.stderr)\nsys.exit(3)\n")
    monkeypatch.setattr(autograder.sandbox, "_KERNEL", script)
    _grader_fault(run(tmp_path, SAVE, outputs=["x_adv.npy"], sandbox=sandbox), "cannot start")


def test_kernel_sockets_too_deep_are_the_graders_fault(tmp_path, monkeypatch):
    """What happened to every notebook of a course a few folders deep when the fallback made
    the kernel's sockets under the course folder (bubblewrap's are in its own /tmp)."""
    deep = tmp_path / DEEP

    def too_deep():
        deep.mkdir(parents=True, exist_ok=True)
        return deep

    monkeypatch.setattr(autograder.sandbox, "_short_private_dir", too_deep)
    _grader_fault(run(tmp_path, SAVE, outputs=["x_adv.npy"], sandbox="fallback"), "too long")


def test_a_file_that_is_not_a_notebook_is_the_submissions_fault(tmp_path, sandbox):
    """A broken .ipynb (truncated JSON, say) starts no kernel, but it is the student's file:
    a 0 with what to do, not a grader failure retried for ever."""
    nb = tmp_path / "student.ipynb"
    nb.write_text('{"cells": [{"cell_type": "code", "source": "x = 1"')
    result = run_notebook(nb, workdir=tmp_path / "run", limits=FAST, sandbox=sandbox,
                          outputs=["x_adv.npy"])
    assert result.status == "invalid" and result.grader_fault == "", result.reason
    assert "not a notebook" in result.reason and "Save Notebook" in result.reason


def test_sys_exit_before_the_artifact(tmp_path, sandbox):
    result = run(tmp_path, "import sys\nsys.exit(0)", SAVE, outputs=["x_adv.npy"], sandbox=sandbox)
    assert result.status == "error" and "SystemExit" in result.reason
    assert "missing" in result.artifact_errors["x_adv.npy"]
    assert not result.ok


@pytest.mark.slow
def test_infinite_loop_times_out(tmp_path, sandbox):
    wall = 6.0
    start = time.monotonic()
    result = run(tmp_path, "while True:\n    pass",
                 limits=Limits(wall_seconds=wall, memory_bytes=3 * 2**30), outputs=["x_adv.npy"],
                 sandbox=sandbox)
    assert result.status == "timeout"
    assert "6 s" in result.reason
    assert time.monotonic() - start < wall + 10


def test_memory_exhaustion_is_reported(tmp_path, sandbox):
    result = run(tmp_path, "blob = bytearray(8 * 2**30)", outputs=["x_adv.npy"],
                 limits=Limits(wall_seconds=60, memory_bytes=2 * 2**30), sandbox=sandbox)
    assert result.status in ("error", "killed", "crashed")
    assert "memory" in result.reason.lower()


def _no_cgroup(controller: str) -> str:
    """Why this grader cannot give a run a ``controller`` cgroup ('' when it can)."""
    group = autograder.sandbox._RunCgroup.create(16, 2**30)
    if group is not None:
        group.destroy()
    if group is None or controller not in group.dirs:
        return (f"no writable {controller} cgroup here (root and a writable /sys/fs/cgroup are "
                "needed)")
    return ""


HOG = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
held = []
for i in range(12):  # 12 x 256 MiB, none of it in the address space at the end
    if {kind!r} == 'shm':
        sid = libc.shmget(0, 2**28, 0o1600)
        if sid < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        addr = libc.shmat(sid, None, 0)
        ctypes.memset(addr, 1, 2**28)
        libc.shmdt(ctypes.c_void_p(addr))
    else:
        fd = os.memfd_create(f'hog{{i}}')
        for _ in range(256):
            os.write(fd, b'1' * 2**20)
        held.append(fd)
print('held it all')
"""


@pytest.mark.parametrize("sandbox", ["bwrap", "fallback"])
@pytest.mark.parametrize("kind", ["shm", "memfd"])
def test_memory_held_outside_the_address_space_is_capped(tmp_path, kind, sandbox):
    """SysV shared memory and memfds hold host memory that RLIMIT_AS never sees (3 GiB here,
    under a 1 GiB RLIMIT_AS): a memory cgroup stops the run and says why."""
    why = _no_cgroup("memory")
    if why:
        pytest.skip(why)
    if sandbox == "bwrap" and not BWRAP_OK:
        pytest.skip(f"bubblewrap cannot start: {BWRAP_WHY}")
    limits = Limits(wall_seconds=60, memory_bytes=2**30, tmp_bytes=64 * 2**20)
    assert autograder.sandbox.total_memory_bytes(limits) < 12 * 2**28
    segments = _host_shm_segments()
    result = run(tmp_path, HOG.format(kind=kind), SAVE, outputs=["x_adv.npy"], limits=limits,
                 sandbox=sandbox)
    assert result.status == "killed", (result.status, result.reason, result.log_tail)
    assert "memory limit" in result.reason and "2.1 GiB" in result.reason, result.reason
    assert "x_adv.npy" in result.artifact_errors
    # the run's own IPC namespace took its segments away (in the host's they would stay)
    assert _host_shm_segments() <= segments


def _host_shm_segments() -> set[str]:
    with open("/proc/sysvipc/shm") as fh:
        return {line.split()[1] for line in fh.readlines()[1:]}


@pytest.mark.parametrize("sandbox", ["bwrap", "fallback"])
@pytest.mark.parametrize("kind", ["shm", "memfd"])
def test_without_a_memory_cgroup_shared_memory_is_refused(tmp_path, monkeypatch, kind, sandbox):
    """No memory cgroup (non-root graders, read-only cgroup file systems): nothing would count
    SysV shared memory or memfds, so a seccomp filter refuses them (ENOSYS), in the notebook's
    kernel and whatever it starts; the rest of the notebook's world works as before."""
    if sandbox == "bwrap" and not BWRAP_OK:
        pytest.skip(f"bubblewrap cannot start: {BWRAP_WHY}")
    monkeypatch.setattr(autograder.sandbox._RunCgroup, "create", classmethod(lambda c, *a: None))
    limits = Limits(wall_seconds=60, memory_bytes=2**30, tmp_bytes=64 * 2**20)
    result = run(tmp_path, HOG.format(kind=kind), SAVE, outputs=["x_adv.npy"], limits=limits,
                 sandbox=sandbox)
    assert result.status == "error" and "Function not implemented" in result.reason, result.reason
    child = ("import json, os, subprocess, sys\n"
             "probe = 'import os\\ntry:\\n    os.memfd_create(\"x\")\\nexcept OSError as e:\\n    print(e.errno)'\n"
             "out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True)\n"
             "from multiprocessing import shared_memory\n"
             "block = shared_memory.SharedMemory(create=True, size=4096)\n"
             "block.close(); block.unlink()\n"
             "json.dump(out.stdout.strip(), open(output_dir + '/seen.json', 'w'))")
    result = run(tmp_path, child, outputs=["seen.json"], limits=limits, sandbox=sandbox)
    assert result.status == "ok", result.reason + result.log_tail
    assert json.loads(Path(result.artifacts["seen.json"]).read_text()) == "38"  # ENOSYS


def test_a_notebook_with_many_busy_processes_does_not_starve_its_neighbour(tmp_path, sandbox):
    """Two runs side by side: one keeps 24 processes busy, each in a session of its own (which
    defeats the kernel's per-session autogroups), the other one. With a cpu cgroup each, the
    runs share the processors as equals (the neighbour gets about a core of two); without, the
    neighbour would get about 1/25 of them and time out on a real unit."""
    import threading

    why = _no_cgroup("cpu")
    if why:
        pytest.skip(why)
    hog = ("import os, time\nend = time.time() + 14\nkids = []\nfor _ in range(24):\n"
           "    pid = os.fork()\n    if pid == 0:\n        os.setsid()\n        while time.time() < end:\n            pass\n"
           "        os._exit(0)\n    kids.append(pid)\nfor pid in kids:\n    os.waitpid(pid, 0)")
    victim = ("import json, os, time\ntime.sleep(4)\nt0, c0 = time.time(), time.process_time()\n"
              "while time.time() < t0 + 5:\n    pass\n"
              "json.dump(time.process_time() - c0, open(output_dir + '/cpu.json', 'w'))")
    limits = Limits(wall_seconds=90, memory_bytes=3 * 2**30, processes=64)
    box = {}

    def go(name, code, **kw):
        (tmp_path / name).mkdir()
        box[name] = run(tmp_path / name, code, limits=limits, sandbox=sandbox, **kw)

    threads = [threading.Thread(target=go, args=("hog", hog)),
               threading.Thread(target=go, args=("victim", victim), kwargs={"outputs": ["cpu.json"]})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert box["hog"].status == "ok", box["hog"].reason
    assert box["victim"].status == "ok", box["victim"].reason + box["victim"].log_tail
    cpu = json.loads(Path(box["victim"].artifacts["cpu.json"]).read_text())
    assert cpu > 1.5, f"the neighbour got {cpu:.2f} s of CPU in 5 s of wall clock"


def test_cgroups_of_a_grader_that_was_killed_are_swept(tmp_path):
    """A grader killed with SIGKILL cannot remove its runs' cgroups: the next run does."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("cgroups are made only by a root grader")
    bases = autograder.sandbox._RunCgroup._bases()
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    stale = []
    for base in dict.fromkeys(bases.values()):
        path = base / f"maestro-sandbox-{dead_pid.pid}-0123456789ab"
        try:
            path.mkdir()
        except OSError:
            continue
        stale.append(path)
    if not stale:
        pytest.skip("no writable cgroup file system here")
    group = autograder.sandbox._RunCgroup.create(16, 2**30)
    try:
        assert group is not None and not any(p.exists() for p in stale), stale
    finally:
        if group is not None:
            group.destroy()
        for p in stale:
            if p.exists():
                p.rmdir()
    assert not any(p.exists() for p in group.dirs.values())


@pytest.mark.slow
def test_fork_bomb_is_contained(tmp_path, sandbox):
    marker = "617.25"
    bomb = ("import os\nkids = 0\nfor _ in range(10000):\n    pid = os.fork()\n"
            "    if pid == 0:\n"
            f"        os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n"
            "    kids += 1\n")
    result = run(tmp_path, bomb, outputs=["x_adv.npy"],
                 limits=Limits(wall_seconds=60, memory_bytes=3 * 2**30, processes=64),
                 sandbox=sandbox)
    assert result.status in ("error", "killed"), result.reason
    assert "process" in result.reason
    print(result.reason)
    time.sleep(0.5)
    leftovers = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and marker.encode() in Path(entry.path, "cmdline").read_bytes():
                leftovers.append(entry.name)
        except OSError:
            pass
    assert leftovers == []


@pytest.mark.slow
def test_gigantic_output_is_capped(tmp_path, sandbox):
    limits = Limits(wall_seconds=120, memory_bytes=3 * 2**30, output_bytes=64 * 2**10)
    result = run(tmp_path, "line = 'x' * 2**20\nfor _ in range(500):\n    print(line)", SAVE,
                 limits=limits, outputs=["x_adv.npy"], sandbox=sandbox)
    assert result.status == "ok", result.reason
    assert "x_adv.npy" in result.artifacts
    assert result.executed_notebook.stat().st_size < 1 * 2**20
    assert "the rest is dropped" in result.executed_notebook.read_text()
    assert len(result.log_tail) < 2 * limits.output_bytes


@needs_bwrap
def test_the_sandbox_sees_nothing_it_should_not(tmp_path, monkeypatch):
    hidden = tmp_path / "gradebook" / "hidden_labels.npy"
    hidden.parent.mkdir()
    np.save(hidden, np.arange(10))
    monkeypatch.setenv("MAESTRO_COURSE_SECRET", "s3cret-course-key")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    repo = Path(__file__).resolve().parents[1]
    probe = f"""
import json, os, socket
seen = {{}}
for path in [{str(repo / 'pyproject.toml')!r}, {str(hidden)!r}, '/root/.bashrc',
             {str(repo / 'tests' / 'test_sandbox.py')!r}, '/etc/shadow', '/etc/passwd']:
    try:
        open(path, 'rb').read(10)
        seen[path] = 'read'
    except OSError as err:
        seen[path] = type(err).__name__
try:
    seen['/root'] = os.listdir('/root')
except OSError as err:
    seen['/root'] = type(err).__name__
seen['root'] = sorted(os.listdir('/'))
seen['secret'] = os.environ.get('MAESTRO_COURSE_SECRET')
seen['uid'] = os.getuid()
import resource
seen['limits'] = [resource.getrlimit(getattr(resource, 'RLIMIT_' + k))[0]
                  for k in ('CPU', 'AS', 'FSIZE', 'NPROC')]
s = socket.socket()
s.settimeout(3)
try:
    s.connect(('127.0.0.1', {port}))
    seen['net'] = 'connected'
except OSError as err:
    seen['net'] = type(err).__name__
for name, path in [('write_usr', '/usr/lib/pwned'), ('write_input', inputs['labels.npy']),
                   ('write_runner', '/sandbox/runner.py')]:
    try:
        open(path, 'ab').write(b'x')
        seen[name] = 'written'
    except OSError as err:
        seen[name] = type(err).__name__
import maestro
seen['maestro'] = maestro.__name__
json.dump(seen, open(output_dir + '/seen.json', 'w'))
"""
    try:
        result = run(tmp_path, probe, outputs=["seen.json"], inputs={"labels.npy": hidden})
    finally:
        server.close()
    assert result.status == "ok", result.reason + result.log_tail
    seen = load(result.artifacts["seen.json"])
    for path, what in seen.items():
        if path.startswith("/") and path != "/root":
            assert what != "read", f"{path} is visible inside the sandbox"
    assert seen["/root"] in ("FileNotFoundError", "PermissionError", [".pyenv"], [".cache"])
    assert seen["secret"] is None
    assert seen["net"] != "connected"
    for name in ("write_usr", "write_input", "write_runner"):
        assert seen[name] in ("OSError", "PermissionError"), f"{name}: {seen[name]}"
    assert seen["uid"] != 0 and seen["maestro"] == "maestro"
    assert seen["limits"][:3] == [FAST.cpu_seconds, FAST.memory_bytes, FAST.file_size_bytes]
    assert seen["limits"][3] >= FAST.processes
    assert "work" not in seen["root"] or not Path("/work/main/pyproject.toml").exists() or \
        seen[str(repo / "pyproject.toml")] != "read"


@needs_bwrap
@pytest.mark.parametrize("code", [
    "import os, time\nchunk = b'0' * 2**20\nfor i in range(200):\n"
    "    open(f'fill{i}.bin', 'wb').write(chunk)\n    time.sleep(0.02)\n",
    # empty files take no blocks, but each one an inode of the grader's disk
    "import os, time\nos.mkdir('flood')\nfor i in range(200000):\n"
    "    open(f'flood/{i}', 'w').close()\n    if i % 1000 == 0:\n        time.sleep(0.01)\n",
], ids=["bytes", "empty-files"])
def test_filling_the_disk_is_stopped(tmp_path, code, sandbox):
    result = run(tmp_path, code, SAVE, outputs=["x_adv.npy"],
                 limits=Limits(wall_seconds=120, memory_bytes=3 * 2**30, disk_bytes=20 * 2**20),
                 sandbox=sandbox)
    assert result.status == "killed" and "disk limit" in result.reason, result.reason
    assert "x_adv.npy" in result.artifact_errors


@needs_bwrap
def test_memory_backed_folders_are_read_only_or_sized(tmp_path):
    """bubblewrap's own root and /dev are tmpfs (host memory) with no size of their own: a
    notebook filling them would starve every other run past its memory limit (RLIMIT_AS does not
    count tmpfs pages). They are read-only; /tmp and /dev/shm (torch's workers share tensors
    there) are writable up to tmp_bytes each."""
    code = ("import errno, json\nseen = {}\n"
            "for d in ('/', '/dev', '/sandbox', '/tmp', '/dev/shm'):\n"
            "    try:\n"
            "        with open(d.rstrip('/') + '/fill.bin', 'wb') as f:\n"
            "            for _ in range(12):\n"
            "                f.write(b'0' * 2**20)\n"
            "        seen[d] = 'ok'\n"
            "    except OSError as e:\n"
            "        seen[d] = errno.errorcode[e.errno]\n"
            "json.dump(seen, open(output_dir + '/seen.json', 'w'))")
    result = run(tmp_path, code, outputs=["seen.json"],
                 limits=Limits(wall_seconds=60, memory_bytes=3 * 2**30, tmp_bytes=8 * 2**20))
    assert result.status == "ok", result.reason + result.log_tail
    seen = json.loads(Path(result.artifacts["seen.json"]).read_text())
    assert seen == {"/": "EROFS", "/dev": "EROFS", "/sandbox": "EROFS",
                    "/tmp": "ENOSPC", "/dev/shm": "ENOSPC"}, seen


def test_bad_artifacts_are_refused_with_reasons(tmp_path, sandbox):
    code = """
import numpy as np, os
np.save(output_dir + '/objects.npy', np.array([{'a': 1}, None], dtype=object), allow_pickle=True)
os.symlink('/etc/passwd', output_dir + '/link.npy')
import shutil
shutil.copy('/usr/bin/true', 'suid-true')
os.chmod('suid-true', 0o6755)
import json
json.dump(os.stat('suid-true').st_mode, open(output_dir + '/mode.json', 'w'))
np.save(output_dir + '/big.npy', np.zeros(2**19))
np.save(output_dir + '/xadv.npy', np.zeros(3))
"""
    result = run(tmp_path, code,
                 outputs=["objects.npy", "link.npy", "big.npy", "x_adv.npy", "mode.json"],
                 sandbox=sandbox)
    assert result.status == "ok", result.reason
    errors = result.artifact_errors
    assert list(result.artifacts) == ["mode.json"]
    assert load(result.artifacts["mode.json"]) & 0o4000  # set inside the sandbox
    assert "pickle" in errors["objects.npy"]
    assert "symlink" in errors["link.npy"]
    assert "too large" in errors["big.npy"]
    assert "missing" in errors["x_adv.npy"] and "xadv.npy" in errors["x_adv.npy"]
    left = tmp_path / "run" / "work" / "suid-true"  # a set-uid file the sandbox left behind
    assert left.exists() and not left.stat().st_mode & 0o6000


def test_replacing_the_output_folder_by_a_symlink_is_refused(tmp_path, sandbox):
    code = ("import os, shutil\nshutil.rmtree(output_dir)\n"
            "os.symlink('/usr/lib', output_dir)")
    result = run(tmp_path, code, outputs=["os.json"], sandbox=sandbox)
    assert result.artifacts == {}
    assert "output folder" in result.artifact_errors["os.json"]


@pytest.mark.slow
def test_maestro_and_the_zoo_work_inside(tmp_path, sandbox):
    from maestro._home import maestro_home

    zoo = Path(maestro_home())
    if not (zoo / "models" / "lenet-mnist").exists():
        pytest.skip(f"the zoo is not built in {zoo} (maestro models build)")
    result = run(tmp_path, "import maestro, numpy as np\n"
                 "model = maestro.models.load('lenet-mnist')\n"
                 "data = maestro.datasets.load('mnist', split='dev')\n"
                 "np.save(output_dir + '/pred.npy', model.predict(data.x[:32]).numpy())",
                 outputs=["pred.npy"], maestro_home=zoo,
                 limits=Limits(wall_seconds=120, memory_bytes=4 * 2**30), sandbox=sandbox)
    assert result.status == "ok", result.reason + result.log_tail
    pred = load(result.artifacts["pred.npy"])
    assert pred.shape == (32,) and pred.dtype.kind == "i"


def test_what_the_notebook_leaves_open_is_written_out(tmp_path, sandbox):
    """The kernel (autograder/_kernel.py) leaves without the interpreter's teardown: files the
    notebook never closed, even ones only a module still holds, must be complete; a
    non-daemon thread still running makes it exit the ordinary way, after the thread."""
    result = run(tmp_path,
                 "import sys, gzip, json, numpy as np\n"
                 "assert 'debugpy' not in sys.modules  # the kernel started without its debugger\n"
                 "f = open(output_dir + '/x_adv.npy', 'wb')\n"
                 "np.save(f, np.arange(100000.0))\n"
                 "g = gzip.open(output_dir + '/notes.json.gz', 'wt')\n"
                 "g.write(json.dumps({'k': list(range(5000))}))\n"
                 "t = open(output_dir + '/log.txt', 'w')\n"
                 "t.write('line\\n' * 1000)\n"
                 "sys.keep = (f, g, t)  # outlives IPython's reset of the namespace\n"
                 "open('helper.py', 'w').write('VALUE = 7\\n')",
                 "import helper, debugpy\nassert helper.VALUE == 7",
                 outputs=["x_adv.npy"], sandbox=sandbox)
    assert result.status == "ok", result.reason + result.log_tail
    np.testing.assert_array_equal(load(result.artifacts["x_adv.npy"]), np.arange(100000.0))
    outputs = tmp_path / "run" / "work" / "outputs"
    with gzip.open(outputs / "notes.json.gz", "rt") as fh:
        assert json.load(fh) == {"k": list(range(5000))}
    assert (outputs / "log.txt").read_text() == "line\n" * 1000
    assert "Traceback" not in result.log_tail, result.log_tail

    (tmp_path / "late").mkdir()
    late = run(tmp_path / "late",
               "import threading, time, numpy as np\n"
               "def later():\n"
               "    time.sleep(1.0)\n"
               "    np.save(output_dir + '/x_adv.npy', np.ones(3))\n"
               "threading.Thread(target=later).start()",
               outputs=["x_adv.npy"], sandbox=sandbox)
    assert late.status == "ok", late.reason + late.log_tail
    assert load(late.artifacts["x_adv.npy"]).tolist() == [1.0, 1.0, 1.0]


def test_runs_in_parallel_threads_stay_apart(tmp_path, sandbox):
    results = {}

    def go(i: int) -> None:
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        results[i] = run(folder, f"import numpy as np\nnp.save(output_dir + '/x.npy', "
                                 f"np.full(3, {i}))", outputs=["x.npy"], sandbox=sandbox)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, result in results.items():
        assert result.status == "ok", result.reason
        assert load(result.artifacts["x.npy"]).tolist() == [i, i, i]


# ----------------------------------------------------------------------------- fallback

def test_fallback_runs_with_a_loud_warning(tmp_path):
    result = run(tmp_path, SAVE, sandbox="fallback", outputs=["x_adv.npy"])
    assert result.status == "ok", result.reason + result.log_tail
    assert result.sandbox == "fallback"
    assert "WARNING" in result.reason and "no bubblewrap" in result.reason
    np.testing.assert_array_equal(load(result.artifacts["x_adv.npy"]),
                                  np.arange(6.0).reshape(2, 3))


@pytest.mark.slow
def test_fallback_enforces_the_wall_clock_and_process_limits(tmp_path, monkeypatch):
    # no cgroups here (as on machines where /sys/fs/cgroup is read-only): the watchdog acts
    monkeypatch.setattr(autograder.sandbox._RunCgroup, "create", classmethod(lambda c, *a: None))
    result = run(tmp_path, "while True:\n    pass", sandbox="fallback",
                 limits=Limits(wall_seconds=5, memory_bytes=3 * 2**30))
    assert result.status == "timeout"
    marker = "618.5"
    bomb = ("import os\nfor _ in range(3000):\n    if os.fork() == 0:\n"
            f"        os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n")
    result = run(tmp_path, bomb, sandbox="fallback",
                 limits=Limits(wall_seconds=60, memory_bytes=3 * 2**30, processes=64))
    assert result.status in ("error", "killed") and "process" in result.reason
    assert "watchdog" in result.reason or os.geteuid() != 0
    time.sleep(0.5)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                assert marker.encode() not in Path(entry.path, "cmdline").read_bytes()
            except OSError:
                pass


# ----------------------------------------------------------------------------- artifacts

def test_collect_checks_every_artifact(tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    np.save(out / "good.npy", np.eye(2))
    (out / "scores.json").write_text(json.dumps({"acc": 0.5}))
    (out / "broken.json").write_text("{not json")
    np.save(tmp_path / "outside.npy", np.eye(2))
    os.link(tmp_path / "outside.npy", out / "hard.npy")
    (out / "pickle.npy").write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    os.mkfifo(out / "fifo.npy")
    from safetensors.numpy import save_file

    save_file({"w": np.ones(3, dtype=np.float32)}, str(out / "w.safetensors"))
    names = ["good.npy", "scores.json", "broken.json", "hard.npy", "pickle.npy", "fifo.npy",
             "w.safetensors", "gone.npy"]
    found, problems = collect(out, names, tmp_path / "accepted", max_bytes=2**20)
    assert set(found) == {"good.npy", "scores.json", "w.safetensors"}
    assert load(found["scores.json"]) == {"acc": 0.5}
    assert load(found["w.safetensors"])["w"].tolist() == [1.0, 1.0, 1.0]
    assert "JSON" in problems["broken.json"]
    assert "hard link" in problems["hard.npy"]
    assert "pickle" in problems["pickle.npy"]
    assert "regular file" in problems["fifo.npy"]
    assert "missing" in problems["gone.npy"]
    for bad in ["../x.npy", "a/b.npy", "model.pkl", "x.py", ".hidden.npy", ""]:
        _, problems = collect(out, [bad], tmp_path / "accepted")
        assert bad in problems and problems[bad]
    with pytest.raises(ArtifactError):
        load(out / "pickle.npy")


def test_bad_arguments_fail_loudly(tmp_path):
    nb = make_notebook(tmp_path, "pass")
    with pytest.raises(ValueError, match="reserved"):
        run_notebook(nb, workdir=tmp_path / "r", parameters={"output_dir": "/"})
    with pytest.raises(ValueError):
        run_notebook(nb, workdir=tmp_path / "r", inputs={"../etc": tmp_path})
    with pytest.raises(ArtifactError):
        run_notebook(nb, workdir=tmp_path / "r", outputs=["../../x.npy"])
    assert autograder.RunResult.__dataclass_fields__["status"]


def test_gpu_needs_a_gpu_and_says_so(tmp_path):
    from autograder.sandbox import gpu_device_nodes

    if gpu_device_nodes():
        pytest.skip("this host has an NVIDIA GPU: the refusal below does not apply")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(RuntimeError, match="no NVIDIA GPU.*gpu = false"):
        run_notebook(path, workdir=tmp_path / "w", gpu=True)


def _stand_in_devices(*paths, writable: bool = False) -> None:
    """Character devices with /dev/null's major:minor at ``paths`` (they play NVIDIA's nodes);
    ``writable``: they must also be usable here (not on a nodev mount). Skips where not."""
    import stat

    try:
        for path in paths:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            if writable:
                os.chmod(path, 0o666)
                with open(path, "wb") as f:
                    f.write(b"x")
    except PermissionError:  # EPERM from mknod, EACCES from open on a nodev mount
        pytest.skip(f"stand-in device nodes need CAP_MKNOD (root)"
                    f"{' and a folder without nodev' if writable else ''} ({paths[0]})")


def test_a_gpu_host_without_nvidia_uvm_is_told_how_to_make_it(tmp_path):
    """CUDA needs /dev/nvidia-uvm, which only appears once a CUDA program has run on the host;
    a sandbox cannot create it. Stand-in nodes in a folder play the host's /dev."""
    from autograder.sandbox import gpu_device_nodes, gpu_sandbox_nodes

    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    _stand_in_devices(*(dev / n for n in ("nvidiactl", "nvidia0", "nvidia-caps/nvidia-cap1")))
    (dev / "nvidia1").write_text("")  # not a device: not a card
    assert gpu_device_nodes(str(dev)) == [str(dev / n) for n in ("nvidia0", "nvidiactl",
                                                                 "nvidia-caps/nvidia-cap1")]
    with pytest.raises(RuntimeError, match=r"nvidia-uvm is missing.*nvidia-modprobe -u -c=0"):
        gpu_sandbox_nodes(str(dev))
    _stand_in_devices(dev / "nvidia-uvm")
    assert str(dev / "nvidia-uvm") in gpu_sandbox_nodes(str(dev))
    os.unlink(dev / "nvidia0")  # a control node but no card: no GPU
    assert gpu_device_nodes(str(dev)) == []
    with pytest.raises(RuntimeError, match="no NVIDIA GPU"):
        gpu_sandbox_nodes(str(dev))


@needs_bwrap
def test_a_gpu_sandbox_gets_the_driver_libraries_its_host_finds_by_ld_library_path(tmp_path):
    """Hosts that keep libcuda outside the linker's cache (/usr/local/nvidia/lib64 in many GPU
    containers) find it by LD_LIBRARY_PATH: the sandbox gets those folders, read-only, and the
    same path. (The device nodes themselves need a GPU host; this part does not.)"""
    import subprocess

    from autograder.sandbox import _bwrap_argv, gpu_library_dirs

    driver, other = tmp_path / "nvidia" / "lib64", tmp_path / "other"
    driver.mkdir(parents=True)
    other.mkdir()
    (driver / "libcuda.so.1").write_bytes(b"\x7fELF")
    env = {"LD_LIBRARY_PATH": f"{other}:relative/lib:{driver}:{driver}/"}
    assert gpu_library_dirs(env) == [str(driver)] and gpu_library_dirs({}) == []
    (tmp_path / "work").mkdir()
    (tmp_path / "inputs").mkdir()
    argv, fds = _bwrap_argv(Limits(), sys.executable, tmp_path / "work", tmp_path / "inputs", None,
                            libraries=[str(driver), "/usr/lib"])
    probe = ("import os, sys; d = sys.argv[1]; print(sorted(os.listdir(d)), os.access(d, os.W_OK),"
             " os.path.exists(sys.argv[2]))")
    try:
        run = subprocess.run([*argv, sys.executable, "-I", "-c", probe, str(driver), str(other)],
                             capture_output=True, text=True, pass_fds=fds, timeout=60, check=False)
    finally:
        for fd in fds:
            os.close(fd)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["['libcuda.so.1']", "False", "False"]  # visible, read-only; nothing else


@pytest.mark.parametrize("sandbox", ["bwrap", "fallback"])
def test_a_gpu_run_gets_its_device_nodes_its_cards_and_no_address_space_cap(tmp_path, monkeypatch,
                                                                            sandbox):
    """Everything `gpu=True` changes, checked without a GPU: character devices standing in for
    /dev/nvidiactl, nvidia-uvm and nvidia0 (the major:minor of /dev/null) are what the host
    'finds'; the notebook must see them as devices it can open and write, the grader's
    CUDA_VISIBLE_DEVICES (not the CPU runs' empty one), no RLIMIT_AS (CUDA reserves tens of GiB
    of address space at start) and the hardware part of /sys, read-only (cuInit fails without
    it), while network, the host's home and the rest of /sys stay out of reach."""
    import resource

    if sandbox == "bwrap" and not BWRAP_OK:
        pytest.skip(f"bubblewrap cannot start: {BWRAP_WHY}")
    dev = tmp_path / "dev"
    dev.mkdir()
    nodes = [str(dev / "nvidiactl"), str(dev / "nvidia-uvm"), str(dev / "nvidia0")]
    _stand_in_devices(*nodes, writable=True)
    monkeypatch.setattr(autograder.sandbox, "gpu_device_nodes", lambda dev="/dev": nodes)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    result = run(tmp_path,
                 "import json, os, resource, socket, stat\n"
                 f"nodes = {nodes!r}\n"
                 "def probe(n):\n"
                 "    st = os.stat(n)\n"
                 "    with open(n, 'wb') as f:\n"
                 "        f.write(b'x')\n"
                 "    return [stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)]\n"
                 "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); net = True\n"
                 "except OSError:\n    net = False\n"
                 "sysfs = [os.path.isdir(f'/sys/{d}') for d in ('devices/system/cpu', 'bus', 'fs')]\n"
                 "json.dump({'nodes': [probe(n) for n in nodes], 'net': net, 'sys': sysfs,\n"
                 "           'sys_writable': os.access('/sys/devices', os.W_OK),\n"
                 "           'cards': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
                 "           'as': resource.getrlimit(resource.RLIMIT_AS)[0],\n"
                 "           'home': os.path.exists(os.path.expanduser('~root/.bashrc'))},\n"
                 "          open(output_dir + '/gpu.json', 'w'))",
                 outputs=["gpu.json"], gpu=True, sandbox=sandbox)
    assert result.status == "ok", result.reason + result.log_tail
    seen = json.loads(Path(result.artifacts["gpu.json"]).read_text())
    assert seen["nodes"] == [[True, 1, 3]] * 3, seen
    assert seen["cards"] == "0" and seen["as"] == resource.RLIM_INFINITY, seen
    if sandbox == "bwrap":  # CUDA reads the hardware tree at start: that part of /sys, read-only
        assert not seen["net"] and not seen["home"], seen
        assert seen["sys"] == [True, True, False] and not seen["sys_writable"], seen
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # the grader chose no cards: all of them
    every = run(tmp_path, "import json, os\njson.dump(os.environ.get('CUDA_VISIBLE_DEVICES'), "
                "open(output_dir + '/gpu.json', 'w'))", outputs=["gpu.json"], gpu=True, sandbox=sandbox)
    assert every.status == "ok", every.reason + every.log_tail
    assert json.loads(Path(every.artifacts["gpu.json"]).read_text()) is None
    plain = run(tmp_path, "import json, os, resource\n"
                f"json.dump([[os.path.exists(n) for n in [*{nodes!r}, '/sys/devices']], "
                "os.environ.get('CUDA_VISIBLE_DEVICES'), resource.getrlimit(resource.RLIMIT_AS)[0]],"
                " open(output_dir + '/gpu.json', 'w'))",
                outputs=["gpu.json"], sandbox=sandbox)  # gpu=False: none of it
    assert plain.status == "ok", plain.reason + plain.log_tail
    exists, cards, cap = json.loads(Path(plain.artifacts["gpu.json"]).read_text())
    assert cards == "" and cap == FAST.memory_bytes, (cards, cap)
    if sandbox == "bwrap":
        assert exists == [False] * 4


def _host_cuda() -> str:
    """Why this host cannot run the GPU sandbox check ('' when it can)."""
    from autograder.sandbox import gpu_device_nodes

    if not gpu_device_nodes():
        return "no NVIDIA device nodes on this host (CI never has a GPU)"
    import torch

    if not torch.cuda.is_available():
        return "NVIDIA device nodes, but the grader's own torch sees no CUDA"
    return ""


@pytest.mark.skipif(bool(_host_cuda()), reason=_host_cuda())
@pytest.mark.parametrize("sandbox", ["bwrap", "fallback"])
def test_a_gpu_sandbox_runs_cuda(tmp_path, sandbox):
    """On a GPU host (`[grading] gpu = true`): torch inside the sandbox finds the card and runs
    on it; the bubblewrap sandbox is the same otherwise (no network, nothing of the host's home)."""
    if sandbox == "bwrap" and not BWRAP_OK:
        pytest.skip(f"bubblewrap cannot start: {BWRAP_WHY}")
    result = run(tmp_path,
                 "import json, os, socket, torch\n"
                 "ok = torch.cuda.is_available()\n"
                 "a = torch.arange(12.0, device='cuda').reshape(3, 4) if ok else None\n"
                 "s = float((a @ a.T).sum().cpu()) if ok else None\n"
                 "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); net = True\n"
                 "except OSError:\n    net = False\n"
                 "json.dump({'cuda': ok, 'devices': torch.cuda.device_count(), 'sum': s, 'net': net,\n"
                 "           'home': os.path.exists(os.path.expanduser('~root/.bashrc'))},\n"
                 "          open(output_dir + '/gpu.json', 'w'))",
                 outputs=["gpu.json"], gpu=True, sandbox=sandbox,
                 limits=Limits(wall_seconds=120, cpu_seconds=120))
    assert result.status == "ok", result.reason + result.log_tail
    seen = json.loads(Path(result.artifacts["gpu.json"]).read_text())
    a = np.arange(12.0).reshape(3, 4)
    assert seen["cuda"] and seen["devices"] >= 1, seen
    assert seen["sum"] == float((a @ a.T).sum())
    if sandbox == "bwrap":
        assert not seen["net"] and not seen["home"], seen


# ------------------------------------------------------------------- an unprivileged grader
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _nobody_can_run_the_tests() -> str:
    """'' when this (root) process can rerun tests as uid 65534, else why not."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0:
        return "the tests already run unprivileged"
    if shutil.which("setpriv") is None:
        return "no setpriv (util-linux) to drop privileges with"
    import json as json_module  # its file says where the standard library came from

    code = ("import json, os, sys, autograder, pytest; open(os.path.realpath(sys.executable), 'rb').close(); "
            "print(json.__file__)")
    probe = subprocess.run([*NOBODY, sys.executable, "-c", code], capture_output=True, check=False,
                           cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HOME": "/tmp"})
    if probe.returncode != 0 or probe.stdout.decode().strip() != json_module.__file__:
        return ("uid 65534 cannot run this interpreter with its own standard library, or read the "
                "checkout (e.g. under a private /root): "
                f"{(probe.stderr or probe.stdout).decode(errors='replace').strip()[-200:]}")
    return ""


@needs_bwrap
@pytest.mark.slow
def test_an_unprivileged_grader_gets_the_same_sandbox():
    """As root the process limit is a pids cgroup and bwrap maps the sandbox user to root
    outside; an ordinary grader gets RLIMIT_NPROC and a user namespace. Rerun the checks that
    differ as uid 65534 (nobody)."""
    import subprocess
    import sys
    import tempfile

    why = _nobody_can_run_the_tests()
    if why:
        pytest.skip(why)
    scratch = tempfile.mkdtemp(prefix="maestro-nobody-")
    os.chmod(scratch, 0o1777)
    try:
        env = {**os.environ, "HOME": scratch, "TMPDIR": scratch, "MAESTRO_HOME": f"{scratch}/home",
               "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("PYTEST_XDIST_WORKER", None)
        picks = ("good_notebook or fork_bomb or infinite_loop or sees_nothing or memory_exhaustion "
                 "or fallback_enforces")
        out = subprocess.run(
            [*NOBODY, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
             f"--basetemp={scratch}/pytest", __file__, "-k", picks],
            capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=600,
            check=False)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert "6 passed" in out.stdout, out.stdout[-2000:]
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)

"""Install metadata agrees with itself, and `import maestro` stays light."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"] + extras["dev"] + extras["server"] + extras["grading"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    listed = {_name(r) for r in pip_lists[0]}
    assert wanted == listed, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    assert "python=3.11" in env["dependencies"]


def test_torch_is_pinned_to_the_cpu_build_everywhere():
    pins = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln.startswith("torch")]
    assert pins == ["torch==2.13.0"]
    env = (ROOT / "environment.yml").read_text()
    assert "torch==2.13.0" in env
    assert "torchvision" not in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_import_maestro_is_light():
    code = (
        "import sys, maestro, maestro.datasets, maestro.models, maestro.attacks; "
        "heavy = [m for m in ('transformers', 'datasets', 'sklearn', 'torchvision', 'pandas') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"import maestro pulled in: {out.stdout.strip()}"


def test_every_lazy_name_resolves_to_what_it_names():
    import types

    import maestro.attacks
    import maestro.defenses
    import maestro.evaluation

    for package in (maestro.attacks, maestro.defenses, maestro.evaluation):
        for name in package._REGISTRY:
            value = getattr(package, name)
            assert not isinstance(value, types.ModuleType), f"{package.__name__}.{name} is a module"
    assert callable(maestro.evaluate) and callable(maestro.robustness_curve)


def test_without_root_the_debian_packages_are_named_not_installed():
    """`make debs` as a user who may not install (no root, no sudo): the exact command and what
    goes missing without each package are printed, nothing is installed, and make goes on
    (exit 0). Real tools on a PATH that lacks bwrap, chromium and sudo."""
    import os
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # where uid 65534 may read
        os.chmod(tmp, 0o755)
        tools = Path(tmp) / "bin"
        tools.mkdir()
        for name in ("id", "apt-get"):
            os.symlink(shutil.which(name), tools / name)
        script = Path(tmp) / "system-packages.sh"
        shutil.copy(ROOT / "scripts" / "system-packages.sh", script)
        argv = ["/bin/bash", str(script), "bubblewrap", "chromium"]
        if os.geteuid() == 0:  # play an ordinary user
            argv = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                             env={"PATH": str(tools), "HOME": tmp}, cwd=tmp)
    assert out.returncode == 0, out.stderr
    assert "sudo apt-get install -y bubblewrap chromium" in out.stderr, out.stderr
    assert "without bubblewrap: the autograder grades in its weaker fallback sandbox" in out.stderr
    assert "installing Debian packages" not in out.stdout + out.stderr

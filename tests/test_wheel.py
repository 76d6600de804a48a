"""hiprouter as a site installs it: a wheel, installed non-editable, run outside the checkout.

The wheel must carry the migrations, the report templates and the demo models as package
data. Its dependencies come from the test environment (a .pth file), so the test needs no
network; hiprouter itself must come from the wheel, never from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HIPROUTER_CONFIG")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_every_package_is_listed_in_pyproject() -> None:
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "hiprouter").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml packages: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the hiprouter wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools writes hiprouter.egg-info into the source folder, and a
    # stale one in the checkout would shadow the installed entry points.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "tests", "bench", "build", "*.egg-info", "__pycache__"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--quiet", "-w", str(root / "dist"), str(source)], cwd=root)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (root / "dist").glob("hiprouter-*.whl")
    base = getattr(sys, "_base_executable", sys.executable)
    venv = root / "venv"
    made = _run([base, "-m", "venv", str(venv)], cwd=root)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                      "['purelib'])"], cwd=root).stdout.strip())
    # The dependencies (torch, pydicom, ...) of the test environment, after the venv's own
    # site-packages (a path added by a .pth does not run that folder's .pth files, so the
    # checkout's editable install stays invisible).
    (site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                 str(wheel)], cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv / "bin"


def test_wheel_carries_its_data_and_runs_outside_the_checkout(installed: Path,
                                                             tmp_path: Path) -> None:
    python, hiprouter = str(installed / "python"), str(installed / "hiprouter")
    where = _run([python, "-c", "import hiprouter, hiprouter.resources as r; "
                  "print(hiprouter.__file__); print(r.sr_templates_dir()); "
                  "print(r.alembic_dir()); print(r.models_dir())"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    lines = where.stdout.split()
    assert all(line.startswith(str(installed.parent)) for line in lines), lines
    assert not any(line.startswith(str(REPO)) for line in lines), lines

    # every file of every shipped model folder is in the wheel (a card may name side files,
    # e.g. the OOD statistics ood.npz)
    shipped = Path(lines[-1])
    missing = [str(f.relative_to(REPO / "models")) for f in (REPO / "models").rglob("*")
               if f.is_file() and not (shipped / f.relative_to(REPO / "models")).is_file()]
    assert missing == [], missing

    kinds = _run([hiprouter, "models", "kinds", "--json"], cwd=tmp_path)
    assert kinds.returncode == 0 and '"hardware"' in kinds.stdout, kinds.stderr
    upgraded = _run([hiprouter, "db", "upgrade"], cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "var" / "hiprouter.db").is_file()

    demo = _run([hiprouter, "demo", "--studies", "1", "--timeout", "300"], cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "all results at the PACS" in demo.stdout
    assert "DEMO MODEL TRAINED ON SYNTHETIC IMAGES" in demo.stdout
    (run,) = (tmp_path / "var" / "demo").glob("run-*")
    assert len(list((run / "pacs").glob("*.dcm"))) >= 3  # SR, SC, KOS

"""Admin comfort: tables that keep whole names in a pipe, `status --watch`, the systemd
units (checked by systemd-analyze when it is installed)."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hiprouter import db as dbmod
from tests.conftest import REPO

CLI = [sys.executable, "-c", "from hiprouter.cli import main; main()"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(REPO)
    return env


def _sigint_default() -> None:
    """A child of a shell's background job inherits SIGINT ignored; Ctrl-C must reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _config(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    dbmod.upgrade(url)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": url},
                                   "storage": {"spool_dir": str(tmp_path / "spool")}}))
    return cfg


def test_models_list_in_a_pipe_keeps_whole_names(tmp_path: Path) -> None:
    run = subprocess.run([*CLI, "--config", str(_config(tmp_path)), "models", "list"],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert "hardware-demo" in run.stdout and "…" not in run.stdout
    assert str(REPO / "models" / "hardware-demo") in run.stdout


def test_status_watch_json_prints_one_object_per_interval(tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, "--config", str(_config(tmp_path)), "status", "--watch",
                             "--json", "--interval", "0.3"], stdout=subprocess.PIPE,
                            text=True, env=_env(), preexec_fn=_sigint_default)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)  # drain: a full pipe would block its last write
    objects = [json.loads(line) for line in lines]
    assert all("studies" in o and "sends" in o for o in objects)
    assert proc.returncode == 0


def test_status_watch_refreshes_in_a_terminal(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    env = {**_env(), "TERM": "xterm", "COLUMNS": "120", "LINES": "50"}
    proc = subprocess.Popen([*CLI, "--config", str(_config(tmp_path)), "status", "--watch",
                             "--interval", "0.3"], stdin=follower, stdout=follower,
                            stderr=follower, env=env, close_fds=True,
                            preexec_fn=_sigint_default)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and seen.count(b"Ctrl-C to stop") < 3:
            try:
                seen += os.read(leader, 65536)
            except OSError:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        end = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < end:  # drain the terminal
            try:
                if select.select([leader], [], [], 0.5)[0]:
                    os.read(leader, 65536)
            except OSError:
                time.sleep(0.05)
        proc.wait(10)
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "counts by state" in text and text.count("Ctrl-C to stop") >= 3
    assert proc.returncode == 0


@pytest.mark.parametrize("unit", ["hiprouter.service", "hiprouter-worker@.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    exe = shutil.which("hiprouter") or str(Path(sys.executable).parent / "hiprouter")
    if not Path(exe).exists():
        pytest.skip("no hiprouter console script in this environment")
    text = (REPO / "systemd" / unit).read_text().replace(
        "/opt/hiprouter/.venv/bin/hiprouter", exe)
    (tmp_path / unit).write_text(text)
    name = unit.replace("@.", "@1.")
    run = subprocess.run([tool, "verify", str(tmp_path / name)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    problems = [line for line in run.stderr.splitlines() if unit.split("@")[0] in line]
    assert run.returncode == 0 and problems == [], run.stderr
    if "worker" in unit:
        assert "hiprouter worker $HIPROUTER_WORKER_ARGS" in text


def test_worker_serves_its_metrics(tmp_path: Path) -> None:
    import urllib.request

    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([*CLI, "--config", str(_config(tmp_path)), "worker", "--count",
                             "1", "--metrics-port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        assert "hiprouter_dead_letters" in text
        with pytest.raises(urllib.error.HTTPError):  # no status page on a worker
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0

"""`hiprouter demo` works every time it is run in the same folder, and when it gives up it
says what it was waiting for (a fast test pipeline stands in for the models)."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from hiprouter.cli import main
from hiprouter.demo import fresh_run_folder


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "pipelines": {"marked": {"kind": "marked"}},
        "plugins": ["tests.router.testpipes"],
        "report": {"secondary_captures": False},
        "destinations": {"pacs": {"ae_title": "ANY", "host": "127.0.0.1", "port": 4242}},
        "rules": [{"name": "all", "pipelines": ["marked"], "send_to": ["pacs"]}],
    }))
    return path


def test_demo_runs_twice_in_the_same_folder(tmp_path: Path) -> None:
    config, workdir = _config(tmp_path), tmp_path / "demo"
    for _ in range(2):
        result = CliRunner().invoke(main, ["--config", str(config), "demo", "--studies", "1",
                                           "--workdir", str(workdir), "--timeout", "300"])
        assert result.exit_code == 0, result.output
        assert "all results at the PACS" in result.output
    runs = sorted(workdir.glob("run-*"))
    assert len(runs) == 2
    assert all(len(list((run / "pacs").glob("*.dcm"))) == 2 for run in runs)  # SR, KOS


def test_demo_that_gives_up_says_what_it_waited_for(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(_config(tmp_path)), "demo",
                                       "--studies", "1", "--workdir", str(tmp_path / "demo"),
                                       "--timeout", "0.5"])
    assert result.exit_code == 1
    assert "gave up after 0.5 s (--timeout) waiting for the results of 1 of 1" in result.output
    assert "the triage KOS" in result.output and "router: study receiving" in result.output


def test_run_folders_never_collide(tmp_path: Path) -> None:
    made = {fresh_run_folder(tmp_path) for _ in range(3)}  # within one second
    assert len(made) == 3 and all(p.is_dir() for p in made)

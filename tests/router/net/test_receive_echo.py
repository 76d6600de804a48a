"""`hiprouter echo` against the running receiver and against nothing."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import yaml
from click.testing import CliRunner

from hiprouter.cli import main
from tests.conftest import free_port
from tests.router.conftest import RouterProcess


def test_echo_by_address_and_by_destination_name(
    router_process: Callable[..., RouterProcess], tmp_path: Path
) -> None:
    router = router_process()
    config = tmp_path / "client.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"ae_title": "ECHOER"},
        "database": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
        "destinations": {
            "router": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": router.port},
            "nobody": {"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()},
        },
    }))
    runner = CliRunner()
    ok = runner.invoke(main, ["--config", str(config), "echo",
                              f"HIPROUTER@127.0.0.1:{router.port}"])
    assert ok.exit_code == 0 and "C-ECHO success" in ok.output, ok.output
    by_name = runner.invoke(main, ["--config", str(config), "echo", "router"])
    assert by_name.exit_code == 0, by_name.output
    wrong_ae = runner.invoke(main, ["--config", str(config), "echo",
                                    f"OTHER@127.0.0.1:{router.port}"])
    assert wrong_ae.exit_code == 1 and "rejected" in wrong_ae.output
    closed = runner.invoke(main, ["--config", str(config), "echo", "nobody", "--timeout", "3"])
    assert closed.exit_code == 1 and "cannot connect" in closed.output
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        mute = runner.invoke(main, ["--config", str(config), "echo",
                                    f"MUTE@127.0.0.1:{port}", "--timeout", "2"])
    assert mute.exit_code == 1
    assert "no answer to the association request within 2 s" in mute.output, mute.output
    bad = runner.invoke(main, ["--config", str(config), "echo", "not-a-target"])
    assert bad.exit_code == 2 and "AE@HOST:PORT" in bad.output

"""Files only for the service: a real `hiprouter serve` started under umask 022 receives,
quarantines, runs a pipeline and dispatches; every file it made is 0600, every folder 0700
(0640/2750 with `storage.group`)."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import func, select

from hiprouter.schema import AuditEvent, Send
from tests.router.conftest import RouterProcess, make_cr_files, storescu
from tests.router.pacs import StoreSCP
from tests.router.rawdul import wait_until
from tests.toy import NO_ANATOMY_CHECK

Factory = Callable[..., RouterProcess]
REPO = Path(__file__).resolve().parents[2]
MADE_BY_TEST = {"config.yaml", "hiprouter.log"}


def _config(pacs: StoreSCP, tmp_path: Path, **storage: Any) -> dict[str, Any]:
    return {
        "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1",
                                  "port": pacs.port}},
        "pipelines": {"marked": {"kind": "marked"}},
        "plugins": ["tests.router.testpipes"],
        "report": {"secondary_captures": False},
        "inference": NO_ANATOMY_CHECK,
        "rules": [{"name": "hip", "match": {"tag": "BodyPartExamined", "equals": "HIP"},
                   "pipelines": ["marked"], "send_to": ["pacs"]}],
        "queue": {"poll_interval_s": 0.1},
        "storage": {"spool_dir": str(tmp_path / "state" / "spool"),
                    "output_dir": str(tmp_path / "state" / "outputs"), "min_free_mb": 50,
                    **storage},
        "database": {"url": f"sqlite:///{tmp_path / 'state' / 'db' / 'hiprouter.db'}"},
    }


def _run_once(router_process: Factory, tmp_path: Path, **storage: Any) -> Path:
    """Start under umask 022, store a study and a broken file, wait for the report at the
    PACS, stop; returns the folder the server kept its state in."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    try:
        router = router_process(_config(pacs, tmp_path, **storage), start=False,
                                env={"PYTHONPATH": str(REPO)})
        router.umask = 0o022
        router.start()
        files = make_cr_files(tmp_path / "study", 2, size=64)
        assert storescu(router.port, files).returncode == 0
        broken = make_cr_files(tmp_path / "broken", 1, size=64)[0]
        ds = dcmread(broken)
        del ds.StudyInstanceUID
        ds.save_as(broken)
        storescu(router.port, [broken])
        sent = select(func.count()).select_from(Send).where(Send.state == "sent")

        def done() -> bool:
            with router.session_factory()() as s:
                return s.scalar(sent) == 2  # the study's SR and KOS

        wait_until(done, 120, "the report to reach the PACS")
        with router.session_factory()() as s:
            quarantined = s.scalars(select(AuditEvent).where(
                AuditEvent.event_type_code == "HIP002")).one()
        assert Path(quarantined.objects["quarantine_path"]).is_file()
        assert router.stop() == 0
    finally:
        pacs.stop()
    return tmp_path / "state"


def _modes(root: Path) -> dict[str, tuple[str, int]]:
    found = {}
    for path in [root, *root.rglob("*")]:
        if path.name in MADE_BY_TEST:
            continue
        st = path.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        found[str(path.relative_to(root.parent))] = (kind, stat.S_IMODE(st.st_mode))
    return found


def test_files_are_the_services_only_under_umask_022(
    router_process: Factory, tmp_path: Path
) -> None:
    state = _run_once(router_process, tmp_path)
    modes = _modes(state)
    kinds = {name.split("/")[1] if "/" in name else name for name in modes}
    assert {"spool", "outputs", "db"} <= kinds
    assert any("quarantine/" in n for n in modes) and any(n.endswith(".db") for n in modes)
    assert any(n.startswith("state/outputs/") and n.endswith(".dcm") for n in modes)
    wrong = {n: f"{k} {m:04o}" for n, (k, m) in modes.items()
             if m != (0o700 if k == "dir" else 0o600)}
    assert not wrong, wrong


def test_files_go_to_the_configured_group(router_process: Factory, tmp_path: Path) -> None:
    group = grp.getgrgid(os.getegid()).gr_name
    state = _run_once(router_process, tmp_path, group=group)
    modes = _modes(state)
    wrong = {n: f"{k} {m:04o}" for n, (k, m) in modes.items()
             if m != (0o2750 if k == "dir" else 0o640)}
    assert not wrong, wrong
    assert {p.stat().st_gid for p in [state, *state.rglob("*")]} == {os.getegid()}

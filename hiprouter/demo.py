"""`hiprouter demo`: the whole flow on one machine, for a first look.

Makes a few synthetic studies, starts the router (SCP, workers, dispatcher) and a local
receiving PACS (a pynetdicom Storage SCP writing to a folder), sends the studies, waits
until the results arrived at the PACS, then prints where they are and the SR text.
Everything lives under one work folder; nothing else on the machine is touched.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.presentation import build_context
from rich.console import Console
from rich.table import Table

from hiprouter import db as dbmod
from hiprouter import logs
from hiprouter.config import Destination, PipelineConfig, Settings
from hiprouter.synth.study import SynthStudy, make_study

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
KIND = {SR_CLASS: "SR", SC_CLASS: "SC", KOS_CLASS: "KOS"}


@dataclass
class LocalPACS:
    """A minimal receiving PACS: stores whatever it gets in `folder`, one file per instance."""

    folder: Path
    ae_title: str = "DEMOPACS"
    port: int = 0
    received: dict[str, list[Path]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: Any = None

    def start(self) -> LocalPACS:
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])
        return self

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        name = hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()[:24] + ".dcm"
        path = self.folder / name
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.setdefault(str(ds.StudyInstanceUID), []).append(path)
        return 0x0000

    def files(self, study_uid: str) -> list[Path]:
        with self._lock:
            return list(dict.fromkeys(self.received.get(study_uid, [])))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


DEFAULT_PIPELINES = {"hardware": {"kind": "hardware"}, "screening": {"kind": "screening"}}
"""What the demo runs when the configuration has no pipelines (embedded defaults)."""


def demo_settings(base: Settings, workdir: Path, pacs: LocalPACS, port: int) -> Settings:
    """The user's settings (rules, pipelines) with a private database, spool and PACS.

    Without rules (embedded defaults, no config.yaml) the demo routes every CR/DX series to
    the configured pipelines, or to the bundled hardware and screening demos.
    """
    s = base.model_copy(deep=True)
    if not s.rules:
        pipelines = s.pipelines or {n: PipelineConfig.model_validate(c)
                                    for n, c in DEFAULT_PIPELINES.items()}
        s = Settings.model_validate({
            **s.model_dump(exclude={"rules", "pipelines", "destinations"}),
            "pipelines": {n: p.model_dump() for n, p in pipelines.items()},
            "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1",
                                      "port": pacs.port}},
            "rules": [{"name": "demo", "match": {"tag": "Modality", "in": ["CR", "DX"]},
                       "pipelines": list(pipelines), "send_to": ["pacs"]}]})
    s.node.host, s.node.port, s.node.allowed_calling = "127.0.0.1", port, None
    s.database.url = f"sqlite:///{workdir / 'hiprouter.db'}"
    s.storage.spool_dir, s.storage.output_dir = workdir / "spool", workdir / "outputs"
    s.storage.min_free_mb = min(s.storage.min_free_mb, 100)
    s.studies.complete_after_s, s.studies.sweep_interval_s = 2.0, 0.5
    s.queue.poll_interval_s = 0.2
    s.destinations = {"pacs": Destination(ae_title=pacs.ae_title, host="127.0.0.1",
                                          port=pacs.port)}
    for rule in s.rules:
        rule.send_to = ["pacs"] if rule.send_to else []
        rule.forward_to = []
    return s


def send_study(study: SynthStudy, port: int, called: str, timeout_s: float = 60.0) -> None:
    """C-STORE every image of a study in one association (as a modality would); each
    network step waits at most `timeout_s`."""
    ae = AE(ae_title="DEMOMODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for ds in (img.dataset for img in study.images):
        ctx = build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        if all(c.abstract_syntax != ctx.abstract_syntax for c in ae.requested_contexts):
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "no answer"
        raise RuntimeError(f"the router did not accept the demo association within "
                           f"{timeout_s:.0f} s ({why})")
    try:
        for img in study.images:
            status = assoc.send_c_store(img.dataset)
            if status is None or "Status" not in status:
                raise RuntimeError(f"no C-STORE response from the router within "
                                   f"{timeout_s:.0f} s")
            if status.Status != 0x0000:
                raise RuntimeError(f"the router answered C-STORE with 0x{status.Status:04X}")
    finally:
        assoc.release()


def sr_text(ds: Dataset) -> list[str]:
    """The report's prepopulated text: the "Impression" TEXT item(s) of the SR."""
    out: list[str] = []

    def walk(items: Any) -> None:
        for item in items or []:
            names = item.get("ConceptNameCodeSequence") or []
            if item.get("ValueType") == "TEXT" and names and names[0].CodeMeaning == "Impression":
                out.append(str(item.TextValue))
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return out


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DEMO_CASES: tuple[dict[str, Any], ...] = (
    {"hardware": {"R": "tha", "L": "no_hardware"}, "views": ("ap_pelvis",)},
    {"hardware": {"R": "dynamic_hip_screw", "L": "no_hardware"},
     "views": ("ap_pelvis", "cross_table_lateral"), "side": "R"},
    {"hardware": {"R": "no_hardware", "L": "no_hardware"},
     "fracture": {"R": "femoral_neck_fracture"}, "views": ("ap_pelvis",)},
    {"hardware": {"R": "tha", "L": "tha"}, "views": ("ap_pelvis",)},
    {"hardware": {"R": "no_hardware", "L": "im_nail"}, "views": ("ap_hip", "frog_leg"),
     "side": "L"},
    {"hardware": {"R": "cannulated_screws", "L": "no_hardware"}, "views": ("ap_pelvis",)},
)


def run_demo(base: Settings, workdir: Path, studies: int, seed: int, timeout_s: float,
             console: Console, verbose: bool = False) -> int:
    """Run the demo; returns 0 when every study's results reached the PACS."""
    if not verbose:  # the router's own log lines would drown the demo's output
        logs.configure("WARNING", base.logging.json_logs)
    from hiprouter.service import build_node, private_files

    private_files(base)

    # Every run starts from fresh state (its own database, spool and PACS folder), so a
    # second run in the same folder does the whole flow again instead of finding duplicates.
    workdir = fresh_run_folder(workdir)
    console.print(f"[bold]hiprouter demo[/] in {workdir}")
    made = [make_study(seed, i, **DEMO_CASES[i % len(DEMO_CASES)]) for i in range(studies)]
    console.print(f"made {len(made)} synthetic studies "
                  f"({sum(len(s.images) for s in made)} radiographs)")
    pacs = LocalPACS(workdir / "pacs").start()
    settings = demo_settings(base, workdir, pacs, free_port())
    dbmod.upgrade(settings.database.url)
    node = build_node(settings)
    node.start()
    console.print(f"router {settings.node.ae_title}@127.0.0.1:{settings.node.port} -> "
                  f"PACS {pacs.ae_title}@127.0.0.1:{pacs.port} ({pacs.folder})")
    pending = {s.study_uid for s in made}
    waiting: list[str] = []
    try:
        started = time.monotonic()
        for study in made:
            send_study(study, settings.node.port, settings.node.ae_title,
                       max(5.0, timeout_s - (time.monotonic() - started)))
        console.print("studies sent; waiting for the results at the PACS (study completes "
                      f"after {settings.studies.complete_after_s:.0f} s idle, then inference; "
                      f"at most {timeout_s:.0f} s in all)")
        while pending and time.monotonic() - started < timeout_s:
            for uid in list(pending):
                if "KOS" in _kinds_at(pacs, uid):
                    pending.discard(uid)
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        if pending:
            waiting = _what_is_missing(node, pacs, sorted(pending))
    finally:
        node.stop()
        pacs.stop()
    _print_results(made, pacs, console)
    if pending:
        console.print(f"[red]gave up after {timeout_s:g} s (--timeout) waiting for the "
                      f"results of {len(pending)} of {len(made)} studies at the local PACS:[/]")
        for line in waiting:
            console.print(f"[red]  {line}[/]")
        console.print(f"[red]router database and files: {workdir}[/]")
        return 1
    console.print(f"all results at the PACS after {elapsed:.1f} s. Database: "
                  f"{settings.database.url}")
    return 0


def fresh_run_folder(workdir: Path) -> Path:
    """A new folder `run-<date>-<time>` (with -2, -3, ... when that exists) under `workdir`."""
    base = workdir.resolve() / time.strftime("run-%Y%m%d-%H%M%S")
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder under {workdir}")


def _kinds_at(pacs: LocalPACS, study_uid: str) -> set[str | None]:
    return {KIND.get(str(dcmread(p, stop_before_pixels=True).SOPClassUID))
            for p in pacs.files(study_uid)}


def _what_is_missing(node: Any, pacs: LocalPACS, study_uids: list[str]) -> list[str]:
    """Per study still waited for: what reached the PACS, and where the router is with it."""
    from sqlalchemy import func, select

    from hiprouter.schema import Job, Send, Study

    lines = []
    with node.factory() as session:
        for uid in study_uids:
            arrived = sorted(k for k in _kinds_at(pacs, uid) if k)
            study = session.scalars(select(Study).where(Study.study_uid == uid)).first()
            jobs = dict(session.execute(select(Job.state, func.count()).where(
                Job.study_uid == uid).group_by(Job.state)).all())
            sends = dict(session.execute(select(Send.state, func.count()).where(
                Send.study_uid == uid).group_by(Send.state)).all())
            errors = [e for e in session.scalars(select(Job.last_error).where(
                Job.study_uid == uid, Job.last_error.is_not(None)))][:1]
            state = study.state if study is not None else "not received"
            lines.append(
                f"study ...{uid[-16:]}: the triage KOS (the last result); at the PACS: "
                f"{', '.join(arrived) or 'nothing'}; router: study {state}, jobs "
                f"{_counts(jobs)}, sends {_counts(sends)}"
                + (f"; last job error: {errors[0][:200]}" if errors else ""))
    return lines


def _counts(by_state: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) or "none"


def _print_results(made: list[SynthStudy], pacs: LocalPACS, console: Console) -> None:
    table = Table(title="results at the PACS")
    for col in ("study", "truth (R / L)", "triage flags", "objects"):
        table.add_column(col)
    texts: list[tuple[str, list[str]]] = []
    for study in made:
        kinds: list[str] = []
        priorities: list[str] = []
        for path in pacs.files(study.study_uid):
            ds = dcmread(path)
            kind = KIND.get(str(ds.SOPClassUID))
            if kind is None:
                continue
            kinds.append(kind)
            if kind == "KOS":  # one per study episode
                priorities.append(str(ds.SeriesDescription))
            if kind == "SR":
                texts.append((study.study_uid, sr_text(ds)))
        truth = " / ".join(
            study.hips[s].hardware
            + (f" + {study.hips[s].fracture}" if study.hips[s].fracture != "none" else "")
            for s in ("R", "L"))
        table.add_row(study.study_uid[-16:], truth, "\n".join(sorted(priorities)) or "-",
                      ", ".join(f"{n} {k}" for k, n in sorted(Counter(kinds).items())))
    console.print(table)
    console.print(f"files at the PACS: {pacs.folder}")
    for uid, lines in texts:
        console.rule(f"SR text, study ...{uid[-16:]}")
        for line in lines:
            console.print(line)

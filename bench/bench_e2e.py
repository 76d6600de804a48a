"""End-to-end benchmark: synthetic 2-view studies -> hiprouter -> SR at the PACS.

Sends N studies (AP pelvis + lateral) in one go with DCMTK storescu (TCP_NODELAY=1), one
association per study, to a `hiprouter serve` subprocess whose results go to a local
Storage SCP that timestamps each arrival. Prints, per model, the latency from the last
C-STORE acknowledgement of a study to its SR stored at the PACS (p50, p95; this includes
`studies.complete_after_s`, printed too) and studies per minute.

    .venv/bin/python bench/bench_e2e.py --studies 10
    .venv/bin/python bench/bench_e2e.py --studies 10 --models demo b4
    .venv/bin/python bench/bench_e2e.py --studies 10 --models demo --pipelines all

`--pipelines all` runs every pipeline kind that ships demo weights (hardware, screening,
fracture, prosthesis_failure, fixation_device, onfh) in one job per study; the studies then carry a
THA on one hip and internal fixation on the other in turn, so the cascades run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchwait import run as run_limited  # noqa: E402
from bench.benchwait import wait_for  # noqa: E402
from hiprouter.demo import SR_CLASS, LocalPACS, free_port  # noqa: E402
from hiprouter.synth.study import make_study  # noqa: E402

COMPLETE_AFTER_S = 1.0
WARMUP_TIMEOUT_S = float(os.environ.get("BENCH_WARMUP_TIMEOUT_S", "600"))
ALL_PIPELINES = ["hardware", "screening", "fracture", "prosthesis_failure",
                 "fixation_device", "onfh"]
HARDWARE_CYCLE = [{"R": "tha", "L": "no_hardware"}, {"R": "no_hardware", "L": "dynamic_hip_screw"},
                  {"R": "no_hardware", "L": "no_hardware"}, {"R": "cannulated_screws", "L": "tha"}]


class TimedPACS(LocalPACS):
    """The demo PACS, remembering when each study's SR arrived."""

    def __init__(self, folder: Path, prefer_explicit: bool = False) -> None:
        super().__init__(folder)
        self.sr_at: dict[str, float] = {}
        self.prefer_explicit = prefer_explicit

    def start(self) -> LocalPACS:
        """pynetdicom's acceptor takes its own first matching syntax: Implicit VR Little
        Endian by default (on the router's combined context; since 2026-11-29 the router
        also offers Explicit VR alone, which it accepts, so the files go out as stored;
        before, the router re-encoded them). With `prefer_explicit` it prefers Explicit VR
        Little Endian, as DCMTK's storescp does by default (``+x=``)."""
        if not self.prefer_explicit:
            return super().start()
        from pydicom.uid import ExplicitVRLittleEndian
        from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt

        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = [
            build_context(cx.abstract_syntax,
                          [ExplicitVRLittleEndian,
                           *(t for t in cx.transfer_syntax if t != ExplicitVRLittleEndian)])
            for cx in AllStoragePresentationContexts]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])
        return self

    def _on_store(self, event: Any) -> int:
        status = super()._on_store(event)
        if str(event.dataset.SOPClassUID) == SR_CLASS:
            self.sr_at.setdefault(str(event.dataset.StudyInstanceUID), time.monotonic())
        return status


def b4_model_dir(root: Path) -> Path:
    """EfficientNet-B4 at 380 px with random weights (timing only)."""
    from hiprouter.inference.models import ModelCard, create_model, save_model
    from hiprouter.pipelines.hardware import HARDWARE as HARDWARE_CLASSES

    out = root / "efficientnet_b4-random"
    card = ModelCard(name="efficientnet_b4 random (timing only)", version="0.0.0",
                     architecture="efficientnet_b4", input_size=380,
                     classes=[c.key for c in HARDWARE_CLASSES],
                     training_data="none: random weights for benchmarking", synthetic_demo=True)
    save_model(create_model("efficientnet_b4", len(HARDWARE_CLASSES)), card, out)
    return out


def run(model_dirs: list[Path], label: str, studies: list[list[Path]],
        warmups: list[list[Path]], work: Path, runtime: str, workers: int,
        pipelines: list[str], sc_compression: str | None = None,
        sc_max_side: int | None = None, inference_threads: int | None = None,
        worker_processes: int = 0, pacs_prefers: str = "implicit") -> dict[str, Any]:
    pacs = TimedPACS(work / "pacs", prefer_explicit=pacs_prefers == "explicit").start()
    port = free_port()
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    config = {
        "node": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": port},
        "database": {"url": f"sqlite:///{work / 'hiprouter.db'}"},
        "storage": {"spool_dir": str(work / "spool"), "output_dir": str(work / "out"),
                    "min_free_mb": 100},
        "studies": {"complete_after_s": COMPLETE_AFTER_S, "sweep_interval_s": 0.2},
        "queue": {"workers": workers, "poll_interval_s": 0.1},
        "inference": {"threads": inference_threads},
        "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1",
                                  "port": pacs.port}},
        "rule_mode": base["rule_mode"],
        # The default rules with the pipelines measured (hardware alone: one model per run).
        "rules": [{**rule, "pipelines": pipelines} for rule in base["rules"]],
        "pipelines": {name: {"kind": name,
                             **({"models": [str(p) for p in model_dirs]}
                                if name == "hardware" and model_dirs else {}),
                             **({"runtime": runtime} if name != "onfh" else {})}
                      for name in pipelines},
        "logging": {"level": "INFO", "json_logs": True},  # job timings come from the log
        # the report settings of config.yaml unless the command line names others
        "report": {**base.get("report", {}),
                   **({"sc_compression": sc_compression} if sc_compression else {}),
                   **({"sc_max_side": sc_max_side} if sc_max_side else {})},
    }
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-c", "from hiprouter.cli import main; main()",
                             "--config", str(cfg), "serve"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=work,
                            env={**os.environ, "PYTHONPATH": path})  # this checkout's code
    env = {**os.environ, "TCP_NODELAY": "1"}
    logs = [work / "serve.log"] if workers > 0 else []
    extra: list[subprocess.Popen[bytes]] = []
    try:
        def serve_alive() -> str | None:
            for p, name in [(proc, "serve"), *((w, "worker") for w in extra)]:
                if p.poll() is not None:
                    return (f"hiprouter {name} exited ({p.returncode}): "
                            + (work / "serve.log").read_text()[-3000:])
            return None

        def echo_ok() -> bool:
            return run_limited(["echoscu", "-aec", "HIPROUTER", "127.0.0.1", str(port)], 30,
                       "a C-ECHO answer", env=env, capture_output=True).returncode == 0

        wait_for(echo_ok, 60, "hiprouter serve to answer C-ECHO", 0.3, serve_alive)
        # serve has migrated the database: job processes may start now
        for i in range(worker_processes):
            logs.append(work / f"worker-{i}.log")
            threads = ["--inference-threads", str(inference_threads)] if inference_threads else []
            extra.append(subprocess.Popen(
                [sys.executable, "-c", "from hiprouter.cli import main; main()",
                 "--config", str(cfg), "worker", "--count", "1", "--no-dispatch", *threads],
                stdout=open(logs[-1], "wb"), stderr=subprocess.STDOUT, cwd=work,  # noqa: SIM115
                env={**os.environ, "PYTHONPATH": path}))
        for log in logs[1 if workers > 0 else 0:]:
            wait_for(lambda log=log: "worker process ready" in log.read_text(errors="replace"),
                     120, f"{log.stem} to start", 0.2, serve_alive)
        # Warm-up: a process's first job loads the models; those studies are not counted.
        # Rounds of one study per job process at once until every process has run one
        # (which process takes a study is first come, first served).
        per_round = max(1, len(logs))
        rounds = [warmups[i:i + per_round] for i in range(0, len(warmups), per_round)]
        for n, batch in enumerate(rounds):
            for warmup in batch:
                run_limited(["storescu", "-aec", "HIPROUTER", "127.0.0.1", str(port),
                             *map(str, warmup)],
                    300, "a warm-up study to be stored", env=env, check=True,
                    capture_output=True)
            wait_for(lambda b=batch: all(w[0].parent.name in pacs.sr_at for w in b),
                     WARMUP_TIMEOUT_S, "the warm-up studies' SRs at the PACS (model loading)",
                     0.2, serve_alive)
            if all('"job done"' in log.read_text(errors="replace") for log in logs):
                break
            if n == len(rounds) - 1:
                raise RuntimeError("the warm-up studies ran out before every job process "
                                   "had run a job")
        # (an error on the way shows in serve.log: see `logged_errors` below)
        acked: dict[str, float] = {}
        started = time.monotonic()
        for files in tqdm(studies, desc=f"{label}: sending", unit="study"):
            run_limited(["storescu", "-aec", "HIPROUTER", "127.0.0.1", str(port),
                         *map(str, files)],
                300, "a study to be stored", env=env, check=True, capture_output=True)
            acked[files[0].parent.name] = time.monotonic()
        with tqdm(total=len(studies), desc=f"{label}: waiting for SRs", unit="study") as bar:
            done = [0]

            def all_srs() -> bool:
                now_done = sum(1 for uid in acked if uid in pacs.sr_at)
                bar.update(now_done - done[0])
                done[0] = now_done
                return now_done == len(studies)

            wait_for(all_srs, 1800, f"the SRs of {len(studies)} studies at the PACS", 0.2,
                     serve_alive)
        total = max(pacs.sr_at.values()) - started
        lat = np.array([pacs.sr_at[uid] - acked[uid] for uid in acked])
        rss = {name: rss_mib(p.pid) for p, name in
               [(proc, "serve"), *((w, f"worker {i}") for i, w in enumerate(extra))]}
    except Exception:
        for line in logged_errors(work / "serve.log"):
            print("serve.log:", line, file=sys.stderr)
        raise
    finally:
        for w in extra:
            w.terminate()
        for w in extra:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # report it, keep the figures of this run
            print("hiprouter serve did not stop within 30 s of SIGTERM; killed",
                  file=sys.stderr)
            proc.kill()
            proc.wait()
        pacs.stop()
    return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "studies_per_min": len(studies) / total * 60.0,
            "steps": job_steps(logs, set(acked)), "rss_mib": rss}


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process (MiB), from /proc; None where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def logged_errors(log: Path, keep: int = 10) -> list[str]:
    """The last warning/error lines of the server's log."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if '"level": "error"' in ln or '"level": "warning"' in ln]
    return [ln[:1500] for ln in lines[-keep:]]


def job_steps(logs: list[Path], study_uids: set[str]) -> dict[str, float]:
    """Median wall time (ms) of each step of the measured studies' jobs, from the logs."""
    import json

    steps: dict[str, list[float]] = {}
    lines = [ln for log in logs for ln in log.read_text(errors="replace").splitlines()]
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("study_uid") in study_uids and "timings_ms" in entry:
            for key, ms in entry["timings_ms"].items():
                steps.setdefault(key, []).append(float(ms))
    return {k: float(np.median(v)) for k, v in steps.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=["demo", "b4"], choices=["demo", "b4"])
    ap.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"])
    ap.add_argument("--workers", type=int, default=1, help="queue.workers (job threads)")
    ap.add_argument("--sc-compression", default=None,
                    choices=["jpeg-ls", "jpeg2000", "rle", "none"],
                    help="report.sc_compression (default: config.yaml's)")
    ap.add_argument("--sc-max-side", type=int, default=None,
                    help="report.sc_max_side (default: config.yaml's)")
    ap.add_argument("--inference-threads", type=int, default=None,
                    help="inference.threads (default: one per core)")
    ap.add_argument("--pacs-prefers", default="implicit", choices=["implicit", "explicit"],
                    help="transfer syntax the PACS picks first from a list: implicit "
                         "(pynetdicom's default) or explicit (DCMTK storescp's default); "
                         "either way the router's files go out as stored")
    ap.add_argument("--worker-processes", type=int, default=0,
                    help="`hiprouter worker --count 1 --no-dispatch` processes next to serve "
                         "(--workers then sets serve's own job threads, 0 for none)")
    ap.add_argument("--pipelines", default="hardware", choices=["hardware", "all"],
                    help="hardware alone, or every kind with shipped demo weights")
    args = ap.parse_args()
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install dcmtk")
    root = Path(tempfile.mkdtemp(prefix="hiprouter-bench-e2e-"))
    try:
        studies = []
        n_warmup = 1 if args.worker_processes == 0 else 5 * (args.worker_processes + 1)
        for i in [*range(args.studies), *range(900, 900 + n_warmup)]:
            hardware = HARDWARE_CYCLE[i % len(HARDWARE_CYCLE)] if args.pipelines == "all" else None
            s = make_study(4242, i, views=("ap_pelvis", "cross_table_lateral"), side="R",
                           hardware=hardware)
            folder = root / "studies" / s.study_uid  # folder name = Study Instance UID
            folder.mkdir(parents=True)
            for j, img in enumerate(s.images):
                img.dataset.save_as(folder / f"{j}.dcm", enforce_file_format=True)
            studies.append(sorted(folder.iterdir()))
        warmups, studies = studies[args.studies:], studies[:args.studies]
        pipelines = ALL_PIPELINES if args.pipelines == "all" else ["hardware"]
        print(f"{args.studies} studies x {len(studies[0])} images; "
              f"pipelines={','.join(pipelines)}; "
              f"complete_after_s={COMPLETE_AFTER_S}; runtime={args.runtime}; "
              f"workers={args.workers}; worker processes={args.worker_processes}; "
              f"PACS prefers {args.pacs_prefers} VR; "
              f"inference threads={args.inference_threads or 'one per core'}; "
              f"sc_compression={args.sc_compression or 'config.yaml'}; "
              f"sc_max_side={args.sc_max_side or 'config.yaml'}; "
              f"cpu cores={os.cpu_count()}")
        for name in args.models:
            dirs = [] if name == "demo" else [b4_model_dir(root)]
            work = root / f"run-{name}"
            work.mkdir()
            r = run(dirs, name, studies, warmups, work, args.runtime, args.workers, pipelines,
                    args.sc_compression, args.sc_max_side, args.inference_threads,
                    args.worker_processes, args.pacs_prefers)
            print(f"{name:5s}: last ack -> SR at PACS p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s"
                  f" (of which {COMPLETE_AFTER_S:.1f} s idle timeout); "
                  f"{r['studies_per_min']:.1f} studies/min")
            print("       RSS after the burst: " + ", ".join(
                f"{k} {v:.0f} MiB" for k, v in r["rss_mib"].items() if v is not None))
            print("       median ms per job step: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["steps"].items()))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

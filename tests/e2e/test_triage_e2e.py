"""Triage end to end with real peers: storescu -> `hiprouter serve` -> DCMTK storescp.

Two `kind: fracture` pipelines whose models have constant outputs (zero weights, a biased
head: one always says femoral neck fracture, one never does) run on the same study. The
study's one report holds both; its one KOS says "AI TRIAGE: HIGH" and names the fracture
the first model found, whatever the second says. (The shipped models' detection is tested
by acceptance tests on generated cohorts, not here.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import Dataset
from sqlalchemy import select

from hiprouter.schema import Job, Output
from hiprouter.synth.study import make_study
from tests.conftest import REPO
from tests.e2e.test_pipeline_e2e import (
    KOS,
    SC,
    SR,
    pacs_objects,
    validate,
    wait_until,
    write_study,
)
from tests.inference.helpers import constant_model
from tests.router.conftest import storescu
from tests.router.pacs import StoreSCP


def kos_outputs(factory: Any) -> list[tuple[Output, str]]:
    """Every KOS the router created, with the name of the job that made it."""
    with factory() as s:
        return [(o, pipeline) for o, pipeline in s.execute(
            select(Output, Job.pipeline).join(Job, Output.job_id == Job.id)
            .where(Output.kind == "KOS")).all()]


NO_HARDWARE = {"R": "no_hardware", "L": "no_hardware"}


def repo_routing() -> dict[str, Any]:
    """The default rules and pipelines of the repository's config.yaml."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    return {key: cfg[key] for key in ("rule_mode", "rules", "pipelines")}


def overrides(pacs_port: int) -> dict[str, Any]:
    return {
        **repo_routing(),
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "queue": {"workers": 2, "poll_interval_s": 0.2,
                  "retry": {"initial_s": 1, "max_s": 5, "max_attempts": 3}},
        "studies": {"complete_after_s": 1.0, "sweep_interval_s": 0.2},
    }


def kos_description(ds: Dataset) -> str:
    """The Key Object Description (DCM 113012) text of a KOS."""
    for item in ds.ContentSequence:
        code = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if item.ValueType == "TEXT" and code is not None and code.CodeValue == "113012":
            return str(item.TextValue)
    raise AssertionError("KOS without a Key Object Description")


def constant_fracture_model(folder: Path, favoured: str) -> Path:
    """A fracture model that always answers `favoured` (p ~ 0.93): plumbing tests only."""
    return constant_model(folder, "fracture", favoured)


def test_fracture_pipeline_flags_and_reports_end_to_end(router_process: Any,
                                                        tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    models = {"fx_yes": constant_fracture_model(tmp_path / "m-yes", "femoral_neck_fracture"),
              "fx_no": constant_fracture_model(tmp_path / "m-no", "no_fracture")}
    routing = repo_routing()
    for rule in routing["rules"]:
        rule["pipelines"] = list(models)
    routing["pipelines"] = {name: {"kind": "fracture", "models": [str(path)], "device": "cpu",
                                   "runtime": "torch"} for name, path in models.items()}
    router = router_process({**overrides(pacs.port), **routing})
    try:
        study = make_study(9103, 0, hardware=NO_HARDWARE,
                           fracture={"R": "femoral_neck_fracture", "L": "none"},
                           views=("ap_pelvis",), size=(450, 650))
        files = write_study(tmp_path / "study", [i.dataset for i in study.images])
        sent = storescu(router.port, files)
        assert sent.returncode == 0, sent.stderr
        factory = router.session_factory()

        def kos_at_pacs() -> Output | None:
            rows = kos_outputs(factory)
            at_pacs = set(pacs.received())
            done = [o for o, _ in rows if o.sop_instance_uid in at_pacs]
            return done[0] if done else None

        made = wait_until(kos_at_pacs, 180, "the study's KOS at the PACS")
        (name,) = {pipeline for _, pipeline in kos_outputs(factory)}
        assert name == "fx_yes+fx_no"  # one analysis job ran both pipelines
        objects = pacs_objects(pacs)
        by_uid = {str(d.SOPInstanceUID): d for kind in (SR, SC, KOS)
                  for d in objects.get(kind, [])}
        validate([Path(d.filename) for d in by_uid.values()])
        assert len(objects[KOS]) == len(objects[SR]) == len(objects[SC]) == 1
        high = by_uid[made.sop_instance_uid]
        assert high.SeriesDescription == "AI TRIAGE: HIGH" and made.priority == "HIGH"
        assert kos_description(high).startswith(
            "AI TRIAGE PRIORITY=HIGH: Femoral neck fracture, right hip (p=0.9")
        assert "left hip" in kos_description(high)  # the constant model flags both sides
        sr = objects[SR][0].to_json()
        assert "constant-no_fracture" in sr and "constant-femoral_neck_fracture" in sr
        assert "FX000" in sr and "5913000" in sr
        assert "Both hips: femoral neck fracture; no fracture detected." in sr
        for ds in by_uid.values():
            assert str(ds.StudyInstanceUID) == study.study_uid
    finally:
        router.stop()
        pacs.stop()


def test_screening_pipeline_flags_a_fracture_and_leaves_a_normal_study_routine(
        router_process: Any, tmp_path: Path) -> None:
    """Seed 001 as a `kind: screening` pipeline: a fracture answer makes the study's one KOS
    HIGH and the SR names the fracture and the hip; a normal answer leaves it ROUTINE.
    Constant models (plumbing only; the demo weights are scored by their evaluation)."""
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    answers = {"9201": "femoral_neck_fracture", "9202": "normal"}
    routing = repo_routing()
    routing["pipelines"] = {
        f"screen_{seed}": {"kind": "screening", "device": "cpu", "runtime": "torch",
                           "models": [str(constant_model(tmp_path / f"m-{seed}", "screening",
                                                         answer))]}
        for seed, answer in answers.items()}
    # one rule per study: its StudyDescription says which constant model screens it
    routing["rules"] = [{"name": f"screen-{seed}", "level": "series",
                         "match": {"all": [{"tag": "StudyDescription", "regex": f"^{seed} "}]},
                         "pipelines": [f"screen_{seed}"], "send_to": ["pacs"]}
                        for seed in answers]
    router = router_process({**overrides(pacs.port), **routing})
    try:
        studies = {}
        for seed in answers:
            study = make_study(int(seed), 0, task="screening", hardware=NO_HARDWARE,
                               fracture={"R": "femoral_neck_fracture", "L": "none"},
                               views=("ap_pelvis",), size=(450, 650))
            datasets = [i.dataset for i in study.images]
            for ds in datasets:
                ds.StudyDescription = f"{seed} PELVIS AP"
            studies[seed] = study
            files = write_study(tmp_path / f"study-{seed}", datasets)
            sent = storescu(router.port, files)
            assert sent.returncode == 0, sent.stderr
        factory = router.session_factory()
        wait_until(lambda: len({o.sop_instance_uid for o, _ in kos_outputs(factory)}
                               & set(pacs.received(skip_unfinished=True))) == 2,
                   180, "both studies' KOS at the PACS")
        objects = pacs_objects(pacs)
        validate([Path(d.filename) for kind in (SR, SC, KOS) for d in objects.get(kind, [])])
        by_study = {seed: {kind: [d for d in objects.get(kind, [])
                                  if str(d.StudyInstanceUID) == study.study_uid]
                           for kind in (SR, KOS)} for seed, study in studies.items()}
        flagged, normal = by_study["9201"], by_study["9202"]
        assert len(flagged[KOS]) == len(flagged[SR]) == len(normal[KOS]) == 1
        assert flagged[KOS][0].SeriesDescription == "AI TRIAGE: HIGH"
        assert kos_description(flagged[KOS][0]).startswith(
            "AI TRIAGE PRIORITY=HIGH: Femoral neck fracture, right hip")
        sr = flagged[SR][0].to_json()
        assert "5913000" in sr and "Right hip: femoral neck fracture" in sr
        assert "Left hip: femoral neck fracture" in sr
        assert normal[KOS][0].SeriesDescription == "AI TRIAGE: ROUTINE"
        assert "5913000" not in normal[SR][0].to_json()
    finally:
        router.stop()
        pacs.stop()

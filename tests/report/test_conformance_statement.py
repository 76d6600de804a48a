"""The conformance statement's tables match what the code negotiates and creates."""

from __future__ import annotations

import re
import tomllib

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

from hiprouter.pipelines.classifier import ClassifierKind
from hiprouter.pipelines.registry import installed_kinds, kind_class
from hiprouter.report import kos, sc, seg, sr
from tests.conftest import REPO

DOC = (REPO / "docs" / "conformance-statement.md").read_text(encoding="utf-8")
UID_CELL = re.compile(r"^\| [^|]+ \| (1\.2\.840\.10008\.[0-9.]+) \|", re.MULTILINE)


def section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n## ", start + 1)
    sub = DOC.find("\n### ", start + 1)
    ends = [e for e in (end, sub) if e != -1]
    return DOC[start:min(ends)] if ends else DOC[start:]


def test_statement_is_for_the_current_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert f"As of version {pyproject['project']['version']} " in DOC


def test_accepted_transfer_syntaxes_match_the_scp() -> None:
    listed = set(UID_CELL.findall(section("### 4.1 Accepted as Storage SCP")))
    assert listed == {str(t) for t in ALL_TRANSFER_SYNTAXES}


def test_storage_sop_classes_match_the_scp() -> None:
    listed = set(UID_CELL.findall(section("## Appendix A.")))
    assert listed == {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    assert f"all {len(listed)} Storage SOP Classes" in DOC


def test_created_objects_and_codes_are_described() -> None:
    for text in (sr.SR_SERIES_DESCRIPTION, sc.SC_SERIES_DESCRIPTION, str(sr.SR_SERIES_NUMBER),
                 str(sc.SC_SERIES_NUMBER), str(kos.KOS_SERIES_NUMBER), "AI TRIAGE PRIORITY=",
                 seg.SEG_SERIES_DESCRIPTION, str(seg.SEG_SERIES_NUMBER), "TID 1410",
                 "24136001", "24028007", "7771000", "122157", "363679005", "113000", "99HIPAI",
                 "WSD", "DERIVED\\SECONDARY", "PRELIMINARY", "UNVERIFIED", "COMPLETE",
                 *(f"{c.value} ({c.scheme_designator})" for c in sr.STATUS_CODES.values())):
        assert text in DOC, text
    codes = section("### 6.5 Codes")
    built_in = [k for k in installed_kinds() if kind_class(k).__module__.startswith("hiprouter.")]
    assert {"hardware", "fracture"} <= set(built_in)
    for kind in built_in:
        cls = kind_class(kind)
        if not issubclass(cls, ClassifierKind):
            continue
        for fc in cls.default_vocabulary():
            triage = fc.triage or ("negative" if fc.negative else "")
            row = (f"| {kind} | `{fc.key}` | {fc.code.value} ({fc.code.scheme}) | "
                   f"{fc.code.meaning} | {triage} |")
            assert row in codes, row

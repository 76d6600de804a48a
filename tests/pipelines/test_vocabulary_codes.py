"""Every built-in kind's codes fit DICOM's lengths (a too-long meaning cost a study its SR)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from hiprouter.findings import Code
from hiprouter.pipelines.registry import GROUP, kind_class


def test_a_code_meaning_longer_than_64_characters_is_refused() -> None:
    Code("FD005", "99HIPAI", "x" * 64)
    with pytest.raises(ValueError, match="1-64 characters"):
        Code("FD005", "99HIPAI", "x" * 65)
    with pytest.raises(ValueError, match="scheme"):
        Code("FD005", "A_SCHEME_TOO_LONG", "meaning")


@pytest.mark.parametrize("kind", sorted(ep.name for ep in entry_points(group=GROUP)))
def test_every_kind_vocabulary_fits_an_sr(kind: str) -> None:
    vocab = kind_class(kind).default_vocabulary()
    assert vocab.classes, kind
    for c in vocab.classes:
        assert 0 < len(c.code.meaning) <= 64 and len(c.code.scheme) <= 16, (kind, c.key)

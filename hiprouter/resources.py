"""Files hiprouter ships besides code: report templates, alembic migrations, demo models.

In the repository they are the top-level folders `sr_templates/`, `alembic/` and `models/`;
the wheel carries them as the package data `hiprouter.sr_templates`, `hiprouter.alembic`
and `hiprouter.models` (pyproject.toml maps the folders), found through importlib.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def _folder(package: str, repo_folder: str) -> Path:
    """The repository folder when running from a checkout, else the installed package data."""
    if (_REPO / "pyproject.toml").is_file() and (_REPO / repo_folder).is_dir():
        return _REPO / repo_folder
    try:
        spec = find_spec(package)
    except ModuleNotFoundError:
        spec = None
    # The data folders are namespace packages (no __init__.py): their one location.
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return _REPO / repo_folder


def sr_templates_dir() -> Path:
    """The bundled report templates (one folder per language)."""
    return _folder("hiprouter.sr_templates", "sr_templates")


def alembic_dir() -> Path:
    """The alembic migration environment (env.py, versions/)."""
    return _folder("hiprouter.alembic", "alembic")


def models_dir() -> Path:
    """The bundled demo models (models/<name>/card.yaml + weights)."""
    return _folder("hiprouter.models", "models")

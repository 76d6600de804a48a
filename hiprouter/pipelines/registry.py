"""Where pipeline kinds come from: the ``hiprouter.pipelines`` entry points (and plugins).

A package adds a kind by declaring, in its pyproject.toml,

    [project.entry-points."hiprouter.pipelines"]
    my_kind = "my_package.module:MyKind"

and being installed next to hiprouter; the built-in kinds register the same way. As a
fallback, modules listed under ``plugins:`` in the config are imported and may call
`register_kind(MyKind)`.

`validate_pipelines` checks every configured pipeline at start-up: the kind exists, its
options validate against the kind's own model (errors name ``pipelines.<name>.<key>``), and
cascades (``runs_on``) point at pipelines that run before them. `PipelineSet` builds the
instances once per worker process and gives the order a study's pipelines run in.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hiprouter.config import ConfigError, PipelineConfig, RunsOn, Settings
from hiprouter.inference.anatomy import AnatomyCheck
from hiprouter.pipelines.base import KindContext, PipelineKind, PipelineOptions

GROUP = "hiprouter.pipelines"
FORWARD = "forward"
"""Not a kind: the rule action that sends the original images on unchanged."""

_registered: dict[str, type[PipelineKind]] = {}
_loaded: dict[str, type[PipelineKind]] = {}
"""Kinds loaded from entry points (by kind name), kept once loaded."""
_lock = threading.Lock()


def register_kind(cls: type[PipelineKind]) -> type[PipelineKind]:
    """Register a kind from a module listed under ``plugins:`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, PipelineKind)):
        raise TypeError(f"{cls!r} is not a PipelineKind subclass")
    with _lock:
        _registered[cls.kind] = cls
    return cls


def load_plugins(modules: Iterable[str]) -> None:
    """Import the modules listed in ``plugins:`` so they can call `register_kind`."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(f"plugins: cannot import {module!r}: {exc}") from exc


def installed_kinds() -> dict[str, str]:
    """Kind name -> where it comes from (entry point value or registering module)."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    with _lock:
        found.update({k: f"{c.__module__}:{c.__qualname__}" for k, c in _registered.items()})
    return dict(sorted(found.items()))


def kind_class(kind: str) -> type[PipelineKind]:
    """The class of a kind; `ConfigError` naming the known kinds when there is none."""
    with _lock:
        cls = _registered.get(kind) or _loaded.get(kind)
    if cls is not None:
        return cls
    # scanning the installed distributions' entry points costs ~1 ms each time: a kind
    # loaded once is kept (a job asks for each pipeline's kind several times)
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == kind]
    if not matches:
        known = ", ".join(installed_kinds()) or "none"
        raise ConfigError(f"unknown pipeline kind {kind!r} (installed kinds: {known})")
    try:
        loaded = matches[0].load()
    except Exception as exc:
        raise ConfigError(f"pipeline kind {kind!r} cannot be loaded "
                          f"({matches[0].value}): {type(exc).__name__}: {exc}") from exc
    if not (isinstance(loaded, type) and issubclass(loaded, PipelineKind)):
        raise ConfigError(f"entry point {kind!r} ({matches[0].value}) is not a PipelineKind")
    with _lock:
        _loaded[kind] = loaded
    return loaded


def validate_options(name: str, cfg: PipelineConfig, settings: Settings) -> PipelineOptions:
    """The kind's options of pipeline `name`, validated; errors name the offending key."""
    cls = kind_class(cfg.kind)
    try:
        return cls.Options.model_validate(cfg.options(),
                                          context={"base_dir": settings.base_dir})
    except ValidationError as exc:
        lines = [f"pipelines.{name} ({cfg.kind}):"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(options)"
            lines.append(f"  pipelines.{name}.{loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc


def runs_on(name: str, settings: Settings,
            run_with: Sequence[str] | None = None) -> RunsOn | None:
    """The cascade condition of a pipeline: its config's, else its kind's default.

    With `run_with` (the pipelines of one rule), an ``optional`` condition whose upstream
    pipeline is not among them is dropped: the pipeline then runs on every hip.
    """
    cfg = settings.pipelines[name]
    cond = cfg.runs_on if cfg.runs_on is not None else kind_class(cfg.kind).default_runs_on
    if cond is not None and cond.optional and run_with is not None \
            and cond.pipeline not in run_with:
        return None
    return cond


def resolve_order(names: Sequence[str], settings: Settings) -> list[str]:
    """The pipelines of a rule in the order they run: each after the one it cascades from.

    Raises `ConfigError` when a cascade's upstream pipeline is not among `names` or the
    cascades form a cycle.
    """
    wanted = [n for n in dict.fromkeys(names) if n != FORWARD]
    upstream = {}
    for n in wanted:
        cond = runs_on(n, settings, wanted)
        if cond is not None:
            if cond.pipeline not in wanted:
                raise ConfigError(
                    f"pipelines.{n}.runs_on: runs on pipeline {cond.pipeline!r}, which is not "
                    f"run with it (list it in the same rule: {', '.join(wanted)})")
            upstream[n] = cond.pipeline
    order: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in order:
            return
        if n in visiting:
            raise ConfigError(f"pipelines.{n}.runs_on: the cascade forms a cycle")
        visiting.add(n)
        if n in upstream:
            visit(upstream[n])
        visiting.discard(n)
        order.append(n)

    for n in wanted:
        visit(n)
    return order


def validate_pipelines(settings: Settings) -> None:
    """Fail at start-up, naming the key, when any configured pipeline cannot run."""
    load_plugins(settings.plugins)
    for name, cfg in settings.pipelines.items():
        validate_options(name, cfg, settings)
    for rule in settings.rules:
        try:
            resolve_order(rule.pipelines, settings)
        except ConfigError as exc:
            raise ConfigError(f"rules[{rule.name}]: {exc}") from exc


@dataclass(frozen=True)
class Variant:
    """One instance of a configured pipeline that a job runs, and what becomes of it."""

    pipeline: PipelineKind
    mode: str
    """active: its findings are reported; shadow: recorded only."""
    model_id: int | None = None
    """The model registry entry it runs (None: the configured or bundled models)."""


class PipelineSet:
    """Pipeline instances built once per worker process (models load once), thread-safe.

    With a `resolver` (the model registry, injected by the service), each configured
    pipeline runs the versions its registry name has in stage active (in place of its
    configured models) and shadow (next to it, recorded only; a pipeline in ``mode:
    shadow`` without an active version runs only the shadow version); `refresh` re-reads
    the registry before a job so promotions take effect without a restart.
    """

    def __init__(self, settings: Settings,
                 resolver: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
                 ) -> None:
        self.settings = settings
        self._built: dict[tuple[str, int | None], PipelineKind] = {}
        self._lock = threading.Lock()
        self._resolver = resolver
        self._deployments: Mapping[str, Mapping[str, Any]] = {}
        self._anatomy: AnatomyCheck | None = None
        load_plugins(settings.plugins)
        self.refresh()

    def anatomy_check(self) -> AnatomyCheck | None:
        """The whole-image anatomy check every job runs first (None when disabled); loaded
        on first use, once per worker process."""
        cfg = self.settings.inference.anatomy_check
        if not cfg.enabled:
            return None
        with self._lock:
            if self._anatomy is None:
                self._anatomy = AnatomyCheck.from_dir(cfg.model, cfg.min_probability,
                                                      cfg.device, cfg.runtime)
            return self._anatomy

    def refresh(self) -> None:
        """Re-read the model registry; instances of versions no longer deployed are dropped."""
        if self._resolver is None:
            return
        current = self._resolver()
        with self._lock:
            if current == self._deployments:
                return
            self._deployments = current
            live = {None} | {d.model_id for stages in current.values() for d in stages.values()}
            self._built = {k: v for k, v in self._built.items() if k[1] in live}

    def _build(self, name: str, deployed: Any | None) -> PipelineKind:
        key = (name, deployed.model_id if deployed is not None else None)
        with self._lock:
            if key not in self._built:
                if name not in self.settings.pipelines:
                    raise ConfigError(f"pipeline {name!r} is not configured")
                cfg = self.settings.pipelines[name]
                options = validate_options(name, cfg, self.settings)
                if deployed is not None:
                    if "models" not in type(options).model_fields:
                        raise ConfigError(f"pipelines.{name} ({cfg.kind}): the kind takes no "
                                          "`models` option, so it cannot run registered models")
                    if deployed.kind != cfg.kind:
                        raise ConfigError(
                            f"pipelines.{name}: registered model {deployed.name} "
                            f"{deployed.version} is a {deployed.kind!r} model, the pipeline "
                            f"is of kind {cfg.kind!r}")
                    options = options.model_copy(update={"models": [Path(deployed.path)]})
                cls = kind_class(cfg.kind)
                self._built[key] = cls(KindContext(name, self.settings), options)
            return self._built[key]

    def get(self, name: str) -> PipelineKind:
        """The instance whose findings are reported (or, without one, the configured one)."""
        return self.variants(name)[0].pipeline

    def variants(self, name: str) -> list[Variant]:
        """What a job runs for pipeline `name`, the one that feeds cascades first."""
        if name not in self.settings.pipelines:
            raise ConfigError(f"pipeline {name!r} is not configured")
        cfg = self.settings.pipelines[name]
        with self._lock:
            stages = dict(self._deployments.get(cfg.registry_name(name), {}))
        active, shadow = stages.get("active"), stages.get("shadow")
        if active is not None:
            out = [Variant(self._build(name, active), "active", active.model_id)]
        elif shadow is not None and cfg.mode == "shadow":
            # a pipeline in shadow mode runs the version under validation in place of
            # its configured (or bundled demo) models
            return [Variant(self._build(name, shadow), "shadow", shadow.model_id)]
        else:
            out = [Variant(self._build(name, None), cfg.mode, None)]
        if shadow is not None:
            out.append(Variant(self._build(name, shadow), "shadow", shadow.model_id))
        return out

    def order(self, names: Sequence[str]) -> list[str]:
        return resolve_order(names, self.settings)

    def all(self, names: Sequence[str]) -> list[PipelineKind]:
        return [self.get(n) for n in self.order(names)]


def describe_kinds() -> list[dict[str, Any]]:
    """Installed kinds with their description and options (for `hiprouter models kinds`)."""
    out = []
    for kind, source in installed_kinds().items():
        try:
            cls = kind_class(kind)
        except ConfigError as exc:
            out.append({"kind": kind, "source": source, "error": str(exc)})
            continue
        out.append({"kind": kind, "source": source, "description": cls.description,
                    "options": sorted(cls.Options.model_fields),
                    "runs_on": cls.default_runs_on.describe() if cls.default_runs_on else ""})
    return out

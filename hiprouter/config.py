"""Typed configuration: one pydantic model, validated at start-up.

Defaults live here, so `hiprouter serve` with no config file runs on embedded defaults
(SQLite file, local spool, port 11112, AE title HIPROUTER, bundled demo model).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from hiprouter.router.flow.rules import Rule

DEFAULT_CONFIG_PATH = Path("config.yaml")
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash


class ConfigError(Exception):
    """Raised when the configuration file cannot be read or is invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_ae(value: str) -> str:
    value = value.strip()
    if not AE_TITLE_RE.match(value):
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable chars, no '\\')")
    return value


class AllowedCaller(_Strict):
    """A calling AE title allowed to associate, optionally bound to a host."""

    ae_title: str
    host: str | None = None

    _ae = field_validator("ae_title")(_check_ae)


class TLSConfig(_Strict):
    """TLS for an association (inbound SCP or outbound destination)."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False
    check_hostname: bool = True
    """Outbound only: the peer certificate must name the destination host."""


class NodeConfig(_Strict):
    """The DICOM application entity this router presents."""

    ae_title: str = "HIPROUTER"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling: list[AllowedCaller] | None = None
    """None accepts any calling AE title; a list is an allow-list."""
    max_pdu_size: int = Field(4 * 1024 * 1024, ge=4096, le=64 * 1024 * 1024)
    """Largest P-DATA PDU we accept (and announce as our maximum)."""
    max_associations: int = Field(16, ge=1, le=1024)
    max_dataset_mb: int = Field(512, ge=1)
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    tls: TLSConfig = TLSConfig()

    _ae = field_validator("ae_title")(_check_ae)


class DatabaseConfig(_Strict):
    url: str = "sqlite:///var/hiprouter.db"


class StorageConfig(_Strict):
    spool_dir: Path = Path("var/spool")
    output_dir: Path = Path("var/outputs")
    min_free_mb: int = Field(500, ge=0)
    retention_days: float = Field(30, ge=0)
    """Finished studies older than this are removed; 0 keeps everything."""
    retention_check_s: float = Field(3600, gt=0)
    """How often the retention job runs."""
    fsync: bool = True


class StudiesConfig(_Strict):
    complete_after_s: float = Field(30.0, gt=0)
    sweep_interval_s: float = Field(2.0, gt=0)


class Destination(_Strict):
    """A DICOM peer we send to (a PACS, an archive, a viewer)."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None
    max_concurrent: int = Field(2, ge=1, le=64)
    tls: TLSConfig = TLSConfig()

    _ae = field_validator("ae_title")(_check_ae)


class RetryConfig(_Strict):
    """Capped exponential backoff for jobs and sends."""

    initial_s: float = Field(5.0, gt=0)
    factor: float = Field(2.0, ge=1)
    max_s: float = Field(600.0, gt=0)
    max_attempts: int = Field(10, ge=1)


class QueueConfig(_Strict):
    workers: int = Field(1, ge=0, le=64)
    lease_s: float = Field(300.0, gt=0)
    poll_interval_s: float = Field(0.5, gt=0)
    send_batch: int = Field(100, ge=1, le=10000)
    """Most sends to one destination in one association."""
    retry: RetryConfig = RetryConfig()


class TriageRule(_Strict):
    """Maps findings (class names) above a probability to a priority level."""

    classes: list[str] = Field(min_length=1)
    """Class keys or shell-style patterns over them, e.g. `*fracture*` (fnmatch)."""
    level: Literal["HIGH", "MEDIUM", "ROUTINE"] = "HIGH"
    min_probability: float | None = Field(None, ge=0, le=1)
    """None: the model card's calibrated threshold for the class, else 0.5."""


class RunsOn(_Strict):
    """A cascade condition: run on hips where another pipeline found one of some classes."""

    pipeline: str
    classes: list[str] = []
    """Class keys of that pipeline; the hip qualifies when its predicted class is one."""
    exclude: list[str] = []
    """Or: the hip qualifies unless its predicted class is one of these."""
    min_probability: float = Field(0.0, ge=0, le=1)
    include_indeterminate: bool = False
    """Whether a hip whose upstream finding is indeterminate still qualifies (on its top
    candidate); a hip that was not assessed never does."""
    optional: bool = False
    """When `pipeline` is not run with this one (not in the same rule), run on every hip
    instead of refusing the rule (e.g. onfh without hardware)."""

    def model_post_init(self, __context: Any) -> None:
        if bool(self.classes) == bool(self.exclude):
            raise ValueError("runs_on needs either `classes` or `exclude` (not both)")

    def describe(self) -> str:
        what = (f"classes {', '.join(self.classes)}" if self.classes
                else f"any class but {', '.join(self.exclude)}")
        return f"{self.pipeline} finds {what}" + (
            f" (every hip when {self.pipeline} does not run)" if self.optional else "")


class PipelineConfig(BaseModel):
    """Settings of one pipeline: the common keys below, plus the options of its kind.

    Any other key of a ``pipelines.<name>`` block belongs to the kind's own options model
    (see hiprouter/pipelines/), validated at start-up with errors naming the key.
    """

    model_config = ConfigDict(extra="allow")

    kind: str = Field("hardware", pattern=r"^[a-z][a-z0-9_]*$")
    """A kind installed through the `hiprouter.pipelines` entry points (`hiprouter models
    kinds` lists them) or registered by a module under `plugins`."""
    runs_on: RunsOn | None = None
    """A cascade: run only on hips where another pipeline found some classes (None: the
    kind's default; first-stage kinds run on every hip)."""
    triage: list[TriageRule] = []
    """Which findings set which priority; empty: the vocabulary's default triage meaning."""

    def options(self) -> dict[str, Any]:
        """The kind-specific keys of this block."""
        return dict(self.model_extra or {})


class ReportConfig(_Strict):
    """The one report per study episode: SR, SC per radiograph, KOS, SEG."""

    language: str = Field("en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
    """Report language: a folder of sr_templates (en, de, ...)."""
    low_confidence: float = Field(0.6, ge=0, le=1)
    """Assessed findings below this probability are worded "possible ... (low confidence)"."""
    default_priority: Literal["HIGH", "MEDIUM", "ROUTINE"] = "ROUTINE"
    heatmap_pipelines: list[str] | None = None
    """Whose heat maps the SC overlays show, first that has one per hip wins; None: every
    pipeline in run order."""
    secondary_captures: bool = True
    """One heat-map SC per radiograph (False: SR, KOS and SEG only)."""


class LoggingConfig(_Strict):
    level: str = "INFO"
    json_logs: bool | None = None
    """None: JSON when stderr is not a TTY."""


class Settings(_Strict):
    """The whole configuration."""

    node: NodeConfig = NodeConfig()
    database: DatabaseConfig = DatabaseConfig()
    storage: StorageConfig = StorageConfig()
    studies: StudiesConfig = StudiesConfig()
    queue: QueueConfig = QueueConfig()
    destinations: dict[str, Destination] = {}
    rules: list[Rule] = []
    rule_mode: Literal["first", "all"] = "first"
    pipelines: dict[str, PipelineConfig] = {}
    report: ReportConfig = ReportConfig()
    sr_templates_dir: Path | None = None
    plugins: list[str] = []
    """Python modules imported at start-up; they may call
    `hiprouter.pipelines.registry.register_kind` (entry points are the usual way)."""
    logging: LoggingConfig = LoggingConfig()
    _base_dir: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path | None:
        """The folder relative paths of this configuration resolve against."""
        return self._base_dir

    def model_post_init(self, __context: Any) -> None:
        names = [r.name for r in self.rules]
        for name in {n for n in names if names.count(n) > 1}:
            raise ValueError(f"rules[{name}]: rule names must be unique")
        if sum(r.fallback for r in self.rules) > 1:
            raise ValueError("rules: at most one rule may be the fallback")
        for rule in self.rules:
            for dest in [*rule.send_to, *rule.forward_to]:
                if dest not in self.destinations:
                    raise ValueError(f"rules[{rule.name}]: unknown destination {dest!r}")
            for pipe in rule.pipelines:
                if pipe not in self.pipelines and pipe != "forward":
                    raise ValueError(f"rules[{rule.name}]: unknown pipeline {pipe!r}")
        for name, pipe in self.pipelines.items():
            if pipe.runs_on is not None and pipe.runs_on.pipeline not in self.pipelines:
                raise ValueError(f"pipelines.{name}.runs_on: unknown pipeline "
                                 f"{pipe.runs_on.pipeline!r}")
        heat = self.report.heatmap_pipelines or []
        for name in heat:
            if name not in self.pipelines:
                raise ValueError(f"report.heatmap_pipelines: unknown pipeline {name!r}")


def _format_error(err: ValidationError, source: str, data: dict[str, Any] | None = None) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(_loc_parts(e["loc"], data or {})) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def _loc_parts(loc: tuple[Any, ...], data: dict[str, Any]) -> list[str]:
    """Error location with rules named (rules[hip]) and condition-union tags folded."""
    parts: list[str] = []
    for i, p in enumerate(loc):
        if i == 1 and loc[0] == "rules" and isinstance(p, int):
            rules = data.get("rules")
            name = rules[p].get("name") if isinstance(rules, list) and p < len(rules) and \
                isinstance(rules[p], dict) else None
            parts[-1] = f"rules[{name if name is not None else p}]"
        elif p == "leaf" or (parts and p in ("all", "any", "not") and parts[-1] == p):
            continue
        else:
            parts.append(str(p))
    return parts


def resolve_config_path(path: str | Path | None) -> Path | None:
    """`--config`, else $HIPROUTER_CONFIG, else ./config.yaml if it exists."""
    if path:
        return Path(path)
    env = os.environ.get("HIPROUTER_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate the configuration; relative paths resolve against its folder."""
    cfg_path = resolve_config_path(path)
    data: dict[str, Any] = {}
    base = Path.cwd()
    if cfg_path is not None:
        try:
            raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {cfg_path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration {cfg_path} is not valid YAML: {exc}") from exc
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"configuration {cfg_path}: top level must be a mapping")
        data = raw or {}
        base = cfg_path.resolve().parent
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, str(cfg_path or "defaults"), data)) from exc
    return _resolve_paths(settings, base)


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p)


def _resolve_paths(s: Settings, base: Path) -> Settings:
    s.storage.spool_dir = _resolve(base, s.storage.spool_dir)
    s.storage.output_dir = _resolve(base, s.storage.output_dir)
    if s.sr_templates_dir is not None:
        s.sr_templates_dir = _resolve(base, s.sr_templates_dir)
    s._base_dir = base
    for tls in [s.node.tls, *(d.tls for d in s.destinations.values())]:
        for attr in ("cert_file", "key_file", "ca_file"):
            val = getattr(tls, attr)
            if val is not None:
                setattr(tls, attr, _resolve(base, val))
    url = s.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:":
            s.database.url = "sqlite:///" + str(_resolve(base, Path(rel)))
    return s

"""Typed configuration: one pydantic model, validated at start-up.

Defaults live here, so `hiprouter serve` with no config file runs on embedded defaults
(SQLite file, local spool, port 11112, AE title HIPROUTER, bundled demo model).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
)

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
    reserved_associations: int = Field(4, ge=0)
    """Of `max_associations`, places only callers matching `allowed_calling` may use
    (none while the allow-list is open; at most `max_associations - 1`)."""
    max_associations_per_host: int = Field(8, ge=1)
    """Associations from one peer address at once."""
    max_pending_connections: int = Field(32, ge=1, le=4096)
    """Connections that have not sent an A-ASSOCIATE-RQ yet (hosts bound in
    `allowed_calling` not counted); beyond it the oldest such connection is closed."""
    max_pending_per_host: int = Field(8, ge=1)
    """The same per peer address."""
    request_timeout_s: float = Field(5.0, gt=0)
    """From the TCP accept until a whole A-ASSOCIATE-RQ (and TLS handshake) has arrived."""
    preempt_idle_s: float = Field(1.0, ge=0)
    """When every place is taken, an association idle this long may be aborted for a new
    request (see docs/security.md)."""
    max_dataset_mb: int = Field(512, ge=1)
    fast_store: bool = True
    """Serve plain C-STORE requests on hiprouter's lean receive path instead of
    pynetdicom's DIMSE machinery (router/net/fast_store.py); false: pynetdicom for all."""
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    """Also closes an established association after this long without a PDU."""
    tls: TLSConfig = TLSConfig()

    _ae = field_validator("ae_title")(_check_ae)


class DatabaseConfig(_Strict):
    url: str = "sqlite:///var/hiprouter.db"
    """Overridden by the environment variable HIPROUTER_DATABASE_URL when it is set."""
    password_file: Path | None = None
    """A file holding the database password (first line), put into `url` at start-up, so
    the configuration file need not contain it."""


class StorageConfig(_Strict):
    spool_dir: Path = Path("var/spool")
    output_dir: Path = Path("var/outputs")
    min_free_mb: int = Field(500, ge=0)
    retention_days: float = Field(30, ge=0)
    """Finished studies older than this are removed; 0 keeps everything."""
    retention_check_s: float = Field(3600, gt=0)
    """How often the retention job runs."""
    fsync: bool = True
    group: str | None = None
    """None: the files the server creates are 0600 and its folders 0700 (owner only);
    a group name: 0640 and 0750 (set-group-ID), owned by that group."""
    shared_spool: bool = False
    """True when other receivers (`serve` on other hosts) write to the same `spool_dir`
    (shared storage): start-up then leaves temporary and unrecorded files younger than
    `SHARED_SPOOL_GRACE_S` alone, since another live receiver may be writing them
    (docs/scaling.md)."""
    models_dir: Path = Path("var/models")
    """The model registry's files: one folder per registered model version
    (`hiprouter models register` copies the model there)."""

    def ref(self, path: str | os.PathLike[str]) -> str:
        """How the database refers to a file: `spool:<relative>` under `spool_dir`,
        `output:<relative>` under `output_dir`, `models:<relative>` under `models_dir`,
        else the absolute path. References are the same on every host that mounts these
        folders, wherever it mounts them (docs/scaling.md)."""
        return path_ref(path, self.spool_dir, self.output_dir, self.models_dir)

    def resolve(self, ref: str) -> Path:
        """The local path of a file the database refers to (`ref`; an absolute path, as
        rows written before path references hold, is returned as it is)."""
        return resolve_ref(ref, self.spool_dir, self.output_dir, self.models_dir)


SHARED_SPOOL_GRACE_S = 600.0
"""With `storage.shared_spool`, how old a temporary or unrecorded spool file must be
before a starting receiver removes or records it (another receiver writes and records
its files within seconds)."""

SPOOL_REF = "spool:"
OUTPUT_REF = "output:"
MODELS_REF = "models:"
"""Prefixes of file references in the database (`StorageConfig.ref`)."""


def path_ref(path: str | os.PathLike[str], spool_dir: Path, output_dir: Path | None = None,
             models_dir: Path | None = None) -> str:
    """`spool:<relative>` / `output:<relative>` / `models:<relative>` for a file under one
    of the folders, else the absolute path (see `StorageConfig.ref`)."""
    target = Path(os.path.abspath(path))
    for prefix, root in ((SPOOL_REF, spool_dir), (OUTPUT_REF, output_dir),
                         (MODELS_REF, models_dir)):
        if root is None:
            continue
        base = Path(os.path.abspath(root))
        if target.is_relative_to(base) and target != base:
            return prefix + target.relative_to(base).as_posix()
    return str(target)


def resolve_ref(ref: str, spool_dir: Path, output_dir: Path | None = None,
                models_dir: Path | None = None) -> Path:
    """The local path of a database file reference (see `StorageConfig.resolve`)."""
    for prefix, root in ((SPOOL_REF, spool_dir), (OUTPUT_REF, output_dir),
                         (MODELS_REF, models_dir)):
        if ref.startswith(prefix):
            if root is None:
                raise ValueError(f"no folder configured for {ref!r}")
            rel = Path(ref[len(prefix):])
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"not a relative file reference: {ref!r}")
            return Path(root) / rel
    return Path(ref)


class StudiesConfig(_Strict):
    complete_after_s: float = Field(30.0, gt=0)
    sweep_interval_s: float = Field(2.0, gt=0)


class Destination(_Strict):
    """A DICOM peer we send to with C-STORE (a PACS, an archive, a viewer)."""

    type: Literal["dicom"] = "dicom"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None
    max_concurrent: int = Field(2, ge=1, le=64)
    tls: TLSConfig = TLSConfig()
    storage_commitment: bool = False
    """After the C-STOREs, ask the peer to commit them (Storage Commitment Push Model,
    N-ACTION); a send counts as sent only when its N-EVENT-REPORT says committed. The peer
    must know this node's AE title, host and port to send the report back."""
    commitment_timeout_s: float = Field(600.0, gt=0)
    """No report after this long: the send is retried (C-STORE and N-ACTION again)."""

    _ae = field_validator("ae_title")(_check_ae)


class HttpAuth(_Strict):
    """HTTP authentication for a DICOMweb destination: basic (username and a password file)
    or a bearer token read from a file. Secrets live in files, never in config.yaml."""

    username: str | None = None
    password_file: Path | None = None
    bearer_token_file: Path | None = None

    def model_post_init(self, __context: Any) -> None:
        basic = self.username is not None or self.password_file is not None
        if basic and (self.username is None or self.password_file is None):
            raise ValueError("basic auth needs both `username` and `password_file`")
        if basic and self.bearer_token_file is not None:
            raise ValueError("use either basic auth or `bearer_token_file`, not both")


class HttpTLS(_Strict):
    """TLS for an HTTPS destination: the CA to trust and an optional client certificate."""

    ca_file: Path | None = None
    """None: the system's trusted CAs."""
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True
    """False turns off certificate checks (test set-ups only)."""


class DicomwebDestination(_Strict):
    """A DICOMweb peer we send to with STOW-RS (PS3.18 10.5)."""

    type: Literal["dicomweb"]
    url: str = Field(pattern=r"^https?://")
    """The DICOMweb base URL (service root), e.g. https://pacs.example.org/dicom-web."""
    auth: HttpAuth = HttpAuth()
    tls: HttpTLS = HttpTLS()
    timeout_s: float = Field(60.0, gt=0)
    max_concurrent: int = Field(2, ge=1, le=64)
    batch_size: int = Field(20, ge=1, le=1000)
    """Most instances in one STOW-RS request."""


class Hl7Destination(_Strict):
    """A RIS (or interface engine) that gets an HL7 v2 result message over MLLP per report."""

    type: Literal["hl7"]
    host: str
    port: int = Field(ge=1, le=65535)
    message_type: Literal["ORU^R01", "ORM^O01", "OMI^O23"] = "ORU^R01"
    version: Literal["2.5", "2.5.1"] = "2.5"
    sending_application: str = "HIPROUTER"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    priority_map: dict[Literal["HIGH", "MEDIUM", "ROUTINE"], str] = {
        "HIGH": "S", "MEDIUM": "A", "ROUTINE": "R"}
    """Triage level -> priority code in OBR-27 (TQ component 6) and TQ1-9 (OMI): S stat,
    A as soon as possible, R routine (HL7 table 0027), or the site's own codes."""
    send_when: Literal["findings", "flagged", "always"] = "findings"
    """findings: only when a pipeline assessed at least one hip (no message for a study with
    no findings); flagged: only when the triage level is above report.default_priority;
    always: for every report."""
    timeout_s: float = Field(30.0, gt=0)
    """Seconds to connect and to wait for the ACK."""
    validate_structure: bool = True
    """Check each message against its HL7 v2 structure (hl7apy) before sending it."""
    max_concurrent: int = Field(1, ge=1, le=16)
    tls: TLSConfig = TLSConfig()

    @field_validator("priority_map")
    @classmethod
    def _codes(cls, value: dict[str, str]) -> dict[str, str]:
        for level, code in value.items():
            if not code or any(c in code for c in "|^~\\&\r\n"):
                raise ValueError(f"{level}: {code!r} is not a usable HL7 priority code")
        return {"HIGH": "S", "MEDIUM": "A", "ROUTINE": "R", **value}


def _destination_type(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "dicom"))
    return str(getattr(value, "type", "dicom"))


AnyDestination = Annotated[
    Annotated[Destination, Tag("dicom")]
    | Annotated[DicomwebDestination, Tag("dicomweb")]
    | Annotated[Hl7Destination, Tag("hl7")],
    Discriminator(_destination_type, custom_error_type="destination_type",
                  custom_error_message="type must be dicom, dicomweb or hl7"),
]
"""A destination of any type (`type:` dicom, the default, dicomweb or hl7)."""


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
    mode: Literal["active", "shadow"] = "active"
    """active: the findings go into the report; shadow: the pipeline runs and its findings
    are recorded, but nothing of it is sent (no SR group, no overlay, no triage reason).
    A registered model's stage overrides this (`hiprouter models promote`)."""
    registered_model: str | None = None
    """The model registry name whose shadow and active versions this pipeline runs (None:
    the pipeline's own name). Without a promoted version the `models` option (or the
    kind's demo model) is used, as before."""

    def registry_name(self, pipeline: str) -> str:
        return self.registered_model or pipeline

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
    pipeline, cascade stages before the pipelines they run on, else in run order."""
    secondary_captures: bool = True
    """One heat-map SC per radiograph (False: SR, KOS and SEG only)."""
    sc_compression: Literal["jpeg-ls", "jpeg2000", "rle", "none"] = "none"
    """Lossless compression of the SCs: jpeg-ls (about 2.3x smaller, 0.1-0.17 s of CPU per
    2048 px SC), jpeg2000 (about 6x, 0.25 s), rle (no gain on radiographs), none (the
    fastest: docs/performance.md). A destination that does not accept the syntax gets the
    SC uncompressed."""
    sc_max_side: int = Field(1024, ge=256, le=8192)
    """Longest side of an SC in pixels (larger radiographs are downscaled for it): 1024 px
    keeps an SC about 2.5 MB uncompressed; the findings' coordinates in the SR refer to the
    full-size source image whatever this is."""


class DecodeConfig(_Strict):
    """Bounds on decoding received pixel data for inference (and for sending a compressed
    file uncompressed): a crafted JPEG 2000 or RLE stream must not take a worker down."""

    max_decoded_mb: float = Field(512, gt=0)
    """Refuse images whose header declares more decoded bytes (Rows x Columns x frames x
    samples x bytes per sample)."""
    sandbox: bool = True
    """Decode compressed pixel data in a separate, memory-limited process."""
    memory_limit_mb: int = Field(2048, ge=256)
    """Address-space limit (RLIMIT_AS) of that process."""
    timeout_s: float = Field(120, gt=0)
    """Longest decode of one image; the decoding process is then killed."""


class AnatomyCheckConfig(_Strict):
    """The whole-image check, before any pipeline, that an image is an adult hip or pelvis
    radiograph (inference/anatomy.py): images that are not (a chest or knee film whose
    headers claim a pelvis, a child's pelvis, a photograph) are not assessed, with the
    reason."""

    enabled: bool = True
    model: Path | None = None
    """Anatomy model folder; None: the bundled demo (models/anatomy-demo)."""
    min_probability: float | None = Field(None, ge=0, le=1)
    """Below this probability of "hip" an image is not assessed; None: the card's."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["auto", "torch", "onnx"] = "auto"


class InferenceConfig(_Strict):
    """Process-wide settings of the CPU inference back-ends."""

    threads: int | None = Field(None, ge=1, le=256)
    """Intra-op threads of each ONNX Runtime session and of PyTorch on the CPU in this
    process; None: one per core. With several worker processes on one host, give each its
    share of the cores (e.g. 2 processes on 8 cores: 4), else they oversubscribe."""
    anatomy_check: AnatomyCheckConfig = AnatomyCheckConfig()


class WebAuth(_Strict):
    """HTTP basic auth for the web server: a username and the password in a file (or a
    werkzeug password hash, `hiprouter web hash-password`)."""

    username: str
    password_file: Path | None = None
    password_hash: str | None = None

    def model_post_init(self, __context: Any) -> None:
        if (self.password_file is None) == (self.password_hash is None):
            raise ValueError("give exactly one of `password_file` and `password_hash`")


class WebConfig(_Strict):
    """One HTTP server in `serve`: Prometheus metrics and the read-only status page."""

    enabled: bool = False
    host: str = "127.0.0.1"
    """Loopback by default; a wider bind address needs `basic_auth` or a reverse proxy."""
    port: int = Field(9180, ge=0, le=65535)
    metrics: bool = True
    """/metrics in the Prometheus text format."""
    status_page: bool = True
    """/ (status and recent studies), /studies/<Study Instance UID>, /audit, /models."""
    basic_auth: WebAuth | None = None
    viewer_url: str | None = None
    """A link per study to a DICOMweb viewer, `{study_uid}` replaced, e.g.
    https://pacs.example.org/ohif/viewer?StudyInstanceUIDs={study_uid}"""
    recent_studies: int = Field(50, ge=1, le=1000)
    threads: int = Field(4, ge=1, le=64)

    @field_validator("viewer_url")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and "{study_uid}" not in value:
            raise ValueError("must contain {study_uid}")
        return value


class DeidConfig(_Strict):
    """De-identification of pulled data sets (PS3.15 Basic Application Level
    Confidentiality Profile with options)."""

    key_file: Path = Path("var/keys/pseudonym.key")
    """Secret key of the keyed hashes (pseudonymous UIDs, patient keys, date shifts). Keep
    it outside any data set; created (mode 0600) on first use."""
    retain_longitudinal_dates: bool = True
    """Retain Longitudinal Temporal Information with Modified Dates: every date of a patient
    is shifted by the same keyed offset (intervals survive); else dates are removed."""
    max_date_shift_days: int = Field(365, ge=1, le=3650)
    clean_descriptors: bool = True
    """Clean Descriptors Option: keep study/series descriptions and protocol names (the
    view and side words hip models read), with identifying words removed."""
    burned_in: Literal["blank_corners", "exclude", "keep"] = "blank_corners"
    """Images that have (or may have) burned-in annotation: blank the corners, leave the
    image out, or keep it as it is (only for sites whose modalities burn nothing in)."""
    corner_fraction: float = Field(0.15, gt=0, lt=0.5)
    """Height and width of each blanked corner, as a fraction of the image."""
    trust_burned_in_no: bool = False
    """True: an image whose BurnedInAnnotation is NO is left as it is."""


class DatasetConfig(_Strict):
    """`hiprouter dataset pull`: data sets from the site's PACS."""

    ae_title: str = "HIPROUTER_DS"
    """A second AE title of this node. The PACS knows it as a C-MOVE destination (same host
    and port as node.ae_title); instances sent to it are stored with purpose `dataset` and
    never routed to inference."""
    source: str | None = None
    """The destination (PACS) queried by default (C-FIND, C-MOVE/C-GET)."""
    retrieve: Literal["move", "get"] = "move"
    max_per_minute: float = Field(60.0, gt=0)
    """Rate limit of retrieve requests (series per minute)."""
    timeout_s: float = Field(600.0, gt=0)
    """How long one retrieval may take before the item is failed (resumed next run)."""
    deid: DeidConfig = DeidConfig()
    label_rules: Path | None = None
    """Report label rules (YAML); None: the rules shipped with hiprouter."""
    report_language: Literal["auto", "en", "de"] = "auto"
    sample_size: int = Field(24, ge=0, le=500)
    """Images on the label review sheet."""
    keep_spool: bool = False
    """Keep the retrieved originals in the spool after export (else removed)."""

    _ae = field_validator("ae_title")(_check_ae)


class MonitoringConfig(_Strict):
    """Feedback and drift in production: final reports vs findings, distributions vs the
    validation baseline, per pipeline and ISO week."""

    enabled: bool = True
    interval_s: float = Field(900.0, gt=0)
    """How often `serve` extracts labels from received reports and recomputes the figures."""
    weeks: int = Field(8, ge=1, le=104)
    """How many recent weeks are (re)computed."""
    min_findings: int = Field(20, ge=1)
    """Fewer findings in a week never alert."""
    min_agreement: float = Field(0.8, ge=0, le=1)
    """Alert when the final reports agree with the findings less often than this."""
    max_class_shift: float = Field(0.25, ge=0)
    """Alert when the population stability index of predicted classes exceeds this."""
    max_confidence_drop: float = Field(0.1, ge=0, le=1)
    """Alert when the mean confidence falls this far below the baseline's."""
    max_not_assessed_rise: float = Field(0.1, ge=0, le=1)
    """Alert when the share of hips not assessed (out of distribution) rises this far above
    the baseline's."""
    report_sop_classes: list[str] = [
        "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
        "1.2.840.10008.5.1.4.1.1.88.33"]
    """SR classes received as final reports (purpose `report`: read for feedback, not
    routed): Basic Text, Enhanced and Comprehensive SR. Our own SR output (Comprehensive
    3D) is not among them."""
    report_language: Literal["auto", "en", "de"] = "auto"


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
    destinations: dict[str, AnyDestination] = {}
    rules: list[Rule] = []
    rule_mode: Literal["first", "all"] = "first"
    pipelines: dict[str, PipelineConfig] = {}
    report: ReportConfig = ReportConfig()
    decode: DecodeConfig = DecodeConfig()
    inference: InferenceConfig = InferenceConfig()
    sr_templates_dir: Path | None = None
    plugins: list[str] = []
    """Python modules imported at start-up; they may call
    `hiprouter.pipelines.registry.register_kind` (entry points are the usual way)."""
    logging: LoggingConfig = LoggingConfig()
    web: WebConfig = WebConfig()
    dataset: DatasetConfig = DatasetConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    _base_dir: Path | None = PrivateAttr(default=None)
    _url_source: str = PrivateAttr(default="config")

    @property
    def database_url_source(self) -> str:
        """Where `database.url` came from: config, env (HIPROUTER_DATABASE_URL) or
        password_file (the password came from that file)."""
        return self._url_source

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
            for dest in rule.forward_to:
                if self.destinations[dest].type == "hl7":
                    raise ValueError(f"rules[{rule.name}].forward_to: {dest!r} is an hl7 "
                                     "destination (it takes reports: list it in send_to)")
            for pipe in rule.pipelines:
                if pipe not in self.pipelines and pipe != "forward":
                    raise ValueError(f"rules[{rule.name}]: unknown pipeline {pipe!r}")
        for name, pipe in self.pipelines.items():
            if pipe.runs_on is not None and pipe.runs_on.pipeline not in self.pipelines:
                raise ValueError(f"pipelines.{name}.runs_on: unknown pipeline "
                                 f"{pipe.runs_on.pipeline!r}")
        if self.dataset.source is not None and self.dataset.source not in self.destinations:
            raise ValueError(f"dataset.source: unknown destination {self.dataset.source!r}")
        if self.dataset.ae_title == self.node.ae_title:
            raise ValueError("dataset.ae_title must differ from node.ae_title")
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
        elif i == 2 and loc[0] == "destinations" and p in ("dicom", "dicomweb", "hl7"):
            continue  # the destination type's tag
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
    settings = _resolve_paths(settings, base)
    _database_credentials(settings)
    return settings


DATABASE_URL_ENV = "HIPROUTER_DATABASE_URL"


def _database_credentials(s: Settings) -> None:
    """The database URL from the environment, or its password from `password_file`."""
    from sqlalchemy.engine import make_url

    env = os.environ.get(DATABASE_URL_ENV)
    if env:
        s.database.url = env
        s._url_source = "env"
    pw_file = s.database.password_file
    if pw_file is None:
        return
    try:
        lines = pw_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"database.password_file: cannot read {pw_file}: {exc}") from exc
    password = lines[0] if lines else ""
    if not password:
        raise ConfigError(f"database.password_file: {pw_file} is empty")
    try:
        url = make_url(s.database.url)
    except Exception as exc:
        raise ConfigError(f"database.url: not a database URL: {exc}") from exc
    s.database.url = url.set(password=password).render_as_string(hide_password=False)
    if s._url_source == "config":
        s._url_source = "password_file"


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p)


def _resolve_paths(s: Settings, base: Path) -> Settings:
    s.storage.spool_dir = _resolve(base, s.storage.spool_dir)
    s.storage.output_dir = _resolve(base, s.storage.output_dir)
    if s.database.password_file is not None:
        s.database.password_file = _resolve(base, s.database.password_file)
    s.storage.models_dir = _resolve(base, s.storage.models_dir)
    s.dataset.deid.key_file = _resolve(base, s.dataset.deid.key_file)
    if s.dataset.label_rules is not None:
        s.dataset.label_rules = _resolve(base, s.dataset.label_rules)
    if s.sr_templates_dir is not None:
        s.sr_templates_dir = _resolve(base, s.sr_templates_dir)
    if s.inference.anatomy_check.model is not None:
        s.inference.anatomy_check.model = _resolve(base, s.inference.anatomy_check.model)
    s._base_dir = base
    files: list[tuple[BaseModel, tuple[str, ...]]] = [
        (s.node.tls, ("cert_file", "key_file", "ca_file"))]
    for d in s.destinations.values():
        files.append((d.tls, ("cert_file", "key_file", "ca_file")))
        if isinstance(d, DicomwebDestination):
            files.append((d.auth, ("password_file", "bearer_token_file")))
    if s.web.basic_auth is not None:
        files.append((s.web.basic_auth, ("password_file",)))
    for model, attrs in files:
        for attr in attrs:
            val = getattr(model, attr)
            if val is not None:
                setattr(model, attr, _resolve(base, val))
    url = s.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:":
            s.database.url = "sqlite:///" + str(_resolve(base, Path(rel)))
    return s

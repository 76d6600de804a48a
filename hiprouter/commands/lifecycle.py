"""From the site's PACS to a validated model in production: `dataset pull`, `dataset
labels`, `models register|promote|rollback|versions|history`, `validate`, `monitor` and
`reports import|scan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hiprouter.commands import Context, pass_ctx


def register(group: click.Group) -> None:
    from hiprouter.commands.models import models_group

    group.add_command(dataset_group)
    group.add_command(validate_cmd)
    group.add_command(monitor_cmd)
    group.add_command(reports_group)
    for cmd in (register_cmd, promote_cmd, rollback_cmd, versions_cmd, history_cmd):
        models_group.add_command(cmd)


def _factory(ctx: Context) -> Any:
    from hiprouter import db as dbmod

    dbmod.upgrade(ctx.settings.database.url)
    return dbmod.session_factory(dbmod.make_engine(ctx.settings.database.url))


# ---- dataset -----------------------------------------------------------------------------


@click.group("dataset")
def dataset_group() -> None:
    """Training data sets from the site's own PACS (de-identified, labelled from reports)."""


def _condition(ctx: Context, rule: str | None, match_file: Path | None) -> Any:
    if rule and match_file:
        raise click.UsageError("--match-rule and --match are alternatives")
    if rule:
        found = [r for r in ctx.settings.rules if r.name == rule]
        if not found:
            raise click.BadParameter(f"no rule {rule!r} in the configuration "
                                     f"({', '.join(r.name for r in ctx.settings.rules)})",
                                     param_hint="--match-rule")
        return found[0].match
    if match_file:
        import yaml
        from pydantic import TypeAdapter, ValidationError

        from hiprouter.router.flow.rules import Condition

        try:
            return TypeAdapter(Condition).validate_python(
                yaml.safe_load(match_file.read_text(encoding="utf-8")))
        except (ValidationError, yaml.YAMLError) as exc:
            raise click.BadParameter(str(exc), param_hint="--match") from exc
    return None


@dataset_group.command("pull")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", "kinds", multiple=True, required=True,
              help="Pipeline kind whose classes to label (repeat; the first also gives "
                   "labels.csv). `hiprouter models kinds` lists them.")
@click.option("--source", default=None,
              help="Destination (PACS) to query; default dataset.source.")
@click.option("--from-folder", "folder", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="Read a folder of DICOM files instead of a PACS.")
@click.option("--from", "date_from", metavar="YYYYMMDD", help="First study date.")
@click.option("--to", "date_to", metavar="YYYYMMDD", help="Last study date.")
@click.option("--modality", "modalities", multiple=True, default=("CR", "DX"),
              show_default=True, help="Image modalities to take (repeat).")
@click.option("--match-rule", default=None,
              help="Take series that match this routing rule's `match` (config.yaml).")
@click.option("--match", "match_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="A YAML file with a rule condition (routing rule language).")
@click.option("--reports-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Final reports exported from the RIS: accession number and text.")
@click.option("--csv-accession", default="accession_number", show_default=True)
@click.option("--csv-text", default="report_text", show_default=True)
@click.option("--no-pacs-reports", is_flag=True,
              help="Do not retrieve the studies' SR series as their reports.")
@click.option("--retrieve", type=click.Choice(["move", "get"]), default=None,
              help="C-MOVE to our dataset AE title (serve must run) or C-GET; default "
                   "dataset.retrieve.")
@click.option("--limit", type=int, default=None, help="At most this many studies.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@pass_ctx
def dataset_pull(ctx: Context, out: Path, kinds: tuple[str, ...], source: str | None,
                 folder: Path | None, date_from: str | None, date_to: str | None,
                 modalities: tuple[str, ...], match_rule: str | None, match_file: Path | None,
                 reports_csv: Path | None, csv_accession: str, csv_text: str,
                 no_pacs_reports: bool, retrieve: str | None, limit: int | None,
                 quiet: bool) -> None:
    """Pull studies into OUT: query, retrieve, de-identify, label from reports.

    Resumable: run it again with the same OUT to retry what failed and add what is new.
    """
    from hiprouter.lifecycle.deid import DeidError
    from hiprouter.lifecycle.reportlabels import RulesError
    from hiprouter.pull import PullError, PullSpec, pull

    settings = ctx.settings
    source = source or settings.dataset.source
    if folder is None and source is None:
        raise click.UsageError("give --source (or dataset.source) or --from-folder")
    spec = PullSpec(out_dir=out, kinds=list(kinds), source=source if folder is None else None,
                    folder=folder, date_from=date_from, date_to=date_to,
                    modalities=[m.upper() for m in modalities],
                    match=_condition(ctx, match_rule, match_file), reports_csv=reports_csv,
                    csv_accession=csv_accession, csv_text=csv_text,
                    reports_from_pacs=not no_pacs_reports,
                    retrieve=retrieve or settings.dataset.retrieve, limit=limit)
    try:
        summary = pull(settings, spec, progress=not quiet, say=click.echo)
    except (PullError, RulesError, DeidError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{summary.studies} studies, {summary.images} images exported, "
               f"{sum(summary.excluded.values())} left out, {summary.reports} reports")
    for why, n in summary.excluded.most_common():
        click.echo(f"  left out: {n} x {why}")
    for kind, counts in summary.labels.items():
        click.echo(f"  {kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for what, path in summary.files.items():
        click.echo(f"wrote {what}: {path}")


@dataset_group.command("labels")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--kind", "kinds", multiple=True, required=True)
@pass_ctx
def dataset_labels(ctx: Context, out: Path, kinds: tuple[str, ...]) -> None:
    """Rebuild OUT's labels, label report and review sheet with the current label rules
    (after editing them), without pulling again."""
    from hiprouter.lifecycle.reportlabels import RulesError, load_rules
    from hiprouter.pull import PullError, PullSummary, _check_kinds, build_labels

    settings = ctx.settings
    try:
        rules = load_rules(settings.dataset.label_rules)
        _check_kinds(rules, list(kinds))
        summary = PullSummary()
        files = build_labels(out, rules, list(kinds), settings.dataset.report_language,
                             settings.dataset.sample_size, summary)
    except (RulesError, PullError) as exc:
        raise click.ClickException(str(exc)) from exc
    for kind, counts in summary.labels.items():
        click.echo(f"{kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for what, path in files.items():
        click.echo(f"wrote {what}: {path}")


# ---- model registry ----------------------------------------------------------------------


@click.command("register")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Registry name (default: the card's name). A "
              "pipeline runs the versions of the name in its `registered_model` (default: "
              "the pipeline's own name).")
@click.option("--version", "version", default=None, help="Default: the card's version.")
@pass_ctx
def register_cmd(ctx: Context, model_dir: Path, name: str | None, version: str | None) -> None:
    """Register MODEL_DIR (card, weights, evaluation figures) as a new version."""
    from hiprouter.lifecycle.registry import RegistryError
    from hiprouter.lifecycle.registry import register as do_register

    try:
        row = do_register(_factory(ctx), ctx.settings, model_dir, name=name, version=version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    ev = (row.card.get("evaluation") or {})
    click.echo(f"registered {row.name} {row.version} ({row.kind}) in "
               f"{ctx.settings.storage.resolve(row.path)}; "
               f"Device UID {row.device_uid}")
    for key, figures in ev.items():
        if isinstance(figures, dict):
            click.echo(f"  evaluation {key}: accuracy {figures.get('accuracy')}, kappa "
                       f"{figures.get('cohen_kappa')}, macro AUC {figures.get('macro_auc')} "
                       f"({figures.get('dataset', '')})")
    if row.card.get("synthetic_demo"):
        click.echo("  note: trained on synthetic data (demo weights)")


def _bound_pipelines(ctx: Context, name: str) -> list[str]:
    return [p for p, cfg in ctx.settings.pipelines.items() if cfg.registry_name(p) == name]


@click.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--to", "stage", type=click.Choice(["shadow", "active", "registered", "retired"]),
              required=True)
@click.option("--reason", default=None, help="Recorded in the history.")
@pass_ctx
def promote_cmd(ctx: Context, name: str, version: str, stage: str, reason: str | None) -> None:
    """Move VERSION of NAME to shadow (runs, recorded, nothing sent) or active (reported)."""
    from hiprouter.lifecycle.monitor import shadow_baseline
    from hiprouter.lifecycle.registry import RegistryError, promote, set_baseline

    factory = _factory(ctx)
    bound = _bound_pipelines(ctx, name)
    for p in bound:
        cfg = ctx.settings.pipelines[p]
        with factory() as session:
            from hiprouter.lifecycle.registry import versions

            rows = [r for r in versions(session, name) if r.version == version]
        if rows and rows[0].kind != cfg.kind:
            raise click.ClickException(f"{name} {version} is a {rows[0].kind!r} model; pipeline "
                                       f"{p} is of kind {cfg.kind!r}")
    try:
        row = promote(factory, ctx.settings, name, version, stage, reason=reason)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if stage == "active":
        base = shadow_baseline(factory, ctx.settings, row.id)
        if base:
            set_baseline(factory, row.id, base)
            click.echo(f"baseline for drift: {base['n']} hips of its shadow period")
    click.echo(f"{name} {version} is now {stage}")
    if bound:
        click.echo(f"pipelines running {name}: {', '.join(bound)} (workers pick it up with "
                   "their next job)")
    else:
        click.echo(f"warning: no configured pipeline runs {name}; set "
                   f"`registered_model: {name}` on one (or name the pipeline {name})")


@click.command("rollback")
@click.argument("name")
@pass_ctx
def rollback_cmd(ctx: Context, name: str) -> None:
    """Re-activate the version of NAME that was active before the current one."""
    from hiprouter.lifecycle.registry import RegistryError, rollback

    try:
        old, new = rollback(_factory(ctx), ctx.settings, name)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name}: {old.version if old else 'none'} retired, {new.version} active again")


@click.command("versions")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def versions_cmd(ctx: Context, name: str | None, as_json: bool) -> None:
    """Registered model versions and their stages."""
    from rich.console import Console
    from rich.table import Table

    from hiprouter.lifecycle.registry import versions

    with _factory(ctx)() as session:
        rows = [{"name": r.name, "version": r.version, "kind": r.kind, "stage": r.stage,
                 "device_uid": r.device_uid, "registered_at": r.registered_at.isoformat(),
                 "test_accuracy": ((r.card.get("evaluation") or {}).get("test_split") or {})
                 .get("accuracy"), "path": str(ctx.settings.storage.resolve(r.path))}
                for r in versions(session, name)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "version", "kind", "stage", "test accuracy", "Device UID",
                  "registered")
    for r in rows:
        table.add_row(r["name"], r["version"], r["kind"], r["stage"], str(r["test_accuracy"]),
                      r["device_uid"], r["registered_at"][:19])
    Console().print(table)


@click.command("history")
@click.argument("name", required=False)
@pass_ctx
def history_cmd(ctx: Context, name: str | None) -> None:
    """Every stage change of the registered models (who, when, why)."""
    from hiprouter.lifecycle.registry import history

    with _factory(ctx)() as session:
        for e in history(session, name):
            click.echo(f"{e.at.isoformat()[:19]}  {e.name} {e.version}: "
                       f"{e.from_stage or '-'} -> {e.to_stage}  by {e.actor}"
                       + (f"  ({e.reason})" if e.reason else ""))


# ---- validation, monitoring, reports -----------------------------------------------------


def _fmt(v: float | None, ci: list[float] | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


@click.command("validate")
@click.argument("name")
@click.option("--mode", type=click.Choice(["shadow", "active", "any"]), default="shadow",
              show_default=True)
@click.option("--version", "model_version", default=None, help="Only this model version.")
@click.option("--since", default=None, metavar="YYYY-MM-DD")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write agreement over time as a PNG.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--scan/--no-scan", default=True, show_default=True,
              help="First read labels from final reports received since the last scan.")
@pass_ctx
def validate_cmd(ctx: Context, name: str, mode: str, model_version: str | None,
                 since: str | None, plot: Path | None, as_json: bool, scan: bool) -> None:
    """Compare pipeline NAME's findings with the labels of the final reports: sensitivity,
    specificity and kappa per class with 95 % CIs, overall and per week."""
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from hiprouter.lifecycle.monitor import extract_received_reports, plot_validation, validate

    factory = _factory(ctx)
    if scan:
        extract_received_reports(factory, ctx.settings)
    when = datetime.fromisoformat(since).replace(tzinfo=UTC) if since else None
    try:
        result = validate(factory, ctx.settings, name, None if mode == "any" else mode,
                          model_version, when)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if plot:
        plot_validation(result, plot)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    o = result["overall"]
    console = Console()
    console.print(f"[bold]{name}[/] ({result['kind']}, {result['mode']}): "
                  f"{', '.join(result['models']) or 'no findings'}")
    console.print(f"hips {result['hips']}, compared with a report label {result['compared']}, "
                  f"awaiting a report {result['awaiting_report']}, report unlabelled "
                  f"{result['report_unlabelled']}, contradictory "
                  f"{result['report_contradictory']}, indeterminate {result['indeterminate']}, "
                  f"not assessed {result['not_assessed']}")
    console.print(f"agreement {_fmt(o['accuracy'], o['accuracy_ci95'])}  kappa "
                  f"{_fmt(o['kappa'], o['kappa_ci95'])}")
    table = Table("class", "report +", "sensitivity [95% CI]", "specificity [95% CI]",
                  "kappa [95% CI]")
    for cls, v in o["per_class"].items():
        table.add_row(cls, str(v["positives"]), _fmt(v["sensitivity"], v["sensitivity_ci95"]),
                      _fmt(v["specificity"], v["specificity_ci95"]),
                      _fmt(v["kappa"], v["kappa_ci95"]))
    console.print(table)
    weeks = Table("week", "hips", "compared", "agreement [95% CI]", "kappa")
    for w in result["weeks"]:
        weeks.add_row(w["week"], str(w["hips"]), str(w["compared"]),
                      _fmt(w["accuracy"], w["accuracy_ci95"]), _fmt(w["kappa"]))
    console.print(weeks)
    if plot:
        console.print(f"wrote {plot}")


@click.command("monitor")
@click.option("--json", "as_json", is_flag=True)
@click.option("--alerts-only", is_flag=True)
@pass_ctx
def monitor_cmd(ctx: Context, as_json: bool, alerts_only: bool) -> None:
    """Feedback and drift now: report agreement, class shift, confidence and
    out-of-distribution share per pipeline and week, with alerts (serve does this every
    monitoring.interval_s)."""
    from rich.console import Console
    from rich.table import Table

    from hiprouter.service import run_monitoring

    checks = run_monitoring(_factory(ctx), ctx.settings)
    if alerts_only:
        checks = [c for c in checks if c.alert]
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks], indent=2, default=str))
        return
    table = Table("pipeline", "mode", "model", "week", "metric", "value", "limit", "n", "alert")
    for c in checks:
        table.add_row(c.pipeline, c.mode, f"{c.model_name} {c.model_version}", c.week, c.metric,
                      _fmt(c.value), _fmt(c.threshold), str(c.n),
                      "[red]ALERT[/]" if c.alert else "")
    Console().print(table)


@click.group("reports")
def reports_group() -> None:
    """Final reports as labels for validation and feedback."""


@reports_group.command("import")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--accession-column", default="accession_number", show_default=True)
@click.option("--text-column", default="report_text", show_default=True)
@click.option("--date-column", default=None, help="ISO date/time of the final report.")
@pass_ctx
def reports_import(ctx: Context, csv_path: Path, accession_column: str, text_column: str,
                   date_column: str | None) -> None:
    """Labels from a RIS export (accession number, report text) for studies hiprouter has."""
    from hiprouter.lifecycle.monitor import import_reports_csv

    try:
        counts = import_reports_csv(_factory(ctx), ctx.settings, csv_path, accession_column,
                                    text_column, date_column)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{counts['rows']} rows, {counts['matched']} matched a study, "
               f"{counts['labelled_hips']} hips labelled")


@reports_group.command("scan")
@pass_ctx
def reports_scan(ctx: Context) -> None:
    """Read labels from the final reports (text SRs) received since the last scan."""
    from hiprouter.lifecycle.monitor import extract_received_reports

    n = extract_received_reports(_factory(ctx), ctx.settings)
    click.echo(f"{n} reports read")

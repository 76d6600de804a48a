"""`hiprouter synth`: write synthetic hip/pelvis radiograph studies (DICOM) and labels.csv."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import click

from hiprouter.commands import console

TASKS = ("hardware", "screening", "failure", "device", "onfh")
"""The training tasks (hiprouter.synth.labels.TASKS; repeated so --help imports nothing)."""


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", type=click.IntRange(min=1), default=20, show_default=True,
              help="Number of studies (patients) to generate.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed; the same seed gives the same files.")
@click.option("--task", type=click.Choice([*TASKS, "mixed"]), default="hardware",
              show_default=True,
              help="Which ground truth to sample and balance: hardware (9 classes), "
                   "screening (8 classes), failure (THA failure causes), device (fixation "
                   "designs) or onfh (osteonecrosis grades 0-4); mixed (alt renderer only).")
@click.option("--renderer", type=click.Choice(["primary", "alt"]), default="primary",
              show_default=True,
              help="primary: the renderer demo weights are trained on; alt: the independent "
                   "renderer, for cross-generator tests only.")
@click.option("--views", default=None,
              help="Comma-separated views for every study (ap_pelvis, ap_hip, frog_leg, "
                   "cross_table_lateral); default: the task's random protocols.")
@click.option("--classes", default=None,
              help="Comma-separated classes of the task to sample (equal weights); default "
                   "all of them (primary renderer only).")
@click.option("--size", nargs=2, type=click.IntRange(min=64), default=None,
              help="Range of the image's long side in pixels (default 1500 2500).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes; the output does not depend on it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--preview", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG contact sheet: one labelled image per class of the task "
                   "(alt: one per hardware class).")
def synth(out: Path, studies: int, seed: int, task: str, renderer: str, views: str | None,
          classes: str | None, size: tuple[int, int] | None, workers: int, quiet: bool,
          preview: Path | None) -> None:
    """Generate synthetic studies in OUT with ground truth per hip in OUT/labels.csv, and a
    femoral head mask (PNG) per native head and image.

    Synthetic images are for tests and demos only, not for clinical use.
    """
    from rich.table import Table

    from hiprouter.synth.labels import TASK_CLASSES, TASK_COLUMN

    if task == "mixed" and renderer == "primary":
        raise click.UsageError("--task mixed is a task of --renderer alt")
    chosen = _split(classes)
    if renderer == "alt" and chosen:
        raise click.UsageError("--renderer alt samples classes by --task, not --classes")
    keys = list(TASK_CLASSES[task if task != "mixed" else "hardware"])
    weights = None
    if chosen:
        unknown = sorted(set(chosen) - set(keys))
        if unknown:
            raise click.BadParameter(f"unknown {task} classes {unknown}; choose from {keys}",
                                     param_hint="--classes")
        weights = {k: 1.0 for k in chosen}
    if size is not None and size[0] > size[1]:
        raise click.BadParameter("MIN must not exceed MAX", param_hint="--size")
    try:
        if renderer == "alt":
            from hiprouter.synth.alt import generate_alt_dataset

            labels = generate_alt_dataset(out, studies, seed, task=task, views=_split(views),
                                          size=size, progress=not quiet, workers=workers)
        else:
            from hiprouter.synth.study import generate_dataset

            labels = generate_dataset(out, studies, seed, progress=not quiet, task=task,
                                      class_weights=weights, views=_split(views), size=size,
                                      workers=workers)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    column = TASK_COLUMN[task if task != "mixed" else "hardware"]
    counts = Counter(r[column] for r in rows if r[column] != "")
    table = Table(title=f"{studies} studies ({renderer} renderer), "
                        f"{len({r['path'] for r in rows})} images, "
                        f"{len(rows)} hip labels ({task}: column {column})")
    table.add_column("class")
    table.add_column("hips", justify="right")
    for k in keys:
        table.add_row(k, str(counts.get(k, 0)))
    unlabelled = sum(1 for r in rows if r[column] == "")
    if unlabelled:
        table.add_row(f"(no {column}: other hardware)", str(unlabelled))
    if column == "hardware":
        for k, n in sorted(Counter(r["fracture"] for r in rows
                                   if r["fracture"] != "none").items()):
            table.add_row(k, str(n))
        table.add_row("tha_dislocation", str(sum(int(r["dislocation"]) for r in rows)))
    table.add_row("head masks", str(sum(1 for r in rows if r["head_mask"])))
    console().print(table)
    click.echo(f"labels: {labels}")
    if preview is not None and renderer == "alt":
        from hiprouter.synth.alt.sheet import HARDWARE_EXAMPLES, example_sheet

        preview.parent.mkdir(parents=True, exist_ok=True)
        example_sheet(HARDWARE_EXAMPLES, seed, columns=3).save(preview)
        click.echo(f"preview: {preview}")
    elif preview is not None:
        from hiprouter.synth.preview import write_example_sheet

        click.echo(f"preview: {write_example_sheet(preview, seed, task=task)}")


def register(group: click.Group) -> None:
    group.add_command(synth)

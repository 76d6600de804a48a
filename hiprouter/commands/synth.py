"""`hiprouter synth`: write synthetic hip/pelvis radiograph studies (DICOM) and labels.csv."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import click


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", type=click.IntRange(min=1), default=20, show_default=True,
              help="Number of studies (patients) to generate.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed; the same seed gives the same files.")
@click.option("--views", default=None,
              help="Comma-separated views for every study (ap_pelvis, ap_hip, frog_leg, "
                   "cross_table_lateral); default: random protocols.")
@click.option("--classes", default=None,
              help="Comma-separated hardware classes to sample (equal weights); default all 9.")
@click.option("--size", nargs=2, type=click.IntRange(min=64), default=None,
              help="Range of the image's long side in pixels (default 1500 2500).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes; the output does not depend on it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--preview", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG contact sheet: one image per hardware class.")
@click.option("--renderer", type=click.Choice(["primary", "alt"]), default="primary",
              show_default=True,
              help="primary: the training renderer; alt: the independent renderer for "
                   "cross-generator tests.")
@click.option("--task", type=click.Choice(["mixed", "hardware", "screening", "failure",
                                           "device", "onfh"]), default=None,
              help="alt only: weight the index hip towards one pipeline's classes "
                   "(default mixed).")
def synth(out: Path, studies: int, seed: int, views: str | None, classes: str | None,
          size: tuple[int, int] | None, workers: int, quiet: bool, preview: Path | None,
          renderer: str, task: str | None) -> None:
    """Generate synthetic studies in OUT with ground truth per hip in OUT/labels.csv.

    Synthetic images are for tests and demos only, not for clinical use.
    """
    from rich.console import Console
    from rich.table import Table

    from hiprouter.inference.classes import HARDWARE_CLASSES
    from hiprouter.synth.study import generate_dataset

    keys = [c.key for c in HARDWARE_CLASSES]
    weights = None
    chosen = _split(classes)
    if chosen:
        unknown = sorted(set(chosen) - set(keys))
        if unknown:
            raise click.BadParameter(f"unknown classes {unknown}; choose from {keys}",
                                     param_hint="--classes")
        weights = {k: 1.0 for k in chosen}
    if size is not None and size[0] > size[1]:
        raise click.BadParameter("MIN must not exceed MAX", param_hint="--size")
    if renderer == "primary" and task is not None:
        raise click.UsageError("--task is an option of --renderer alt")
    if renderer == "alt" and chosen:
        raise click.UsageError("--renderer alt samples classes by --task, not --classes")
    try:
        if renderer == "alt":
            from hiprouter.synth.alt import generate_alt_dataset

            labels = generate_alt_dataset(out, studies, seed, task=task or "mixed",
                                          views=_split(views), size=size,
                                          progress=not quiet, workers=workers)
        else:
            labels = generate_dataset(out, studies, seed, progress=not quiet,
                                      class_weights=weights, views=_split(views), size=size,
                                      workers=workers)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    hardware = Counter(r["hardware"] for r in rows)
    fractures = Counter(r["fracture"] for r in rows if r["fracture"] != "none")
    dislocated = sum(int(r["dislocation"]) for r in rows)
    table = Table(title=f"{studies} studies, {len({r['path'] for r in rows})} images, "
                        f"{len(rows)} hip labels")
    table.add_column("class")
    table.add_column("hips", justify="right")
    for k in keys:
        table.add_row(k, str(hardware.get(k, 0)))
    for k, n in sorted(fractures.items()):
        table.add_row(k, str(n))
    table.add_row("tha_dislocation", str(dislocated))
    Console().print(table)
    click.echo(f"labels: {labels}")
    if preview is not None and renderer == "alt":
        from hiprouter.synth.alt.sheet import HARDWARE_EXAMPLES, example_sheet

        preview.parent.mkdir(parents=True, exist_ok=True)
        example_sheet(HARDWARE_EXAMPLES, seed, columns=3).save(preview)
        click.echo(f"preview: {preview}")
    elif preview is not None:
        from hiprouter.synth.preview import write_example_sheet

        click.echo(f"preview: {write_example_sheet(preview, seed)}")


def register(group: click.Group) -> None:
    group.add_command(synth)

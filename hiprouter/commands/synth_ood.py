"""`hiprouter synth-ood`: write images a hip model must not assess (DICOM) and labels.csv."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click


@click.command("synth-ood")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-kind", type=click.IntRange(min=1), default=5, show_default=True,
              help="Images of each kind (chest, child pelvis, knee, hand, shoulder, lumbar "
                   "spine, skull, noise, photos, blank).")
@click.option("--kind", "kinds", multiple=True, metavar="KIND",
              help="Only this kind (repeatable; default: every kind). Kinds: "
                   "chest_pa, child_pelvis, knee_ap, hand_pa, noise, photo_rgb, photo_mono, "
                   "blank, shoulder_ap, spine_lat, skull_lat.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed; the same seed gives the same files.")
def synth_ood(out: Path, per_kind: int, seed: int, kinds: tuple[str, ...]) -> None:
    """Generate out-of-distribution images in OUT, with OUT/labels.csv (column ood_kind).

    For tests of "not assessed" behaviour; synthetic, not for clinical use.
    """
    import csv

    from hiprouter.synth.ood import generate_ood_dataset

    try:
        labels = generate_ood_dataset(out, per_kind, seed, kinds or None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with labels.open(newline="") as fh:
        counts = Counter(row["ood_kind"] for row in csv.DictReader(fh))
    for kind, n in counts.items():
        click.echo(f"{kind}: {n}")
    click.echo(f"labels: {labels}")


def register(group: click.Group) -> None:
    group.add_command(synth_ood)

"""`hiprouter train-anatomy` and `hiprouter check-anatomy`: the whole-image check that an
image is an adult hip or pelvis radiograph before any hip model reads it
(inference/anatomy.py, training/anatomy.py)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click


def register(group: click.Group) -> None:
    group.add_command(train_anatomy_cmd)
    group.add_command(check_anatomy_cmd)


@click.command("train-anatomy")
@click.argument("train_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--val", "val_dirs", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Validation folder (repeatable): fits the temperature and the threshold.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--arch", default="resnet10t", show_default=True)
@click.option("--widths", default="32,64,128,256", show_default=True,
              help="Stage widths of the ResNet-family backbone.")
@click.option("--input-size", default=160, show_default=True, type=int)
@click.option("--epochs", default=12, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--keep", default=0.995, show_default=True, type=float,
              help="Fraction of validation hip images the threshold keeps assessed.")
@click.option("--max-min-probability", "cap", default=None, type=float,
              help="Upper bound of the threshold on P(hip) (default: "
                   "hiprouter.training.anatomy.MAX_MIN_PROBABILITY, 0.2).")
@click.option("--augment", "augment_preset", default="anatomy", show_default=True,
              type=click.Choice(["none", "basic", "strong", "anatomy"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--workers", default=1, show_default=True, type=int,
              help="DataLoader worker processes (augmentation).")
@click.option("--decode-workers", default=1, show_default=True, type=int)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps (smoke).")
@click.option("--name", default="anatomy-demo", show_default=True)
@click.option("--version", "model_version", default="0.1.0", show_default=True)
@click.option("--training-data", default="", help="Description recorded in the card.")
@click.option("--synthetic-demo/--no-synthetic-demo", default=True, show_default=True)
@click.option("--weights-dtype", default="float16", show_default=True,
              type=click.Choice(["float32", "float16"]))
@click.option("--device", default="auto", show_default=True)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path))
def train_anatomy_cmd(train_dirs: tuple[Path, ...], val_dirs: tuple[Path, ...], out_dir: Path,
                      arch: str, widths: str, input_size: int, epochs: int, batch_size: int,
                      lr: float, keep: float, cap: float | None, augment_preset: str,
                      seed: int,
                      threads: int | None, workers: int, decode_workers: int,
                      max_steps: int | None, name: str, model_version: str,
                      training_data: str, synthetic_demo: bool, weights_dtype: str,
                      device: str, cache_dir: Path | None) -> None:
    """Train the anatomy check on TRAIN_DIRS (folders of `hiprouter synth` and `hiprouter
    synth-ood` output with their labels.csv)."""
    from hiprouter.inference.models import ModelError
    from hiprouter.training.anatomy import MAX_MIN_PROBABILITY, train_anatomy
    from hiprouter.training.train import TrainConfig

    try:
        stage_widths = tuple(int(w) for w in widths.split(","))
    except ValueError as exc:
        raise click.UsageError(f"--widths: {exc}") from exc
    if not 0.5 < keep < 1.0:
        raise click.UsageError("--keep must be between 0.5 and 1")
    if cap is not None and not 0.0 < cap < 1.0:
        raise click.UsageError("--max-min-probability must be between 0 and 1")
    cfg = TrainConfig(arch=arch, input_size=input_size, epochs=epochs, batch_size=batch_size,
                      lr=lr, seed=seed, augment_preset=augment_preset, threads=threads,
                      workers=workers, decode_workers=decode_workers, max_steps=max_steps,
                      name=name, version=model_version, training_data=training_data,
                      synthetic_demo=synthetic_demo, weights_dtype=weights_dtype,
                      device=device, label_set="anatomy")
    try:
        card = train_anatomy(list(train_dirs), list(val_dirs), out_dir, cfg, stage_widths,
                             keep, cache_dir, log=click.echo,
                             cap=MAX_MIN_PROBABILITY if cap is None else cap)
    except (ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{card.name} {card.version}: sha256 {card.weights_sha256[:12]}..., "
               f"min_probability {card.abstention['min_probability']}, "
               f"temperature {card.calibration['temperature']}")


@click.command("check-anatomy")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=True, path_type=Path))
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="Anatomy model folder (default: the bundled demo).")
def check_anatomy_cmd(files: tuple[Path, ...], model_dir: Path | None) -> None:
    """Run the anatomy check on DICOM FILES (folders: every DICOM file below, by its .dcm
    suffix or its DICM preamble): one CSV row each with the verdict, the class
    probabilities and the reason."""
    from pydicom.misc import is_dicom

    from hiprouter.inference.anatomy import AnatomyCheck
    from hiprouter.inference.decode import RADIOGRAPH_MODALITIES, RefusedImage, decode_file

    def dicom_below(folder: Path) -> list[Path]:
        return sorted(q for q in folder.rglob("*") if q.is_file() and
                      (q.suffix.lower() == ".dcm" or is_dicom(q)))

    check = AnatomyCheck.from_dir(model_dir)
    paths = [p for f in files for p in (dicom_below(f) if f.is_dir() else [f])]
    out = csv.writer(sys.stdout)
    out.writerow(["file", "verdict", *check.classes, "reason"])
    for path in paths:
        try:
            _, decoded = decode_file(path, RADIOGRAPH_MODALITIES)
        except (RefusedImage, OSError) as exc:
            out.writerow([str(path), "not decodable", *[""] * len(check.classes),
                          getattr(exc, "reason", None) or str(exc)])
            continue
        verdict = check.assess([decoded.pixels])[0]
        out.writerow([str(path), "not assessed" if verdict.refused else "assessed",
                      *[f"{verdict.probabilities[c]:.4f}" for c in check.classes],
                      verdict.reason or ""])

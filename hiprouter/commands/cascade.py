"""`hiprouter train-dual-view`, `hiprouter evaluate-dual-view` and `hiprouter models half`.

The dual-view commands train and evaluate the AP + lateral model of the prosthesis_failure
kind (seed 000, Hip-Net); single-view classifiers (hardware, fixation_device, ...) use
`hiprouter train` / `hiprouter evaluate`. `models half` rewrites any model's weights as
float16 (half the size; the card's sha256 and Device UID follow the new file).
"""

from __future__ import annotations

from pathlib import Path

import click


def register(group: click.Group) -> None:
    from hiprouter.commands.models import models_group

    group.add_command(train_dual_view_cmd)
    group.add_command(evaluate_dual_view_cmd)
    models_group.add_command(half_cmd)


@click.command("train-dual-view")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Labels CSV (default DATA_DIR/labels.csv).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model folder to write (several members: OUT/member-<n>/).")
@click.option("--label-set", default="prosthesis_failure", show_default=True,
              help="The pipeline kind whose classes the model learns.")
@click.option("--label-column", default="", help="Labels CSV column (default: the kind's).")
@click.option("--arch", default="mnasnet_small", show_default=True,
              help="timm backbone shared by both views.")
@click.option("--input-size", default=192, show_default=True, type=int)
@click.option("--epochs", default=30, show_default=True, type=int)
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--lateral-dropout", default=0.3, show_default=True, type=float,
              help="Probability of training a hip without its lateral view.")
@click.option("--crop", type=click.Choice(["implant_window", "full"]), default="implant_window",
              show_default=True,
              help="Model input: a square around the implant, or the whole hip crop.")
@click.option("--members", default=1, show_default=True, type=int,
              help="Ensemble size (the seed uses 4); seeds SEED ... SEED+N-1.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--balance", is_flag=True, help="Class-balanced sampling of training hips.")
@click.option("--threads", default=0, show_default=True, type=int,
              help="torch threads (0: torch's default).")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps.")
@click.option("--name", default="prosthesis_failure", show_default=True)
@click.option("--version", "model_version", default="0.1.0", show_default=True)
@click.option("--training-data", default="", help="Description of the data for the card.")
@click.option("--synthetic-demo", is_flag=True,
              help="Mark the model as trained on synthetic data (demo output only).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--decode-workers", default=1, show_default=True, type=int)
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Start every member's backbone from this model (same arch), e.g. the "
                   "hardware demo; a dual-view model with the same classes: all layers.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where preprocessed crops are cached (default OUT/cache).")
def train_dual_view_cmd(data_dir: Path, labels_csv: Path | None, out_dir: Path, label_set: str,
                        label_column: str, arch: str, input_size: int, epochs: int,
                        batch_size: int, lr: float, lateral_dropout: float, crop: str,
                        members: int,
                        seed: int, balance: bool, threads: int, max_steps: int | None,
                        name: str, model_version: str, training_data: str,
                        synthetic_demo: bool, device: str, decode_workers: int,
                        init_from: Path | None, cache_dir: Path | None) -> None:
    """Train the dual-view (AP + lateral) model on DATA_DIR and a labels CSV."""
    from hiprouter.inference.models import ModelError
    from hiprouter.training.dataset import DatasetError
    from hiprouter.training.dualview import DualViewConfig, train_dual_view

    labels_csv = labels_csv or data_dir / "labels.csv"
    if not labels_csv.is_file():
        raise click.UsageError(f"no labels CSV: {labels_csv} (use --labels)")
    if members < 1:
        raise click.UsageError("--members must be at least 1")
    cfg = DualViewConfig(arch=arch, input_size=input_size, epochs=epochs, batch_size=batch_size,
                         lr=lr, seed=seed, members=members, label_set=label_set,
                         label_column=label_column, lateral_dropout=lateral_dropout, crop=crop,
                         balance=balance, threads=threads, max_steps=max_steps,
                         decode_workers=decode_workers, name=name, version=model_version,
                         training_data=training_data, synthetic_demo=synthetic_demo,
                         device=device, init_from=str(init_from) if init_from else None)
    try:
        cards = train_dual_view(data_dir, labels_csv, out_dir, cfg, cache_dir, log=click.echo)
    except (DatasetError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    for card in cards:
        ev = card.evaluation.get("test_split", {})
        click.echo(f"{card.name} seed {card.training.get('seed')}: sha256 "
                   f"{card.weights_sha256[:12]}..., test accuracy {ev.get('accuracy')}, "
                   f"macro AUC {ev.get('macro_auc')}")
    ens = cards[0].evaluation.get("ensemble_test_split")
    if ens:
        click.echo(f"ensemble: test accuracy {ens['accuracy']}, macro AUC {ens['macro_auc']}; "
                   f"report in {out_dir}/evaluation/test-split/report.md")


@click.command("evaluate-dual-view")
@click.argument("model_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Labels CSV (default DATA/labels.csv).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--runtime", type=click.Choice(["auto", "torch", "onnx"]), default="auto",
              show_default=True)
@click.option("--label-column", default="")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=int)
@click.option("--record", "record_as", metavar="NAME",
              help="Also store the figures in every member's card under evaluation.NAME.")
@click.option("--dataset-name", default="", help="How the cards name this data set.")
def evaluate_dual_view_cmd(model_dirs: tuple[Path, ...], data_dir: Path,
                           labels_csv: Path | None, out_dir: Path, device: str, runtime: str,
                           label_column: str, n_boot: int, record_as: str | None,
                           dataset_name: str) -> None:
    """Evaluate dual-view MODEL_DIRS (one model, several = an ensemble, or an ensemble
    folder of member-<n> folders) per hip on labelled DICOM files."""
    from hiprouter.inference.dualview import expand_model_dirs
    from hiprouter.inference.models import ModelError
    from hiprouter.training.dataset import DatasetError
    from hiprouter.training.dualview import evaluate_dual_view, record_figures
    from hiprouter.training.evaluate import card_figures

    labels_csv = labels_csv or data_dir / "labels.csv"
    try:
        metrics, paths = evaluate_dual_view(list(model_dirs), data_dir, labels_csv, out_dir,
                                            device, runtime, label_column, n_boot=n_boot)
    except (DatasetError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc

    def fmt(v: float | None, ci: list[float] | None = None) -> str:
        if v is None:
            return "n/a"
        return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    model = metrics["model"]
    click.echo(f"{model['name']} {model['version']} ({model['architecture']}, "
               f"{', '.join(model['runtime'])})")
    click.echo(f"hips {metrics['n']} ({metrics['hips_with_lateral']} with a lateral view): "
               f"accuracy {fmt(metrics['accuracy'], metrics['accuracy_ci95'])}, "
               f"macro AUC {fmt(metrics['macro_auc'])}, kappa {fmt(metrics['cohen_kappa'])}")
    ap = metrics["ap_only"]
    click.echo(f"AP views only: accuracy {fmt(ap['accuracy'], ap['accuracy_ci95'])}, "
               f"macro AUC {fmt(ap['macro_auc'])}")
    sel = metrics["selective"]
    click.echo(f"with min_confidence {sel['min_confidence']:.3f}: not assessed (OOD) "
               f"{fmt(sel['not_assessed_rate'])}, indeterminate "
               f"{fmt(sel['indeterminate_rate'])}, assessed {fmt(sel['assessed_rate'])} "
               f"(accuracy {fmt(sel['accuracy_assessed'])}); wrong definitive causes "
               f"{fmt(sel['wrong_definitive_rate'])} of all hips")
    for i, m in enumerate(metrics.get("members", []), start=1):
        click.echo(f"member {i}: accuracy {fmt(m['accuracy'])}, macro AUC {fmt(m['macro_auc'])}")
    for cls, m in metrics["per_class"].items():
        click.echo(f"  {cls}: n {m['support']}, recall {m['recall']:.3f}, AUC "
                   f"{fmt(m['auc'], m['auc_ci95'])}")
    if model["synthetic_demo"]:
        click.echo("synthetic-trained demo model: figures say nothing about clinical accuracy")
    click.echo(f"wrote {paths['markdown']}, {paths['json']}, {paths['roc']}, "
               f"{paths['confusion']}")
    if record_as:
        name = dataset_name or f"{data_dir.name} ({labels_csv.name})"
        figures = {**card_figures(metrics, name), "unit": "hip (every AP x lateral pair averaged)",
                   "ap_only_accuracy": round(ap["accuracy"], 4),
                   "ap_only_macro_auc": None if ap["macro_auc"] is None
                   else round(ap["macro_auc"], 4),
                   "members": model["members"]}
        for d in expand_model_dirs(list(model_dirs)):
            record_figures(d, record_as, figures)
            click.echo(f"recorded as evaluation.{record_as} in {d}/card.yaml")


@click.command("half")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def half_cmd(model_dir: Path) -> None:
    """Rewrite MODEL_DIR's weights as float16 (the card gets the new sha256 and Device UID)."""
    from safetensors.torch import load_file, save_file

    from hiprouter.inference.models import (
        ModelError,
        device_uid_for,
        read_card,
        sha256_file,
        verify_weights,
        write_card,
    )

    try:
        card = read_card(model_dir)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    if not verify_weights(model_dir, card):
        raise click.ClickException(f"{model_dir}: the weights do not match the card's sha256")
    weights = model_dir / card.weights_file
    state = load_file(str(weights))
    before = weights.stat().st_size
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"architecture": card.architecture, "name": card.name,
                                         "version": card.version, "dtype": "float16"})
    tmp.replace(weights)
    sha = sha256_file(weights)
    card = card.model_copy(update={"weights_sha256": sha, "device_uid": device_uid_for(sha)})
    write_card(model_dir, card)
    click.echo(f"{weights}: {before / 1e6:.1f} MB -> {weights.stat().st_size / 1e6:.1f} MB "
               f"(float16), Device UID {card.device_uid}")

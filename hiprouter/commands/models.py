"""`hiprouter train`, `hiprouter evaluate` and `hiprouter models list|kinds|retriage|reabstain|
recalibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hiprouter.commands import Context, console, pass_ctx


def register(group: click.Group) -> None:
    group.add_command(train_cmd)
    group.add_command(evaluate_cmd)
    group.add_command(models_group)


def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("train")
@click.argument("data_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_csvs", multiple=True, type=click.Path(
              exists=True, dir_okay=False, path_type=Path),
              help="Labels CSV (default DATA_DIR/labels.csv); once per DATA_DIR.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model directory to write (card.yaml, model.safetensors, evaluation/).")
@click.option("--arch", default="efficientnet_b4", show_default=True, help="timm model name.")
@click.option("--input-size", default=380, show_default=True, type=int)
@click.option("--epochs-head", default=4, show_default=True, type=int,
              help="Epochs training only the classifier head.")
@click.option("--epochs", default=50, show_default=True, type=int,
              help="Epochs of full fine-tuning.")
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--lr-head", default=2e-3, show_default=True, type=float)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--weight-decay", default=1e-4, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps.")
@click.option("--balance", is_flag=True,
              help="Draw training hips class-balanced (for rare classes such as fractures).")
@click.option("--label-set", default="hardware", show_default=True,
              help="Classes to learn: a classifier pipeline kind (`hiprouter models kinds`).")
@click.option("--label-column", default="",
              help="Labels CSV column (default: the label set's, e.g. hardware, fracture).")
@click.option("--classes", default=None,
              help="Comma-separated class keys in output order, for a label set that is not "
                   "an installed kind.")
@click.option("--channels", default="grey", show_default=True,
              help="Input channels: grey, or grey,metal (a channel isolating the densest "
                   "structures, i.e. implants); recorded in the card, followed at run time.")
@click.option("--attention", type=click.Choice(["none", "cbam", "se", "eca"]), default="none",
              show_default=True, help="Attention in every residual block (ResNet family).")
@click.option("--pool", type=click.Choice(["avg", "gem"]), default="avg", show_default=True,
              help="Global pooling: average or generalized mean (GeM).")
@click.option("--loss", type=click.Choice(["ce", "focal", "cb-focal", "cb-ce"]), default="ce",
              show_default=True,
              help="Cross-entropy, focal, or class-balanced (effective number) focal loss.")
@click.option("--focal-gamma", default=2.0, show_default=True, type=float)
@click.option("--cb-beta", default=0.999, show_default=True, type=float,
              help="beta of the effective number of samples (class-balanced losses).")
@click.option("--label-smoothing", default=0.0, show_default=True, type=float)
@click.option("--augment", "augment_preset", type=click.Choice(["none", "basic", "strong"]),
              default="basic", show_default=True,
              help="basic: the seed's contrast/brightness/zoom/warp/rotation/flip; strong: "
                   "also gamma, blur, noise, JPEG, resolution loss, wider rotation and zoom.")
@click.option("--tta", default="", help="Test-time augmentation applied at run time (hflip).")
@click.option("--no-calibrate", is_flag=True, help="Do not fit a temperature.")
@click.option("--abstain-accuracy", default=0.95, show_default=True, type=float,
              help="min_confidence: the lowest confidence whose validation hips reach this "
                   "accuracy (0: never indeterminate).")
@click.option("--ood-method", type=click.Choice(["energy", "mahalanobis"]), default="energy",
              show_default=True, help="Out-of-distribution score whose threshold goes in the card.")
@click.option("--ood-tpr", default=0.99, show_default=True, type=float,
              help="Fraction of training crops the OOD threshold keeps (0: no OOD threshold).")
@click.option("--ood-threshold-on", type=click.Choice(["validation", "training"]),
              default="validation", show_default=True,
              help="Crops the OOD threshold is a quantile of (validation: held out).")
@click.option("--triage-sensitivity", type=float, default=None,
              help="Choose triage thresholds at this validation sensitivity (e.g. 0.95).")
@click.option("--triage-classes", default=None,
              help="Comma-separated classes for triage thresholds (default: the kind's).")
@click.option("--outliers", "outlier_dirs", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images the model must not assess (e.g. from `hiprouter "
                   "synth-ood`; repeatable): their hip crops are trained towards a uniform "
                   "output (outlier exposure).")
@click.option("--outlier-weight", default=0.5, show_default=True, type=float,
              help="Weight of the outlier-exposure term.")
@click.option("--structure-check", is_flag=True,
              help="Card setting ood.structure_check: blank or noise crops are not assessed.")
@click.option("--weights-dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage of the exported weights (float16: half size).")
@click.option("--name", default="hardware", show_default=True)
@click.option("--version", "model_version", default="0.1.0", show_default=True)
@click.option("--training-data", default="", help="Description of the data for the card.")
@click.option("--synthetic-demo", is_flag=True,
              help="Mark the model as trained on synthetic data (demo output only).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--workers", default=1, show_default=True, type=int,
              help="DataLoader processes for augmentation (0: in the training process).")
@click.option("--decode-workers", default=1, show_default=True, type=int,
              help="Processes decoding DICOM into the crop cache.")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Start from this model's weights (same arch; other classes: backbone only).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where preprocessed crops are cached (default OUT/cache).")
@click.option("--task", type=click.Choice(["classification", "segmentation", "normative"]),
              default="classification", show_default=True,
              help="onfh only: segmentation (femoral-head U-Nets) or normative (VAE, "
                   "normative model, stage thresholds on --segmentation).")
@click.option("--segmentation", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="onfh --task normative: the segmentation model (same data and seed).")
@click.option("--beta", default=1.0, show_default=True, type=float,
              help="onfh --task normative: weight of the KL term of the ELBO (beta-VAE).")
@click.option("--latent-dim", default=16, show_default=True, type=int,
              help="onfh --task normative: VAE latent dimensions.")
def train_cmd(data_dirs: tuple[Path, ...], labels_csvs: tuple[Path, ...], out_dir: Path,
              arch: str, input_size: int, epochs_head: int, epochs: int, batch_size: int,
              lr_head: float, lr: float, weight_decay: float, seed: int,
              max_steps: int | None, balance: bool, label_set: str, label_column: str,
              classes: str | None, channels: str, attention: str, pool: str, loss: str,
              focal_gamma: float, cb_beta: float, label_smoothing: float, augment_preset: str,
              tta: str, no_calibrate: bool, abstain_accuracy: float, ood_method: str,
              ood_tpr: float, ood_threshold_on: str, triage_sensitivity: float | None,
              triage_classes: str | None, outlier_dirs: tuple[Path, ...],
              outlier_weight: float, structure_check: bool, weights_dtype: str,
              name: str, model_version: str, training_data: str, synthetic_demo: bool,
              device: str, threads: int | None, workers: int, decode_workers: int,
              init_from: Path | None, cache_dir: Path | None,
              task: str, segmentation: Path | None, beta: float,
              latent_dim: int) -> None:
    """Train a classifier (--label-set) on DATA_DIRS (DICOM files) and their labels CSVs.

    Several DATA_DIRS (e.g. both synthetic renderers) are one data set, split by patient.

    --label-set onfh trains the osteonecrosis model in two tasks (--task segmentation,
    then --task normative --segmentation SEG_DIR).
    """
    from hiprouter.inference.models import ModelError
    from hiprouter.training.dataset import DatasetError
    from hiprouter.training.train import TrainConfig, train

    csvs = list(labels_csvs) or [d / "labels.csv" for d in data_dirs]
    if len(csvs) != len(data_dirs):
        raise click.UsageError("give --labels once per DATA_DIR (or none)")
    for c in csvs:
        if not c.is_file():
            raise click.UsageError(f"no labels CSV: {c} (use --labels)")
    if label_set == "onfh":
        if len(data_dirs) != 1:
            raise click.UsageError("--label-set onfh trains on one DATA_DIR")
        from hiprouter.training.onfh_cli import train_onfh

        values = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "max_steps": max_steps, "name": name, "model_version": model_version,
                  "training_data": training_data, "synthetic_demo": synthetic_demo,
                  "device": device, "decode_workers": decode_workers, "input_size": input_size}
        train_onfh(click.get_current_context(), data_dirs[0], csvs[0], out_dir, task,
                   segmentation, beta, latent_dim, values, cache_dir)
        return
    if task != "classification":
        raise click.UsageError(f"--task {task} is for --label-set onfh")
    cfg = TrainConfig(arch=arch, input_size=input_size, epochs_head=epochs_head, epochs=epochs,
                      batch_size=batch_size, lr_head=lr_head, lr=lr, weight_decay=weight_decay,
                      seed=seed, max_steps=max_steps, balance=balance, label_set=label_set,
                      label_column=label_column, classes=_csv_list(classes),
                      channels=_csv_list(channels) or ["grey"], attention=attention, pool=pool,
                      loss=loss, focal_gamma=focal_gamma, cb_beta=cb_beta,
                      label_smoothing=label_smoothing, augment_preset=augment_preset,
                      tta=_csv_list(tta) or [], calibrate=not no_calibrate,
                      abstain_accuracy=abstain_accuracy or None, ood_method=ood_method,
                      ood_tpr=ood_tpr or None, ood_threshold_on=ood_threshold_on,
                      triage_sensitivity=triage_sensitivity,
                      triage_classes=_csv_list(triage_classes),
                      outliers=[str(d) for d in outlier_dirs], outlier_weight=outlier_weight,
                      structure_check=structure_check, weights_dtype=weights_dtype, name=name,
                      version=model_version, training_data=training_data,
                      synthetic_demo=synthetic_demo, device=device, threads=threads,
                      workers=workers, decode_workers=decode_workers,
                      init_from=str(init_from) if init_from else None)
    try:
        card = train(list(data_dirs), csvs, out_dir, cfg, cache_dir, log=click.echo)
    except (DatasetError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    ev = card.evaluation.get("test_split", {})
    click.echo(f"wrote {out_dir}/card.yaml and {card.weights_file} (sha256 "
               f"{card.weights_sha256[:12]}..., Device UID {card.device_uid})")
    click.echo(f"test split: accuracy {ev.get('accuracy')}, kappa {ev.get('cohen_kappa')}, "
               f"macro AUC {ev.get('macro_auc')}, macro F1 {ev.get('macro_f1')}, ECE "
               f"{ev.get('ece')}; report in {out_dir}/evaluation/report.md")


@click.command("evaluate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Labels CSV (default DATA_DIR/labels.csv).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--runtime", type=click.Choice(["auto", "torch", "onnx"]), default="auto",
              show_default=True)
@click.option("--label-column", default="",
              help="Labels CSV column (default: the column of the model's label set).")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=int)
@click.option("--record", "record_as", metavar="NAME",
              help="Also store the figures in MODEL_DIR/card.yaml under evaluation.NAME.")
@click.option("--dataset-name", default="", help="How the card names this data set.")
@click.option("--ood", "ood_dirs", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images the model must not assess (`hiprouter synth-ood`); "
                   "reports how many it does not assess. Repeatable.")
@click.option("--ensemble", "more_models", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Further model folders averaged with MODEL_DIR (an ensemble).")
@click.option("--anatomy-check/--no-anatomy-check", default=True, show_default=True,
              help="Run the whole-image anatomy check first, as every job does: OOD images "
                   "it refuses are not assessed; labelled images it would refuse are "
                   "counted.")
@click.option("--anatomy-model", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Anatomy model folder (default: the bundled demo).")
def evaluate_cmd(model_dir: Path, data_dir: Path, labels_csv: Path | None, out_dir: Path,
                 device: str, runtime: str, label_column: str, n_boot: int,
                 record_as: str | None, dataset_name: str, ood_dirs: tuple[Path, ...],
                 more_models: tuple[Path, ...], anatomy_check: bool,
                 anatomy_model: Path | None) -> None:
    """Evaluate MODEL_DIR on labelled DICOM files: metrics table, report.md/json, PNGs."""
    from rich.table import Table

    from hiprouter.inference.models import ModelError
    from hiprouter.training.dataset import DatasetError
    from hiprouter.training.evaluate import evaluate_model

    labels_csv = labels_csv or data_dir / "labels.csv"
    if not labels_csv.is_file():
        raise click.UsageError(f"no labels CSV: {labels_csv} (use --labels)")
    if _label_set(model_dir) == "onfh":
        from hiprouter.training.onfh_cli import evaluate_onfh_cmd

        evaluate_onfh_cmd(model_dir, data_dir, labels_csv, out_dir, device, n_boot, record_as,
                          dataset_name)
        return
    try:
        anatomy = None
        if anatomy_check:
            from hiprouter.inference.anatomy import AnatomyCheck

            anatomy = AnatomyCheck.from_dir(anatomy_model, device=device, runtime=runtime)
        metrics, paths = evaluate_model([model_dir, *more_models], data_dir, labels_csv,
                                        out_dir, device, runtime, label_column, n_boot=n_boot,
                                        ood_dirs=ood_dirs, anatomy=anatomy)
    except (DatasetError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc

    def fmt(v: float | None, ci: list[float] | None = None) -> str:
        if v is None:
            return "n/a"
        return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    out = console()
    model = metrics["model"]
    out.print(f"[bold]{model['name']} {model['version']}[/] "
                  f"({model['architecture']}, {', '.join(model['runtime'])})")
    out.print(f"hips {metrics['n']}  "
                  f"accuracy {fmt(metrics['accuracy'], metrics['accuracy_ci95'])}"
                  f"  kappa {fmt(metrics['cohen_kappa'], metrics['cohen_kappa_ci95'])}"
                  f"  macro AUC {fmt(metrics['macro_auc'], metrics.get('macro_auc_ci95'))}"
                  f"  macro F1 {fmt(metrics['macro_f1'], metrics.get('macro_f1_ci95'))}"
                  f"  ECE {fmt(metrics['calibration']['ece'])}")
    sel = metrics.get("selective")
    if sel:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}%"

        out.print(f"min_confidence {sel['min_confidence']:.3f}: not assessed "
                      f"{pct(sel['not_assessed_rate'])}, indeterminate "
                      f"{pct(sel['indeterminate_rate'])}, assessed {pct(sel['assessed_rate'])} "
                      f"(accuracy {fmt(sel['accuracy_assessed'])})")
    if metrics.get("anatomy_check"):
        a = metrics["anatomy_check"]
        out.print(f"anatomy check ({a['model']}): {a['not_assessed']} of {a['images']} "
                  "labelled images would not be assessed")
        if a.get("views_from_image"):
            from hiprouter.training.evaluate import views_from_image_text

            out.print(views_from_image_text(a["views_from_image"]))
    if metrics.get("ood_images"):
        o = metrics["ood_images"]
        out.print(f"OOD images: {o['images']}, not assessed "
                      f"{100 * o['not_assessed_rate']:.1f}% ("
                      + ", ".join(f"{k} {100 * v['not_assessed_rate']:.0f}%"
                                  for k, v in o.get("by_kind", {}).items()) + ")")
    table = Table("class", "n", "precision", "sensitivity [95% CI]", "specificity [95% CI]",
                  "F1", "AUC [95% CI]")
    for cls, m in metrics["per_class"].items():
        table.add_row(cls, str(m["support"]), f"{m['precision']:.3f}",
                      fmt(m.get("sensitivity"), m.get("sensitivity_ci95")),
                      fmt(m.get("specificity"), m.get("specificity_ci95")),
                      f"{m['f1']:.3f}", fmt(m["auc"], m["auc_ci95"]))
    out.print(table)
    cm = Table("true \\ predicted", *[str(i) for i in range(len(metrics["classes"]))])
    for i, (cls, row) in enumerate(zip(metrics["classes"], metrics["confusion_matrix"],
                                       strict=True)):
        cm.add_row(f"{i} {cls}", *[str(v) for v in row])
    out.print(cm)
    if metrics["refused"]:
        out.print(f"[yellow]{len(metrics['refused'])} image(s) refused; see report.json[/]")
    if model["synthetic_demo"]:
        out.print("[yellow]synthetic-trained demo model: figures say nothing about "
                      "clinical accuracy[/]")
    out.print(f"wrote {paths['markdown']}, {paths['json']}, {paths['roc']}, "
              f"{paths['confusion']}, {paths['reliability']}")
    if record_as:
        from hiprouter.inference.models import read_card, write_card
        from hiprouter.training.evaluate import card_figures

        card = read_card(model_dir)
        name = dataset_name or f"{data_dir.name} ({labels_csv.name})"
        card.evaluation = {**card.evaluation, record_as: card_figures(metrics, name)}
        write_card(model_dir, card)
        out.print(f"recorded as evaluation.{record_as} in {model_dir}/card.yaml")


def _label_set(model_dir: Path) -> str:
    from hiprouter.inference.models import ModelError, read_card

    try:
        return read_card(model_dir).label_set
    except ModelError:
        return ""


@click.group("models")
def models_group() -> None:
    """Installed models."""


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_ctx
def models_list(ctx: Context, as_json: bool) -> None:
    """Models in models/ and in the configured pipelines, with weight checks."""
    import json

    from rich.table import Table

    from hiprouter.inference.models import ModelError, installed_models, read_card, verify_weights

    settings = ctx.settings
    dirs = list(installed_models())
    for pipe in settings.pipelines.values():
        for p in pipe.options().get("models") or []:
            path = Path(p)
            if not path.is_absolute() and settings.base_dir is not None:
                path = settings.base_dir / path
            if path not in dirs:
                dirs.append(path)
    rows = []
    for d in dirs:
        try:
            card = read_card(d)
        except ModelError as exc:
            rows.append({"dir": str(d), "error": str(exc)})
            continue
        rows.append({"dir": str(d), "name": card.name, "version": card.version,
                     "architecture": card.architecture, "input_size": card.input_size,
                     "device_uid": card.device_uid, "sha256": card.weights_sha256,
                     "sha256_ok": verify_weights(d, card), "synthetic_demo": card.synthetic_demo})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "version", "arch", "input", "Device UID", "sha256 ok", "flag", "dir")
    for r in rows:
        if "error" in r:
            table.add_row("?", "", "", "", "", "[red]no[/]", r["error"], r["dir"])
            continue
        table.add_row(r["name"], r["version"], r["architecture"], f"{r['input_size']} px",
                      r["device_uid"], "[green]yes[/]" if r["sha256_ok"] else "[red]NO[/]",
                      "[yellow]SYNTHETIC DEMO[/]" if r["synthetic_demo"] else "", r["dir"])
    console().print(table)


@models_group.command("kinds")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_kinds(as_json: bool) -> None:
    """Installed pipeline kinds (entry points `hiprouter.pipelines`), options and cascades."""
    import json

    from rich.table import Table

    from hiprouter.pipelines.registry import describe_kinds

    rows = describe_kinds()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("kind", "what it does", "runs on", "options", "from")
    for r in rows:
        table.add_row(r["kind"], r.get("description") or r.get("error", ""), r.get("runs_on", ""),
                      ", ".join(r.get("options", [])), r["source"])
    console().print(table)


def _on_validation_hips(command: Any) -> Any:
    """MODEL_DIR, --split and --cache: what the commands that choose an operating point
    again on a training run's validation hips (retriage, reabstain) take."""
    command = click.option("--cache", "cache_dir", default=None,
                           type=click.Path(file_okay=False, path_type=Path),
                           help="Crop cache of the training run.")(command)
    command = click.option("--split", "split_csv", required=True,
                           type=click.Path(exists=True, dir_okay=False, path_type=Path),
                           help="The training run's split.csv (its validation hips).")(command)
    return click.argument("model_dir", type=click.Path(exists=True, file_okay=False,
                                                       path_type=Path))(command)


@models_group.command("retriage")
@_on_validation_hips
@click.option("--sensitivity", type=float, required=True,
              help="Target validation sensitivity of each triage class, e.g. 0.8.")
@click.option("--classes", default=None,
              help="Comma-separated triage classes (default: the card's, else the kind's).")
def models_retriage(model_dir: Path, split_csv: Path, sensitivity: float, classes: str | None,
                    cache_dir: Path | None) -> None:
    """Choose MODEL_DIR's triage thresholds again at another validation sensitivity (same
    validation hips as in training; the card is rewritten, the weights are not touched)."""
    from hiprouter.training.retriage import retriage

    try:
        info = retriage(model_dir, split_csv, sensitivity, _csv_list(classes), cache_dir)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for key, v in info.items():
        spec = v["val_specificity"]
        click.echo(f"{key}: threshold {v['threshold']} (validation sensitivity "
                   f"{v['val_sensitivity']:.3f}, specificity "
                   f"{'n/a' if spec is None else f'{spec:.3f}'}, {v['val_positives']} positives)")
    click.echo(f"wrote {model_dir / 'card.yaml'}")


@models_group.command("reabstain")
@_on_validation_hips
@click.option("--accuracy", type=float, required=True,
              help="Target accuracy of the validation hips answered definitively, e.g. 0.97.")
def models_reabstain(model_dir: Path, split_csv: Path, accuracy: float,
                     cache_dir: Path | None) -> None:
    """Choose MODEL_DIR's abstention threshold (min_confidence) again at another target
    accuracy on the same validation hips as in training (the card is rewritten, the weights
    are not touched)."""
    from hiprouter.training.retriage import reabstain

    try:
        choice = reabstain(model_dir, split_csv, accuracy, cache_dir)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"min_confidence {choice['min_confidence']} (validation coverage "
               f"{choice.get('val_coverage', 0):.3f}, accuracy of the hips answered "
               f"{choice.get('val_accuracy_assessed') or 0:.3f})")
    click.echo(f"wrote {model_dir / 'card.yaml'}")


@models_group.command("recalibrate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "folders", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A labelled folder (labels.csv in it, the card's label column); repeatable.")
@click.option("--accuracy", type=float, required=True,
              help="Target accuracy of the hips answered definitively, e.g. 0.95.")
@click.option("--cache", "cache_dir", default=None,
              type=click.Path(file_okay=False, path_type=Path), help="Crop cache.")
def models_recalibrate(model_dir: Path, folders: tuple[Path, ...], accuracy: float,
                       cache_dir: Path | None) -> None:
    """Fit MODEL_DIR's temperature and abstention threshold on labelled folders that are not
    its training data (the card is rewritten, the weights are not touched): for a model
    trained without calibration, or a site calibrating on its own labelled studies.
    Single- and dual-view classifiers get both; an ONFH model the threshold on its stage
    probability."""
    from hiprouter.inference.models import ModelError
    from hiprouter.training.dataset import DatasetError
    from hiprouter.training.retriage import recalibrate

    try:
        got = recalibrate(model_dir, list(folders), accuracy, cache_dir)
    except (ValueError, DatasetError, ModelError) as exc:
        raise click.ClickException(str(exc)) from None
    cal, ab = got["calibration"], got["abstention"]
    if cal is None:
        click.echo("no temperature (the stage probabilities are the card's normal fits)")
    else:
        click.echo(f"temperature {cal['temperature']} (ECE {cal['ece_before']} -> "
                   f"{cal['ece_after']} on {cal['fitted_on']})")
    click.echo(f"min_confidence {ab['min_confidence']} (coverage "
               f"{ab.get('val_coverage', 0):.3f}, accuracy of the hips answered "
               f"{ab.get('val_accuracy_assessed') or 0:.3f}"
               f"{'' if ab.get('reached') else '; target not reached'})")
    click.echo(f"wrote {model_dir / 'card.yaml'}")

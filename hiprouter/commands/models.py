"""`hiprouter train`, `hiprouter evaluate` and `hiprouter models list`."""

from __future__ import annotations

from pathlib import Path

import click

from hiprouter.commands import Context, console, pass_ctx


def register(group: click.Group) -> None:
    group.add_command(train_cmd)
    group.add_command(evaluate_cmd)
    group.add_command(models_group)


@click.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Labels CSV (default DATA_DIR/labels.csv).")
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
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps.")
@click.option("--balance", is_flag=True,
              help="Draw training hips class-balanced (for rare classes such as fractures).")
@click.option("--label-set", default="hardware", show_default=True,
              help="Classes to learn: a classifier pipeline kind (`hiprouter models kinds`).")
@click.option("--label-column", default="",
              help="Labels CSV column (default: the label set's, e.g. hardware, fracture).")
@click.option("--name", default="hardware", show_default=True)
@click.option("--version", "model_version", default="0.1.0", show_default=True)
@click.option("--training-data", default="", help="Description of the data for the card.")
@click.option("--synthetic-demo", is_flag=True,
              help="Mark the model as trained on synthetic data (demo output only).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
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
def train_cmd(data_dir: Path, labels_csv: Path | None, out_dir: Path, arch: str,
              input_size: int, epochs_head: int, epochs: int, batch_size: int, lr_head: float,
              lr: float, seed: int, max_steps: int | None, balance: bool, label_set: str,
              label_column: str, name: str,
              model_version: str, training_data: str, synthetic_demo: bool, device: str,
              workers: int, decode_workers: int, init_from: Path | None,
              cache_dir: Path | None, task: str, segmentation: Path | None, beta: float,
              latent_dim: int) -> None:
    """Train a classifier (--label-set) on DATA_DIR (DICOM files) and a labels CSV.

    --label-set onfh trains the osteonecrosis model in two tasks (--task segmentation,
    then --task normative --segmentation SEG_DIR).
    """
    from hiprouter.inference.models import ModelError
    from hiprouter.training.dataset import DatasetError
    from hiprouter.training.train import TrainConfig, train

    labels_csv = labels_csv or data_dir / "labels.csv"
    if not labels_csv.is_file():
        raise click.UsageError(f"no labels CSV: {labels_csv} (use --labels)")
    if label_set == "onfh":
        from hiprouter.training.onfh_cli import train_onfh

        values = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "max_steps": max_steps, "name": name, "model_version": model_version,
                  "training_data": training_data, "synthetic_demo": synthetic_demo,
                  "device": device, "decode_workers": decode_workers, "input_size": input_size}
        train_onfh(click.get_current_context(), data_dir, labels_csv, out_dir, task,
                   segmentation, beta, latent_dim, values, cache_dir)
        return
    if task != "classification":
        raise click.UsageError(f"--task {task} is for --label-set onfh")
    cfg = TrainConfig(arch=arch, input_size=input_size, epochs_head=epochs_head, epochs=epochs,
                      batch_size=batch_size, lr_head=lr_head, lr=lr, seed=seed,
                      max_steps=max_steps, balance=balance, label_set=label_set,
                      label_column=label_column, name=name,
                      version=model_version, training_data=training_data,
                      synthetic_demo=synthetic_demo, device=device,
                      workers=workers, decode_workers=decode_workers,
                      init_from=str(init_from) if init_from else None)
    try:
        card = train(data_dir, labels_csv, out_dir, cfg, cache_dir, log=click.echo)
    except (DatasetError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    ev = card.evaluation.get("test_split", {})
    click.echo(f"wrote {out_dir}/card.yaml and {card.weights_file} (sha256 "
               f"{card.weights_sha256[:12]}..., Device UID {card.device_uid})")
    click.echo(f"test split: accuracy {ev.get('accuracy')}, kappa {ev.get('cohen_kappa')}, "
               f"macro AUC {ev.get('macro_auc')}; report in {out_dir}/evaluation/report.md")


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
def evaluate_cmd(model_dir: Path, data_dir: Path, labels_csv: Path | None, out_dir: Path,
                 device: str, runtime: str, label_column: str, n_boot: int,
                 record_as: str | None, dataset_name: str) -> None:
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
        metrics, paths = evaluate_model([model_dir], data_dir, labels_csv, out_dir, device,
                                        runtime, label_column, n_boot=n_boot)
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
                  f"  macro AUC {fmt(metrics['macro_auc'])}")
    table = Table("class", "n", "precision", "recall", "F1", "AUC [95% CI]")
    for cls, m in metrics["per_class"].items():
        table.add_row(cls, str(m["support"]), f"{m['precision']:.3f}", f"{m['recall']:.3f}",
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
                  f"{paths['confusion']}")
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

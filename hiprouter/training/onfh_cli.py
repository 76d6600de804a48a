"""`hiprouter train --label-set onfh` and `hiprouter evaluate` of an onfh model.

The ONFH model is trained in two steps on the same data and seed (the split is
patient-level and identical, so the test patients stay unseen by both):

    hiprouter train DATA --label-set onfh --task segmentation --out SEG
    hiprouter train DATA --label-set onfh --task normative --segmentation SEG --out MODEL

The classifier options that mean the same here (epochs, batch size, learning rate, seed,
max steps, name, version, training data, synthetic demo, device, decode workers, cache,
input size = the refiner's window) are passed on; options left at the classifier's
defaults take the task's own defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

TASKS = ("segmentation", "normative")
SEG_DEFAULTS = {"epochs": 12, "batch_size": 16, "lr": 2e-3, "name": "onfh-segmentation"}
NORM_DEFAULTS = {"epochs": 200, "batch_size": 32, "lr": 1e-3, "name": "onfh"}


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user set an option (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def train_onfh(ctx: click.Context, data_dir: Path, labels_csv: Path, out_dir: Path,
               task: str, segmentation: Path | None, beta: float, latent_dim: int,
               values: dict[str, Any], cache_dir: Path | None) -> None:
    """Run one ONFH training task with the CLI's values (see the module docstring)."""
    from hiprouter.inference.models import ModelError
    from hiprouter.training.dataset import DatasetError

    if task not in TASKS:
        raise click.UsageError(f"--label-set onfh needs --task {' or '.join(TASKS)} "
                               f"(got {task!r})")
    defaults = SEG_DEFAULTS if task == "segmentation" else NORM_DEFAULTS
    v = {k: (values[k] if given(ctx, k) else defaults.get(k, values[k])) for k in values}
    common = {"epochs": v["epochs"], "batch_size": v["batch_size"], "lr": v["lr"],
              "seed": v["seed"], "max_steps": v["max_steps"], "name": v["name"],
              "version": v["model_version"], "training_data": v["training_data"],
              "synthetic_demo": v["synthetic_demo"],
              "device": "cpu" if v["device"] == "auto" else v["device"],
              "decode_workers": v["decode_workers"]}
    try:
        if task == "segmentation":
            from hiprouter.training.segmentation import SegmentationConfig, train_segmentation

            cfg = SegmentationConfig(**common)
            if given(ctx, "input_size"):
                cfg.refiner_size = v["input_size"]
            card = train_segmentation(data_dir, labels_csv, out_dir, cfg, cache_dir,
                                      log=click.echo)
            ev = card.evaluation.get("test_split", {})
            click.echo(f"test split: Dice {ev.get('dice_mean')} "
                       f"(95 % CI {ev.get('dice_mean_ci95')}, n {ev.get('n')})")
        else:
            from hiprouter.training.normative import NormativeConfig, train_normative

            if segmentation is None:
                raise click.UsageError("--task normative needs --segmentation DIR (a model "
                                       "from --task segmentation on the same data and seed)")
            cfg = NormativeConfig(**common, beta=beta, latent_dim=latent_dim)
            card = train_normative(data_dir, labels_csv, out_dir, segmentation, cfg,
                                   cache_dir, log=click.echo)
            ev = card.evaluation.get("test_split", {})
            click.echo(f"test split: Dice {ev.get('dice_mean')}, AUC healthy vs grade: "
                       + ", ".join(f"{k} {a['auc']}" for k, a in
                                   ev.get("auc_healthy_vs_grade", {}).items())
                       + f"; report in {out_dir}/evaluation/test-split/report.md")
    except (DatasetError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out_dir}/card.yaml and {card.weights_file} (sha256 "
               f"{card.weights_sha256[:12]}..., Device UID {card.device_uid})")


def evaluate_onfh_cmd(model_dir: Path, data_dir: Path, labels_csv: Path, out_dir: Path,
                      device: str, n_boot: int, record_as: str | None,
                      dataset_name: str) -> None:
    """`hiprouter evaluate` for a model whose card's label set is onfh."""
    from hiprouter.inference.models import ModelError, read_card, write_card
    from hiprouter.training.dataset import DatasetError
    from hiprouter.training.onfh_eval import card_figures, evaluate_onfh

    try:
        metrics, paths = evaluate_onfh(model_dir, data_dir, labels_csv, out_dir,
                                       "cpu" if device == "auto" else device, n_boot,
                                       log=click.echo)
    except (DatasetError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    seg = metrics["segmentation"]
    click.echo(f"{metrics['model']['name']} {metrics['model']['version']}: "
               f"{metrics['heads']} heads, {metrics['assessed']} assessed")
    click.echo(f"Dice mean {seg.get('dice_mean')} (95 % CI {seg.get('dice_mean_ci95')}), "
               f"median {seg.get('dice_median')}")
    for g, d in metrics["distance_by_grade"].items():
        if d.get("n"):
            click.echo(f"grade {g}: n {d['n']}, distance median {d['median']} "
                       f"[{d['q1']}, {d['q3']}]")
    for name, a in metrics["auc_healthy_vs_grade"].items():
        click.echo(f"AUC {name.replace('_', ' ')}: {a['auc']} (95 % CI {a['ci95']})")
    for t in metrics["mann_whitney_holm"]:
        click.echo(f"Mann-Whitney grade {t['grades'][0]} vs {t['grades'][1]}: "
                   f"p {t['p']:.3g}, Holm {t['p_holm']:.3g}")
    st = metrics["stage"]
    click.echo(f"stage bands {', '.join(st['bands'])}: accuracy {st.get('accuracy')}, "
               f"balanced {st.get('balanced_accuracy')}, kappa "
               f"{st.get('linear_weighted_kappa')}")
    sel = metrics["selective"]
    if sel["hips"]:
        click.echo(f"per hip with min_confidence {sel['min_confidence']:.3f}: indeterminate "
                   f"{sel['indeterminate_rate']:.3f}, staged {sel['assessed_rate']:.3f} "
                   f"(accuracy {sel['accuracy_assessed']}), wrong definitive stages "
                   f"{sel['wrong_definitive_rate']:.3f} of {sel['hips']} hips")
    if metrics["model"]["synthetic_demo"]:
        click.echo("synthetic-trained demo model: figures say nothing about clinical accuracy")
    click.echo(f"wrote {paths['markdown']}, {paths['json']}, {paths['distances']}")
    if record_as:
        card = read_card(model_dir)
        name = dataset_name or f"{data_dir.name} ({labels_csv.name})"
        card.evaluation = {**card.evaluation, record_as: card_figures(metrics, name)}
        write_card(model_dir, card)
        click.echo(f"recorded as evaluation.{record_as} in {model_dir}/card.yaml")

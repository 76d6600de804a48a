"""The transfer table of docs/validation.md: models (or ensembles) x held-out test sets.

For each model spec (a model folder, `A+B` for an ensemble, a `:tta` suffix to add
horizontal-flip test-time augmentation without retraining) and each labelled test folder:
per-hip accuracy with its bootstrap 95 % CI, macro-F1, ECE, the indeterminate / not
assessed rates and the accuracy of the definitive answers (the card's min_confidence and
OOD threshold); on OOD folders the share of images not assessed; on the real radiographs
(bench/check_real.py) how many definitive hardware findings the model invents.

    .venv/bin/python bench/transfer_table.py --model runs/E1 --model runs/E2+runs/E3:tta \
        --test primary=data/hw_p_test --test alt=data/hw_a_test --ood data/ood_test \
        --out reports/transfer [--real]

Writes OUT/table.md, OUT/table.json and one `hiprouter evaluate` report per cell.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def model_dirs(spec: str, tmp: Path) -> list[Path]:
    """Model folders of a spec; ':tta' copies each card with parameters.tta = [hflip]."""
    from hiprouter.inference.models import read_card, write_card

    tta = spec.endswith(":tta")
    dirs = [Path(p) for p in spec.removesuffix(":tta").split("+")]
    if not tta:
        return dirs
    out = []
    for d in dirs:
        copy = tmp / f"{d.name}-tta-{len(out)}"
        shutil.copytree(d, copy, ignore=shutil.ignore_patterns("checkpoints", "cache",
                                                               "evaluation"))
        card = read_card(copy)
        write_card(copy, card.model_copy(update={"parameters": {**card.parameters,
                                                                  "tta": ["hflip"]}}))
        out.append(copy)
    return out


def main(argv: list[str] | None = None) -> int:
    from hiprouter.training.evaluate import evaluate_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--test", action="append", required=True, help="NAME=FOLDER")
    ap.add_argument("--ood", action="append", type=Path, default=[])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--real", action="store_true", help="also run bench/check_real.py")
    ap.add_argument("--kind", default="hardware")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tests = [t.split("=", 1) for t in args.test]
    results = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for spec in args.model:
            dirs = model_dirs(spec, Path(tmpdir))
            row: dict = {"model": spec}
            for i, (name, folder) in enumerate(tests):
                cell = args.out / f"{spec.replace('/', '_').replace(':', '_')}__{name}"
                m, _ = evaluate_model(dirs, Path(folder), Path(folder) / "labels.csv", cell,
                                      device="cpu", cache_dir=args.cache, n_boot=args.bootstrap,
                                      ood_dirs=args.ood if i == 0 else ())
                sel = m["selective"]
                row[name] = {"accuracy": m["accuracy"], "ci": m["accuracy_ci95"],
                             "macro_f1": m["macro_f1"], "ece": m["calibration"]["ece"],
                             "ece_uncalibrated": m["calibration"].get("ece_uncalibrated"),
                             "n": m["n"], "indeterminate": sel["indeterminate_rate"],
                             "not_assessed": sel["not_assessed_rate"],
                             "accuracy_assessed": sel["accuracy_assessed"],
                             "per_class_recall": {c: v["recall"]
                                                  for c, v in m["per_class"].items()}}
                if "ood_images" in m:
                    row["ood"] = m["ood_images"]
            if args.real:
                from bench.check_real import run

                rows = run(args.kind, dirs, {"heatmaps": False})
                row["real"] = rows
                row["real_false_hardware"] = sum(
                    1 for r in rows if r["status"] == "assessed"
                    and not r["says"].startswith("no_hardware"))
                row["real_hips"] = sum(1 for r in rows if r["hip"] != "-")
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "real"}, default=str),
                  flush=True)
    (args.out / "table.json").write_text(json.dumps(results, indent=2, default=str))
    head = "| model | " + " | ".join(
        f"{n}: accuracy [95 % CI] | {n}: macro-F1 | {n}: ECE raw -> calibrated | "
        f"{n}: indet. / not ass. | {n}: acc. definitive" for n, _ in tests)
    head += " | OOD images not assessed | OOD AUROC (crops) | real films: invented hardware |"
    lines = [head, "|" + "---|" * (1 + 5 * len(tests) + 3)]

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for row in results:
        cells = [row["model"]]
        for name, _ in tests:
            c = row[name]
            ci = c["ci"] or [None, None]
            cells += [f"{f(c['accuracy'])} [{f(ci[0])}, {f(ci[1])}]", f(c["macro_f1"]),
                      f"{f(c['ece_uncalibrated'])} -> {f(c['ece'])}",
                      f"{100 * c['indeterminate']:.0f} % / "
                      f"{100 * c['not_assessed']:.0f} %", f(c["accuracy_assessed"])]
        ood = row.get("ood")
        cells.append(f"{100 * ood['not_assessed_rate']:.0f} %" if ood else "-")
        cells.append(f(ood.get("auroc_crops")) if ood else "-")
        cells.append(f"{row['real_false_hardware']} of {row['real_hips']} hips"
                     if "real_hips" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

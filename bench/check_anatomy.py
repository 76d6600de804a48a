"""What the anatomy check says: per class of labelled folders, and per real radiograph.

For each folder with a labels.csv (`hiprouter synth` / `hiprouter synth-ood` output), the
fraction of images of each class the check marks not assessed (P(hip) below the card's
threshold) and the accuracy of its arg-max class; then every CR/DX radiograph of
../shared/data (the DICOM corpus, the real hips and the paediatric DDH JPEGs converted to a
grey CR object as bench/check_real.py does), one row each. Runs the production path:
decode, then `AnatomyCheck.assess` on the whole decoded image.

    .venv/bin/python bench/check_anatomy.py [--model models/anatomy-demo] \
        [--folder DIR ...] [--markdown out.md] [--no-real] [--sweep 0.05,0.1,0.2]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from check_real import DATA, DDH, grey_from_jpeg  # noqa: E402


def folder_rates(check: object, folders: list[Path], sweep: list[float] = ()) -> list[str]:
    from tqdm import tqdm

    from hiprouter.inference.decode import RADIOGRAPH_MODALITIES, RefusedImage, decode_file
    from hiprouter.training.anatomy import ANATOMY_CLASSES, read_images

    extra = "".join(f" below {t:g} |" for t in sweep)
    lines = ["| folder | class | images | not assessed | arg-max correct | "
             f"P(hip) min / median / max |{extra}",
             "|---|---|---:|---:|---:|---|" + "---:|" * len(sweep)]
    for folder in folders:
        items = read_images([folder])
        per: dict[str, list[tuple[float, bool, bool]]] = {}
        undecodable = 0
        for path, cls in tqdm(items, desc=folder.name, unit="image", leave=False):
            try:
                _, decoded = decode_file(path, RADIOGRAPH_MODALITIES)
            except (RefusedImage, OSError):
                undecodable += 1
                continue
            v = check.assess([decoded.pixels])[0]  # type: ignore[attr-defined]
            best = max(v.probabilities, key=v.probabilities.__getitem__)
            per.setdefault(cls, []).append((v.hip, best == cls, v.refused))
        for cls in ANATOMY_CLASSES:
            if cls not in per:
                continue
            hip = np.array([h for h, _, _ in per[cls]])
            lines.append(f"| {folder.name} | {cls} | {len(hip)} | "
                         f"{np.mean([r for _, _, r in per[cls]]):.3f} | "
                         f"{np.mean([c for _, c, _ in per[cls]]):.3f} | "
                         f"{hip.min():.3f} / {np.median(hip):.3f} / {hip.max():.3f} |"
                         + "".join(f" {np.mean(hip < t):.3f} |" for t in sweep))
        if undecodable:
            lines.append(f"| {folder.name} | (refused by decoding) | {undecodable} | | | |"
                         + " |" * len(sweep))
    return lines


def real_rows(check: object) -> list[str]:
    from hiprouter.inference.decode import RADIOGRAPH_MODALITIES, RefusedImage, decode, decode_file

    items: list[tuple[str, str, object]] = []
    index = DATA / "dicom-corpus" / "index.csv"
    if index.is_file():
        with index.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                decodes = row.get("decode_pydicom_pylibjpeg", "").startswith("ok")
                if row["modality"] in ("CR", "DX") and decodes:
                    items.append((f"dicom-corpus/{row['file']}",
                                  f"{row['modality']} {row.get('body_part') or ''}".strip(), None))
    hip = DATA / "hip-real" / "wg04" / "RG2_UNC_hip_CR.dcm"
    if hip.is_file():
        items.append(("hip-real/wg04/RG2_UNC_hip_CR.dcm", "adult CR hip", None))
    for jpg in sorted((DATA / DDH).glob("*.jpg")):
        items.append((f"{DDH}/{jpg.name}", "child AP pelvis (DDH), JPEG -> grey CR",
                      grey_from_jpeg(jpg)))
    lines = ["| file | what | verdict | P(hip) | view it names | most likely other | reason |",
             "|---|---|---|---:|---|---|---|"]
    for rel, what, ds in items:
        try:
            pixels = (decode(ds, RADIOGRAPH_MODALITIES).pixels if ds is not None
                      else decode_file(DATA / rel, RADIOGRAPH_MODALITIES)[1].pixels)
        except (RefusedImage, OSError) as exc:
            lines.append(f"| {rel} | {what} | not decodable | | | | "
                         f"{getattr(exc, 'reason', exc)} |")
            continue
        v = check.assess([pixels])[0]  # type: ignore[attr-defined]
        other = v.most_likely_other
        lines.append(f"| {rel} | {what} | {'not assessed' if v.refused else 'assessed'} | "
                     f"{v.hip:.3f} | {v.view or ''} | {other} {v.probabilities[other]:.3f} | "
                     f"{v.reason or ''} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--folder", type=Path, action="append", default=[])
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--no-real", action="store_true", help="only the folders")
    ap.add_argument("--sweep", default="", help="comma-separated P(hip) thresholds: the "
                    "share of each folder's class below each (other thresholds than the card's)")
    args = ap.parse_args(argv)
    from hiprouter.inference.anatomy import AnatomyCheck

    check = AnatomyCheck.from_dir(args.model, device="cpu")
    print(f"anatomy check {check.info}, min_probability {check.min_probability:.4f}")
    sweep = [float(t) for t in args.sweep.split(",") if t.strip()]
    lines = folder_rates(check, args.folder, sweep) if args.folder else []
    if args.no_real:
        pass
    elif DATA.is_dir():
        lines += ["", *real_rows(check)]
    else:
        lines.append(f"(no real data at {DATA})")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

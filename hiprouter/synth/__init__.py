"""The synthetic radiograph generator: an offline tool for tests, demos and demo weights.

- `labels`: the label schema and the sampling of the ground truth per task (shared with the
  independent renderer in `alt`); `dicom`: headers (shared too).
- `study`: whole studies as DICOM with per-hip labels and femoral head masks
  (`make_study`, `write_study`, `generate_dataset`); `preview`: labelled contact sheets.
- `scene`, `anatomy`, `findings`, `hardware`, `fixation`, `failure`: what is drawn (pelvis
  and femora, native joint findings, implants, fixation devices, THA failure).
- `canvas`: drawing primitives; `image`: detector physics, processing and degradation;
  `tone`: console look-up tables; `overlay`: lead markers and burned-in annotations.
- `alt`: an independent second renderer with the same label schema (cross-generator tests).
- `ood`: images a hip model must not assess (chest, child pelvis, knee, hand, shoulder, lumbar
  spine, skull, noise, photos).

Nothing in the production path (router, pipelines, report) imports this package.
"""

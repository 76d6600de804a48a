"""The synthetic radiograph generator: an offline tool for tests, demos and demo weights.

- `study`: whole studies as DICOM with per-hip labels (`make_study`, `generate_dataset`).
- `scene`, `anatomy`, `hardware`: what is drawn (pelvis and femora, implants, findings).
- `canvas`: drawing primitives; `image`: detector physics and post-processing;
  `dicom`: headers; `preview`: a labelled contact sheet.
- `alt`: an independent second renderer with the same label schema (cross-generator tests).
- `ood`: images a hip model must not assess (chest, child pelvis, knee, hand, noise, photos).

Nothing in the production path (router, pipelines, report) imports this package.
"""

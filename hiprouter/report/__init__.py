"""Report stage: the DICOM objects created from a study result.

- `build`: `build_outputs(result, sources, pipeline_cfg)` -> `ReportBundle` (SR, SCs, KOS),
  `write_bundle(bundle, out_dir)`; the entry point for pipelines.
- `sr`: Comprehensive 3D SR with the TID 1500 Measurement Report.
- `sc`: Secondary Capture heat-map overlays.
- `kos`: Key Object Selection triage flag.
- `triage`: priority level and reason from the findings and the configured rules.
- `text`: prepopulated report text from the site-editable templates in `sr_templates/`.
- `header`: source headers made safe to copy into created objects.
- `uids`: deterministic UIDs, so a retry or replay replaces instead of duplicating.

Modules are imported on use (highdicom is heavy); nothing is re-exported here.
"""

"""Report stage: the DICOM objects of one study episode's report, from all its findings.

- `build`: `build_report(findings, sources, displays, report_cfg)` -> `ReportBundle` (SR,
  SCs, SEGs, KOS; each built on its own), `write_bundle(bundle, out_dir)`.
- `sr`: Comprehensive 3D SR with the TID 1500 Measurement Report (TID 1410 groups with
  SCOORDs).
- `sc`: Secondary Capture overlays (heat map, outlines, labels of every pipeline).
- `seg`: DICOM Segmentation of mask findings.
- `kos`: Key Object Selection triage flag.
- `triage`: priority level and every reason, from the findings and the configured rules.
- `text`: prepopulated report text from the site-editable templates in `sr_templates/`.
- `header`: source headers made safe to copy into created objects.
- `uids`: deterministic UIDs, so a retry or replay replaces instead of duplicating.
- `validate`: dciodvfy, dsrdump and a highdicom read-back of created objects.

Modules are imported on use (highdicom is heavy); nothing is re-exported here.
"""

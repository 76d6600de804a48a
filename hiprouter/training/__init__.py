"""Offline model tools: labelled datasets of hip crops, training and evaluation.

- `dataset`: labels CSV + DICOM folder -> per-hip crops, patient-level split.
- `train`: the seed papers' recipe (`hiprouter train`).
- `evaluate`: metrics, bootstrap CIs and plots (`hiprouter evaluate`).
"""

"""The alt renderer: an independent synthetic radiograph generator for cross-generator tests.

It shares only the label schema (docs/synthetic-data.md) and DICOM headers
(`hiprouter.synth.dicom`) with the primary renderer. A patient is a 3D model (pelvis, spine,
femora, soft tissue, bowel gas, implants) projected by cone-beam ray casting of analytic
solids (`raycast`), through a polyenergetic beam onto a CR or DR detector (`physics`), then
processed as a console would (`console`). Ground truth per hip comes in as `truth.HipTruth`
(`sample.sample_truth` draws it); `study` writes whole studies, labels and head masks.
"""

from hiprouter.synth.alt.study import generate_alt_dataset, make_alt_study

__all__ = ["generate_alt_dataset", "make_alt_study"]

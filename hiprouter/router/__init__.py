"""The router: `net/` (the DICOM network side), `flow/` (what happens to a stored study)
and `pipelines` (the registry of what a job runs)."""

"""Pipelines: kinds registered through the ``hiprouter.pipelines`` entry points.

- `base`: the contract (`PipelineKind`, options, inputs, cascade targets).
- `registry`: finding kinds, validating their options, cascade order, building instances.
- `runner`: run a study's pipelines in cascade order -> `StudyFindings`.
- `classifier`: the per-hip classifier base; `hardware`, `fracture`: built-in kinds.
"""

"""Test kinds and models for the second-stage cascades (loaded with ``plugins:``).

- Registers `prosthesis_failure` and `fixation_device` by `register_kind`, so tests and
  `serve` subprocesses find them even where the installed metadata predates their entry
  points (pyproject.toml declares them for the real install).
- `sided_hardware`: the hardware stage with one constant-output model per side (plumbing,
  not detection), so a study can have a THA on the right and a DHS on the left
  deterministically.
- `logged_prosthesis_failure`: prosthesis_failure that appends "start/end <study> <pid>"
  to ``<output_dir>/../runs.log`` and waits ``HIPROUTER_TEST_PIPE_S`` seconds before it
  runs, so a test can kill a worker between the first and the second stage.
- `constant_dual_view`: a dual-view model of fixed answer (zero head weights, biased head).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from hiprouter.findings import PipelineResult
from hiprouter.inference.study import StudyInput
from hiprouter.pipelines.base import (
    ConfigPath,
    KindContext,
    PipelineKind,
    PipelineOptions,
    Target,
)
from hiprouter.pipelines.classifier import ClassifierOptions
from hiprouter.pipelines.fixation_device import FixationDeviceKind
from hiprouter.pipelines.hardware import HARDWARE, HardwareKind
from hiprouter.pipelines.prosthesis_failure import ProsthesisFailureKind
from hiprouter.pipelines.registry import register_kind
from tests.inference.helpers import made_once

register_kind(ProsthesisFailureKind)
register_kind(FixationDeviceKind)


class SidedOptions(PipelineOptions):
    right: list[ConfigPath]
    left: list[ConfigPath]
    device: str = "cpu"


@register_kind
class SidedHardwareKind(PipelineKind):
    """Hardware with a constant model per side: right hips get `right`'s answer."""

    kind = "sided_hardware"
    Options: ClassVar[type[PipelineOptions]] = SidedOptions
    options: SidedOptions

    def __init__(self, context: KindContext, options: PipelineOptions) -> None:
        super().__init__(context, options)
        self.sides = {
            side: HardwareKind(context, ClassifierOptions(models=dirs, device="cpu"))
            for side, dirs in (("R", self.options.right), ("L", self.options.left))}

    def vocabulary(self):  # type: ignore[no-untyped-def]
        return HARDWARE

    def model_info(self):  # type: ignore[no-untyped-def]
        return self.sides["R"].model_info()

    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        result = self.empty_result()
        for side, pipe in self.sides.items():
            part = pipe.run(study, [Target(side, [])])  # type: ignore[list-item]
            for f in part.findings:
                f.model = self.model_info()
            result.findings.extend(part.findings)
            result.not_assessed.update(part.not_assessed)
        return result


@register_kind
class LoggedProsthesisFailureKind(ProsthesisFailureKind):
    kind = "logged_prosthesis_failure"

    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        log = self.context.settings.storage.output_dir.parent / "runs.log"
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"start {study.study_uid} {os.getpid()}\n")
        time.sleep(float(os.environ.get("HIPROUTER_TEST_PIPE_S", "0")))
        result = super().run(study, targets)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"end {study.study_uid} {os.getpid()}\n")
        return result


def constant_dual_view(folder: Path, favoured: str, input_size: int = 64,
                       arch: str = "regnetx_002") -> Path:
    """A prosthesis_failure dual-view model that always answers `favoured` (p ~ 0.8):
    plumbing, not detection (made once per test process, `made_once`)."""
    return made_once(("dual_view", favoured, input_size, arch), folder,
                     lambda path: _make_constant_dual_view(path, favoured, input_size, arch))


def _make_constant_dual_view(folder: Path, favoured: str, input_size: int, arch: str) -> Path:
    import torch

    from hiprouter.inference.dualview import build_net, card_parameters, save
    from hiprouter.inference.models import ModelCard
    from hiprouter.pipelines.prosthesis_failure import PROSTHESIS_FAILURE

    keys = PROSTHESIS_FAILURE.keys
    net = build_net(arch, len(keys))
    with torch.no_grad():
        net.head.weight.zero_()
        # a faint weight on the favoured class gives its maps an image-dependent shape
        # (the probability stays ~0.8 whatever the image)
        net.head.weight[keys.index(favoured)] = 1e-3
        net.head.bias.copy_(torch.tensor([3.0 if k == favoured else 0.0 for k in keys]))
    card = ModelCard(name=f"constant-{favoured}", version="0.0.1", architecture=arch,
                     input_size=input_size, label_set="prosthesis_failure", classes=keys,
                     parameters=card_parameters(net, 0.3),
                     training_data="none (constant output for tests)", synthetic_demo=True)
    save(net, card, folder)
    return folder

"""Execution back-ends: PyTorch (CUDA with AMP, or CPU channels_last) and ONNX Runtime (CPU).

Every runner returns, for a batch of model inputs, the logits AND the last feature map, so
class activation maps come from the same forward pass on either back-end. The ONNX graph is
exported once per weights file and cached (keyed by the weights' sha256).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hiprouter.inference.models import (  # noqa: F401  (threads: re-exported)
    LoadedModel,
    apply_torch_threads,
    cpu_threads,
    set_cpu_threads,
)

CACHE_DIR = Path(os.environ.get("HIPROUTER_CACHE", Path.home() / ".cache" / "hiprouter"))
"""Where exported ONNX graphs are kept."""
ONNX_OPSET = 17

def nvidia_present() -> bool:
    """Whether this host has an NVIDIA driver loaded (without importing torch)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def cpu_without_torch(device: Any) -> bool:
    """Whether models for `device` (auto, cpu, cuda) run on the CPU from ONNX bundles, so
    the process need not import torch (about 700 MB resident with timm): device cpu, or
    auto on a host without an NVIDIA driver."""
    pref = str(device)
    return pref == "cpu" or (pref == "auto" and not nvidia_present())


class Runner(Protocol):
    """A forward pass: (B, 1, S, S) float32 -> (logits (B, K), features (B, C, h, w))."""

    name: str

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def cam_net(module: Any) -> Any:
    """Wrap a timm model so forward returns (logits, last feature map)."""
    import torch

    class CamNet(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.inner.forward_features(x)
            return self.inner.forward_head(features), features

    return CamNet(module).eval()


class TorchRunner:
    """Eager PyTorch; AMP (bfloat16/float16 autocast) on CUDA, optional channels_last."""

    def __init__(self, model: LoadedModel, device: Any, channels_last: bool = True,
                 amp: bool = True) -> None:
        import torch

        self.device = torch.device(device)
        self.net = cam_net(model.module).to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.amp = amp and self.device.type == "cuda"
        self.name = f"torch-{self.device.type}" + ("-channels_last" if channels_last else "")

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp,
                                                    dtype=torch.float16):
            logits, features = self.net(x)
        return logits.float().cpu().numpy(), features.float().cpu().numpy()


def onnx_path(model: LoadedModel) -> Path:
    """Cache path of the exported graph of these weights."""
    card = model.card
    name = f"{card.architecture}-{card.input_size}-{card.weights_sha256[:16]}.onnx"
    return CACHE_DIR / "onnx" / name


def export_onnx(model: LoadedModel, path: Path | None = None) -> Path:
    """Export (logits, features) with a dynamic batch axis; atomic write."""
    import torch

    path = path or onnx_path(model)
    if path.is_file():
        return path
    size = model.card.input_size
    dummy = torch.zeros(1, model.card.in_chans, size, size)
    return write_onnx(cam_net(model.module).to("cpu"), dummy, path, ["logits", "features"])


def write_onnx(net: Any, dummy: Any, path: Path, outputs: Sequence[str]) -> Path:
    """Export `net` (input `dummy`) to `path` with a dynamic batch axis on the input and
    every output; written to a temporary file and renamed (atomic)."""
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (dummy,), str(tmp), input_names=["input"], output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in ("input", *outputs)},
            opset_version=ONNX_OPSET, dynamo=False,
        )
    os.replace(tmp, path)
    return path


def cpu_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU, all graph optimisations, `threads` (default:
    `cpu_threads()`, i.e. `inference.threads` or the core count) intra-op threads.

    The threads do not spin-wait after a run (ONNX Runtime's default): a job runs several
    models one after another and builds its report in between, and each session's idle
    spinning threads took CPU from whatever ran next (docs/performance.md).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """ONNX Runtime on CPU (the fast CPU path: ~5x eager PyTorch for EfficientNet-B4 here)."""

    def __init__(self, model: LoadedModel, threads: int | None = None) -> None:
        graph = model.onnx if model.onnx is not None else export_onnx(model)
        self.session = cpu_session(graph, threads)
        self.name = "onnxruntime-cpu"

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(
            None, {"input": np.ascontiguousarray(batch, dtype=np.float32)})
        return logits, features


def make_runner(model: LoadedModel, device: Any, runtime: str = "auto") -> Runner:
    """Choose the back-end: torch on CUDA; on CPU ONNX Runtime unless runtime='torch'.

    bench/bench_inference.py measures the CPU choice (ONNX Runtime was faster than eager and
    channels_last PyTorch for every architecture measured). If export fails, falls back to
    torch. A model loaded from its ONNX bundle (no torch module) gets ONNX Runtime.
    """
    if model.module is None:
        return OnnxRunner(model)
    import torch

    device = torch.device(device)
    if runtime == "onnx" and device.type != "cpu":
        raise ValueError("runtime 'onnx' is the CPU path; use device cpu")
    if device.type == "cpu" and runtime in ("auto", "onnx"):
        try:
            return OnnxRunner(model)
        except Exception:
            if runtime == "onnx":
                raise
    return TorchRunner(model, device, channels_last=True)


def time_runner(runner: Runner, batch: np.ndarray, repeats: int = 3) -> float:
    """Median seconds per call (after one warm-up call)."""
    runner.run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))

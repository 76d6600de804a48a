"""ONNX Runtime vs PyTorch, CAM vs Grad-CAM, and heat maps in source geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiprouter.inference import cam as cammod
from hiprouter.inference.decode import decode
from hiprouter.inference.laterality import hip_crops
from hiprouter.inference.models import create_model, load_model
from hiprouter.inference.predict import HardwareClassifier
from hiprouter.inference.preprocess import _resize, letterbox, normalise
from hiprouter.inference.runtime import OnnxRunner, TorchRunner
from tests.inference.helpers import blob_image, make_radiograph


def test_onnx_and_torch_agree(tiny_model_dir) -> None:
    model = load_model(tiny_model_dir)
    x = np.random.default_rng(0).normal(size=(3, 1, 64, 64)).astype(np.float32)
    t_logits, t_feats = TorchRunner(model, "cpu").run(x)
    o_logits, o_feats = OnnxRunner(model).run(x)
    np.testing.assert_allclose(o_logits, t_logits, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(o_feats, t_feats, atol=1e-3, rtol=1e-3)


def test_cam_from_forward_pass_equals_grad_cam_for_linear_head(tiny_model_dir) -> None:
    model = load_model(tiny_model_dir)
    weight, bias = cammod.linear_head(model.module)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 1, 64, 64)).astype(np.float32))
    logits, feats = TorchRunner(model, "cpu", channels_last=False).run(x.numpy())
    np.testing.assert_allclose(feats[0].mean(axis=(1, 2)) @ weight.T + bias, logits[0],
                               atol=1e-4)
    k = int(logits.argmax())
    np.testing.assert_allclose(cammod.cam(feats[0], weight, k),
                               cammod.grad_cam(model.module, x, k), atol=1e-4)


def test_heads_that_are_not_linear_use_grad_cam() -> None:
    net = create_model("mobilenetv3_small_050", 9).eval()
    assert cammod.linear_head(net) is None
    heat = cammod.grad_cam(net, torch.randn(1, 1, 64, 64), 3)
    assert heat.shape == (2, 2) and 0.0 <= heat.min() and heat.max() <= 1.0


def test_map_goes_back_to_the_blob_in_source_geometry() -> None:
    """An AP pelvis with a blob in the patient's left hip: the mapped map peaks on the blob."""
    pixels = blob_image((300, 500), centre=(90, 410), radius=12)
    ds = make_radiograph(pixels, SeriesDescription="AP PELVIS")
    image = decode(ds).pixels
    left = [c for c in hip_crops(ds, image) if c.laterality == "L"][0]
    boxed, lb = letterbox(left.pixels, 64)
    model_map = _resize(boxed, (8, 8))  # a "feature map" that is the image itself
    full = cammod.to_source(cammod.normalise_map(model_map), lb, left.box, image.shape)
    assert full.shape == (300, 500)
    peak = np.unravel_index(np.argmax(full), full.shape)
    assert abs(peak[0] - 90) <= 25 and abs(peak[1] - 410) <= 25
    assert full[:, :250].max() == 0.0  # nothing spills into the other hip


def test_predict_study_ap_pelvis_two_hips_and_refusals(tiny_model_dir) -> None:
    clf = HardwareClassifier.from_dirs([tiny_model_dir], device="cpu", runtime="auto")
    assert clf.runtime_names == ["onnxruntime-cpu"]
    pelvis = make_radiograph(blob_image((120, 200), (60, 50), 8), SeriesDescription="AP PELVIS")
    hip = make_radiograph(blob_image((100, 80), (50, 40), 8), SeriesDescription="HIP LEFT")
    mr = make_radiograph(blob_image((32, 32), (16, 16), 4), modality="MR")
    chest = make_radiograph(blob_image((32, 32), (16, 16), 4), BodyPartExamined="CHEST")
    result = clf.predict_study([pelvis, hip, mr, chest], "1.2.3")
    assert [h.laterality for h in result.hips] == ["R", "L"]
    left = result.hips[1]
    assert left.source_sop_uids == [pelvis.SOPInstanceUID, hip.SOPInstanceUID]
    assert abs(sum(left.probabilities.values()) - 1.0) < 1e-4
    assert left.predicted_class == max(left.probabilities, key=left.probabilities.get)
    assert set(result.refused) == {mr.SOPInstanceUID, chest.SOPInstanceUID}
    assert "modality MR" in result.refused[mr.SOPInstanceUID]
    shapes = {h.sop_instance_uid: h.heatmap.shape for h in result.heatmaps}
    assert shapes == {pelvis.SOPInstanceUID: (120, 200), hip.SOPInstanceUID: (100, 80)}
    for h in result.heatmaps:
        assert h.display_image.dtype == np.uint8 and h.display_image.shape == h.heatmap.shape
        assert 0.0 <= h.heatmap.min() and h.heatmap.max() <= 1.0
    assert result.model.synthetic_demo and result.model.device_uid


def test_ensemble_averages_and_torch_matches_onnx(tiny_model_dir) -> None:
    crops = [np.random.default_rng(2).random((70, 50)).astype(np.float32)]
    one = HardwareClassifier.from_dirs([tiny_model_dir], "cpu", "torch").predict_crops(crops)
    onnx = HardwareClassifier.from_dirs([tiny_model_dir], "cpu", "onnx").predict_crops(crops)
    two = HardwareClassifier.from_dirs([tiny_model_dir] * 2, "cpu", "onnx")
    np.testing.assert_allclose(one[0].probabilities, onnx[0].probabilities, atol=1e-4)
    np.testing.assert_allclose(two.predict_crops(crops)[0].probabilities,
                               onnx[0].probabilities, atol=1e-5)
    assert one[0].heatmap.shape == (70, 50)
    assert two.info.architecture.startswith("ensemble(")


@pytest.mark.parametrize("shape", [(50, 200), (200, 50), (64, 64)])
def test_letterbox_round_trip(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    boxed, lb = letterbox(img, 64)
    assert boxed.shape == (64, 64)
    back = lb.to_source(boxed)
    assert back.shape == shape
    assert np.abs(back - img).mean() < 0.3
    assert normalise(boxed).dtype == np.float32


def test_from_config_modalities_opt_in(tiny_model_dir) -> None:
    from hiprouter.config import PipelineConfig

    ot = make_radiograph(blob_image((64, 64), (32, 32), 6), modality="OT",
                         SeriesDescription="HIP RIGHT")
    strict = HardwareClassifier.from_config(PipelineConfig(models=[tiny_model_dir]))
    assert "modality OT" in strict.predict_study([ot], "s").refused[ot.SOPInstanceUID]
    opted = HardwareClassifier.from_config(
        PipelineConfig(models=[tiny_model_dir], modalities=["CR", "DX", "OT"], heatmaps=False))
    result = opted.predict_study([ot], "s")
    assert not result.refused and [h.laterality for h in result.hips] == ["R"]
    assert result.heatmaps == []

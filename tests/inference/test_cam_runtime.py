"""ONNX Runtime vs PyTorch, CAM vs Grad-CAM, and heat maps in source geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiprouter.findings import HeatMap
from hiprouter.inference import cam as cammod
from hiprouter.inference.classifier import CropClassifier
from hiprouter.inference.decode import decode
from hiprouter.inference.laterality import hip_crops
from hiprouter.inference.models import create_model, load_model
from hiprouter.inference.preprocess import _resize, letterbox, normalise
from hiprouter.inference.runtime import OnnxRunner, TorchRunner
from tests.inference.helpers import blob_image, classify, make_radiograph


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


@pytest.mark.parametrize("p", [1.0, 3.0, 5.5])
def test_closed_form_grad_cam_of_a_gem_head_equals_autograd(p: float) -> None:
    """GeM pool + linear (seed 001's head, with CBAM in the blocks): the map computed from
    the forward pass and the head equals Grad-CAM by autograd, so no torch is needed."""
    torch.manual_seed(0)
    net = create_model("resnet10t", 8, attention="cbam", pool="gem").eval()
    with torch.no_grad():
        net.global_pool.p.fill_(p)
    head = cammod.linear_head(net)
    assert head is not None and cammod.gem_exponent(net) == pytest.approx(p)
    x = torch.randn(1, 1, 96, 96)
    with torch.no_grad():
        feats = net.forward_features(x)
        logits = net.forward_head(feats)
    for k in (int(logits.argmax()), int(logits.argmin())):
        np.testing.assert_allclose(cammod.gem_grad_cam(feats[0].numpy(), head[0], p, k),
                                   cammod.grad_cam(net, x, k), atol=2e-4)


def test_an_average_pool_model_has_no_gem_exponent(tiny_model_dir) -> None:
    assert cammod.gem_exponent(load_model(tiny_model_dir).module) is None


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
    heat = HeatMap(ds.SOPInstanceUID, shape=image.shape,
                   pieces=[(cammod.CropHeat([(model_map, lb)]), left.box)])
    full = heat.heat
    assert full.shape == (300, 500)
    peak = np.unravel_index(np.argmax(full), full.shape)
    assert abs(peak[0] - 90) <= 25 and abs(peak[1] - 410) <= 25
    assert full[:, :250].max() == 0.0  # nothing spills into the other hip
    small = heat.resized(150, 250)  # as an SC takes it
    peak = np.unravel_index(np.argmax(small), small.shape)
    assert abs(peak[0] - 45) <= 13 and abs(peak[1] - 205) <= 13
    assert small[:, :125].max() == 0.0


def test_classifier_kind_ap_pelvis_two_hips_and_refusals(tiny_model_dir) -> None:
    pelvis = make_radiograph(blob_image((120, 200), (60, 50), 8), SeriesDescription="AP PELVIS")
    hip = make_radiograph(blob_image((100, 80), (50, 40), 8), SeriesDescription="HIP LEFT")
    mr = make_radiograph(blob_image((32, 32), (16, 16), 4), modality="MR")
    chest = make_radiograph(blob_image((32, 32), (16, 16), 4), BodyPartExamined="CHEST")
    pipe, result = classify([pelvis, hip, mr, chest], models=[tiny_model_dir])
    assert pipe.classifier.runtime_names == ["onnxruntime-cpu"]
    assert [f.laterality for f in result.findings] == ["R", "L"]
    left = result.findings[1]
    assert left.source_sop_uids == [pelvis.SOPInstanceUID, hip.SOPInstanceUID]
    c = left.classification
    assert abs(sum(c.probabilities.values()) - 1.0) < 1e-4
    assert c.predicted == max(c.probabilities, key=c.probabilities.get)
    assert left.qualifiers["views"] == "AP pelvis, AP hip"
    assert set(result.not_assessed) == {mr.SOPInstanceUID, chest.SOPInstanceUID}
    assert "modality MR" in result.not_assessed[mr.SOPInstanceUID]
    shapes = {h.sop_instance_uid: h.heat.shape for h in left.heatmaps}
    assert shapes == {pelvis.SOPInstanceUID: (120, 200), hip.SOPInstanceUID: (100, 80)}
    for h in left.heatmaps:
        assert 0.0 <= h.heat.min() and h.heat.max() <= 1.0
        if h.sop_instance_uid == pelvis.SOPInstanceUID:
            assert h.heat[:, :100].max() == 0.0  # the left hip's map stays in its half
    (point,) = left.regions
    assert point.graphic_type == "POINT" and point.sop_instance_uid == pelvis.SOPInstanceUID
    assert 100 <= point.points[0, 0] <= 200  # on the left hip's half (image right)
    assert result.model.synthetic_demo and result.model.device_uid


def test_calibration_abstention_and_ood_from_the_card(tiny_model_dir, tmp_path) -> None:
    """The card's temperature flattens probabilities, min_confidence makes a finding
    indeterminate, an OOD threshold below every score marks the hip not assessed."""
    import shutil

    from hiprouter.inference.models import read_card, write_card

    pelvis = make_radiograph(blob_image((120, 200), (60, 50), 8), SeriesDescription="AP PELVIS")
    _, plain = classify([pelvis], models=[tiny_model_dir])
    model = tmp_path / "calibrated"
    shutil.copytree(tiny_model_dir, model)
    card = read_card(model)
    write_card(model, card.model_copy(update={
        "calibration": {"temperature": 50.0}, "abstention": {"min_confidence": 0.9},
        "ood": {"method": "energy", "threshold": -1e6}}))
    _, hot = classify([pelvis], models=[model], ood_detection=False)
    for before, after in zip(plain.findings, hot.findings, strict=True):
        assert after.classification.probability < before.classification.probability
        assert after.classification.status == "indeterminate"
        assert "below 0.90" in after.classification.reason
    _, ood = classify([pelvis], models=[model])
    assert {f.status for f in ood.findings} == {"not_assessed"}
    assert "unlike the training data" in ood.findings[0].classification.reason


def test_cascade_targets_limit_the_hips(tiny_model_dir) -> None:
    from hiprouter.pipelines.base import Target

    pelvis = make_radiograph(blob_image((120, 200), (60, 50), 8), SeriesDescription="AP PELVIS")
    _, result = classify([pelvis], models=[tiny_model_dir],
                         targets=[Target("L", [str(pelvis.SOPInstanceUID)])])
    assert [f.laterality for f in result.findings] == ["L"]
    _, result = classify([pelvis], models=[tiny_model_dir], targets=[])
    assert result.findings == []


def test_ensemble_averages_and_torch_matches_onnx(tiny_model_dir) -> None:
    crops = [np.random.default_rng(2).random((70, 50)).astype(np.float32)]
    one = CropClassifier.from_dirs([tiny_model_dir], "cpu", "torch").predict(crops)
    onnx = CropClassifier.from_dirs([tiny_model_dir], "cpu", "onnx").predict(crops)
    two = CropClassifier.from_dirs([tiny_model_dir] * 2, "cpu", "onnx")
    np.testing.assert_allclose(one[0].probabilities, onnx[0].probabilities, atol=1e-4)
    assert one[0].ood_score == pytest.approx(onnx[0].ood_score, abs=1e-3)
    np.testing.assert_allclose(two.predict(crops)[0].probabilities,
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


@pytest.mark.parametrize(("shape", "size", "side"), [
    ((2140, 1760), 160, 5), ((900, 1400), 380, 12), ((37, 50), 48, 2), ((160, 160), 160, 5),
    ((500, 80), 224, 7), ((81, 300), 64, 64)])
def test_map_back_to_the_crop_equals_the_two_resizes(shape: tuple[int, int], size: int,
                                                     side: int) -> None:
    """`Letterbox.to_source` (one product of separable weight matrices) gives what resizing
    the map to the model input, cutting out the crop and resizing that to the crop gives."""
    from hiprouter.inference.preprocess import _resize

    rng = np.random.default_rng(side)
    _, lb = letterbox(rng.random(shape, dtype=np.float32), size)
    model_map = rng.random((side, side), dtype=np.float32) - 0.2
    full = _resize(model_map, (size, size))
    reference = _resize(full[lb.top : lb.top + lb.height, lb.left : lb.left + lb.width], shape)
    mapped = lb.to_source(model_map)
    assert mapped.shape == shape and mapped.dtype == np.float32
    np.testing.assert_allclose(mapped, reference, atol=2e-6)


def test_modalities_opt_in(tiny_model_dir) -> None:
    ot = make_radiograph(blob_image((64, 64), (32, 32), 6), modality="OT",
                         SeriesDescription="HIP RIGHT")
    _, strict = classify([ot], models=[tiny_model_dir])
    assert "modality OT" in strict.not_assessed[ot.SOPInstanceUID]
    assert strict.findings == []
    _, opted = classify([ot], models=[tiny_model_dir], modalities=["CR", "DX", "OT"],
                        heatmaps=False)
    assert not opted.not_assessed and [f.laterality for f in opted.findings] == ["R"]
    assert opted.findings[0].heatmaps == []


def test_inference_threads_size_new_cpu_sessions(tiny_model_dir) -> None:
    """`inference.threads` sizes every ONNX Runtime session and torch's pool."""
    from hiprouter.config import Settings
    from hiprouter.inference import runtime
    from hiprouter.service import configure_inference

    before = torch.get_num_threads()
    try:
        configure_inference(Settings.model_validate({"inference": {"threads": 1}}))
        session = OnnxRunner(load_model(tiny_model_dir)).session
        assert session.get_session_options().intra_op_num_threads == 1
        assert torch.get_num_threads() == 1
        runtime.set_cpu_threads(None)
        assert runtime.cpu_threads() >= 1
    finally:
        runtime.set_cpu_threads(None)
        torch.set_num_threads(before)


def test_letterbox_resizes_a_shared_read_only_crop_once_per_size() -> None:
    """The pipelines of a job share the study's read-only crops: the second pipeline with
    the same input size gets the first one's letterboxed crop; a writeable array (whose
    pixels may change) is letterboxed afresh every time."""
    image = np.random.default_rng(3).random((300, 500), dtype=np.float32)
    image.setflags(write=False)
    crop = image[:, :250]  # a view, as hip_crops cuts them
    first, box = letterbox(crop, 64)
    again, box2 = letterbox(crop, 64)
    assert again is first and box2 == box
    assert not first.flags.writeable
    other, _ = letterbox(crop, 96)
    assert other.shape == (96, 96)
    np.testing.assert_array_equal(letterbox(image[:, :250].copy(), 64)[0], first)

    writeable = image.copy()
    boxed, _ = letterbox(writeable, 64)
    writeable[:] = 0.0
    assert letterbox(writeable, 64)[0].max() == 0.0 < boxed.max()


def test_crop_heat_maps_onto_the_crop_only_at_the_size_asked_for() -> None:
    """A crop's CAM kept as model maps: at the crop's size it is the members' maps mapped
    back and normalised; at an SC's size it matches resizing that; its peak is found within
    cam.PEAK_STEP pixels of the full map's maximum."""
    crop = np.random.default_rng(5).random((430, 250)).astype(np.float32)
    _, box = letterbox(crop, 64)
    yy, xx = np.mgrid[:4, :4]
    maps = [np.exp(-((yy - 2.2) ** 2 + (xx - 0.8) ** 2)).astype(np.float32),
            np.exp(-((yy - 1.9) ** 2 + (xx - 1.2) ** 2) / 2).astype(np.float32) - 0.1]
    heat = cammod.CropHeat([(m, box) for m in maps])
    expected = cammod.normalise_map(box.to_source(maps[0]) + box.to_source(maps[1]))
    assert heat.shape == (430, 250)
    np.testing.assert_allclose(heat.full(), expected, atol=1e-6)
    assert heat.at(430, 250) is heat.full()

    fresh = cammod.CropHeat([(m, box) for m in maps])
    small = fresh.at(215, 125)
    from PIL import Image
    resized = np.asarray(Image.fromarray(expected).resize((125, 215),
                                                          Image.Resampling.BILINEAR))
    assert np.abs(small - resized).max() < 0.03

    row, col = np.unravel_index(int(expected.argmax()), expected.shape)
    px, py = cammod.CropHeat([(m, box) for m in maps]).peak()
    assert abs(px - (col + 0.5)) <= cammod.PEAK_STEP and abs(py - (row + 0.5)) <= cammod.PEAK_STEP
    assert heat.peak() == (col + 0.5, row + 0.5)  # the full map, once made, is used as is
    assert cammod.CropHeat([(np.full((4, 4), -1.0, np.float32), box)]).peak() is None

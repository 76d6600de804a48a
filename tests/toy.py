"""Settings for tests whose studies are toy images (noise, bars, blobs), not anatomy."""

NO_ANATOMY_CHECK = {"anatomy_check": {"enabled": False}}
"""`inference:` block for router tests whose pipelines never look at anatomy (the `marked`
test kind, a plugin measuring bright pixels): the whole-image anatomy check would rightly
refuse their toy images as "not a hip or pelvis radiograph", and the test is about
something else. The check itself: tests/inference/test_anatomy_*.py."""

"""Training-time augmentation of letterboxed display crops (torch tensors (1, S, S) in [0, 1]).

`basic` is the seed 003 recipe: flip, rotation, zoom, shift, perspective warp, brightness
and contrast. `strong` adds what differs between radiograph sources, so a model trained on
one generator (or site) holds up on another: wider rotation and zoom (crops), gamma (tone
curves), blur (detector MTF, downsampling), noise (quantum and structured), JPEG artefacts
and resolution loss. Nothing inverts the image (metal stays bright) and nothing erases part
of it (an erased implant would contradict its label).

Geometric transforms move the letterbox padding with the image; the padding stays exactly
0 afterwards (as at inference, where the metal channel ignores it).
"""

from __future__ import annotations

from typing import Any

PRESETS = ("none", "basic", "strong", "anatomy")

BASIC = {"rotation_deg": 10.0, "zoom": 0.1, "translate": 0.05, "perspective": 0.2,
         "brightness": 0.2, "contrast": 0.2, "flip_p": 0.5}
STRONG = {**BASIC, "rotation_deg": 20.0, "zoom": 0.25, "translate": 0.08, "perspective": 0.25,
          "brightness": 0.25, "contrast": 0.3, "gamma": 0.6, "blur_p": 0.3, "blur_sigma": 1.5,
          "noise_p": 0.5, "noise_std": 0.04, "jpeg_p": 0.3, "jpeg_quality": 25,
          "lowres_p": 0.2, "lowres_min": 0.4}


ANATOMY = {**STRONG, "gamma": 0.9, "scatter_p": 0.5, "scatter_max": 0.6, "equalize_p": 0.3}
"""Whole images for the anatomy check: also the tone of another site's films (scatter that
greys the lungs of a chest film, histogram equalisation, wider tone curves), so that what
decides is the shape of the anatomy, not the generator's contrast."""


def preset(name: str) -> dict[str, float]:
    """The augmentation parameters of a preset (recorded in the model card)."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(PRESETS)}")
    return {} if name == "none" else dict({"basic": BASIC, "strong": STRONG,
                                           "anatomy": ANATOMY}[name])


class Augment:
    """Callable (1, S, S) -> (1, S, S) for a parameter dict (see `preset`)."""

    def __init__(self, params: dict[str, float]) -> None:
        from torchvision.transforms import v2

        self.p = dict(params)
        a = self.p
        self.geometric = v2.Compose([
            v2.RandomHorizontalFlip(p=a.get("flip_p", 0.5)),
            v2.RandomAffine(degrees=a.get("rotation_deg", 0.0),
                            translate=(a.get("translate", 0.0), a.get("translate", 0.0)),
                            scale=(1.0 - a.get("zoom", 0.0), 1.0 + a.get("zoom", 0.0))),
            v2.RandomPerspective(distortion_scale=a.get("perspective", 0.0), p=0.5),
        ]) if a else None
        self.jitter = v2.ColorJitter(brightness=a.get("brightness", 0.0),
                                     contrast=a.get("contrast", 0.0)) if a else None

    def __call__(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F  # noqa: N812

        if not self.p:
            return x
        a = self.p
        valid = (x > 0).float()
        both = self.geometric(torch.cat([x, valid]))
        x, valid = both[:1], (both[1:] > 0.5).float()
        if a.get("gamma"):
            g = float(torch.empty(1).uniform_(-a["gamma"], a["gamma"]).exp())
            x = x.clamp(0, 1).pow(g)
        x = self.jitter(x.clamp(0, 1))
        size = x.shape[-1]
        if a.get("scatter_p") and torch.rand(1).item() < a["scatter_p"]:
            from torchvision.transforms.v2 import functional as TF  # noqa: N812

            # scatter: a broad haze over the image lowers local contrast
            k = (size // 4) | 1
            haze = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[size / 10, size / 10])
            w = float(torch.empty(1).uniform_(0.0, a["scatter_max"]))
            x = (1 - w) * x + w * haze
        if a.get("equalize_p") and torch.rand(1).item() < a["equalize_p"]:
            from torchvision.transforms.v2 import functional as TF  # noqa: N812

            u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            x = TF.equalize(u8).float() / 255.0
        if a.get("lowres_p") and torch.rand(1).item() < a["lowres_p"]:
            f = float(torch.empty(1).uniform_(a["lowres_min"], 0.9))
            small = max(8, int(size * f))
            x = F.interpolate(x[None], size=(small, small), mode="area")
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]
        if a.get("blur_p") and torch.rand(1).item() < a["blur_p"]:
            from torchvision.transforms.v2 import functional as TF  # noqa: N812

            sigma = float(torch.empty(1).uniform_(0.3, a["blur_sigma"]))
            x = TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[sigma, sigma])
        if a.get("noise_p") and torch.rand(1).item() < a["noise_p"]:
            x = x + torch.randn_like(x) * float(torch.rand(1)) * a["noise_std"]
        if a.get("jpeg_p") and torch.rand(1).item() < a["jpeg_p"]:
            from torchvision.io import decode_jpeg, encode_jpeg

            q = int(torch.randint(int(a["jpeg_quality"]), 95, (1,)))
            u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            x = decode_jpeg(encode_jpeg(u8, quality=q)).float() / 255.0
        return x.clamp(0.0, 1.0) * valid

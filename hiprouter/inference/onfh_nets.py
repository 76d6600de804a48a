"""The networks of the ONFH model (seed 002): a small U-Net and a convolutional VAE.

Written here rather than taken from segmentation_models_pytorch or MONAI: each is a few
dozen lines, needs no further dependency (and no pretrained-weights download path), exports
to ONNX as plain convolutions, and stays small enough (about 0.5 M parameters per U-Net,
0.3 M for the VAE) to train on a CPU and ship as float16 weights of a few MB.

Imported lazily (torch is heavy); hiprouter/inference/onfh.py loads them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with ``len(widths) - 1`` poolings; one logit map.

    ``widths`` are the channels per level, the last one the bottleneck's; the input side
    must be divisible by ``2 ** (len(widths) - 1)``. Bilinear upsampling, skip concatenation.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), in_chans: int = 1) -> None:
        super().__init__()
        widths = list(widths)
        self.down = nn.ModuleList()
        cin = in_chans
        for w in widths:
            self.down.append(_double_conv(cin, w))
            cin = w
        self.up = nn.ModuleList(_double_conv(widths[i + 1] + widths[i], widths[i])
                                for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class ConvVAE(nn.Module):
    """Convolutional VAE on a (channels, size, size) head patch.

    Encoder: stride-2 convolutions (``widths``) to a ``size / 2**len(widths)`` square, then
    linear layers to the latent mean and log-variance. Decoder: the mirror image with
    transposed convolutions. ``forward`` returns (reconstruction, mu, logvar); the
    reconstruction has the input's channels (channel 0 intensity, channel 1 mask logits).
    """

    def __init__(self, size: int = 64, latent_dim: int = 16, in_chans: int = 2,
                 widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        widths = list(widths)
        self.size, self.latent_dim, self.in_chans = size, latent_dim, in_chans
        self.side = size // 2 ** len(widths)
        if self.side * 2 ** len(widths) != size or self.side < 1:
            raise ValueError(f"patch size {size} must be divisible by {2 ** len(widths)}")
        layers: list[nn.Module] = []
        cin = in_chans
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            cin = w
        self.encoder = nn.Sequential(*layers)
        flat = widths[-1] * self.side * self.side
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)
        self.from_z = nn.Linear(latent_dim, flat)
        self.last_width = widths[-1]
        dec: list[nn.Module] = []
        rev = widths[::-1]
        for i, w in enumerate(rev):
            out = rev[i + 1] if i + 1 < len(rev) else 16
            dec += [nn.ConvTranspose2d(w, out, 4, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(out), nn.LeakyReLU(0.2, inplace=True)]
        dec.append(nn.Conv2d(16, in_chans, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(1)
        return self.to_mu(h), self.to_logvar(h).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_z(z).view(-1, self.last_width, self.side, self.side)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decode(z), mu, logvar


class VAEEncoder(nn.Module):
    """The latent mean only (what inference needs; exported to ONNX on its own)."""

    def __init__(self, vae: ConvVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x)[0]


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class VaeMean(nn.Module):
    """A ConvVAE's encoder returning the latent mean only (the graph exported for
    inference: the normative model needs nothing else)."""

    def __init__(self, vae: ConvVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x)[0]

"""A small U-Net for per-pixel water segmentation (logits out)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Pad the bottom/right of (N, C, H, W) to a multiple of ``m`` (reflection where the image
    is large enough, else replication); a no-op when it already is one."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with ``depth`` resolution levels (``depth - 1`` poolings); level ``i`` has
    ``base_channels * 2**i`` channels. Any input size works: the input is padded by reflection
    to a multiple of ``2**(depth-1)`` and the output cropped back. Returns logits (N, 1, H, W).
    """

    def __init__(self, in_channels: int = 8, base_channels: int = 16, depth: int = 4):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.in_channels, self.base_channels, self.depth = in_channels, base_channels, depth
        widths = [base_channels * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(ConvBlock(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.merge.append(ConvBlock(2 * w, w))
            cin = w
        self.head = nn.Conv2d(cin, 1, 1)

    @property
    def multiple(self) -> int:
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            x = pad_to_multiple(x, self.multiple)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., :h, :w]

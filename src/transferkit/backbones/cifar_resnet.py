"""The CIFAR ResNets of He et al. 2016 (section 4.2), with the key layout of akamaster's
pytorch_resnet_cifar10, so its CIFAR-10 checkpoints load as they are.

3x3 conv (16) -> 3 stages of n basic blocks (16/32/64 channels, stride 2 at stages 2 and 3, option-A
zero-padded identity shortcuts with no weights) -> global average pool. n=3: ResNet-20, n=9: ResNet-56.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Backbone, Preprocess


class _ShortcutA(nn.Module):
    """Option A: subsample by 2 and zero-pad the channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    # akamaster trained with ImageNet statistics on 32x32 inputs (no crop).
    default_preprocess = Preprocess(input_size=32, crop_pct=1.0, interpolation="bilinear")

    def __init__(self, depth: int, *, weights_id: str = "random", spec: dict | None = None):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.num_features = 64
        self.preprocess = self.default_preprocess
        self.weights_id = weights_id
        self.spec = spec or {"name": f"cifar_resnet{depth}"}

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def block_groups(self) -> list[tuple[str, list[str]]]:
        groups = [("stem", [f"{m}.{n}" for m in ("conv1", "bn1") for n, _ in getattr(self, m).named_parameters()])]
        for li in (1, 2, 3):
            stage = getattr(self, f"layer{li}")
            for bi in range(len(stage)):
                prefix = f"layer{li}.{bi}."
                groups.append((prefix[:-1], [prefix + n for n, _ in stage[bi].named_parameters()]))
        return groups

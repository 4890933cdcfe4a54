"""The small ConvNet of the transfer-learning articles: two convolutions and two dense layers (the
second dense layer is the head). No pretrained weights: it is what a user trains on a source task
(`fit --model small_convnet`) and then transfers (`fit --model run:SOURCE_RUN`), or trains from scratch."""

from __future__ import annotations

from torch import nn

from .base import Backbone, Preprocess


class SmallConvNet(Backbone):
    def __init__(self, width: int = 32, features: int = 128, input_size: int = 16):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        # any --input-size: the map is averaged onto the grid the default input gives (identity there)
        self.pool = nn.AdaptiveAvgPool2d(max(input_size // 4, 1))
        self.dense = nn.Sequential(nn.Flatten(), nn.LazyLinear(features), nn.ReLU())
        self.num_features = features
        self.preprocess = Preprocess(input_size=input_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, interpolation="bilinear")
        self.weights_id = "random"
        self.spec = {"name": "small_convnet"}
        # materialise the lazy layer for the default input size, so parameters exist before training
        import torch

        with torch.no_grad():
            self.forward(torch.zeros(1, 3, input_size, input_size))

    def forward(self, x):
        return self.dense(self.pool(self.conv2(self.conv1(x))))

    def block_groups(self) -> list[tuple[str, list[str]]]:
        return [(g, [f"{g}.{n}" for n, _ in getattr(self, g).named_parameters()]) for g in ("conv1", "conv2", "dense")]

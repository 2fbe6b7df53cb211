"""Models shared by the benchmarks."""
import torch
from torch import nn


def cnn620k(num_classes=10):
    """The 620K-parameter CNN of the targets: 3 conv blocks (32, 64, 128 channels) and a 2-layer head."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2048, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes),
    )


def cnn_inputs(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def cnn_small(num_classes=10):
    """A 35K-parameter CNN with the layer kinds of cnn620k (2 conv blocks and a 2-layer head), for quick runs."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 32), nn.ReLU(inplace=True), nn.Linear(32, num_classes),
    )

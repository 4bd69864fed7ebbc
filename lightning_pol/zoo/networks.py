"""Plain ``nn.Module`` image classifiers by name: the CIFAR ResNets, a CIFAR-adapted ResNet-50 and an MLP."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_pol.errors import PoLError


class ShortcutA(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a ReLU between and after the residual sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Example::

        net = CifarResNet(depth=20, num_classes=10)  # ResNet-20, ~0.27M parameters

    The CIFAR ResNet of He et al. (2016), section 4.2: a 3x3 stem conv with 16
    channels, three stages of n = (depth - 2) / 6 basic blocks with 16/32/64
    channels (stride 2 at the start of stages 2 and 3), option-A identity
    shortcuts, global average pooling and a linear classifier. Weights keep
    torch's default initialization.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise PoLError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


class MLP(nn.Module):
    """Example::

        net = MLP(in_features=3 * 32 * 32, num_classes=10, hidden=(512, 512))

    Flatten, then Linear + ReLU per hidden width, then a linear classifier.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def reset_to_pytorch_default(net: nn.Module) -> nn.Module:
    """Call ``reset_parameters()`` on every Conv2d, Linear and BatchNorm2d: torch's default init."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.reset_parameters()
    return net


def resnet20(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """ResNet-20 for CIFAR (~0.27M parameters)."""
    return CifarResNet(20, num_classes, in_channels)


def resnet56(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """ResNet-56 for CIFAR (~0.85M parameters)."""
    return CifarResNet(56, num_classes, in_channels)


def resnet50_cifar(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """torchvision's ResNet-50 for 32x32 inputs: 3x3 stride-1 stem conv, no max-pool, torch's default init.

    torchvision's constructor re-initializes convs (kaiming_normal_, fan_out)
    and BatchNorms; every layer is reset to torch's default afterwards so the
    declared ``pytorch_default`` initialization can be checked.
    """
    from torchvision.models import resnet50

    net = resnet50(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return reset_to_pytorch_default(net)


def mlp(num_classes: int, in_channels: int = 3, input_size: int = 32, *, hidden: Sequence[int] = (512, 512)) -> nn.Module:
    """A multilayer perceptron on the flattened ``in_channels x input_size x input_size`` image."""
    return MLP(in_channels * input_size * input_size, num_classes, hidden)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet50_cifar": resnet50_cifar,
    "mlp": mlp,
}


def build_network(name: str, num_classes: int, in_channels: int = 3, input_size: int = 32, **options: Any) -> nn.Module:
    """Example::

        net = build_network("resnet20", num_classes=10)
        net = build_network("mlp", num_classes=10, hidden=(256,))

    ``options`` go to the builder (only ``mlp`` takes one: ``hidden``). Draws
    the weights from torch's global RNG, so a seed fixes them.
    """
    if name not in NETWORKS:
        raise PoLError(f"unknown network {name!r}; choose one of {list(NETWORKS)}")
    builder = NETWORKS[name]
    accepted = {p.name for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise PoLError(f"network {name!r} takes no option(s) {unknown}; it takes {sorted(accepted) or 'none'}")
    return builder(num_classes, in_channels, input_size, **options)

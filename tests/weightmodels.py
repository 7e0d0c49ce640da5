"""Library-shaped models for the weight-conversion tests (tests/test_weights.py).

`ResNet18` is torchvision's `resnet18` as an Equinox library writes it (the
eqxvision / jaxonmodels pattern): `eqx.nn.BatchNorm` with its statistics in an
`eqx.nn.State`, stages as `layers: list[list[BasicBlock]]` looped in Python,
a `downsample` branch as an `eqx.nn.Sequential` of a strided 1x1 convolution
and a BatchNorm. With `mode="ema"` and `momentum=0.9` its BatchNorms compute
what PyTorch's compute with `momentum=0.1`, and in inference they use the
running statistics, as PyTorch's `eval()` does.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr


def _bn(channels: int) -> eqx.nn.BatchNorm:
    return eqx.nn.BatchNorm(channels, axis_name="batch", eps=1e-5, momentum=0.9, mode="ema")


class BasicBlock(eqx.nn.StatefulLayer):
    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    downsample: eqx.nn.Sequential | None

    def __init__(self, cin: int, cout: int, stride: int, *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, use_bias=False, key=k1)
        self.bn1 = _bn(cout)
        self.conv2 = eqx.nn.Conv2d(cout, cout, 3, padding=1, use_bias=False, key=k2)
        self.bn2 = _bn(cout)
        if stride != 1 or cin != cout:
            conv = eqx.nn.Conv2d(cin, cout, 1, stride=stride, use_bias=False, key=k3)
            self.downsample = eqx.nn.Sequential([conv, _bn(cout)])
        else:
            self.downsample = None

    def __call__(self, x, state, *, key=None):
        out = self.conv1(x)
        out, state = self.bn1(out, state)
        out = jax.nn.relu(out)
        out = self.conv2(out)
        out, state = self.bn2(out, state)
        identity = x
        if self.downsample is not None:
            identity, state = self.downsample(x, state)
        return jax.nn.relu(out + identity), state


class ResNet18(eqx.Module):
    """torchvision's `resnet18(num_classes=...)`, at any `width` (64 there)."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    pool: eqx.nn.MaxPool2d
    layers: list[list[BasicBlock]]
    fc: eqx.nn.Linear

    def __init__(self, num_classes: int = 1000, width: int = 64, in_channels: int = 3, *, key):
        keys = jr.split(key, 10)
        self.conv1 = eqx.nn.Conv2d(
            in_channels, width, 7, stride=2, padding=3, use_bias=False, key=keys[0]
        )
        self.bn1 = _bn(width)
        self.pool = eqx.nn.MaxPool2d(3, stride=2, padding=1)
        layers, cin, k = [], width, 1
        for stage in range(4):
            cout = width * 2**stage
            stride = 1 if stage == 0 else 2
            blocks = []
            for b in range(2):
                blocks.append(BasicBlock(cin, cout, stride if b == 0 else 1, key=keys[k]))
                cin, k = cout, k + 1
            layers.append(blocks)
        self.layers = layers
        self.fc = eqx.nn.Linear(cin, num_classes, key=keys[9])

    def __call__(self, x, state, *, key=None):
        x = self.conv1(x)
        x, state = self.bn1(x, state)
        x = self.pool(jax.nn.relu(x))
        for stage in self.layers:
            for block in stage:
                x, state = block(x, state)
        return self.fc(jnp.mean(x, axis=(1, 2))), state


def make_resnet18(*args, key, **kwargs) -> tuple[ResNet18, eqx.nn.State]:
    return eqx.nn.make_with_state(ResNet18)(*args, key=key, **kwargs)


def resnet18_logits(model: ResNet18, state: eqx.nn.State, images: jax.Array) -> jax.Array:
    """Logits of a batch `(N, C, H, W)` in inference (running statistics)."""
    model = eqx.nn.inference_mode(model)
    return jax.vmap(lambda x: model(x, state)[0], axis_name="batch")(images)

"""Example models: small, registered by name, usable from any spec.

- `MLPChain(size, count)`: `count` MLPs of the same shape called one after
  another (a `Sequential`), the shape that `stack mlps scan` compiles once.
- `Tower(size)`: a single MLP at `mlps`, the Equinox scan-over-layers example
  before it is stacked.
- `SmallCNN()`: two convolutions and a linear head, for convolution layouts.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class MLPChain(eqx.Module):
    mlps: eqx.nn.Sequential

    def __init__(self, size, count, width_size=None, depth=1, activation=jax.nn.relu, *, key):
        keys = jax.random.split(key, count)
        width = size if width_size is None else width_size
        self.mlps = eqx.nn.Sequential(
            [eqx.nn.MLP(size, size, width, depth, activation=activation, key=k) for k in keys]
        )

    def __call__(self, x):
        # `self.mlps` is a `Sequential`, or after `stack mlps scan` a `Stacked`:
        # either way one call runs every MLP in turn.
        return self.mlps(x)


class Tower(eqx.Module):
    mlps: eqx.nn.MLP

    def __init__(self, size, width_size=None, depth=1, activation=jax.nn.relu, *, key):
        width = size if width_size is None else width_size
        self.mlps = eqx.nn.MLP(size, size, width, depth, activation=activation, key=key)

    def __call__(self, x):
        return self.mlps(x)


class SmallCNN(eqx.Module):
    convs: list[eqx.nn.Conv2d]
    head: eqx.nn.Linear

    def __init__(self, in_channels=1, num_classes=10, width=8, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.convs = [
            eqx.nn.Conv2d(in_channels, width, 3, padding=1, key=k1),
            eqx.nn.Conv2d(width, width, 3, padding=1, key=k2),
        ]
        self.head = eqx.nn.Linear(width, num_classes, key=k3)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(jnp.mean(x, axis=(1, 2)))

"""Small models shaped like the models users bring from libraries, and the
hand-written Equinox code that eqxform's features must match on them.

Nothing here uses eqxform. Each model reproduces one calling or storage pattern
of a real library (see `tests/REALMODELS.md`), small enough to build in well
under a second on the CPU. Each reference function is the code a researcher would
write by hand (the Equinox "Tricks" page, written against these models);
`tests/test_realmodels.py` proves every reference equal to the model's own
forward pass, so later tests can compare eqxform's results with them.

Conventions:
- Every constructor takes `key` as a keyword argument, and only arrays are
  pytree leaves that change from one layer to the next.
- Transformers take one example (`(seq, features)`); batch them with `jax.vmap`.
- Stateful models are built with `eqx.nn.make_with_state` (`make_tiny_resnet`,
  `make_mixed_norms`) and called per example inside
  `jax.vmap(..., axis_name="batch")` (`call_with_state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu

# ---------------------------------------------------------------------------
# Third-party layers that share a name with an `equinox.nn` class. They live in
# this module (not in `equinox`), as a library's own layers do.
# ---------------------------------------------------------------------------


class BatchNorm(eqx.Module):
    """A third-party batch norm named like `eqx.nn.BatchNorm`: the pattern of a
    hand-ported ResNet's own norm layer, which keeps its running statistics
    in an `eqx.nn.StateIndex` but does not subclass `eqx.nn.StatefulLayer`, so
    `eqx.nn.Sequential` would not thread state through it. Its trainable fields
    are called `weight` and `bias`, as `eqx.nn.BatchNorm`'s are; its momentum
    follows PyTorch (weight of the new batch, 0.1)."""

    weight: jax.Array
    bias: jax.Array
    index: eqx.nn.StateIndex
    axis_name: str = eqx.field(static=True)
    momentum: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, size: int, axis_name: str = "batch", momentum: float = 0.1, eps=1e-5):
        self.weight = jnp.ones((size,))
        self.bias = jnp.zeros((size,))
        self.index = eqx.nn.StateIndex((jnp.zeros((size,)), jnp.ones((size,))))
        self.axis_name = axis_name
        self.momentum = momentum
        self.eps = eps

    def __call__(self, x, state, *, inference: bool = False):
        # x: (channels, *spatial), one example of a batch vmapped over `axis_name`.
        axes = tuple(range(1, x.ndim))
        shape = (-1,) + (1,) * (x.ndim - 1)
        running_mean, running_var = state.get(self.index)
        if inference:
            mean, var = running_mean, running_var
        else:
            mean = lax.pmean(jnp.mean(x, axis=axes), self.axis_name)
            var = lax.pmean(jnp.mean((x - mean.reshape(shape)) ** 2, axis=axes), self.axis_name)
            m = self.momentum
            state = state.set(
                self.index, ((1 - m) * running_mean + m * mean, (1 - m) * running_var + m * var)
            )
        out = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + self.eps)
        return out * self.weight.reshape(shape) + self.bias.reshape(shape), state


class Linear(eqx.Module):
    """A third-party dense layer named like `eqx.nn.Linear`, in the layout of
    code ported from Flax or Haiku: `weight` is `(in_features, out_features)`
    and the call is `x @ weight + bias`, the transpose of `eqx.nn.Linear`'s
    `(out, in)`. Its fan_in is `weight.shape[0]`."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, in_features: int, out_features: int, *, key):
        self.weight = jr.normal(key, (in_features, out_features)) / math.sqrt(in_features)
        self.bias = jnp.zeros((out_features,))

    def __call__(self, x):
        return x @ self.weight + self.bias


# ---------------------------------------------------------------------------
# Transformers whose parent loops over a list of blocks in Python.
# ---------------------------------------------------------------------------


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
    """Fixed sine/cosine positional encodings, `(length, dim)`."""
    pos = jnp.arange(length, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-math.log(10_000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = pos * freq[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[:, :dim]


class Block(eqx.Module):
    """A pre-norm transformer block called as
    `blk(x, pos, mask=mask, key=k, inference=inference)`: `eqx.nn.MultiheadAttention`
    whose queries and keys get the positional encodings `pos` (an extra
    positional argument, the same for every block), an MLP, dropout that
    consumes the per-block key, and a `(seq,)` padding mask (True: attend)."""

    norm1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, dim: int, num_heads: int, hidden: int, dropout: float, *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.norm1 = eqx.nn.LayerNorm(dim)
        self.attn = eqx.nn.MultiheadAttention(
            num_heads, dim, use_query_bias=True, use_key_bias=True, use_value_bias=True,
            use_output_bias=True, dropout_p=dropout, key=k1,
        )  # fmt: skip
        self.norm2 = eqx.nn.LayerNorm(dim)
        self.linear1 = eqx.nn.Linear(dim, hidden, key=k2)
        self.linear2 = eqx.nn.Linear(hidden, dim, key=k3)
        self.dropout = eqx.nn.Dropout(dropout)

    def __call__(self, x, pos, *, mask=None, key=None, inference: bool = False):
        seq = x.shape[0]
        k_attn, k_drop = (None, None) if key is None else jr.split(key)
        y = jax.vmap(self.norm1)(x)
        qk = y + pos
        m = None if mask is None else jnp.broadcast_to(mask[None, :], (seq, seq))
        x = x + self.attn(qk, qk, y, mask=m, key=k_attn, inference=inference)
        y = jax.vmap(self.norm2)(x)
        y = jax.vmap(self.linear2)(jax.nn.gelu(jax.vmap(self.linear1)(y)))
        return x + self.dropout(y, key=k_drop, inference=inference)


class LoopingTransformer(eqx.Module):
    """A transformer whose parent holds `blocks: list[Block]` and loops
    `for blk, k in zip(self.blocks, keys): x = blk(x, pos, mask=mask, key=k,
    inference=inference)` with `keys = jr.split(key, len(self.blocks))`: the
    ESM2 and ViT pattern of a Python loop over blocks with keyword arguments, a
    per-block key and a loop-invariant extra positional argument."""

    embed: eqx.nn.Linear
    blocks: list[Block]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int = 5,
        dim: int = 16,
        depth: int = 3,
        num_heads: int = 2,
        out_size: int = 7,
        mlp_ratio: int = 2,
        dropout: float = 0.1,
        *,
        key,
    ):
        k_embed, k_head, *k_blocks = jr.split(key, depth + 2)
        self.embed = eqx.nn.Linear(in_size, dim, key=k_embed)
        self.blocks = [Block(dim, num_heads, mlp_ratio * dim, dropout, key=k) for k in k_blocks]
        self.norm = eqx.nn.LayerNorm(dim)
        self.head = eqx.nn.Linear(dim, out_size, key=k_head)
        self.dim = dim

    def __call__(self, x, *, mask=None, key=None, inference: bool = False):
        # x: (seq, in_size) -> (seq, out_size)
        keys = [None] * len(self.blocks) if key is None else jr.split(key, len(self.blocks))
        x = jax.vmap(self.embed)(x)
        pos = sinusoidal_positions(x.shape[0], self.dim)
        for blk, k in zip(self.blocks, keys):
            x = blk(x, pos, mask=mask, key=k, inference=inference)
        return jax.vmap(self.head)(jax.vmap(self.norm)(x))


class Attention(eqx.Module):
    """Self-attention written by hand around one `qkv` Linear and a `proj`
    Linear, returning `(out, weights)`: the eqxvision / equimo ViT attention."""

    qkv: eqx.nn.Linear
    proj: eqx.nn.Linear
    attn_drop: eqx.nn.Dropout
    num_heads: int = eqx.field(static=True)

    def __init__(self, dim: int, num_heads: int, dropout: float, *, key):
        k1, k2 = jr.split(key)
        self.qkv = eqx.nn.Linear(dim, 3 * dim, key=k1)
        self.proj = eqx.nn.Linear(dim, dim, key=k2)
        self.attn_drop = eqx.nn.Dropout(dropout)
        self.num_heads = num_heads

    def __call__(self, x, *, key=None, inference: bool = False):
        n, c = x.shape
        h = self.num_heads
        qkv = jax.vmap(self.qkv)(x).reshape(n, 3, h, c // h).transpose(1, 2, 0, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        w = jax.nn.softmax(q @ k.transpose(0, 2, 1) / math.sqrt(c // h), axis=-1)
        w = self.attn_drop(w, key=key, inference=inference)
        out = (w @ v).transpose(1, 0, 2).reshape(n, c)
        return jax.vmap(self.proj)(out), w


class ViTBlock(eqx.Module):
    """A ViT block called as `blk(x, key=k, inference=inference)`."""

    norm1: eqx.nn.LayerNorm
    attn: Attention
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, dim: int, num_heads: int, hidden: int, dropout: float, *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.norm1 = eqx.nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout, key=k1)
        self.norm2 = eqx.nn.LayerNorm(dim)
        self.fc1 = eqx.nn.Linear(dim, hidden, key=k2)
        self.fc2 = eqx.nn.Linear(hidden, dim, key=k3)
        self.drop = eqx.nn.Dropout(dropout)

    def __call__(self, x, *, key=None, inference: bool = False):
        k_attn, k_drop = (None, None) if key is None else jr.split(key)
        y, _ = self.attn(jax.vmap(self.norm1)(x), key=k_attn, inference=inference)
        x = x + y
        y = jax.vmap(self.fc2)(jax.nn.gelu(jax.vmap(self.fc1)(jax.vmap(self.norm2)(x))))
        return x + self.drop(y, key=k_drop, inference=inference)


class TinyViT(eqx.Module):
    """A ViT in the eqxvision pattern: a `Conv2d` patch embedding, the class
    token and the positional embedding as raw `jax.Array` fields of the parent,
    `blocks: list[ViTBlock]` looped as
    `for k, blk in zip(jr.split(key, len(self.blocks)), self.blocks): x = blk(x, key=k, ...)`,
    and a `Linear` head on the class token. With `shared_patch_init=True` the
    patch embedding is drawn from a fixed key inside the constructor, as
    eqxvision's is, so members of an ensemble built from this constructor
    share it."""

    patch_embed: eqx.nn.Conv2d
    cls_token: jax.Array
    pos_embed: jax.Array
    blocks: list[ViTBlock]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 4,
        in_channels: int = 3,
        dim: int = 16,
        depth: int = 3,
        num_heads: int = 2,
        num_classes: int = 10,
        mlp_ratio: int = 2,
        dropout: float = 0.1,
        *,
        shared_patch_init: bool = False,
        key,
    ):
        k_patch, k_cls, k_pos, k_head, *k_blocks = jr.split(key, depth + 4)
        if shared_patch_init:
            k_patch = jr.key(0)
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = eqx.nn.Conv2d(
            in_channels, dim, kernel_size=patch_size, stride=patch_size, key=k_patch
        )
        self.cls_token = 0.02 * jr.truncated_normal(k_cls, -2, 2, (1, dim))
        self.pos_embed = 0.02 * jr.truncated_normal(k_pos, -2, 2, (num_patches + 1, dim))
        self.blocks = [ViTBlock(dim, num_heads, mlp_ratio * dim, dropout, key=k) for k in k_blocks]
        self.norm = eqx.nn.LayerNorm(dim)
        self.head = eqx.nn.Linear(dim, num_classes, key=k_head)

    def embed(self, x):
        """`(channels, height, width)` -> `(1 + patches, dim)` tokens."""
        x = self.patch_embed(x)
        x = x.reshape(x.shape[0], -1).T
        return jnp.concatenate([self.cls_token, x], axis=0) + self.pos_embed

    def __call__(self, x, *, key=None, inference: bool = False):
        keys = [None] * len(self.blocks) if key is None else jr.split(key, len(self.blocks))
        x = self.embed(x)
        for k, blk in zip(keys, self.blocks):
            x = blk(x, key=k, inference=inference)
        x = jax.vmap(self.norm)(x)
        return self.head(x[0])


# ---------------------------------------------------------------------------
# Models whose layers were built with `eqx.filter_vmap` and run with `lax.scan`.
# ---------------------------------------------------------------------------


class PreStacked(eqx.Module):
    """The Tricks page's TenMLPs: `mlps` is ONE `eqx.nn.MLP` built by
    `eqx.filter_vmap` over `count` keys (every weight `(count, out, in)`), and
    `__call__` runs it with a hand-written `eqx.partition` / `lax.scan` /
    `eqx.combine`. (The Tricks page's body calls `mlp(x)` on the outer `x`;
    this one threads the carry, as was meant.)"""

    mlps: eqx.nn.MLP
    count: int = eqx.field(static=True)

    def __init__(self, size: int = 3, count: int = 10, width: int | None = None, depth=1, *, key):
        width = size if width is None else width
        keys = jr.split(key, count)
        self.mlps = eqx.filter_vmap(lambda k: eqx.nn.MLP(size, size, width, depth, key=k))(keys)
        self.count = count

    def __call__(self, x):
        dynamic, static = eqx.partition(self.mlps, eqx.is_array)

        def f(carry, d):
            return eqx.combine(d, static)(carry), None

        out, _ = lax.scan(f, x, dynamic)
        return out


class StackedLayer(eqx.Module):
    """ESM2's transformer layer: `eqx.nn.MultiheadAttention` with a rotary
    embedding applied through `process_heads`, two LayerNorms, `linear1`
    (`embed -> hidden`) and `linear2`, called as `layer(x, is_pad=is_pad)`.
    Its constructor takes the key positionally, as `eqx.filter_vmap(Layer)(ints..., keys)`
    needs."""

    attn: eqx.nn.MultiheadAttention
    rotary: eqx.nn.RotaryPositionalEmbedding
    norm1: eqx.nn.LayerNorm
    norm2: eqx.nn.LayerNorm
    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear
    embed_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)

    def __init__(self, embed_size: int, hidden_size: int, num_heads: int, key):
        k1, k2, k3 = jr.split(key, 3)
        self.attn = eqx.nn.MultiheadAttention(
            num_heads, embed_size, use_query_bias=True, use_key_bias=True,
            use_value_bias=True, use_output_bias=True, key=k1,
        )  # fmt: skip
        self.rotary = eqx.nn.RotaryPositionalEmbedding(embed_size // num_heads)
        self.norm1 = eqx.nn.LayerNorm(embed_size)
        self.norm2 = eqx.nn.LayerNorm(embed_size)
        self.linear1 = eqx.nn.Linear(embed_size, hidden_size, key=k2)
        self.linear2 = eqx.nn.Linear(hidden_size, embed_size, key=k3)
        self.embed_size = embed_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads

    def __call__(self, x, is_pad):
        def process_heads(q, k, v):
            rope = jax.vmap(self.rotary, in_axes=1, out_axes=1)
            return rope(q), rope(k), v

        seq = x.shape[0]
        mask = jnp.broadcast_to(jnp.logical_not(is_pad)[None, :], (seq, seq))
        y = jax.vmap(self.norm1)(x)
        x = x + self.attn(y, y, y, mask=mask, process_heads=process_heads)
        y = jax.vmap(self.norm2)(x)
        y = jax.vmap(self.linear2)(jax.nn.gelu(jax.vmap(self.linear1)(y), approximate=False))
        return x + y


class PreStackedTransformer(eqx.Module):
    """ESM2's trunk: `layers` is ONE `StackedLayer` built by
    `eqx.filter_vmap(StackedLayer)(embed, 4 * embed, heads, keys)` (the ints
    broadcast, the keys mapped), run by a hand-written scan that passes
    `is_pad=` to every layer. With the defaults `layers.linear1` is a
    `Linear(64, 256)` stacked 12 times: weight `(12, 256, 64)`, fan_in 64."""

    layers: StackedLayer
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    num_layers: int = eqx.field(static=True)

    def __init__(
        self, embed_size: int = 64, num_layers: int = 12, num_heads: int = 4, out_size=8, *, key
    ):
        keys = jr.split(key, num_layers + 1)
        self.layers = eqx.filter_vmap(StackedLayer)(
            embed_size, 4 * embed_size, num_heads, keys[:-1]
        )
        self.norm = eqx.nn.LayerNorm(embed_size)
        self.head = eqx.nn.Linear(embed_size, out_size, key=keys[-1])
        self.num_layers = num_layers

    def __call__(self, x, is_pad=None):
        # x: (seq, embed_size); is_pad: (seq,) bool, True at padding.
        if is_pad is None:
            is_pad = jnp.zeros(x.shape[:1], dtype=bool)
        x = jnp.where(is_pad[:, None], 0.0, x)
        dynamic, static = eqx.partition(self.layers, eqx.is_array)

        def f(carry, d):
            return eqx.combine(d, static)(carry, is_pad=is_pad), None

        x, _ = lax.scan(f, x, dynamic)
        return jax.vmap(self.head)(jax.vmap(self.norm)(x))


# ---------------------------------------------------------------------------
# A ResNet with BatchNorm state.
# ---------------------------------------------------------------------------


class ResBlock(eqx.nn.StatefulLayer):
    """A basic residual block, `(x, state, *, key=None) -> (x, state)`: conv /
    BatchNorm / relu / conv / BatchNorm plus the identity, or plus `downsample`
    (an `eqx.nn.Sequential` of a strided 1x1 conv and a BatchNorm) when the
    block starts a stage; `downsample` is None in the other blocks (eqxvision
    stores a no-op function there). A `StatefulLayer`, as eqxvision's blocks
    are, so that an `eqx.nn.Sequential` of them threads the state."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    downsample: eqx.nn.Sequential | None

    def __init__(self, channels: int, *, downsample: bool = False, bn_mode="batch", key):
        k1, k2, k3 = jr.split(key, 3)
        stride = 2 if downsample else 1
        self.conv1 = eqx.nn.Conv2d(
            channels, channels, 3, stride=stride, padding=1, use_bias=False, key=k1
        )
        self.bn1 = eqx.nn.BatchNorm(channels, axis_name="batch", mode=bn_mode)
        self.conv2 = eqx.nn.Conv2d(channels, channels, 3, padding=1, use_bias=False, key=k2)
        self.bn2 = eqx.nn.BatchNorm(channels, axis_name="batch", mode=bn_mode)
        if downsample:
            self.downsample = eqx.nn.Sequential(
                [
                    eqx.nn.Conv2d(channels, channels, 1, stride=2, use_bias=False, key=k3),
                    eqx.nn.BatchNorm(channels, axis_name="batch", mode=bn_mode),
                ]
            )
        else:
            self.downsample = None

    def __call__(self, x, state, *, key=None):
        out = self.conv1(x)
        out, state = self.bn1(out, state)
        out = jax.nn.relu(out)
        out = self.conv2(out)
        out, state = self.bn2(out, state)
        if self.downsample is None:
            identity = x
        else:
            identity, state = self.downsample(x, state)
        return jax.nn.relu(out + identity), state


class TinyResNet(eqx.Module):
    """A ResNet in the eqxvision (`eqx.nn.State` branch) pattern: a stem conv +
    `eqx.nn.BatchNorm`, `blocks: list[ResBlock]` looped as
    `for blk in self.blocks: x, state = blk(x, state)` (or, with
    `sequential=True`, an `eqx.nn.Sequential` of them called as
    `x, state = self.blocks(x, state)`, as eqxvision's stages are), global
    average pooling and a Linear head; `__call__(x, state) -> (logits, state)`.
    Build it with `eqx.nn.make_with_state` (see `make_tiny_resnet`). The blocks
    are identical in structure; with `downsample=True` block 0 starts a stage
    (stride 2 and a downsample branch) and `blocks[1:]` are identical. The
    BatchNorms run in `bn_mode` ("batch": an int counter and the running
    statistics in the state; "ema": a bool flag and the statistics)."""

    stem: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    blocks: list[ResBlock] | eqx.nn.Sequential
    fc: eqx.nn.Linear

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 8,
        depth: int = 3,
        num_classes: int = 10,
        *,
        downsample: bool = False,
        bn_mode: str = "batch",
        sequential: bool = False,
        key,
    ):
        k_stem, k_fc, *k_blocks = jr.split(key, depth + 2)
        self.stem = eqx.nn.Conv2d(in_channels, width, 3, padding=1, use_bias=False, key=k_stem)
        self.bn = eqx.nn.BatchNorm(width, axis_name="batch", mode=bn_mode)
        blocks = [
            ResBlock(width, downsample=downsample and i == 0, bn_mode=bn_mode, key=k)
            for i, k in enumerate(k_blocks)
        ]
        self.blocks = eqx.nn.Sequential(blocks) if sequential else blocks
        self.fc = eqx.nn.Linear(width, num_classes, key=k_fc)

    def __call__(self, x, state, *, key=None):
        x = self.stem(x)
        x, state = self.bn(x, state)
        x = jax.nn.relu(x)
        if isinstance(self.blocks, eqx.nn.Sequential):
            x, state = self.blocks(x, state)
        else:
            for blk in self.blocks:
                x, state = blk(x, state)
        return self.fc(jnp.mean(x, axis=(1, 2))), state


def make_tiny_resnet(*args, key, **kwargs) -> tuple[TinyResNet, eqx.nn.State]:
    """`eqx.nn.make_with_state(TinyResNet)(*args, key=key, **kwargs)`."""
    return eqx.nn.make_with_state(TinyResNet)(*args, key=key, **kwargs)


class MixedNorms(eqx.Module):
    """A conv net using both `eqx.nn.BatchNorm` and the third-party `BatchNorm`
    of this module (two classes of one short name, both with state in one
    `eqx.nn.State`); `__call__(x, state) -> (logits, state)`."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: BatchNorm
    fc: eqx.nn.Linear

    def __init__(self, in_channels: int = 3, width: int = 8, num_classes: int = 10, *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(in_channels, width, 3, padding=1, use_bias=False, key=k1)
        self.bn1 = eqx.nn.BatchNorm(width, axis_name="batch", mode="batch")
        self.conv2 = eqx.nn.Conv2d(width, width, 3, padding=1, use_bias=False, key=k2)
        self.bn2 = BatchNorm(width, axis_name="batch")
        self.fc = eqx.nn.Linear(width, num_classes, key=k3)

    def __call__(self, x, state, *, key=None):
        x, state = self.bn1(self.conv1(x), state)
        x = jax.nn.relu(x)
        x, state = self.bn2(self.conv2(x), state)
        x = jax.nn.relu(x)
        return self.fc(jnp.mean(x, axis=(1, 2))), state


def make_mixed_norms(*args, key, **kwargs) -> tuple[MixedNorms, eqx.nn.State]:
    """`eqx.nn.make_with_state(MixedNorms)(*args, key=key, **kwargs)`."""
    return eqx.nn.make_with_state(MixedNorms)(*args, key=key, **kwargs)


def call_with_state(model, x, state):
    """A batch `x` through a stateful model: the per-example call vmapped over
    the named axis its BatchNorms reduce over, the state shared."""
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)


# ---------------------------------------------------------------------------
# Raw array parameters, a second `Linear`, a tuple output.
# ---------------------------------------------------------------------------


class RawHead(eqx.Module):
    """An MLP whose head is a raw array parameter `w: jax.Array` of shape
    `(width, out_size)`, used as `x @ self.w`, beside ordinary `eqx.nn.Linear`
    layers in a list (a common pattern for readouts, logit scales and
    tied embeddings)."""

    layers: list[eqx.nn.Linear]
    w: jax.Array

    def __init__(self, in_size: int = 4, width: int = 16, out_size: int = 3, depth=2, *, key):
        k_w, *keys = jr.split(key, depth + 1)
        sizes = [in_size] + [width] * depth
        self.layers = [eqx.nn.Linear(i, o, key=k) for i, o, k in zip(sizes, sizes[1:], keys)]
        self.w = jr.normal(k_w, (width, out_size)) / math.sqrt(width)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return x @ self.w


class MixedLinears(eqx.Module):
    """An MLP mixing `eqx.nn.Linear` (`inp`, `out`) with the third-party,
    transposed `Linear` of this module (`mid`, weight `(width, hidden)`)."""

    inp: eqx.nn.Linear
    mid: Linear
    out: eqx.nn.Linear

    def __init__(self, in_size=4, width: int = 16, hidden: int = 32, out_size: int = 3, *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.inp = eqx.nn.Linear(in_size, width, key=k1)
        self.mid = Linear(width, hidden, key=k2)
        self.out = eqx.nn.Linear(hidden, out_size, key=k3)

    def __call__(self, x):
        x = jax.nn.relu(self.inp(x))
        x = jax.nn.relu(self.mid(x))
        return self.out(x)


class TupleOut(eqx.Module):
    """A residual MLP whose `__call__` returns a tuple `(logits, aux)`, `aux` a
    scalar auxiliary loss (as mixture-of-experts and VAE-style models return
    beside their output); its blocks are a list looped as
    `for blk in self.blocks: x = x + jnp.tanh(blk(x))`."""

    inp: eqx.nn.Linear
    blocks: list[eqx.nn.Linear]
    head: eqx.nn.Linear

    def __init__(self, in_size: int = 4, width: int = 16, depth: int = 3, out_size=3, *, key):
        k_in, k_head, *keys = jr.split(key, depth + 2)
        self.inp = eqx.nn.Linear(in_size, width, key=k_in)
        self.blocks = [eqx.nn.Linear(width, width, key=k) for k in keys]
        self.head = eqx.nn.Linear(width, out_size, key=k_head)

    def __call__(self, x):
        x = self.inp(x)
        for blk in self.blocks:
            x = x + jnp.tanh(blk(x))
        return self.head(x), jnp.mean(x**2)


# ---------------------------------------------------------------------------
# Reference: scan over a list of identical blocks.
# ---------------------------------------------------------------------------


def stack_blocks(blocks: Sequence[Any]) -> tuple[Any, Any]:
    """The arrays of identically structured `blocks`, stacked on a new leading
    layer axis, and the static part they share (`eqx.partition` by
    `eqx.is_array`). Raises ValueError where the blocks differ in structure or
    in a non-array leaf."""
    parts = [eqx.partition(b, eqx.is_array) for b in blocks]
    dynamic = [d for d, _ in parts]
    static = parts[0][1]
    for i, (_, s) in enumerate(parts[1:], start=1):
        if jtu.tree_structure(dynamic[i]) != jtu.tree_structure(dynamic[0]):
            raise ValueError(f"block {i} differs in structure from block 0")
        if eqx.tree_equal(s, static) is not True:
            raise ValueError(f"block {i} differs from block 0 in a non-array leaf")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *dynamic)
    return stacked, static


def unstack_blocks(dynamic: Any, static: Any) -> list[Any]:
    """The inverse of `stack_blocks`: one module per index of the layer axis."""
    count = jtu.tree_leaves(dynamic)[0].shape[0]
    return [eqx.combine(jax.tree.map(lambda a: a[i], dynamic), static) for i in range(count)]


def scan_blocks(blocks: Sequence[Any], x, *args, key=None, **kwargs):
    """`for blk, k in zip(blocks, jr.split(key, n)): x = blk(x, *args, key=k, **kwargs)`
    as one `lax.scan`: the blocks stacked (`stack_blocks`), each step combining
    one layer's arrays with the shared static part; the per-block keys are
    scanned beside the arrays; `args` and `kwargs` are the same at every step.
    With `key=None` every block gets `key=None`."""
    dynamic, static = stack_blocks(blocks)
    keys = None if key is None else jr.split(key, len(blocks))

    def step(carry, xs):
        d, k = xs
        return eqx.combine(d, static)(carry, *args, key=k, **kwargs), None

    out, _ = lax.scan(step, x, (dynamic, keys))
    return out


def looping_transformer_scanned(
    model: LoopingTransformer, x, *, mask=None, key=None, inference=False
):
    """`LoopingTransformer.__call__` with its block loop replaced by `scan_blocks`."""
    x = jax.vmap(model.embed)(x)
    pos = sinusoidal_positions(x.shape[0], model.dim)
    x = scan_blocks(model.blocks, x, pos, mask=mask, key=key, inference=inference)
    return jax.vmap(model.head)(jax.vmap(model.norm)(x))


def tiny_vit_scanned(model: TinyViT, x, *, key=None, inference=False):
    """`TinyViT.__call__` with its block loop replaced by `scan_blocks`."""
    x = scan_blocks(model.blocks, model.embed(x), key=key, inference=inference)
    x = jax.vmap(model.norm)(x)
    return model.head(x[0])


def tuple_out_scanned(model: TupleOut, x):
    """`TupleOut.__call__` with its residual loop as one scan."""
    dynamic, static = stack_blocks(model.blocks)

    def step(carry, d):
        return carry + jnp.tanh(eqx.combine(d, static)(carry)), None

    x, _ = lax.scan(step, model.inp(x), dynamic)
    return model.head(x), jnp.mean(x**2)


# ---------------------------------------------------------------------------
# Reference: scan over stateful blocks.
# ---------------------------------------------------------------------------


def state_indices(tree: Any) -> list[eqx.nn.StateIndex]:
    """The `eqx.nn.StateIndex`es in `tree`, in tree order."""
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
    return [leaf for leaf in jtu.tree_leaves(tree, is_leaf=is_index) if is_index(leaf)]


def _relabel(tree: Any, indices: list[eqx.nn.StateIndex]) -> Any:
    # The `StateIndex`es of `tree`, in order, replaced by `indices`.
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
    it = iter(indices)
    return jtu.tree_map(lambda x: next(it) if is_index(x) else x, tree, is_leaf=is_index)


def scan_stateful_blocks(blocks: Sequence[Any], x, state: eqx.nn.State, *, key=None):
    """`for blk in blocks: x, state = blk(x, state)` as one `lax.scan`.

    Every BatchNorm has its own `StateIndex`, whose marker (a static string
    naming its path, set by `make_with_state`) differs from block to block, so
    the blocks are first relabelled with block 0's indices. Each block's state
    values are read under its own indices and stacked along the layer axis;
    each step rebuilds a `State` keyed by block 0's indices from one layer's
    values, calls the block, and emits the new values; afterwards each block's
    values are written back under its own indices. Per-block keys (`key`
    split `len(blocks)` ways) are passed as `key=`; returns `(x, state)`.
    """
    template = state_indices(blocks[0])
    relabelled = [_relabel(b, template) for b in blocks]
    dynamic, static = stack_blocks(relabelled)
    values = [[state.get(i) for i in state_indices(b)] for b in blocks]
    stacked_values = jax.tree.map(lambda *v: jnp.stack(v), *values)
    # `State` flattens to its values in the order of its keys; `substate`
    # orders the keys as the indices appear in the tree, as `template` does.
    treedef = jtu.tree_structure(state.substate(blocks[0]))
    keys = None if key is None else jr.split(key, len(blocks))

    def step(carry, xs):
        d, vals, k = xs
        sub = jtu.tree_unflatten(treedef, jtu.tree_leaves(vals))
        y, sub = eqx.combine(d, static)(carry, sub, key=k)
        return y, [sub.get(i) for i in template]

    x, new_values = lax.scan(step, x, (dynamic, stacked_values, keys))
    for n, b in enumerate(blocks):
        for index, value in zip(state_indices(b), new_values):
            state = state.set(index, jax.tree.map(lambda a: a[n], value))
    return x, state


def tiny_resnet_scanned(model: TinyResNet, x, state: eqx.nn.State, *, key=None):
    """`TinyResNet.__call__` with `blocks[start:]` run by `scan_stateful_blocks`,
    where `start` is 1 when block 0 starts a stage (has a downsample) and 0
    otherwise; a `Sequential` of blocks is scanned over its `layers`."""
    x = model.stem(x)
    x, state = model.bn(x, state)
    x = jax.nn.relu(x)
    blocks = model.blocks
    blocks = list(blocks.layers if isinstance(blocks, eqx.nn.Sequential) else blocks)
    start = 0 if blocks[0].downsample is None else 1
    for blk in blocks[:start]:
        x, state = blk(x, state)
    x, state = scan_stateful_blocks(blocks[start:], x, state, key=key)
    return model.fc(jnp.mean(x, axis=(1, 2))), state


# ---------------------------------------------------------------------------
# Reference: the pre-stacked models as Python loops over unstacked layers.
# ---------------------------------------------------------------------------


def prestacked_loop(model: PreStacked, x):
    """`PreStacked.__call__` as a Python loop over its `count` MLPs."""
    for mlp in unstack_blocks(*eqx.partition(model.mlps, eqx.is_array)):
        x = mlp(x)
    return x


def prestacked_transformer_loop(model: PreStackedTransformer, x, is_pad=None):
    """`PreStackedTransformer.__call__` as a Python loop over its layers."""
    if is_pad is None:
        is_pad = jnp.zeros(x.shape[:1], dtype=bool)
    x = jnp.where(is_pad[:, None], 0.0, x)
    for layer in unstack_blocks(*eqx.partition(model.layers, eqx.is_array)):
        x = layer(x, is_pad=is_pad)
    return jax.vmap(model.head)(jax.vmap(model.norm)(x))


# ---------------------------------------------------------------------------
# Reference: ensembles (the Tricks page).
# ---------------------------------------------------------------------------


def make_ensemble(make: Callable[[Any], Any], keys):
    """The Tricks page's construction: `eqx.filter_vmap(make)(keys)`, `make`
    a function of one key returning a model (or a `(model, state)` pair)."""
    return eqx.filter_vmap(make)(keys)


def ensemble_member(models, i: int):
    """Member `i` of an ensemble: index `i` of every array's member axis."""
    dynamic, static = eqx.partition(models, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda a: a[i], dynamic), static)


def evaluate_ensemble(models, x, **kwargs):
    """Every member on the same `x`:
    `eqx.filter_vmap(in_axes=(eqx.if_array(0), None))`, as on the Tricks page;
    `kwargs` reach every member's call unchanged."""

    @eqx.filter_vmap(in_axes=(eqx.if_array(0), None))
    def run(model, x):
        return model(x, **kwargs)

    return run(models, x)


def evaluate_per_member(models, xs, **kwargs):
    """Member `i` on `xs[i]`: plain `eqx.filter_vmap`."""

    @eqx.filter_vmap
    def run(model, x):
        return model(x, **kwargs)

    return run(models, xs)


def evaluate_stateful_ensemble(models, states, x):
    """Every member of a stateful ensemble (built by `make_ensemble` from a
    `make_with_state` constructor) on the same batch `x`: member axis over
    models and states, and inside each member the batch vmapped over the
    BatchNorms' named axis. Returns `(outputs, states)`, both with a member axis."""

    @eqx.filter_vmap(in_axes=(eqx.if_array(0), eqx.if_array(0), None))
    def run(model, state, x):
        return call_with_state(model, x, state)

    return run(models, states, x)


# ---------------------------------------------------------------------------
# Reference: re-initialisation (the Tricks page) and the fans it must use.
# ---------------------------------------------------------------------------


def trunc_init(weight: jax.Array, key) -> jax.Array:
    """The Tricks page's initialiser, for one `(out, in)` weight: a normal
    truncated to [-2, 2], scaled by `sqrt(1 / in)`. A stacked weight has more
    than two axes and fails to unpack (ValueError), as on the Tricks page."""
    out, in_ = weight.shape
    stddev = math.sqrt(1 / in_)
    return stddev * jr.truncated_normal(key, shape=(out, in_), lower=-2, upper=2)


def trunc_init_stacked(weight: jax.Array, key) -> jax.Array:
    """`trunc_init` for a weight with leading layer (or member) axes: each
    `(out, in)` slice drawn with its own key and its own fan_in `in`, the last
    axis (never `out * in`)."""
    *lead, out, in_ = weight.shape
    count = math.prod(lead)
    flat = jax.vmap(trunc_init)(jnp.zeros((count, out, in_)), jr.split(key, count))
    return flat.reshape(weight.shape)


def init_linear_weight(model, init_fn, key):
    """The Tricks page's `init_linear_weight`: every `eqx.nn.Linear`'s weight
    replaced by `init_fn(weight, subkey)` in one `eqx.tree_at`. It selects by
    `isinstance(x, eqx.nn.Linear)`, so this module's own `Linear` is untouched."""
    is_linear = lambda x: isinstance(x, eqx.nn.Linear)  # noqa: E731

    def get_weights(m):
        return [x.weight for x in jtu.tree_leaves(m, is_leaf=is_linear) if is_linear(x)]

    weights = get_weights(model)
    new_weights = [
        init_fn(weight, subkey) for weight, subkey in zip(weights, jr.split(key, len(weights)))
    ]
    return eqx.tree_at(get_weights, model, new_weights)


def trunc_normal_variance(lower: float = -2.0, upper: float = 2.0) -> float:
    """The variance of a standard normal truncated to `[lower, upper]`, so that
    `trunc_init`'s draws have variance `trunc_normal_variance() / fan_in`."""
    pdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda t: (1 + math.erf(t / math.sqrt(2))) / 2  # noqa: E731
    z = cdf(upper) - cdf(lower)
    mean = (pdf(lower) - pdf(upper)) / z
    return 1 + (lower * pdf(lower) - upper * pdf(upper)) / z - mean**2


def fans(model) -> dict[str, tuple[int, int]]:
    """Hand-computed `(fan_in, fan_out)` of the weights (and, as Equinox's own
    initialisation does, the biases) of the dense layers of `model`, keyed by
    eqxform's path text (`mlps.layers[0].weight`).

    Computed from the constructor's arguments, never from array shapes: a
    pre-stacked weight `(layers, out, in)` has the fans of ONE layer, `(in, out)`,
    whatever its leading axes. `RawHead.w` and this module's `Linear.weight`
    are stored `(in, out)`, so their fan_in is their FIRST axis. Covers
    `PreStacked`, `PreStackedTransformer`, `RawHead` and `MixedLinears`."""
    out: dict[str, tuple[int, int]] = {}

    def dense(path: str, fan_in: int, fan_out: int, bias: bool = True):
        out[f"{path}.weight"] = (fan_in, fan_out)
        if bias:
            out[f"{path}.bias"] = (fan_in, fan_out)

    if isinstance(model, PreStacked):
        mlp = model.mlps
        sizes = [mlp.in_size] + [mlp.width_size] * mlp.depth + [mlp.out_size]
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            dense(f"mlps.layers[{i}]", a, b)
    elif isinstance(model, PreStackedTransformer):
        layer = model.layers
        e, h = layer.embed_size, layer.hidden_size
        for proj in ("query_proj", "key_proj", "value_proj", "output_proj"):
            dense(f"layers.attn.{proj}", e, e)
        dense("layers.linear1", e, h)
        dense("layers.linear2", h, e)
        dense("head", e, model.head.out_features)
    elif isinstance(model, RawHead):
        for i, layer in enumerate(model.layers):
            dense(f"layers[{i}]", layer.in_features, layer.out_features)
        width, out_size = model.layers[-1].out_features, model.w.shape[1]
        out["w"] = (width, out_size)
    elif isinstance(model, MixedLinears):
        width, hidden = model.inp.out_features, model.out.in_features
        dense("inp", model.inp.in_features, width)
        dense("mid", width, hidden)
        dense("out", hidden, model.out.out_features)
    else:
        raise TypeError(f"no hand-computed fans for {type(model).__name__}")
    return out


def small_megalodon(num_layers: int = 3):
    """megalodon-jax's causal LM at a test's size, built by `eqxform.new` (so
    that it saves with its recipe). Needs `megalodon_jax` installed."""
    from megalodon_jax.config import MegalodonConfig
    from megalodon_jax.model import MegalodonForCausalLM

    import eqxform

    config = MegalodonConfig(
        vocab_size=64,
        model_dim=32,
        num_layers=num_layers,
        num_heads=1,
        z_dim=16,
        value_dim=32,
        ffn_hidden_dim=48,
        cema_ndim=4,
        chunk_size=16,
        norm_num_groups=4,
    )
    return eqxform.new(MegalodonForCausalLM, config)

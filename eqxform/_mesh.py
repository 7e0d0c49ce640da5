"""The device mesh a spec asks for (`mesh data=2 model=4`, `--mesh`), as plain
data: names and sizes, checked and turned into a `jax.sharding.Mesh` on the
devices there are. JAX is imported only when a mesh is made, so that the
linter (`eqxform check` without a model) parses `--mesh` without it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _ast as A
from ._errors import SpecError, UsageError

# An axis size: a whole number in ASCII digits, or -1.
_SIZE = re.compile(r"-1|[0-9]{1,10}")


@dataclass(frozen=True)
class MeshSpec:
    """The device mesh a spec asks for: axis names and sizes, in order
    (`-1`: the devices left over). Plain data; `make()` builds the
    `jax.sharding.Mesh` on the devices there are.

    **Attributes:** `axes` (`(name, size)` pairs), and where it was written:
    `span` and `source` for a `mesh` directive, `origin` (`"--mesh"`) for a
    mesh given on the command line or through the Python API.
    """

    axes: tuple[tuple[str, int], ...]
    span: A.Span | None = None
    source: A.Source | None = None
    origin: str = "mesh"

    @classmethod
    def parse(cls, text: str, origin: str = "--mesh") -> MeshSpec:
        """`"data=2,model=4"` (commas or spaces) as a `MeshSpec`; anything
        else raises `UsageError` (E465), which names `origin`."""
        axes: list[tuple[str, int]] = []
        parts = [p for p in text.replace(",", " ").split() if p]
        problem = None if parts else "it names no axis"
        for part in parts:
            name, eq, size = part.partition("=")
            if not eq or not name.isidentifier():
                problem = f"`{part}` is not `AXIS=SIZE`"
            elif not _SIZE.fullmatch(size.strip()):
                # Not `str.isdigit`/`int`: they take `１`, `²` and `1_0` too.
                problem = (
                    f"the size of `{name}` must be a whole number in the digits 0-9, or -1, "
                    f"not `{size}`"
                )
            elif int(size) == 0:
                problem = f"the size of `{name}` must be at least 1 (or -1), not 0"
            elif name in dict(axes):
                problem = f"axis `{name}` is given twice"
            if problem:
                break
            axes.append((name, int(size)))
        if problem is None and sum(1 for _, s in axes if s == -1) > 1:
            problem = "only one axis may be -1 (the devices left over)"
        if problem is not None:
            raise UsageError.of("E465", origin=origin, text=text, problem=problem)
        return cls(tuple(axes), origin=origin)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def text(self) -> str:
        return " ".join(f"{n}={s}" for n, s in self.axes)

    def sizes(self, device_count: int | None = None) -> dict[str, int]:
        """Each axis's size, `-1` resolved against `device_count` (by default
        every device JAX sees). Raises `SpecError` (E196) when the mesh needs
        more devices than there are."""
        import jax

        count = jax.device_count() if device_count is None else device_count
        fixed = math.prod(s for _, s in self.axes if s != -1)
        rest = [n for n, s in self.axes if s == -1]
        if fixed > count or (rest and count % fixed):
            raise SpecError.of(
                "E196",
                span=self.span,
                source=self.source,
                where=f"`{self.origin} {self.text()}`",
                fixed=fixed,
                value=" times a whole number of" if rest else "",
                count=count,
                value2=" (on the CPU, simulate more with "
                "`XLA_FLAGS=--xla_force_host_platform_device_count=N`)"
                if jax.default_backend() == "cpu"
                else "",
            )
        return {n: (count // fixed if s == -1 else s) for n, s in self.axes}

    def make(self, devices=None) -> Any:
        """The `jax.sharding.Mesh` on `devices` (default: every device, across
        every process); a mesh of fewer devices takes the first ones."""
        import jax
        import numpy as np
        from jax.sharding import Mesh

        devices = list(jax.devices() if devices is None else devices)
        sizes = self.sizes(len(devices))
        needed = math.prod(sizes.values())
        grid = np.array(devices[:needed], dtype=object).reshape(tuple(sizes.values()))
        return Mesh(grid, tuple(sizes))


def as_mesh_spec(mesh: Any) -> MeshSpec | None:
    """What the Python API takes for a mesh: a `MeshSpec`, a
    `jax.sharding.Mesh`, a mapping `{"data": 2, "model": 4}`, or the text
    `"data=2,model=4"`."""
    if mesh is None or isinstance(mesh, MeshSpec):
        return mesh
    if type(mesh).__name__ == "Mesh" and hasattr(mesh, "axis_names"):
        return MeshSpec(tuple(mesh.shape.items()), origin="mesh=")
    if isinstance(mesh, Mapping):
        return MeshSpec.parse(",".join(f"{k}={v}" for k, v in mesh.items()), "mesh=")
    if isinstance(mesh, str):
        return MeshSpec.parse(mesh, "mesh=")
    raise UsageError.of("E465", variant="mesh_takes", name=type(mesh).__name__)


def as_mesh(mesh: Any, spec: MeshSpec | None = None) -> Any:
    """A `jax.sharding.Mesh` from what the API takes (`spec` when `mesh` is None)."""
    if type(mesh).__name__ == "Mesh" and hasattr(mesh, "axis_names"):
        return mesh
    spec = as_mesh_spec(mesh) if mesh is not None else spec
    return None if spec is None else spec.make()

import os

# Several tests run on simulated devices; this must be set before JAX starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def getkey():
    counter = iter(range(1 << 30))

    def make():
        return jax.random.key(next(counter))

    return make


@pytest.fixture
def mlp(getkey):
    import equinox as eqx

    return eqx.nn.MLP(in_size=2, out_size=2, width_size=8, depth=3, key=getkey())


# Tests marked `slow` (long fuzzing, multi-process runs, large models) are
# skipped unless EQXFORM_SLOW=1, so that CI stays within its time budget.
def pytest_collection_modifyitems(config, items):
    if os.environ.get("EQXFORM_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow; run with EQXFORM_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

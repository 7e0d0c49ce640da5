"""Several processes, one mesh: `jax.distributed.initialize`, checked.

JAX's multi-controller runtime is the engine: every process runs the same
program on its own devices, and a mesh spans the devices of all of them.
eqxform only starts it with the coordinator's address and this process's
place, and says plainly what is wrong when that fails.
"""

from __future__ import annotations

import jax

from .._diagnostics import Diagnostic
from .._errors import UsageError


def initialize_distributed(
    coordinator: str, num_processes: int, process_id: int, *, timeout_s: int = 300
) -> None:
    """Join a run of `num_processes` processes as process `process_id`.

    **Arguments:**

    - `coordinator`: `HOST:PORT` of process 0, which every process can reach
      (process 0 listens there).
    - `num_processes`: how many processes take part.
    - `process_id`: this process's place, from 0 to `num_processes - 1`;
      process 0 writes the model files.
    - `timeout_s`: how long to wait for the others.

    Call it before any other JAX work, in every process, with the same spec
    and data. Raises `UsageError` (E466) for arguments that cannot work and
    (E467) when the run cannot be joined.
    """
    host, _, port = coordinator.rpartition(":")
    problem = None
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        problem = f"`--coordinator {coordinator}` is not `HOST:PORT`"
    elif num_processes < 1:
        problem = f"`--num-processes {num_processes}` must be at least 1"
    elif not 0 <= process_id < num_processes:
        problem = (
            f"`--process-id {process_id}` must lie in 0..{num_processes - 1} "
            f"for {num_processes} processes"
        )
    if problem is not None:
        raise UsageError(
            Diagnostic(
                "E466",
                problem,
                help="start every process with the same `--coordinator HOST:PORT` (process 0's "
                "address) and `--num-processes N`, and its own `--process-id` from 0 to N-1",
            )
        )
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s,
        )
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(
            Diagnostic(
                "E467",
                f"process {process_id} of {num_processes} could not join the run at "
                f"`{coordinator}`: {first}",
                help="start process 0 first (it listens at the coordinator's address), check "
                "that every process can reach it, and start the others within the timeout; "
                "JAX must not have run anything before",
            )
        ) from None

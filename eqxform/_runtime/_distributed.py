"""Several processes, one mesh: `jax.distributed.initialize`, checked.

JAX's multi-controller runtime is the engine: every process runs the same
program on its own devices, and a mesh spans the devices of all of them.
eqxform only starts it with the coordinator's address and this process's
place, and says plainly what is wrong when that fails.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time

import jax

from .._diagnostics import Diagnostic, render_all, report
from .._errors import UsageError, first_line

# How long `eqxform train --coordinator ...` waits for the run, by default.
DEFAULT_TIMEOUT_S = 60

# JAX's own deadline is set this much beyond ours: when it passes, its runtime
# aborts the process (SIGABRT and a C++ stack trace), so ours must come first.
_JAX_MARGIN_S = 30


def _problem(process_id: int, num_processes: int, coordinator: str, what: str) -> Diagnostic:
    return report(
        "E467",
        help=f"start the other {num_processes - 1} process(es) with the same `--coordinator` "
        "and `--num-processes`, each with its own `--process-id`, within the timeout "
        "(`--timeout SECONDS`)"
        if process_id == 0
        else "start process 0 first (it listens at the coordinator's address), check "
        "that every process can reach it, and start the others within the timeout "
        "(`--timeout SECONDS`); JAX must not have run anything before",
        process_id=process_id,
        num_processes=num_processes,
        coordinator=coordinator,
        what=what,
    )


def _wait_for(host: str, port: int, deadline: float) -> str | None:
    """Try to reach the coordinator until `deadline` (a `time.monotonic`
    time); None once it answers, else why it did not."""
    why = "nothing answered"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return why
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=min(left, 2.0)):
                return None
        except socket.gaierror as e:
            return f"the host `{host}` is unknown ({e.strerror or e})"
        except OSError as e:
            why = f"nothing listens there ({e.strerror or e})"
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0)))


def initialize_distributed(
    coordinator: str,
    num_processes: int,
    process_id: int,
    *,
    timeout_s: int = DEFAULT_TIMEOUT_S,
) -> None:
    """Join a run of `num_processes` processes as process `process_id`.

    **Arguments:**

    - `coordinator`: `HOST:PORT` of process 0, which every process can reach
      (process 0 listens there).
    - `num_processes`: how many processes take part.
    - `process_id`: this process's place, from 0 to `num_processes - 1`;
      process 0 writes the model files.
    - `timeout_s`: how long to wait, in seconds, for the coordinator to
      answer and every process to join (default 60).

    Call it before any other JAX work, in every process, with the same spec
    and data. Raises `UsageError` (E466) for arguments that cannot work and
    (E467) when the coordinator cannot be reached within `timeout_s`. When
    the coordinator answers but the other processes do not all join within
    `timeout_s`, JAX's runtime would abort the process; instead the process
    prints E467 on stderr and exits with status 2.
    """
    host, _, port = coordinator.rpartition(":")
    # ASCII digits only: `str.isdigit` and `int` also take `１` and `²`.
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise UsageError.of("E466", variant="coordinator", coordinator=coordinator)
    if num_processes < 1:
        raise UsageError.of("E466", variant="num_processes", num_processes=num_processes)
    if not 0 <= process_id < num_processes:
        raise UsageError.of(
            "E466",
            variant="process_id",
            process_id=process_id,
            last=num_processes - 1,
            num_processes=num_processes,
        )
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1:
        raise UsageError.of("E466", variant="timeout", timeout_s=repr(timeout_s))
    deadline = time.monotonic() + timeout_s
    if process_id != 0:
        # Process 0 serves at the coordinator's address. JAX would wait for
        # it and then abort the process; here an unreachable coordinator is
        # a diagnostic, after the timeout.
        why = _wait_for(host, int(port), deadline)
        if why is not None:
            raise UsageError(
                _problem(process_id, num_processes, coordinator, f"{why} after {timeout_s} s")
            )
    # What remains to wait for (the others registering) is watched: past the
    # deadline the process says so and exits, before JAX's runtime aborts it.
    watchdog = _watchdog(
        _problem(
            process_id,
            num_processes,
            coordinator,
            f"the {num_processes} processes did not all join within {timeout_s} s",
        ),
        max(deadline - time.monotonic(), 0.0),
    )
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s + _JAX_MARGIN_S,
        )
    except (RuntimeError, ValueError) as e:
        raise UsageError(_problem(process_id, num_processes, coordinator, first_line(e))) from None
    finally:
        watchdog.cancel()


def _watchdog(diagnostic: Diagnostic, seconds: float):
    """A timer that prints `diagnostic` and ends the process with status 2."""

    def fire():
        sys.stderr.write(render_all([diagnostic]) + "\n")
        sys.stderr.flush()
        os._exit(2)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer

"""The fuzz test's worker: a separate process that runs specs through
`compile`, `plan` and `apply` and reports how each one ended.

It reads one JSON line per spec on stdin (`{"text": ...}`) and answers one JSON
line on stdout: `{"stage": ..., "outcome": "ok" | "eqxform" | "other",
"code": ..., "error": ...}`. The parent (tests/test_fuzz.py) gives it a time
limit per spec and kills it on a hang, so nothing here needs one. The worker
runs with a small memory budget (`EQXFORM_MAX_BYTES`) and an address-space cap,
so that a spec that allocates without limit shows up as an error, not as a
machine that swaps.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings


def main() -> None:
    cap = int(os.environ.get("EQXFORM_FUZZ_ADDRESS_SPACE", 0))
    if cap:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import equinox as eqx
    import jax

    import eqxform

    # The model of every example: a small MLP, as in the Equinox docs.
    mlp = eqx.nn.MLP(in_size=2, out_size=2, width_size=8, depth=2, key=jax.random.key(0))
    warnings.simplefilter("ignore")
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the answer channel
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        text = json.loads(line)["text"]
        out.write(json.dumps(run(text, mlp, eqxform)) + "\n")
        out.flush()


def run(text: str, mlp, eqxform) -> dict:
    stage = "compile"
    try:
        program = eqxform.compile(text, name="<fuzz>")
        stage = "plan"
        plan = program.plan(mlp)
        if plan.errors:
            return {"stage": stage, "outcome": "eqxform", "code": plan.errors[0].code}
        stage = "apply"
        program.apply(mlp)
        if program.model_call is not None:
            # The spec's own model: planned on shapes and, with
            # EQXFORM_FUZZ_OWN=1, built and transformed for real, within the
            # memory budget the worker runs under.
            stage = "plan-own"
            plan = program.plan()
            if plan.errors:
                return {"stage": stage, "outcome": "eqxform", "code": plan.errors[0].code}
            if os.environ.get("EQXFORM_FUZZ_OWN") == "1":
                stage = "apply-own"
                program.apply()
        return {"stage": "done", "outcome": "ok"}
    except eqxform.EqxformError as e:
        return {"stage": stage, "outcome": "eqxform", "code": e.diagnostics[0].code}
    except BaseException as e:  # noqa: BLE001 - what the test is looking for
        return {
            "stage": stage,
            "outcome": "other",
            "code": type(e).__name__,
            "error": "".join(traceback.format_exception(e))[-3000:],
        }


if __name__ == "__main__":
    main()

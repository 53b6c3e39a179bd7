"""A sweep run in a child process that the crash test SIGKILLs (run as a script).

The server imports the library and builds one tiny sweep (a 3-layer MLP from a config,
hierarchical-equality pairs) once, then serves JSON commands on stdin, one per line,
answering each with one JSON line on stdout. Each ``run`` forks a child that runs the
sweep into ``dir`` and is killed with SIGKILL:

* ``kill_after``: that many seconds after it started (a random moment), or
* ``kill_at_write``: ``[k, "before" | "after"]``, at its k-th file rename, just before
  it (the temporary file is written, the target not yet replaced) or just after it (the
  first file of an alignment's pair is in place, the second not yet written).

The child appends the key of every cell it computes to ``log`` and, when it finishes,
writes the sweep's cells table, best cell and test IIA to ``out``. Forking from a
process that has imported torch but never run it is safe, and takes milliseconds where
starting a fresh interpreter takes seconds, so the test can kill 20 runs quickly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import torch

from abstraction import TrainingConfig, counterfactual_dataset, sweep, zoo
from abstraction.counterfactuals import split_by_base
from abstraction.network import Network, import_pyvene

CELLS = 9  # 3 layers x 3 ranks


def _setup() -> dict[str, Any]:
    import_pyvene()
    from pyvene.models.mlp.modelings_mlp import MLPConfig

    config = MLPConfig(h_dim=16, n_layer=3, num_classes=2, activation_function="relu", pdrop=0.0)
    network = Network.from_config(config, seed=0)
    task = zoo.task("hierarchical_equality_mlp")
    data = counterfactual_dataset(task.model, 1500, [["wx"], ["yz"], ["wx", "yz"]], seed=0)
    train, validation, test = split_by_base(data, (0.6, 0.2, 0.2), seed=0)
    _ = network.hash  # computed once, before forking
    return {
        "network": network,
        "task": task,
        "train": train,
        "validation": validation,
        "variables": ["wx", "yz"],
        "layers": [0, 1, 2],
        "ranks": [1, 2, 3],
        "test": test,
        "config": TrainingConfig(epochs=2, batch_size=256, lr=1e-2),
    }


def _child(setup: dict[str, Any], command: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    kill_at = command.get("kill_at_write")
    if kill_at is not None:
        count = {"n": 0}
        real_replace = os.replace

        def replace(src: Any, dst: Any) -> None:
            count["n"] += 1
            if count["n"] == kill_at[0] and kill_at[1] == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
            if count["n"] == kill_at[0] and kill_at[1] == "after":
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace  # type: ignore[assignment]
    log = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def progress(cell: Any, val_iia: float) -> None:
        os.write(log, f"{cell.key}\n".encode())

    args = {k: v for k, v in setup.items() if k not in ("network", "task", "train", "validation")}
    result = sweep(
        setup["network"],
        setup["task"],
        setup["train"],
        setup["validation"],
        directory=command["dir"],
        progress=progress,
        **args,
    )
    if command.get("out"):
        payload = {
            "cells": json.loads(result.cells.drop(columns="seconds").to_json(orient="records")),
            "best": result.best.key,
            "test_iia": result.test_iia,
        }
        with open(command["out"], "w") as handle:
            json.dump(payload, handle)


def main() -> None:
    # One thread from the start: no OpenMP pool exists in the server to break in a fork,
    # and float reductions run in one order in every child.
    torch.set_num_threads(1)
    setup = _setup()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            try:
                _child(setup, command)
            except BaseException as exc:  # report, never return into the server loop
                print(json.dumps({"child_error": repr(exc)}), file=sys.stderr, flush=True)
                os._exit(1)
            os._exit(0)
        deadline = command.get("kill_after")
        status = None
        while status is None:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = code
            elif deadline is not None and time.perf_counter() - start >= deadline:
                os.kill(pid, signal.SIGKILL)
                status = os.waitpid(pid, 0)[1]
            else:
                time.sleep(0.002)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        reply = {
            "killed": killed,
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "seconds": time.perf_counter() - start,
        }
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

"""A sweep SIGKILLed at 20 moments, resumed each time, equals an uninterrupted one.

The sweep runs in a child of ``sweep_crash_server.py``. Half the kills come at a
random time, half at a random file rename (just before or just after it: mid-write).
After every run the test checks that no finished cell was lost, rewritten or computed
again, and at the end that the results equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

SERVER = Path(__file__).with_name("sweep_crash_server.py")
KILLS = 20


class Server:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the sweep server died"
        return line

    def run(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        reply: dict[str, Any] = json.loads(self._line())
        return reply

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _records(directory: Path) -> dict[str, bytes]:
    """The committed cells: record file name -> its bytes."""
    return {p.name: p.read_bytes() for p in directory.glob("*/cells/*.json")}


def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    server = Server()
    try:
        reference = tmp_path / "reference.json"
        full = server.run(
            dir=str(tmp_path / "ref"), log=str(tmp_path / "ref.log"), out=str(reference)
        )
        assert full["exit"] == 0, full
        expected = json.loads(reference.read_text())
        cells = len(expected["cells"])
        renames = 3  # per cell: tensors, alignment JSON, record
        rng = random.Random(0)
        kills, rounds, runs = 0, 0, 0
        directory = tmp_path / "round0"
        finished_after_last_kill = False
        while kills < KILLS or not finished_after_last_kill:
            before = _records(directory)
            log = tmp_path / f"run{runs}.log"
            out = tmp_path / f"run{runs}.json"
            command: dict[str, Any] = {"dir": str(directory), "log": str(log), "out": str(out)}
            remaining = cells - len(before)
            if kills < KILLS and remaining:  # a moment while cells remain to be computed
                if runs % 2:
                    when = rng.choice(["before", "after"])
                    command["kill_at_write"] = [rng.randint(1, renames * remaining), when]
                else:
                    command["kill_after"] = rng.uniform(0.0, full["seconds"] * remaining / cells)
            reply = server.run(**command)
            runs += 1
            after = _records(directory)
            # nothing finished is lost or rewritten ...
            assert {k: after[k] for k in before} == before
            # ... or computed again
            computed = log.read_text().split() if log.exists() else []
            assert not {f"{c}.json" for c in computed} & set(before), (computed, sorted(before))
            assert len(computed) == len(set(computed))
            if reply["killed"]:
                kills += 1
                finished_after_last_kill = False
                continue
            assert reply["exit"] == 0, reply
            result = json.loads(out.read_text())
            assert result == expected  # every cell, once, with the uninterrupted numbers
            assert len(after) == cells
            # the temporary files of killed writes were removed by the resumed run
            assert not [p for p in directory.rglob(".*") if p.name != ".lock"]
            finished_after_last_kill = True
            if kills < KILLS:  # the sweep finished before the next kill: start over
                rounds += 1
                directory = tmp_path / f"round{rounds}"
        assert kills == KILLS
    finally:
        server.close()

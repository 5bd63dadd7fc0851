"""Crash tests: risky inputs (empty and degenerate sizes) run in a child process, so that a
signal (SIGFPE, SIGSEGV, abort) fails one case instead of killing pytest. A case passes
when it returns a result or raises ValueError / TypeError."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from crash_cases import CASES

SCRIPT = Path(__file__).with_name("crash_cases.py")
ROOT = Path(__file__).resolve().parents[3]


@functools.cache
def outcomes() -> dict[str, str]:
    """Runs every case once, restarting the child after the case that ended it:
    ``{case: "ok" | "<Error>: msg" | "signal N" | "exit N: <stderr tail>"}``."""
    results: dict[str, str] = {}
    pending = list(CASES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python")])}
    while pending:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *pending],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        started = None
        for line in proc.stdout.splitlines():
            name, _, outcome = line.partition(" ")
            if outcome == "start":
                started = name
            else:
                results[name] = outcome
        if started is None or started in results:  # the child finished its list
            break
        code = proc.returncode
        results[started] = f"signal {-code}" if code < 0 else f"exit {code}: {proc.stderr[-500:]}"
        pending = pending[pending.index(started) + 1 :]
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_no_crash(case):
    outcome = outcomes().get(case, "never ran")
    assert outcome == "ok" or outcome.startswith(("ValueError:", "TypeError:")), outcome

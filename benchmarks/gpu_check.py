"""``make gpu-check``: the whole GPU verification in one command (about 8 minutes on one
H100/H200), from a fresh checkout, with the machine's installed packages (torch with CUDA,
triton, transformers, pytest; flash-attn is used when importable, never required).

Phases, each with its own time limit; a failing phase is reported and the others still run:

1. ``build``: the CUDA extension for this GPU's architecture only
   (``TORCH_CUDA_ARCH_LIST`` from ``torch.cuda.get_device_capability()``, ``MAX_JOBS`` = CPU
   count, ``setup.py build_ext --inplace``);
2. ``tests``: every ``gpu``-marked test (``pytest -m gpu``);
3. the op benchmarks at full size, each writing ``benchmarks/results/*_gpu.{csv,json,png}``
   with the GPU named inside: importance up to 16k visual tokens (against SDPA flash
   attention, FlashAttention-2 when importable and the PyramidDrop-style recompute), top-k,
   transform-scatter, and the long-context VLM benchmark in bf16;
4. a one-screen summary: phase results and the measured ratios against the targets.

``--dry-run`` checks on a CPU machine what can be checked without CUDA: the architecture
detection on a mocked capability (sm 9.0), ``setup.py`` itself (nothing compiled), the
pytest selection (collected, not run), and every benchmark at tiny sizes on CPU without
writing files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH = ROOT / "benchmarks"


@dataclass
class Phase:
    """One step: a command with its own time limit (seconds)."""

    name: str
    argv: list[str]
    timeout: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "failed (exit N)", "timed out after N s"
    seconds: float
    tail: str


def cuda_arch_list(capability: tuple[int, int]) -> str:
    """``TORCH_CUDA_ARCH_LIST`` for one GPU: ``(9, 0)`` -> ``"9.0"``."""
    major, minor = capability
    if not (isinstance(major, int) and isinstance(minor, int) and major >= 1 and minor >= 0):
        raise ValueError(f"gpu_check: bad CUDA compute capability {capability!r}")
    return f"{major}.{minor}"


def build_env(capability: tuple[int, int]) -> dict[str, str]:
    return {"TORCH_CUDA_ARCH_LIST": cuda_arch_list(capability), "MAX_JOBS": str(os.cpu_count())}


def phases(python: str, dry_run: bool) -> list[Phase]:
    """The phases in order; ``dry_run`` gives their CPU smoke-test variants."""
    bench = lambda script, *args: [python, str(BENCH / script), *args]
    if dry_run:
        return [
            Phase("tests", [python, "-m", "pytest", "-m", "gpu", "--collect-only", "-q"], 120),
            Phase(
                "bench importance",
                bench("bench_importance.py", "--device", "cpu", "--nvs", "16", "--hkvs", "4")
                + ["--repeats", "1", "--no-write"],
                120,
            ),
            Phase(
                "bench top-k",
                bench("bench_topk.py", "--device", "cpu", "--batches", "2", "--lengths", "64")
                + ["--repeats", "1", "--no-write"],
                60,
            ),
            Phase(
                "bench transform_scatter",
                bench("bench_transform_scatter.py", "--device", "cpu", "--quick")
                + ["--repeats", "1", "--no-write"],
                60,
            ),
            Phase(
                "bench vlm long context",
                bench(
                    "bench_vlm_long_context.py",
                    "--device",
                    "cpu",
                    "--visual",
                    "576",
                    "--layers",
                    "1",
                )
                + ["--repeats", "0", "--no-write"],
                180,
            ),
        ]
    return [
        Phase("tests", [python, "-m", "pytest", "-m", "gpu", "-q", "-rfE"], 210),
        Phase(
            "bench importance",
            bench("bench_importance.py", "--device", "cuda", "--dtype", "bfloat16")
            + ["--nvs", "576", "2304", "4096", "8192", "16384", "--hkvs", "16", "4"],
            50,
        ),
        Phase("bench top-k", bench("bench_topk.py", "--device", "cuda"), 25),
        Phase(
            "bench transform_scatter", bench("bench_transform_scatter.py", "--device", "cuda"), 25
        ),
        Phase(
            "bench vlm long context",
            bench("bench_vlm_long_context.py", "--device", "cuda", "--dtype", "bfloat16"),
            50,
        ),
    ]  # with the build's 120 s: at most 8 minutes


def run_phase(phase: Phase, log) -> Outcome:
    """Runs one phase, its output appended to ``log``; never raises for the phase's failure."""
    env = {**os.environ, **phase.env}
    log.write(f"\n===== {phase.name}: {' '.join(phase.argv)}\n")
    log.flush()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            phase.argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=phase.timeout,
        )
        output, code = done.stdout, done.returncode
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or ""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        status = f"timed out after {phase.timeout} s"
    log.write(output)
    log.flush()
    tail = "\n".join(output.strip().splitlines()[-6:])
    return Outcome(phase.name, status, time.perf_counter() - start, tail)


def gpu_capability(dry_run: bool) -> tuple[str, tuple[int, int]]:
    """``(GPU name, compute capability)``; a mocked H100 in a dry run."""
    if dry_run:
        return "mocked H100 (dry run)", (9, 0)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; use --dry-run on a CPU machine")
    return torch.cuda.get_device_name(), torch.cuda.get_device_capability()


def target_lines() -> list[str]:
    """The measured ratios of the targets, read back from ``results/*_gpu.json``."""
    lines = []

    def load(name):
        path = RESULTS / f"{name}_gpu.json"
        return json.loads(path.read_text()) if path.exists() else None

    if importance := load("importance"):
        for row in importance["summary"]:
            lines.append(
                f"importance hkv={row['hkv']:2d} nv={row['nv']:5d}: imp/attn "
                f"{row['imp/attn']:.3f} (target <= 0.15), rate {row['rate_frac']:.2f} of matmul "
                f"(>= 0.40), imp/pyramiddrop {row['imp/pyramiddrop']:.3f}"
            )
    if topk := load("bench_topk"):
        for row in topk["rows"]:
            if row["provider"] == "cagul" and row["B"] == 8 and row["Nv"] == 16384:
                lines.append(f"top-k B=8 Nv=16384: {row['speedup_vs_torch']:.2f}x torch (>= 1.5x)")
    if scatter := load("transform_scatter"):
        for row in scatter["summary"]:
            lines.append(
                f"transform_scatter S={row['S']} D={row['D']} [{row['backend']}]: in place "
                f"{row['inplace_vs_torch_fwd']:.1f}x torch (>= 3x)"
            )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU checks only (no CUDA)")
    parser.add_argument("--skip-build", action="store_true", help="use the built extension")
    parser.add_argument("--log", type=Path, default=None, help="full output (default: results/)")
    args = parser.parse_args(argv)
    python = sys.executable
    name, capability = gpu_capability(args.dry_run)
    env = build_env(capability)
    # Without ninja, torch compiles the sources one after the other (MAX_JOBS unused).
    build_limit = 120 if shutil.which("ninja") else 240
    build = Phase("build", [python, "setup.py", "build_ext", "--inplace"], build_limit, env)
    if args.dry_run:  # setup.py runs (decides its extension), nothing is compiled
        build = Phase("build (setup.py --name)", [python, "setup.py", "--name"], 60, env)
    steps = [] if args.skip_build else [build]
    steps += phases(python, args.dry_run)
    log_path = args.log or (
        Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_check_dry.log"
        if args.dry_run
        else RESULTS / "gpu_check_gpu.log"
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {name}, sm {capability[0]}{capability[1]}, {env}; log: {log_path}")
    outcomes = []
    with open(log_path, "w") as log:
        for step in steps:
            print(f"  {step.name} (limit {step.timeout} s) ...", flush=True)
            outcomes.append(run_phase(step, log))
    print(f"\n==== gpu-check summary: {name} ====")
    for outcome in outcomes:
        print(f"{outcome.name:28s} {outcome.status:24s} {outcome.seconds:6.0f} s")
        if outcome.status != "ok":
            print("    " + outcome.tail.replace("\n", "\n    "))
    if not args.dry_run:
        print(*target_lines(), sep="\n")
    failed = [o.name for o in outcomes if o.status != "ok"]
    print("all phases ok" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

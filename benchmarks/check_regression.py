"""Ratio regression check of a pytest-benchmark run (``make bench-pytest``).

Wall-clock times move with the machine and its load, so only ratios are compared: in each
size group, ours / baseline from the same run (e.g. ``importance[cpu]`` /
``attention_with_lse``), against the same ratios in the committed results (by default
``git show HEAD:<results file>``). A ratio that grew by more than ``--tolerance`` (noise on a
shared machine) is flagged, and the exit status is 1.

    python benchmarks/check_regression.py benchmarks/results/bench_pytest_cpu.json
    python benchmarks/check_regression.py new.json --baseline old.json --tolerance 0.3
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (ours, baseline) provider names per op; "{b}" is a kernel backend (cpu, cuda, triton).
PAIRS = {
    "importance": [
        ("importance[{b}]", "attention_with_lse"),
        ("importance[{b}]", "pyramiddrop_recompute"),
    ],
    "topk": [("cagul", "torch_topk")],
    "transform_scatter": [("{b}_inplace", "torch_fwd"), ("{b}_fwd_bwd", "torch_fwd_bwd")],
}


def medians(report: dict) -> dict[str, dict[str, float]]:
    """``group -> provider -> median seconds`` of a pytest-benchmark JSON report."""
    out: dict[str, dict[str, float]] = {}
    for bench in report.get("benchmarks", []):
        try:
            group, provider = bench["group"], bench["params"]["provider"]
            out.setdefault(group, {})[provider] = float(bench["stats"]["median"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a benchmark entry of the suites: {bench!r:.200}") from error
    return out


def ratios(report: dict) -> dict[str, float]:
    """``"<group>: <ours> / <baseline>" -> ratio`` for every pair present in the report."""
    out = {}
    for group, times in medians(report).items():
        op = group.split()[0]
        for ours_pattern, baseline in PAIRS.get(op, []):
            pattern = re.escape(ours_pattern).replace(re.escape("{b}"), "(cpu|cuda|triton)")
            for ours in (name for name in times if re.fullmatch(pattern, name)):
                if baseline in times:
                    out[f"{group}: {ours} / {baseline}"] = times[ours] / times[baseline]
    return out


def load(path: Path, committed: bool) -> dict:
    """A JSON report from disk, or its committed version (``git show HEAD:path``)."""
    if committed:
        relative = path.resolve().relative_to(ROOT)
        shown = subprocess.run(
            ["git", "show", f"HEAD:{relative.as_posix()}"], cwd=ROOT, capture_output=True, text=True
        )
        if shown.returncode != 0:
            raise SystemExit(f"check_regression: no committed {relative}: {shown.stderr.strip()}")
        text, where = shown.stdout, f"HEAD:{relative}"
    else:
        text, where = path.read_text(), str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"check_regression: {where} is not JSON: {error}") from error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("report", type=Path, help="pytest-benchmark JSON of the new run")
    parser.add_argument("--baseline", type=Path, help="default: the committed report")
    parser.add_argument("--tolerance", type=float, default=0.25, help="allowed relative growth")
    args = parser.parse_args(argv)
    new = ratios(load(args.report, committed=False))
    old = ratios(load(args.baseline or args.report, committed=args.baseline is None))
    flagged = []
    for key in sorted(new.keys() & old.keys()):
        change = new[key] / old[key] - 1
        drop = change > args.tolerance
        flagged += [key] if drop else []
        mark = "  << slower than committed" if drop else ""
        print(f"{key:70s} {old[key]:8.3f} -> {new[key]:8.3f} ({change:+.0%}){mark}")
    for key in sorted(old.keys() - new.keys()):
        print(f"{key:70s} missing in the new run")
    print(f"{len(flagged)} of {len(new.keys() & old.keys())} ratios beyond +{args.tolerance:.0%}")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())

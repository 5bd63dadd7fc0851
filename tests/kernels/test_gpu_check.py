"""``make gpu-check`` prepared on CPU: the architecture detection, and the whole dry run
(setup.py, the gpu-test selection, every benchmark at tiny sizes) exits cleanly."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import build_env, cuda_arch_list  # noqa: E402


@pytest.mark.parametrize("capability,arch", [((9, 0), "9.0"), ((8, 0), "8.0"), ((12, 1), "12.1")])
def test_arch_of_the_present_gpu_only(capability, arch):
    assert cuda_arch_list(capability) == arch
    env = build_env(capability)
    assert env["TORCH_CUDA_ARCH_LIST"] == arch and int(env["MAX_JOBS"]) >= 1


@pytest.mark.parametrize("capability", [(0, 0), (9, -1), ("9", 0)])
def test_bad_capability(capability):
    with pytest.raises(ValueError, match="compute capability"):
        cuda_arch_list(capability)


def test_dry_run(tmp_path):
    log = tmp_path / "gpu_check.log"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--log", str(log)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all phases ok" in done.stdout
    for phase in ("build", "tests", "importance", "top-k", "transform_scatter", "vlm"):
        assert phase in done.stdout
    assert "TORCH_CUDA_ARCH_LIST': '9.0'" in done.stdout
    assert "collected" in log.read_text()  # the gpu tests were selected

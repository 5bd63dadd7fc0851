"""Every Triton kernel compiles for a GPU (sm_90) with Triton's own compiler, no GPU needed.

The CPU tests run the kernels through the interpreter, which accepts code the compiler
refuses (e.g. a kernel reading a global that is not a ``tl.constexpr``); this is the check
that a GPU machine would otherwise be the first to make. The compiler runs in a child
process without ``TRITON_INTERPRET`` (under it ``triton.jit`` gives interpreted functions).
Skipped without triton."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

BLOCKS = {"BLOCK_M": 64, "BLOCK_D": 64, "BLOCK_R": 64}
# "module.kernel" -> (pointer and float argument types; every other runtime argument is an
# i64 scalar), constexpr arguments
KERNELS = {
    "importance._importance_kernel": (
        {"q_ptr": "*bf16", "k_ptr": "*bf16", "lse_ptr": "*fp32", "query_index_ptr": "*i64",
         "visual_index_ptr": "*i64", "out_ptr": "*fp32", "scale_log2e": "fp32"},
        {"GROUP": 2, "CAUSAL": True, "PER_HEAD": False, "INPUT_PRECISION": "ieee",
         "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 128},
    ),
    "transform_scatter._forward_kernel": (
        {"x_ptr": "*bf16", "y_ptr": "*bf16", "pos_ptr": "*i64", "gate_ptr": "*fp32",
         "w1_ptr": "*bf16", "b1_ptr": "*bf16", "w2_ptr": "*bf16", "b2_ptr": "*bf16",
         "z_ptr": "*fp32"},
        {"ACT": 1, "STORE_Z": True, "PRECISION": "tf32", **BLOCKS},
    ),
    "transform_scatter._backward_rows_kernel": (
        {"dy_ptr": "*bf16", "dx_ptr": "*bf16", "pos_ptr": "*i64", "gate_ptr": "*fp32",
         "z_ptr": "*fp32", "w1_ptr": "*bf16", "w2_ptr": "*bf16", "dz_ptr": "*fp32"},
        {"ACT": 1, "NEED_DX": True, "PRECISION": "tf32", **BLOCKS},
    ),
    "transform_scatter._backward_weights_kernel": (
        {"x_ptr": "*bf16", "dy_ptr": "*bf16", "pos_ptr": "*i64", "gate_ptr": "*fp32",
         "z_ptr": "*fp32", "dz_ptr": "*fp32", "part_ptr": "*fp32"},
        {"ACT": 1, "PRECISION": "tf32", **BLOCKS},
    ),
    "transform_scatter._sum_partials_kernel": (
        {"part_ptr": "*fp32", "out_ptr": "*fp32"},
        {"BLOCK": 1024},
    ),
    "topk._sort_chunks": (
        {"importance_ptr": "*fp32", "visual_index_ptr": "*i64", "words_ptr": "*i64"},
        {"CHUNK": 2048, "COUNT_RANKS": False},
    ),
    "topk._rank": (
        {"words_ptr": "*i64", "visual_index_ptr": "*i64", "counts_ptr": "*i32",
         "slots_ptr": "*i64", "positions_ptr": "*i64"},
        {"CHUNK": 2048, "LOG_CHUNK": 11, "BLOCK": 1024},
    ),
}  # fmt: skip


def compile_all() -> dict[str, str]:
    """Kernel name -> ``"ok"`` (PTX and cubin produced) or the compiler's error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    results = {}
    for name, (types, constexprs) in KERNELS.items():
        module, attr = name.split(".")
        kernel = getattr(importlib.import_module(f"cagul_kernels.triton.{module}"), attr)
        names = kernel.arg_names
        signature = {n: "constexpr" if n in constexprs else types.get(n, "i64") for n in names}
        try:
            assert set(types) | set(constexprs) <= set(names), "a listed name is no argument"
            compiled = triton.compile(
                ASTSource(
                    fn=kernel,
                    signature=signature,
                    constexprs={(names.index(n),): value for n, value in constexprs.items()},
                ),
                target=GPUTarget("cuda", 90, 32),
            )
            assert ".entry" in compiled.asm["ptx"] and compiled.asm["cubin"], "no PTX / cubin"
            results[name] = "ok"
        except Exception as error:  # reported per kernel by the test
            results[name] = f"{type(error).__name__}: {error}"
    return results


@pytest.fixture(scope="module")
def results():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    # this checkout's cagul_kernels, as in the tests (pyproject's pythonpath)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, check=False
    )
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", list(KERNELS))
def test_compiles_for_sm90(results, name):
    assert results[name] == "ok", results[name]


if __name__ == "__main__":
    print(json.dumps(compile_all()))

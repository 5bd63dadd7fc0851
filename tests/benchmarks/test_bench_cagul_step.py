"""``benchmarks/bench_cagul_step.py --quick`` runs end to end at tiny sizes and writes its
CSV, JSON and PNG outputs with the providers' parameter and optimizer-state counts."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
from cagul import CagulConfig

from benchmarks import bench_cagul_step as bench

CAGUL = {"cagul_input", "cagul_input_cached", "cagul_inline", "cagul_inline_cached"}
PROVIDERS = {*CAGUL, "lora_graddiff", "full_graddiff"}
VARIANTS = {"vanilla", "gate_off", "gate_on_input", "gate_on_inline"}


def test_quick_run_writes_every_output(tmp_path):
    summary = bench.main(
        ["--quick", "--out", str(tmp_path), "--layers", "2", "--train-layers", "2", "3"]
    )
    files = {p.name for p in tmp_path.iterdir()}
    for stem in ("cagul_step_train_cpu", "cagul_step_inference_cpu"):
        assert {f"{stem}.csv", f"{stem}.json", f"{stem}.png"} <= files
        assert (tmp_path / f"{stem}.png").stat().st_size > 0
    with open(tmp_path / "cagul_step_train_cpu.csv") as f:
        train = list(csv.DictReader(f))
    assert {(r["geometry"], r["layers"], r["provider"]) for r in train} == {
        (g, n, p) for g in bench.QUICK for n in ("2", "3") for p in PROVIDERS
    }
    config = CagulConfig()
    for (geometry, geo), n in itertools.product(bench.QUICK.items(), (2, 3)):
        rows = {
            r["provider"]: r for r in train if (r["geometry"], r["layers"]) == (geometry, str(n))
        }
        lora_per_layer = 16 * (
            2 * 2 * geo.hidden  # q, o: hidden -> hidden
            + 2 * (geo.hidden + geo.kv_heads * geo.hidden // geo.heads)  # k, v
            + 3 * (geo.hidden + geo.mlp)  # gate, up, down
        )
        assert int(rows["lora_graddiff"]["trainable_params"]) == n * lora_per_layer
        # AdamW keeps two fp32 moments per trainable parameter (+ a step counter each).
        for name, row in rows.items():
            state = int(row["optimizer_state_bytes"])
            assert (
                8 * int(row["trainable_params"]) <= state < 8 * int(row["trainable_params"]) + 4096
            ), name
        h, rank, disc = geo.hidden, config.encoder_rank, config.discriminator_hidden
        encoder = 2 * h * rank + rank + h
        discriminator = (h + 1) * disc + (disc + 1) * disc + disc + 1
        for name in CAGUL:
            assert int(rows[name]["trainable_params"]) == encoder + discriminator
        assert int(rows["full_graddiff"]["trainable_params"]) > geo.vocab * geo.hidden * 2
        assert all(float(r["step_s"]) > 0 for r in rows.values())
    with open(tmp_path / "cagul_step_inference_cpu.csv") as f:
        infer = list(csv.DictReader(f))
    assert {r["variant"] for r in infer} == VARIANTS
    assert {(r["phase"], r["batch"]) for r in infer} == {
        (p, b) for p in ("prefill", "prefill+32") for b in ("1", "2")
    }
    assert "cagul_step_summary_cpu.json" not in files
    metas = {
        part: json.loads((tmp_path / f"cagul_step_{part}_cpu.json").read_text())
        for part in ("train", "inference")
    }
    for meta in metas.values():
        assert meta["machine"]["cpu"] and meta["settings"]["layers"] == 2
    assert {**metas["inference"]["ratios"], **metas["train"]["ratios"]} == summary
    assert "input_bound" in metas["inference"]["ratios"]
    assert all(key.startswith(tuple(bench.QUICK)) for key in metas["train"]["ratios"])
    assert summary["input_bound"] == 1 + (1 + 1) / 2 + 0.05  # L = 1 of 2 built layers
    for key in ("llava/2_layers/cagul_inline/time_vs_lora", "qwen2_vl/gate_off/prefill/b1/v32"):
        assert summary[key] > 0
    # the per-layer fits go through both measured layer counts (two points)
    rows = metas["train"]["rows"]
    for geometry, provider, column in itertools.product(
        bench.QUICK, PROVIDERS, ("step_s", "step_cpu_s")
    ):
        key = f"{geometry}/{provider}/{column}"
        fixed, per_layer = summary[f"{key}/fixed"], summary[f"{key}/per_layer"]
        for row in rows:
            if (row["geometry"], row["provider"]) == (geometry, provider):
                fitted = fixed + per_layer * row["layers"]
                assert fitted == pytest.approx(row[column], rel=1e-6, abs=1e-9)

    def at_32(provider: str) -> float:
        key = f"llava/{provider}/step_cpu_s"
        return summary[f"{key}/fixed"] + 32 * summary[f"{key}/per_layer"]

    extrapolated = summary["llava/cagul_input/step_cpu_s/vs_lora_at_32_layers_extrapolated"]
    assert extrapolated == pytest.approx(at_32("cagul_input") / at_32("lora_graddiff"))
    assert summary["llava/2_layers/cagul_input/cpu_time_vs_lora"] > 0

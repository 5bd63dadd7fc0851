"""``benchmarks/bench_cagul_step.py --quick`` runs end to end at tiny sizes and writes its
CSV, JSON and PNG outputs with the providers' parameter and optimizer-state counts."""

from __future__ import annotations

import csv
import json

from benchmarks import bench_cagul_step as bench

PROVIDERS = {"cagul_input", "cagul_inline", "lora_graddiff", "full_graddiff"}
VARIANTS = {"vanilla", "gate_off", "gate_on_input", "gate_on_inline"}


def test_quick_run_writes_every_output(tmp_path):
    summary = bench.main(["--quick", "--out", str(tmp_path), "--layers", "2"])
    files = {p.name for p in tmp_path.iterdir()}
    for stem in ("cagul_step_train_cpu", "cagul_step_inference_cpu"):
        assert {f"{stem}.csv", f"{stem}.json", f"{stem}.png"} <= files
        assert (tmp_path / f"{stem}.png").stat().st_size > 0
    with open(tmp_path / "cagul_step_train_cpu.csv") as f:
        train = list(csv.DictReader(f))
    assert {(r["geometry"], r["provider"]) for r in train} == {
        (g, p) for g in bench.QUICK for p in PROVIDERS
    }
    for geometry, geo in bench.QUICK.items():
        rows = {r["provider"]: r for r in train if r["geometry"] == geometry}
        lora_per_layer = 16 * (
            2 * 2 * geo.hidden  # q, o: hidden -> hidden
            + 2 * (geo.hidden + geo.kv_heads * geo.hidden // geo.heads)  # k, v
            + 3 * (geo.hidden + geo.mlp)  # gate, up, down
        )
        assert int(rows["lora_graddiff"]["trainable_params"]) == 2 * lora_per_layer
        # AdamW keeps two fp32 moments per trainable parameter (+ a step counter each).
        for name, row in rows.items():
            state = int(row["optimizer_state_bytes"])
            assert (
                8 * int(row["trainable_params"]) <= state < 8 * int(row["trainable_params"]) + 4096
            ), name
        h, rank, disc = geo.hidden, 64, 128  # CagulConfig's encoder_rank, discriminator_hidden
        encoder = 2 * h * rank + rank + h
        discriminator = (h + 1) * disc + (disc + 1) * disc + disc + 1
        for name in ("cagul_input", "cagul_inline"):
            assert int(rows[name]["trainable_params"]) == encoder + discriminator
        assert int(rows["full_graddiff"]["trainable_params"]) > geo.vocab * geo.hidden * 2
        assert all(float(r["step_s"]) > 0 for r in rows.values())
    with open(tmp_path / "cagul_step_inference_cpu.csv") as f:
        infer = list(csv.DictReader(f))
    assert {r["variant"] for r in infer} == VARIANTS
    assert {(r["phase"], r["batch"]) for r in infer} == {
        (p, b) for p in ("prefill", "prefill+32") for b in ("1", "2")
    }
    meta = json.loads((tmp_path / "cagul_step_summary_cpu.json").read_text())
    assert meta["machine"]["cpu"] and meta["settings"]["layers"] == 2
    assert meta["ratios"] == summary
    assert summary["input_bound"] == 1 + (1 + 1) / 2 + 0.05  # L = 1 of 2 built layers
    for key in ("llava/cagul_inline/time_vs_lora", "qwen2_vl/gate_off/prefill/b1/v32"):
        assert summary[key] > 0

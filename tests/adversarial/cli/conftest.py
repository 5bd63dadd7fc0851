"""Fixtures for the CLI half of the adversarial suite: a tiny LLaVA checkpoint, a JSONL
data set, a CAGUL adapter with a training checkpoint and a LoRA baseline adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_vlm as tv
from cli_world import CliWorld, write_jsonl_data


@pytest.fixture(scope="session")
def cli_world(tmp_path_factory) -> CliWorld:
    from cagul import CagulConfig, CagulModel
    from cagul.baselines import UnlearningBaseline, lora_config
    from cagul.data import VLMCollator, load_jsonl
    from cagul.train import CagulMethod, CagulTrainer

    root = tmp_path_factory.mktemp("cli_world")
    vlm, processor = tv.llava(layers=2)
    vlm.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    data = write_jsonl_data(root / "data")
    settings = {"prompt_template": tv.LLAVA_TEMPLATE, "layer": 1, "encoder_rank": 8}
    (root / "config.json").write_text(json.dumps(settings))

    config = CagulConfig(**settings, steps=1, batch_size=2)
    model = CagulModel(vlm, config)
    trainer = CagulTrainer(
        CagulMethod(model),
        load_jsonl(data),
        VLMCollator(processor, config),
        config,
        output_dir=str(root / "adapter"),
        progress=False,
    )
    trainer.train()
    baseline_vlm, _ = tv.llava(layers=2)
    UnlearningBaseline(baseline_vlm, "ga", config, lora_config(2)).save_pretrained(
        str(root / "lora")
    )
    return CliWorld(
        root=root,
        model=root / "model",
        data=data,
        image=root / "data" / "img" / "0.png",
        config=root / "config.json",
        adapter=root / "adapter",
        checkpoint=Path(trainer.latest_checkpoint()),
        lora=root / "lora",
    )

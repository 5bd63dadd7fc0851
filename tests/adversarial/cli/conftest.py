"""Fixtures for the CLI half of the adversarial suite: a tiny LLaVA checkpoint, a JSONL
data set, a CAGUL adapter with a training checkpoint and a LoRA baseline adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cagul_demo import tiny_vlm as tv
from cli_world import CliWorld, write_jsonl_data


@pytest.fixture(scope="session")
def cli_world(tmp_path_factory) -> CliWorld:
    from cagul import CagulConfig, CagulModel
    from cagul.data import load_jsonl
    from cagul.methods import get_method
    from cagul.methods.finetune import lora_config
    from cagul.training import CagulTrainer, UnlearningArguments

    root = tmp_path_factory.mktemp("cli_world")
    vlm, processor = tv.llava(layers=2)
    vlm.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    data = write_jsonl_data(root / "data")
    settings = {"prompt_template": tv.LLAVA_TEMPLATE, "layer": 1, "encoder_rank": 8}
    (root / "config.json").write_text(json.dumps(settings))

    training = UnlearningArguments(steps=1, batch_size=2)
    method = get_method("cagul")(CagulModel(vlm, CagulConfig(**settings)), training)
    trainer = CagulTrainer(
        method,
        load_jsonl(data),
        method.collator(processor),
        training,
        output_dir=str(root / "adapter"),
        progress=False,
    )
    trainer.train()
    baseline_vlm, _ = tv.llava(layers=2)
    baseline = get_method("ga")(
        baseline_vlm, training, lora_config(2), prompt_template=tv.LLAVA_TEMPLATE
    )
    baseline.save_pretrained(str(root / "lora"))
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

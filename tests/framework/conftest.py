"""Fixtures of the framework tests: a tiny LLaVA checkpoint directory and JSONL data."""

from __future__ import annotations

import json
import os

import pytest
from cagul_demo import tiny_vlm as tv
from PIL import Image


@pytest.fixture(scope="session")
def cli_setup(tmp_path_factory):
    """A tiny LLaVA checkpoint directory (model + processor) and a JSONL data set."""
    root = tmp_path_factory.mktemp("cli")
    vlm, processor = tv.llava()
    vlm.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    os.makedirs(root / "data" / "img")
    with open(root / "data" / "train.jsonl", "w") as f:
        for i, s in enumerate(tv.dataset(n_people=4, n_forget=2, poses=1)):
            name = f"img/{i}.png"
            Image.fromarray(s["image"].permute(1, 2, 0).numpy()).save(root / "data" / name)
            f.write(json.dumps({**s, "image": name}) + "\n")
    config = {"prompt_template": tv.LLAVA_TEMPLATE, "layer": 1, "encoder_rank": 8}
    (root / "config.json").write_text(json.dumps(config))
    return root

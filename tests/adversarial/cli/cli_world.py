"""The inputs of the CLI adversarial suite (:class:`CliWorld`) and a runner for
``python -m cagul`` in a subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from cagul_demo import tiny_vlm as tv
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
QUESTION = "What is the name of this person?"


def cagul_env() -> dict[str, str]:
    """The environment of a ``python -m cagul`` run: this checkout on the path, one
    thread (the runs go side by side), third-party warnings off (stderr holds only what
    the command itself writes)."""
    paths = [str(ROOT / "python"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "TRANSFORMERS_VERBOSITY": "error",
    }


def run_cagul(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m cagul *args`` in a subprocess (text output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "cagul", *args],
        env=cagul_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclasses.dataclass(frozen=True)
class CliWorld:
    """Valid inputs of every command; each adversarial case spoils one of them."""

    root: Path
    model: Path  # a tiny LLaVA checkpoint directory (model + processor)
    data: Path  # a JSONL data set (images in data/img/)
    image: Path  # one of its images
    config: Path  # a CagulConfig JSON for the tiny model
    adapter: Path  # a CAGUL adapter, and the training run that wrote it
    checkpoint: Path  # that run's checkpoint directory
    lora: Path  # a LoRA baseline adapter

    def train(self, *extra: str, data=None, output=None, config=None) -> list[str]:
        """``train`` arguments: one step on the JSONL data (or ``data``)."""
        return ["train", "--model", str(self.model), "--data", str(data or self.data),
                "--config", str(config or self.config),
                "--output", str(output or self.root / "out"),
                "--set", "steps=1", "--set", "batch_size=2", "--no-progress", *extra]  # fmt: skip

    def eval(self, *extra: str, data=None) -> list[str]:
        """``eval`` arguments: the tiny model on the JSONL data (or ``data``)."""
        return ["eval", "--model", str(self.model), "--data", str(data or self.data),
                "--set", f"prompt_template={json.dumps(tv.LLAVA_TEMPLATE)}",
                "--max-new-tokens", "1", "--no-progress", *extra]  # fmt: skip

    def generate(self, *extra: str, image=None, model=None) -> list[str]:
        """``generate`` arguments: one token about the image (or ``image``)."""
        return ["generate", "--model", str(model or self.model),
                "--image", str(image or self.image),
                "--question", QUESTION, "--max-new-tokens", "1", *extra]  # fmt: skip


def write_jsonl_data(directory: Path, n_people: int = 2) -> Path:
    """A JSONL data set (forget + retain samples, PNG images under ``img/``)."""
    (directory / "img").mkdir(parents=True)
    path = directory / "train.jsonl"
    with open(path, "w") as f:
        for i, s in enumerate(tv.dataset(n_people=n_people, n_forget=1, poses=1)):
            name = f"img/{i}.png"
            Image.fromarray(s["image"].permute(1, 2, 0).numpy()).save(directory / name)
            f.write(json.dumps({**s, "image": name}) + "\n")
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming ``width x height`` RGB pixels, no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")

"""``CagulConfig`` (what an adapter is) and ``UnlearningArguments`` (how it trains): JSON
round trip, validation naming the field (real type hints), adapters of the first format,
and the checks on a saved adapter's contents (issue 15 items 6 and 7b)."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch
from cagul import CagulConfig, CagulModel, UnlearningArguments
from cagul.training.arguments import parse_settings
from cagul_demo import tiny_vlm as tv
from safetensors.torch import load_file, save_file

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapter_v0")


def test_config_json_round_trip(tmp_path):
    config = CagulConfig(k=5, ratio=None, mode="inline", layer=4, backend="reference")
    assert CagulConfig.from_json(config.to_json()) == config
    config.save(tmp_path)  # a directory -> cagul_config.json
    assert CagulConfig.load(tmp_path) == config
    config.save(tmp_path / "c.json")
    assert CagulConfig.load(tmp_path / "c.json") == config
    assert config.replace(gate_threshold=0.7).gate_threshold == 0.7
    args = UnlearningArguments(forget_loss="npo", lr=3e-4, seed=3)
    assert UnlearningArguments.from_dict(json.loads(args.to_json())) == args


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"k": 4}, ValueError, "exactly one of k and ratio"),
        ({"ratio": None}, ValueError, "exactly one of k and ratio"),
        ({"ratio": 0.0}, ValueError, "ratio"),
        ({"ratio": 1.5}, ValueError, "ratio"),
        ({"k": 0, "ratio": None}, ValueError, "k must be"),
        ({"mode": "output"}, ValueError, "mode"),
        ({"query": "everything"}, ValueError, "query"),
        ({"encoder_activation": "tanh"}, ValueError, "encoder_activation"),
        ({"gate_threshold": 1.0}, ValueError, "gate_threshold"),
        ({"layer": -1}, ValueError, "layer"),
        ({"backend": "bogus"}, ValueError, "backend"),
        ({"prompt_template": "{question}"}, ValueError, "prompt_template"),
        ({"prompt_template": "{image} {question} {who}"}, ValueError, r"placeholders \['who'\]"),
        ({"prompt_template": "{image} {question"}, ValueError, "prompt_template"),
        ({"layer": "2"}, TypeError, "layer must be int"),
        ({"layer": True}, TypeError, "layer"),
        ({"hidden_size": 2.5}, TypeError, "hidden_size must be int | None"),
        ({"ratio": float("nan")}, ValueError, "finite"),
        ({"hidden": 3}, ValueError, "unknown fields"),
        ({"lr": 1e-3}, ValueError, "unknown fields"),  # a training argument
    ],
)  # fmt: skip
def test_config_rejects_bad_values(changes, error, match):
    with pytest.raises(error, match=match):
        CagulConfig.from_dict({**CagulConfig().to_dict(), **changes})


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"forget_loss": "kl"}, ValueError, "forget_loss"),
        ({"forget_loss": "ga"}, ValueError, "forget_loss"),  # CAGUL's ascent is bounded_ga
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": True}, TypeError, "steps"),
        ({"retain_weight": -1.0}, ValueError, "retain_weight"),
        ({"lr": float("nan")}, ValueError, "finite"),
        ({"max_grad_norm": 0.0}, ValueError, "max_grad_norm"),
        ({"refusal": " "}, ValueError, "refusal"),
        ({"reference_cache_mb": -1}, ValueError, "reference_cache_mb must be >= 0"),
        ({"reference_cache_mb": 8, "fsdp_config": "f.json"}, ValueError, "reference_cache_mb"),
        ({"layer": 1}, ValueError, "unknown fields"),  # an adapter field
    ],
)
def test_arguments_reject_bad_values(changes, error, match):
    with pytest.raises(error, match=match):
        UnlearningArguments.from_dict({**UnlearningArguments().to_dict(), **changes})


def test_settings_split_and_bad_json(tmp_path):
    config, args = parse_settings({"layer": 2, "lr": 0.1})
    assert (config.layer, args.lr) == (2, 0.1)
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['max_new_tokens'\]"):
        parse_settings({"max_new_tokens": 8})
    with pytest.raises(ValueError, match="backend"):
        parse_settings({"backend": "bogus"})
    with pytest.raises(ValueError, match="invalid JSON"):
        CagulConfig.from_json("{mode: input")
    with pytest.raises(TypeError, match="JSON object"):
        CagulConfig.from_json("[1, 2]")
    with pytest.raises(FileNotFoundError, match="no config file"):
        CagulConfig.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------- saved adapters


def test_adapter_of_the_first_format_loads():
    """The committed fixture was written by the code before the config split (training
    fields in its config): it loads, with its weights and its adapter settings."""
    with open(os.path.join(FIXTURE, "cagul_config.json")) as f:
        assert "lr" in json.load(f)  # the old format
    vlm, _ = tv.llava()
    model = CagulModel.from_pretrained(vlm, FIXTURE)
    config = model.config
    assert (config.mode, config.ratio, config.encoder_rank, config.discriminator_hidden) == (
        "inline", 0.25, 4, 8
    )  # fmt: skip
    assert config.prompt_template == tv.LLAVA_TEMPLATE and config.cagul_version is None
    saved = load_file(os.path.join(FIXTURE, "cagul_modules.safetensors"))
    for name, value in model.trainable_state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_saved_adapter_records_version_and_base_model(tmp_path):
    vlm, _ = tv.llava()
    vlm.config._name_or_path = "ckpt/llava-a"
    model = CagulModel(vlm, CagulConfig(prompt_template=tv.LLAVA_TEMPLATE, encoder_rank=4))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "cagul_config.json").read_text())
    assert saved["base_model_name_or_path"] == "ckpt/llava-a"
    assert isinstance(saved["cagul_version"], str) and saved["cagul_version"]
    assert not {"lr", "steps", "forget_loss", "seed"} & saved.keys()  # no training fields
    same, _ = tv.llava()
    same.config._name_or_path = "ckpt/llava-a"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CagulModel.from_pretrained(same, tmp_path)
    other, _ = tv.llava()
    other.config._name_or_path = "ckpt/llava-b"
    with pytest.warns(UserWarning, match="trained on 'ckpt/llava-a'"):
        CagulModel.from_pretrained(other, tmp_path)


def _broken_copy(tmp_path, edit_config=None, edit_weights=None) -> str:
    path = str(tmp_path / "adapter")
    shutil.copytree(FIXTURE, path)
    if edit_config is not None:
        config_path = os.path.join(path, "cagul_config.json")
        with open(config_path) as f:
            data = json.load(f)
        edit_config(data)
        with open(config_path, "w") as f:
            json.dump(data, f)
    if edit_weights is not None:
        weights_path = os.path.join(path, "cagul_modules.safetensors")
        state = load_file(weights_path)
        edit_weights(state)
        save_file(state, weights_path)
    return path


def test_saved_adapter_needs_every_behaviour_field(tmp_path):
    path = _broken_copy(tmp_path, edit_config=lambda d: d.pop("layer"))
    with pytest.raises(ValueError, match=r"the saved config has no \['layer'\]"):
        CagulModel.from_pretrained(tv.llava()[0], path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s["encoder.w1"].fill_(float("nan")), "encoder.w1 has non-finite values"),
        (lambda s: s.update({"encoder.w2": s["encoder.w2"].half()}), "encoder.w2 has dtype"),
    ],
)
def test_saved_adapter_tensors_are_checked(tmp_path, edit, match):
    path = _broken_copy(tmp_path, edit_weights=edit)
    with pytest.raises(ValueError, match=match):
        CagulModel.from_pretrained(tv.llava()[0], path)

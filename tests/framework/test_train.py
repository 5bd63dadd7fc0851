"""cagul training: unlearning on a small generated forget / retain set, frozen VLM, loss
definitions at initialisation, checkpoint / resume, eval hook, 2-process DDP and FSDP
(gloo) and the CLI (subprocess)."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from cagul import CagulConfig, CagulModel, UnlearningArguments
from cagul.cli import main
from cagul.config import MODES
from cagul.errors import InputError
from cagul.evaluation.diagnostics import evaluate
from cagul.methods import Method
from cagul.methods.cagul import CagulMethod
from cagul.training import CagulTrainer
from cagul.training.arguments import parse_settings
from cagul.training.fsdp import check_fsdp_support, read_fsdp_config
from cagul_demo import tiny_vlm as tv
from cagul_demo.runner import weights_hash as vlm_hash
from cagul_demo.tiny_vlm import FAMILIES
from cagul_demo.tiny_vlm import tiny_cagul as build
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FSDP_CONFIG = os.path.join(ROOT, "examples", "fsdp_config.json")


def full_batch_metrics(method: CagulMethod, collate, data) -> dict[str, float]:
    with torch.no_grad():
        return method(collate(data))[1]


def test_training_unlearns_forget_set_keeps_retain_and_vlm():
    vlm, model, collate, data, args = build(
        "llava", "input", steps=30, batch_size=8, lr=2e-2, encoder_rank=32, discriminator_hidden=32
    )
    method = CagulMethod(model, args)
    before_hash = vlm_hash(vlm)
    before = full_batch_metrics(method, collate, data)
    history = CagulTrainer(method, data, collate, args, progress=False).train()
    after = full_batch_metrics(method, collate, data)
    assert vlm_hash(vlm) == before_hash  # every VLM weight bit-identical
    assert [r["step"] for r in history] == [10, 20, 30]
    # The forget loss (NLL of the refusal on forget images) drops by a clear margin ...
    assert after["forget_nll"] < 0.6 * before["forget_nll"], (before, after)
    # ... while the retain answers keep the pass-through distribution.
    assert after["retain_kl"] < 0.1, after
    # The discriminator separates forget from retain images.
    prompts = collate.prompts(data)
    prob = model.forget_probability(**prompts)
    forget = torch.tensor([s["is_forget"] for s in data])
    assert prob[forget].min() > model.config.gate_threshold > prob[~forget].max()
    # At inference (gated by the discriminator): forget images get the refusal, retain
    # answers are exactly the wrapped model's.
    metrics = evaluate(model, data, collate.processor)
    assert metrics["gate_rate_forget"] == 1.0 and metrics["gate_rate_retain"] == 0.0
    assert metrics["forget_refusal_nll"] < 0.6 * before["forget_nll"]
    assert metrics["retain_answer_nll"] == metrics["retain_answer_nll_base"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_both_modes_train_and_generate(family, mode):
    vlm, model, collate, data, args = build(family, mode, steps=6, batch_size=8, lr=2e-2)
    method = CagulMethod(model, args)
    before_hash = vlm_hash(vlm)
    before = full_batch_metrics(method, collate, data)
    CagulTrainer(method, data, collate, args, progress=False).train()
    after = full_batch_metrics(method, collate, data)
    assert vlm_hash(vlm) == before_hash
    assert after["loss"] < before["loss"]
    assert after["forget_nll"] < before["forget_nll"]
    prompts = collate.prompts(data[:4])
    out = model.generate(**prompts, max_new_tokens=3, do_sample=False)
    assert out.shape == (4, prompts["input_ids"].shape[1] + 3)


def test_bf16_autocast_training_runs():
    """autocast="bf16" (CPU here): the ops get bf16 activations, the modules stay fp32."""
    vlm, model, collate, data, args = build(
        "llava", "input", steps=2, batch_size=4, autocast="bf16"
    )
    before_hash = vlm_hash(vlm)
    trainer = CagulTrainer(CagulMethod(model, args), data, collate, args, progress=False)
    assert trainer.args.bf16 and trainer.accelerator.mixed_precision == "bf16"
    history = trainer.train()
    assert math.isfinite(history[-1]["loss"]) and vlm_hash(vlm) == before_hash
    assert model.encoder.w2.dtype == torch.float32 and model.encoder.w2.abs().max() > 0


@pytest.mark.parametrize("mode", MODES)
def test_gradient_checkpointing_matches_plain_run(mode):
    """gradient_checkpointing=True recomputes the wrapped VLM's activations in backward:
    the same losses and trained weights as without it, the VLM bit-identical."""
    runs = []
    for checkpointing in (False, True):
        vlm, model, collate, data, args = build(
            "llava", mode, steps=3, batch_size=4, log_every=1, gradient_checkpointing=checkpointing
        )
        before_hash = vlm_hash(vlm)
        history = CagulTrainer(
            CagulMethod(model, args), data, collate, args, progress=False
        ).train()
        assert vlm.is_activation_checkpointing == checkpointing
        assert vlm_hash(vlm) == before_hash
        runs.append(([r["loss"] for r in history], model.trainable_state_dict()))
    (plain_losses, plain), (checkpointed_losses, checkpointed) = runs
    assert checkpointed_losses == pytest.approx(plain_losses, rel=1e-5)
    assert plain["encoder.w2"].abs().max() > 0  # it trained
    for name, value in plain.items():
        torch.testing.assert_close(checkpointed[name], value, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_inline_mode():
    _, model, collate, data, args = build("llava", "inline")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = CagulMethod(model, args)(collate(data[:4]))
    assert torch.isfinite(loss)


def _reference_row_nll(logits, labels):
    """Mean next-token cross entropy of each row over its labelled tokens."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return ce.sum(1) / (labels != -100).sum(1)


@pytest.mark.parametrize("forget_loss", ["idk", "bounded_ga", "npo"])
def test_losses_at_initialisation(forget_loss):
    """Zero-init encoder = pass-through model: KL is 0, NPO is (2 / beta) log 2, bounded GA
    and IdK are functions of the wrapped model's NLL."""
    vlm, model, collate, data, args = build(
        "llava", forget_loss=forget_loss, npo_beta=0.5, ascent_bound=6.0
    )
    batch = collate(data[:3] + data[-3:])
    _, metrics = CagulMethod(model, args)(batch)
    inputs = dict(batch["inputs"])
    labels = inputs.pop("labels")
    with torch.no_grad():
        nll = _reference_row_nll(vlm(**inputs).logits, labels)
    forget = batch["is_forget"]
    assert metrics["retain_kl"] == 0.0
    assert metrics["forget_nll"] == pytest.approx(float(nll[forget].mean()), rel=1e-5)
    want = {
        "idk": float(nll[forget].mean()),
        "bounded_ga": float(F.relu(6.0 - nll[forget]).mean()),
        "npo": 2.0 / 0.5 * math.log(2.0),
    }[forget_loss]
    assert metrics["forget_loss"] == pytest.approx(want, rel=1e-5)
    assert 0.0 <= metrics["disc_acc"] <= 1.0 and metrics["disc_bce"] > 0


def _trained_state(tmp_path, name, steps, resume=False, eval_fn=None, **cfg):
    _, model, collate, data, args = build(
        "llava", steps=steps, batch_size=2, grad_accum=2, lr=1e-2, encoder_rank=8, **cfg
    )
    trainer = CagulTrainer(
        CagulMethod(model, args),
        data,
        collate,
        args,
        output_dir=str(tmp_path / name),
        progress=False,
        eval_fn=eval_fn,
    )
    history = trainer.train(resume=resume)
    return model.trainable_state_dict(), history


def test_resume_matches_uninterrupted_run(tmp_path):
    """A run resumed from the step-2 checkpoint of a 4-step run ends bit-identical to it
    (mid-epoch data position, optimizer and schedule state restored)."""
    cfg = dict(lr_schedule="cosine", warmup_steps=1, save_every=2, log_every=1)
    straight, _ = _trained_state(tmp_path, "a", steps=4, **cfg)
    checkpoint = tmp_path / "a" / "checkpoints" / "step-0000002"
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["step-0000002", "step-0000004"]
    resumed, history = _trained_state(tmp_path, "b", steps=4, resume=str(checkpoint), **cfg)
    assert [r["step"] for r in history] == [3, 4]
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    # resume=True picks the latest checkpoint: nothing left to do.
    again, history = _trained_state(tmp_path, "b", steps=4, resume=True, **cfg)
    assert history == [] and all(torch.equal(v, resumed[k]) for k, v in again.items())
    # The final adapter loads back.
    vlm, _ = tv.llava()
    loaded = CagulModel.from_pretrained(vlm, tmp_path / "b")
    for name, value in loaded.trainable_state_dict().items():
        assert torch.equal(value, resumed[name]), name
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 4]


def test_reference_cache_run_equals_a_run_without_it(tmp_path):
    """Two epochs with ``reference_cache_mb``: from the second on every retain sample's
    reference comes from the cache, and the run ends where the run without it ends (to
    float tolerance: a cached sample was computed in another batch, with other padding)."""
    states, methods = {}, {}
    for name, cache_mb in (("plain", 0), ("cached", 16)):
        _, model, collate, data, args = build(
            "llava", steps=6, batch_size=8, lr=1e-2, encoder_rank=8, reference_cache_mb=cache_mb
        )
        assert math.ceil(len(data) / 8) * 2 <= 6  # two epochs or more
        methods[name] = CagulMethod(model, args)
        trainer = CagulTrainer(
            methods[name], data, collate, args, output_dir=str(tmp_path / name), progress=False
        )
        trainer.train()
        states[name] = model.trainable_state_dict()
    cache = methods["cached"].reference_cache
    assert methods["plain"].reference_cache is None
    assert len(cache) == sum(not s["is_forget"] for s in data) and cache.hits >= len(cache)
    for name, value in states["plain"].items():
        torch.testing.assert_close(states["cached"][name], value, rtol=1e-4, atol=1e-6)


def test_checkpoints_hold_no_pickle_and_a_planted_pickle_is_never_run(tmp_path):
    """Issue 15 item 1: optimizer / scheduler / RNG states are safetensors + JSON; a pickle
    planted in a checkpoint (as the old training_state.pt) is never unpickled on resume."""
    _trained_state(tmp_path, "p", steps=2, save_every=1)
    checkpoint = tmp_path / "p" / "checkpoints" / "step-0000001"
    names = sorted(os.listdir(checkpoint))
    assert names == [
        "trainable.safetensors",
        "trainer_state.json",
        "training_state.json",
        "training_state.safetensors",
    ]
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(checkpoint / "training_state.pt", "wb") as f:
        pickle.dump(Exploit(), f)
    _trained_state(tmp_path, "p", steps=2, resume=str(checkpoint))
    assert not marker.exists()


def test_resume_skips_a_checkpoint_killed_mid_write(tmp_path, capsys):
    """Issue 15 item 8: a checkpoint is written to a temporary directory and renamed when
    complete; a ``step-*`` directory missing files (a write killed in place) is skipped
    and resume says which checkpoint it loads."""
    straight, _ = _trained_state(tmp_path, "k", steps=2, save_every=1)
    checkpoints = tmp_path / "k" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["step-0000001", "step-0000002"]  # no temp dirs
    (checkpoints / "step-0000002" / "trainer_state.json").unlink()  # killed mid-write
    (checkpoints / ".step-0000003.tmp-x").mkdir()  # killed before its rename
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint"):
        resumed, history = _trained_state(tmp_path, "k", steps=2, resume=True)
    assert f"resuming from {checkpoints / 'step-0000001'}" in capsys.readouterr().out
    assert [r["step"] for r in history] == [2]
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_save_pretrained_is_atomic(tmp_path, monkeypatch):
    """Issue 15 item 8: a save that dies mid-write leaves the previous adapter loadable and
    its other files (checkpoints, logs) in place."""
    _vlm, model, _, _, _ = build("llava")
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "log.jsonl").write_text("{}\n")
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    with torch.no_grad():
        model.encoder.w2.add_(1.0)

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # a kill during the weights' write

    monkeypatch.setattr("cagul.model.save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "adapter")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["adapter"]  # no temporary directory left
    loaded = CagulModel.from_pretrained(tv.llava()[0], tmp_path / "adapter")
    for name, value in loaded.trainable_state_dict().items():
        assert torch.equal(value, before[name]), name
    model.save_pretrained(tmp_path / "adapter")  # a complete save replaces it
    assert (tmp_path / "adapter" / "log.jsonl").read_text() == "{}\n"
    loaded = CagulModel.from_pretrained(tv.llava()[0], tmp_path / "adapter")
    assert torch.equal(loaded.encoder.w2, model.encoder.w2)


def test_eval_hook_and_logging(tmp_path):
    calls = []

    def eval_fn(method, step):
        assert not torch.is_grad_enabled() and not method.training
        calls.append(step)
        return {"score": float(step)}

    _, history = _trained_state(tmp_path, "e", steps=4, eval_fn=eval_fn, eval_every=2, log_every=1)
    assert calls == [2, 4]
    assert history[1]["eval/score"] == 2.0 and history[-1] == {"step": 4, "eval/score": 4.0}
    for key in ("loss", "forget_loss", "retain_kl", "disc_bce", "disc_acc", "lr", "grad_norm"):
        assert key in history[0]


def test_trainer_bad_input():
    _, model, collate, data, args = build("llava")
    method = CagulMethod(model, args)
    assert isinstance(method, Method)
    with pytest.raises(ValueError, match="dataset is empty"):
        CagulTrainer(method, [], collate, args)
    with pytest.raises(TypeError, match="implementing Method"):
        CagulTrainer(torch.nn.Linear(2, 2), data, collate, args)
    with pytest.raises(TypeError, match="CagulModel"):
        CagulMethod(model.vlm, args)
    with pytest.raises(TypeError, match="UnlearningArguments"):
        CagulTrainer(method, data, collate, model.config)
    trainer = CagulTrainer(method, data, collate, args)
    with pytest.raises(FileNotFoundError, match="incomplete checkpoint"):
        trainer.train(resume="/nonexistent")


def _env() -> dict[str, str]:
    paths = [os.path.join(ROOT, "python"), ROOT, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _torchrun_worker(scenario: str, out) -> subprocess.CompletedProcess:
    """tests/framework/torchrun_worker.py under a 2-process CPU torchrun (gloo)."""
    worker = os.path.join(ROOT, "tests", "framework", "torchrun_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    env = {**_env(), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [*cmd, worker, scenario, str(out)], env=env, capture_output=True, text=True, timeout=600
    )


def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    proc = _torchrun_worker("ddp", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert rank0["encoder.w2"].abs().max() > 0  # it trained


# ---------------------------------------------------------------------- FSDP


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """The FSDP runs of torchrun_worker.py (2 processes, gloo): ``(out, settings)``."""
    out = tmp_path_factory.mktemp("fsdp")
    proc = _torchrun_worker("fsdp", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "settings.json").read_text())


def _one_process(settings: dict, steps: int, resume: str | bool = False, **changes):
    """The method of ``settings`` (rank 0's initialisation) trained in this process over
    the FSDP runs' global batch (batch 2 x 4 micro-batches = 2 processes x batch 2 x 2);
    ``(trainable parameters by name, history)``."""
    vlm, processor = tv.llava(seed=0)
    torch.manual_seed(100)
    arguments = {**settings["arguments"], "grad_accum": 4, "steps": steps, **changes}
    config, args = parse_settings({**settings["config"], **arguments})
    method = CagulMethod(CagulModel(vlm, config), args)
    samples = tv.dataset()[:4]
    diagnostics = lambda method, step: evaluate(method.model, samples, processor)
    trainer = CagulTrainer(
        method, tv.dataset(), method.collator(processor), args, eval_fn=diagnostics, progress=False
    )
    history = trainer.train(resume=resume)
    return {n: p.detach() for n, p in method.named_parameters() if p.requires_grad}, history


def _checkpoint(out, run: str, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / run / "checkpoints" / f"step-{step:07d}" / "trainable.safetensors")


def _log(out, run: str) -> list[dict]:
    return [json.loads(line) for line in (out / run / "log.jsonl").read_text().splitlines()]


def _assert_states_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp_matches_one_process_on_the_same_global_batch(fsdp_run):
    """2-process FSDP (gradient checkpointing on, every step clipped) ends with the
    trainable weights of one process over the same global batch, with the same log (eval
    hook included); the final adapter holds them."""
    out, settings = fsdp_run
    want, history = _one_process(settings, steps=4)
    fsdp = _checkpoint(out, "straight", 4)
    _assert_states_close(fsdp, want)
    assert max(float((fsdp[n] - _checkpoint(out, "straight", 2)[n]).abs().max()) for n in fsdp) > 0
    log = _log(out, "straight")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 4]
    assert "eval/disc_acc" in log[1] and "eval/disc_acc" in log[-1]
    for got, want in zip(log, history, strict=True):
        assert got == pytest.approx(want, rel=1e-4)
    assert min(r["grad_norm"] for r in log[:4]) > settings["arguments"]["max_grad_norm"]  # clips
    adapter = load_file(out / "straight" / "cagul_modules.safetensors")
    assert {f"model.{k}" for k in adapter} == fsdp.keys()
    for name, value in adapter.items():
        assert torch.equal(value, fsdp[f"model.{name}"]), name


def test_fsdp_shards_frozen_weights_and_optimises_only_the_trainable_ones(fsdp_run):
    """Every frozen weight is a DTensor sharded on dim 0 (the two local shards add up to
    it); the trainable ones (the adapter) stay whole and are exactly what AdamW holds."""
    out, settings = fsdp_run
    config = CagulConfig(**settings["config"])
    method = CagulMethod(CagulModel(tv.llava(seed=0)[0], config), UnlearningArguments())
    frozen = {n: p.shape for n, p in method.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    ranks = [json.loads((out / f"shards{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["optimizer_holds_the_trainable_parameters"]
        assert rank["plain"] == trainable
        assert rank["parameters"].keys() == frozen.keys()
    for name, shape in frozen.items():
        shards = [rank["parameters"][name] for rank in ranks]
        assert all(s["placements"] == ["S(0)"] and s["shape"] == list(shape) for s in shards)
        assert [s["local_shape"][1:] for s in shards] == [list(shape[1:])] * 2, name
        assert sum(s["local_shape"][0] for s in shards) == shape[0], name
        assert max(s["local_shape"][0] for s in shards) < shape[0], name  # really split


def test_fsdp_resume_equals_uninterrupted_run(fsdp_run):
    """A 2-process FSDP run resumed from the step-2 checkpoint of another ends
    bit-identical to it, with the same log."""
    out, _ = fsdp_run
    straight, resumed = _checkpoint(out, "straight", 4), _checkpoint(out, "resumed", 4)
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    assert _log(out, "resumed") == _log(out, "straight")[2:]


def test_fsdp_checkpoint_resumes_in_one_process(fsdp_run):
    """The FSDP step-2 checkpoint (full tensors, optimizer state by parameter name) resumed
    in one process over the same global batch ends where the FSDP run did."""
    out, settings = fsdp_run
    checkpoint = str(out / "straight" / "checkpoints" / "step-0000002")
    resumed, history = _one_process(settings, steps=4, resume=checkpoint)
    assert [r["step"] for r in history] == [3, 4, 4]
    _assert_states_close(resumed, _checkpoint(out, "straight", 4))


def test_fsdp_bf16_autocast(fsdp_run):
    """bf16 autocast under FSDP: the losses of one process with bf16 over the same batch,
    the adapter kept in fp32."""
    out, settings = fsdp_run
    result = json.loads((out / "bf16.json").read_text())
    _, history = _one_process(settings, steps=2, autocast="bf16", eval_every=0)
    assert result["mixed_precision"] == "bf16" and result["trainable_dtypes"] == ["torch.float32"]
    assert result["loss"] == pytest.approx([r["loss"] for r in history], rel=1e-5)


def test_fsdp_config_file_is_checked(tmp_path):
    """The shipped config names the decoder / vision layers; a bad file names the key; FSDP
    in a single process is refused."""
    settings = read_fsdp_config(FSDP_CONFIG)
    assert {"LlamaDecoderLayer", "Qwen2VLDecoderLayer"} <= set(settings.layer_classes)
    assert settings.reshard_after_forward is True
    bad = tmp_path / "fsdp.json"
    for text, message in (
        ('{"version": 2, "transformer_layer_cls_to_wrap": ["X"]}', "unknown keys \\['version'\\]"),
        ('{"transformer_layer_cls_to_wrap": []}', "transformer_layer_cls_to_wrap must be"),
        ('{"transformer_layer_cls_to_wrap": ["X"], "reshard_after_forward": 1}', "true or false"),
    ):
        bad.write_text(text)
        with pytest.raises(InputError, match=message):
            read_fsdp_config(bad)
    with pytest.raises(FileNotFoundError, match="fsdp_config: no file"):
        read_fsdp_config(tmp_path / "missing.json")
    _, model, collate, data, args = build("llava", fsdp_config=FSDP_CONFIG)
    with pytest.raises(ValueError, match="2 or more processes"):
        CagulTrainer(CagulMethod(model, args), data, collate, args)


def test_fsdp_names_the_versions_it_needs(monkeypatch):
    """FSDP alone needs a recent transformers / torch; the error names both versions."""
    import transformers

    check_fsdp_support()  # this environment has them
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(
        RuntimeError, match=r"needs transformers>=5\.24, this is transformers 5\.17"
    ):
        check_fsdp_support()
    monkeypatch.setattr(transformers, "__version__", "5.24.0.dev0")  # a dev build of 5.24 is fine
    check_fsdp_support()


# ---------------------------------------------------------------------- CLI


def test_cli_help_lists_the_settings_flags(capsys):
    """``train`` has a flag per CagulConfig and UnlearningArguments field, ``eval`` per
    CagulConfig field."""
    for command in ("train", "eval"):
        with pytest.raises(SystemExit) as exit:
            main([command, "--help"])
        assert exit.value.code == 0
        text = capsys.readouterr().out
        assert "CagulConfig fields:" in text and "--gate_threshold GATE_THRESHOLD" in text
        assert "--encoder_rank ENCODER_RANK, --encoder-rank ENCODER_RANK" in text
        assert (
            ("--lr LR" in text) == ("UnlearningArguments fields:" in text) == (command == "train")
        )
    assert "--fsdp_config FSDP_CONFIG" not in text  # eval's


def _cagul(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cagul", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_cli_train_generate_eval(cli_setup):
    """Settings from the --config file (layer, encoder_rank 8), flags (steps, encoder_rank
    4 over the file's) and --set (batch_size) all reach the run."""
    root = cli_setup
    out = root / "adapter"
    proc = _cagul(
        "train",
        "--model", str(root / "model"),
        "--data", str(root / "data" / "train.jsonl"),
        "--config", str(root / "config.json"),
        "--output", str(out),
        "--steps", "2",
        "--encoder-rank", "4",
        "--set", "batch_size=4",
        "--no-progress",
    )  # fmt: skip
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2 and math.isfinite(summary["loss"])
    assert {"cagul_modules.safetensors", "cagul_config.json", "log.jsonl"} <= set(os.listdir(out))
    saved = json.loads((out / "cagul_config.json").read_text())
    assert saved["encoder_rank"] == 4 and saved["layer"] == 1
    assert load_file(out / "cagul_modules.safetensors")["encoder.w1"].shape[1] == 4

    image = str(root / "data" / "img" / "0.png")
    for gate in ("auto", "on"):
        proc = _cagul(
            "generate",
            "--model", str(root / "model"),
            "--adapter", str(out),
            "--image", image,
            "--question", "What is the name of this person?",
            "--max-new-tokens", "3",
            "--gate", gate,
        )  # fmt: skip
        result = json.loads(proc.stdout)
        assert isinstance(result["answer"], str) and 0.0 <= result["forget_probability"] <= 1.0
        if gate != "auto":
            assert result["gated"] == (gate == "on")

    proc = _cagul(
        "eval",
        "--model", str(root / "model"),
        "--adapter", str(out),
        "--data", str(root / "data" / "train.jsonl"),
        "--output", str(root / "metrics.json"),
    )  # fmt: skip
    metrics = json.loads(proc.stdout)
    assert metrics == json.loads((root / "metrics.json").read_text())
    assert metrics["n_forget"] == 4 and metrics["n_retain"] == 4
    assert 0.0 <= metrics["disc_acc"] <= 1.0


def test_cli_errors(cli_setup, tmp_path, capsys):
    """Bad paths, configs and data: exit status 2 and a one-line message (in-process)."""
    root = cli_setup
    model, data = str(root / "model"), str(root / "data" / "train.jsonl")
    out = str(tmp_path / "o")
    train = ("train", "--model", model, "--data", data, "--output", out)

    def fails(*args: str) -> str:
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse errors
            code = e.code
        assert code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        return err

    assert "--model path does not exist" in fails(
        "train", "--model", str(tmp_path / "nope"), "--data", data, "--output", out
    )
    assert "mode must be one of" in fails(*train, "--set", "mode=sideways")
    assert "--set expects key=value" in fails(*train, "--set", "steps")
    assert "argument --lr: invalid float value: 'fast'" in fails(*train, "--lr", "fast")
    assert "gate_threshold must be in (0, 1), got 2.0" in fails(
        "eval", "--model", model, "--data", data, "--gate_threshold", "2", "--no-progress"
    )
    assert "steps is given both as --steps and by --set" in fails(
        *train, "--steps", "2", "--set", "steps=3"
    )
    (tmp_path / "bad.json").write_text('{"ratio": 2}')
    assert "ratio must be in (0, 1]" in fails(*train, "--config", str(tmp_path / "bad.json"))
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    assert "missing keys" in fails(
        "train", "--model", model, "--data", str(tmp_path / "bad.jsonl"), "--output", out
    )
    assert "no config.json" in fails(
        "eval", "--model", str(tmp_path), "--adapter", str(tmp_path), "--data", data
    )
    assert "--image path does not exist" in fails(
        "generate", "--model", model, "--image", str(tmp_path / "x.png"), "--question", "q"
    )
    assert "the following arguments are required: --question" in fails(
        "generate", "--model", model, "--image", str(root / "data" / "img" / "0.png")
    )

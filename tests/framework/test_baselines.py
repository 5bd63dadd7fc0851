"""Finetuning unlearning baselines (GA, GradDiff, KL, NPO, IdK, SimNPO, IdkDPO, RMU): the
registry, the losses on hand-computed examples, 8 training steps on a tiny VLM moving each
forget objective the intended way (full and LoRA), adapter round trip, CLI."""

from __future__ import annotations

import copy
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from cagul.cli import main
from cagul.data import VLMCollator
from cagul.evaluation.diagnostics import mean_answer_nll
from cagul.losses import masked_mean, npo_loss, per_row_mean, token_kl
from cagul.methods import baseline_names, get_method, method_names
from cagul.methods.finetune import is_lora_adapter, load_finetuned, lora_config
from cagul.training import CagulTrainer, UnlearningArguments
from cagul_demo import tiny_vlm as tv
from cagul_demo.runner import weights_hash as vlm_hash

from cagul_kernels.memory import PeakMemory

LOG = math.log


# ---------------------------------------------------------------------- loss definitions


def test_loss_primitives_hand_computed():
    assert npo_loss(torch.tensor([0.0]), 0.5).item() == pytest.approx(2 / 0.5 * LOG(2))
    # far above the reference NPO tends to gradient ascent on the log-ratio: 2 * log_ratio
    assert npo_loss(torch.tensor([50.0]), 1.0).item() == pytest.approx(100.0, rel=1e-6)
    ref = torch.tensor([[0.5, 0.5]]).log()
    model = torch.tensor([[0.25, 0.75]]).log()
    assert token_kl(ref, model).item() == pytest.approx(0.5 * LOG(2) + 0.5 * LOG(0.5 / 0.75))
    assert token_kl(ref, ref).item() == pytest.approx(0.0, abs=1e-7)
    values, row = torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 2])
    assert per_row_mean(values, row, 3).tolist() == [2.0, 0.0, 5.0]
    assert masked_mean(torch.tensor([1.0, 3.0]), torch.tensor([False, True])).item() == 3.0
    empty = masked_mean(torch.tensor([1.0, 3.0], requires_grad=True), torch.tensor([False, False]))
    assert empty.item() == 0.0 and empty.requires_grad


def test_registry_lists_every_method_file():
    assert method_names()[0] == "cagul"
    assert set(baseline_names()) == {
        "ga", "graddiff", "kl", "npo", "idk", "simnpo", "idkdpo", "rmu"
    }  # fmt: skip
    for name in method_names():
        assert get_method(name).name == name
    with pytest.raises(ValueError, match="unknown method 'forgetful'"):
        get_method("forgetful")


class TableLayer(torch.nn.Module):
    """A decoder layer whose output is a trainable table ``[B, S, D]``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, hidden):
        return self.table


class TableVLM(torch.nn.Module):
    """A 'VLM' whose logits are a trainable table ``[B, S, V]`` held by its language model
    (one decoder layer: its output is the table, the logits are its log)."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.language_model = torch.nn.Module()
        self.language_model.layers = torch.nn.ModuleList([TableLayer(probs.log())])
        self.vision = torch.nn.Linear(2, 2)  # not part of the language model: stays frozen
        self.lm_head = torch.nn.Identity()
        text = SimpleNamespace(hidden_size=probs.shape[-1])
        self.config = SimpleNamespace(get_text_config=lambda: text)

    @property
    def table(self) -> torch.nn.Parameter:
        return self.language_model.layers[0].table

    def get_decoder(self):
        return self.language_model

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, use_cache=False, logits_to_keep=0):
        logits = self.language_model.layers[0](input_ids)
        if isinstance(logits_to_keep, torch.Tensor):  # positions, as transformers models
            logits = logits[:, logits_to_keep]
        return SimpleNamespace(logits=logits)


# Sample 0 (forget) and sample 1 (retain) have a one-token answer (position 1, predicted at
# position 0): token 0 for the forget sample, token 1 for the retain sample.
LABELS = torch.tensor([[-100, 0], [-100, 1]])
# the refusal (IdkDPO's preferred answer) is token 1 for both
REFUSAL_LABELS = torch.tensor([[-100, 1], [-100, 1]])
REF_PROBS = torch.full((2, 2, 2), 0.5)  # the reference (model before unlearning)
MODEL_PROBS = torch.tensor([[[0.25, 0.75], [0.5, 0.5]], [[0.25, 0.75], [0.5, 0.5]]])
W, BETA, GAMMA = 0.5, 0.7, 0.3
NLL_FORGET, NLL_RETAIN = LOG(4), LOG(4 / 3)  # -log 0.25, -log 0.75
KL_RETAIN = 0.5 * LOG(0.5 / 0.25) + 0.5 * LOG(0.5 / 0.75)
EXPECTED = {
    "ga": -NLL_FORGET,
    "graddiff": -NLL_FORGET + W * NLL_RETAIN,
    "kl": -NLL_FORGET + W * KL_RETAIN,
    # log p / p_ref = log(0.25 / 0.5) = -log 2 -> -(2/b) logsigmoid(b log 2) = (2/b) log(1 + 2^-b)
    "npo": 2 / BETA * LOG(1 + 2**-BETA) + W * NLL_RETAIN,
    "idk": NLL_FORGET + W * NLL_RETAIN,  # the labels stand for the refusal here
    # -(2/b) logsigmoid(b * NLL - g) = (2/b) log(1 + exp(g - b * NLL))
    "simnpo": 2 / BETA * LOG(1 + math.exp(GAMMA - BETA * NLL_FORGET)) + W * NLL_RETAIN,
    # chosen: log(0.75 / 0.5), rejected: log(0.25 / 0.5) -> (2/b) log(1 + 3^-b)
    "idkdpo": 2 / BETA * LOG(1 + 3**-BETA) + W * NLL_RETAIN,
}
# the sign of the gradient on the forget sample's true-answer logit: +1 pushes it down
PUSH_DOWN = {"ga": 1, "graddiff": 1, "kl": 1, "npo": 1, "idk": -1, "simnpo": 1, "idkdpo": 1}
ARGS = dict(retain_weight=W, npo_beta=BETA, simnpo_beta=BETA, simnpo_gamma=GAMMA)


def _table_batch() -> dict:
    return {
        "inputs": {"input_ids": torch.zeros(2, 2, dtype=torch.long), "labels": LABELS},
        "preferred": {"input_ids": torch.zeros(2, 2, dtype=torch.long), "labels": REFUSAL_LABELS},
        "is_forget": torch.tensor([True, False]),
    }


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_baseline_loss_hand_computed(method):
    vlm = TableVLM(REF_PROBS)
    baseline = get_method(method)(vlm, UnlearningArguments(**ARGS))
    with torch.no_grad():  # unlearning moved the model away from the reference
        vlm.table.copy_(MODEL_PROBS.log())
    assert [n for n, p in baseline.named_parameters() if p.requires_grad] == [
        "vlm.language_model.layers.0.table"
    ]
    loss, metrics = baseline(_table_batch())
    assert loss.item() == pytest.approx(EXPECTED[method], rel=1e-5)
    assert metrics["forget_nll"] == pytest.approx(NLL_FORGET, rel=1e-5)
    loss.backward()
    # the forget sample's target logit: pushed down (ascent) or up (IdK: learn the refusal)
    assert torch.sign(vlm.table.grad[0, 0, 0]).item() == PUSH_DOWN[method]
    if method == "ga":
        assert vlm.table.grad[1].abs().sum() == 0  # GA ignores the retain samples


def test_rmu_loss_hand_computed():
    """RMU on layer 0 (whose output is the table): forget MSE to ``c * u`` (``|c u| = c``)
    and retain MSE to the reference's activations, over the answer tokens."""
    vlm = TableVLM(REF_PROBS)
    rmu = get_method("rmu")(vlm, UnlearningArguments(rmu_layer=0, rmu_steering=3.0, **ARGS))
    assert rmu.control.norm().item() == pytest.approx(3.0, rel=1e-6)
    with torch.no_grad():
        vlm.table.copy_(MODEL_PROBS.log())
    loss, metrics = rmu(_table_batch())
    act, ref = MODEL_PROBS.log(), REF_PROBS.log()
    forget = ((act[0, 1] - rmu.control) ** 2).mean()  # the answer token of sample 0
    retain = ((act[1, 1] - ref[1, 1]) ** 2).mean()
    assert metrics["forget_loss"] == pytest.approx(forget.item(), rel=1e-5)
    assert metrics["retain_loss"] == pytest.approx(retain.item(), rel=1e-5)
    assert loss.item() == pytest.approx(forget.item() + W * retain.item(), rel=1e-5)
    loss.backward()
    assert vlm.table.grad[:, 0].abs().sum() == 0  # only answer tokens count
    with pytest.raises(ValueError, match="rmu_layer=1"):
        get_method("rmu")(TableVLM(REF_PROBS), UnlearningArguments(rmu_layer=1))


def test_baseline_bad_arguments():
    vlm = TableVLM(REF_PROBS)
    with pytest.raises(TypeError, match="args must be UnlearningArguments"):
        get_method("ga")(vlm, {"lr": 1e-3})
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        lora_config(0)
    baseline = get_method("ga")(vlm, UnlearningArguments())
    with pytest.raises(ValueError, match="state mismatch"):
        baseline.load_trainable_state_dict({"nope": torch.zeros(1)})
    name = "language_model.layers.0.table"
    with pytest.raises(ValueError, match="non-finite"):
        baseline.load_trainable_state_dict({name: torch.full((2, 2, 2), float("nan"))})
    with pytest.raises(ValueError, match="dtype"):
        baseline.load_trainable_state_dict({name: torch.zeros(2, 2, 2, dtype=torch.float64)})


def _row_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of each row over its labelled tokens (full logits)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return ce.sum(1) / (labels != -100).sum(1)


def _row_kl(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
    """Mean ``KL(ref || model)`` of each row over its labelled tokens (full logits)."""
    ref, model = (F.log_softmax(x[:, :-1].float(), -1) for x in (ref_logits, logits))
    kl = (ref.exp() * (ref - model)).sum(-1)
    answer = labels[:, 1:] != -100
    return (kl * answer).sum(1) / answer.sum(1)


@pytest.mark.parametrize("method,lora_rank", [("graddiff", 4), ("kl", 0)])
def test_baselines_project_only_the_answer_positions(method, lora_rank):
    """The baselines ask the model for the logits at the answer positions only: the loss
    and the gradients equal those of the full logits, the LM head sees fewer positions."""
    baseline, processor, data = _setup(method, lora_rank)
    batch = baseline.collator(processor)(data[:3] + data[-3:])
    inputs = dict(batch["inputs"])
    labels, forget = inputs.pop("labels"), batch["is_forget"]
    params = baseline.trainable_parameters()

    logits = baseline.vlm(**inputs).logits
    nll = _row_nll(logits, labels)
    if method == "kl":
        with torch.no_grad():
            ref_logits = baseline.reference(**inputs).logits
        retain = _row_kl(ref_logits, logits, labels)[~forget].mean()
    else:
        retain = nll[~forget].mean()
    want = -nll[forget].mean() + baseline.args.retain_weight * retain
    want_grads = torch.autograd.grad(want, params)

    seen = []
    head = baseline.vlm.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        loss, _ = baseline(batch)
    finally:
        handle.remove()
    grads = torch.autograd.grad(loss, params)
    answer_span = int((labels[:, 1:] != -100).any(0).sum())
    assert set(seen) == {answer_span} and answer_span < labels.shape[1] - 1
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert any(g.abs().max() > 0 for g in want_grads)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------- training


def _setup(method: str, lora_rank: int = 0, steps: int = 8, lr: float = 3e-3):
    vlm, processor = tv.llava(layers=2)
    data = tv.dataset(n_people=4, n_forget=2, poses=1)
    args = UnlearningArguments(
        steps=steps,
        batch_size=8,
        lr=lr,
        retain_weight=1.0,
        simnpo_beta=0.5,  # a gradient of the size of the others' from the start
        autocast="none",
        log_every=steps,
    )
    lora = lora_config(lora_rank) if lora_rank else None
    baseline = get_method(method)(vlm, args, lora, prompt_template=tv.LLAVA_TEMPLATE)
    return baseline, processor, data


def _forget_objective(baseline, processor, data) -> float:
    """What each method pushes on the forget samples: RMU: the activations' distance to
    its direction (down); IdK: the refusal's NLL (down); the others: the true answer's
    NLL (up)."""
    forget = [s for s in data if s["is_forget"]]
    baseline.eval()
    if baseline.name == "rmu":
        with torch.no_grad():
            return baseline(baseline.collator(processor)(forget))[1]["forget_loss"]
    target = "refusal" if baseline.name == "idk" else "answer"
    collator = VLMCollator(processor, baseline.prompt, target=target)
    return mean_answer_nll(baseline.vlm, forget, collator)


@pytest.mark.parametrize("method", baseline_names())
def test_baselines_train_in_the_intended_direction(method):
    baseline, processor, data = _setup(method)
    vision = copy.deepcopy(baseline.vlm.model.vision_tower.state_dict())
    language = vlm_hash(baseline.vlm.model.language_model)
    before = _forget_objective(baseline, processor, data)
    trainer = CagulTrainer(
        baseline, data, baseline.collator(processor), baseline.args, progress=False
    )
    history = trainer.train()
    after = _forget_objective(baseline, processor, data)
    # measured (an int, not None); 0 is a valid reading: training this tiny model can fit in
    # pages the process already holds (one CI run measured 0 for "ga")
    assert isinstance(trainer.peak_memory_bytes, int) and trainer.peak_memory_bytes >= 0
    assert history[-1]["step"] == 8 and math.isfinite(history[-1]["loss"])
    if method in ("idk", "rmu"):
        assert after < 0.8 * before, (before, after)  # learns the refusal / the steering
    else:
        assert after > before + 0.1, (before, after)  # forgets the true answer
    # only the language model trained: the vision tower is bit-identical
    for name, value in baseline.vlm.model.vision_tower.state_dict().items():
        assert torch.equal(value, vision[name]), name
    assert vlm_hash(baseline.vlm.model.language_model) != language
    if baseline.reference is not None:  # the reference stays the model before unlearning
        assert vlm_hash(baseline.reference.model.language_model) == language


def test_lora_baseline_trains_adapters_only_and_round_trips(tmp_path):
    baseline, processor, data = _setup("npo", lora_rank=4, steps=6, lr=2e-2)
    base = {n: p.detach().clone() for n, p in baseline.vlm.named_parameters() if "lora_" not in n}
    trainable = [n for n, p in baseline.vlm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert baseline.reference is None  # NPO's reference = the adapters disabled
    before = _forget_objective(baseline, processor, data)
    CagulTrainer(
        baseline,
        data,
        baseline.collator(processor),
        baseline.args,
        output_dir=str(tmp_path / "out"),
        progress=False,
    ).train()
    assert _forget_objective(baseline, processor, data) > before + 0.1
    for name, p in baseline.vlm.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), name
    out = str(tmp_path / "out")
    assert is_lora_adapter(out) and os.path.isfile(os.path.join(out, "baseline_config.json"))

    batch = VLMCollator(processor, baseline.prompt).prompts(data[:4])
    with torch.no_grad():
        expected = baseline.vlm(**batch).logits
    fresh, _ = tv.llava(layers=2)
    merged, prompt = load_finetuned(fresh, out)
    assert prompt.prompt_template == tv.LLAVA_TEMPLATE
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        load_finetuned(fresh, str(tmp_path))


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as small:
        torch.zeros(1)
    with PeakMemory("cpu") as large:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert large.bytes >= 60 * 2**20 > small.bytes
    # nested blocks: the inner block's reset does not hide the outer block's earlier peak
    with PeakMemory("cpu") as outer:
        block = torch.ones(64 * 2**20 // 4)
        del block
        with PeakMemory("cpu") as inner:
            torch.zeros(1)
    assert outer.bytes >= 60 * 2**20 > inner.bytes


# ---------------------------------------------------------------------- CLI


def test_cli_train_baselines_then_eval(cli_setup, tmp_path, capsys):
    root = cli_setup
    model, data = str(root / "model"), str(root / "data" / "train.jsonl")
    common = ["--data", data, "--config", str(root / "config.json"), "--no-progress"]
    common += ["--set", "steps=2", "--set", "batch_size=4"]
    full, adapter = tmp_path / "graddiff", tmp_path / "npo_lora"
    code = main(["train", "--model", model, "--method", "graddiff", "--output", str(full), *common])
    assert code == 0
    assert (full / "config.json").is_file() and (full / "baseline_config.json").is_file()
    assert main(["train", "--model", model, "--method", "npo", "--lora-rank", "2",
                 "--output", str(adapter), *common]) == 0  # fmt: skip
    assert is_lora_adapter(str(adapter))

    template = ["--set", f"prompt_template={json.dumps(tv.LLAVA_TEMPLATE)}"]
    for args in (["--model", str(full)], ["--model", model, "--adapter", str(adapter)]):
        out = tmp_path / "metrics.json"
        code = main(["eval", *args, "--data", data, "--output", str(out), "--no-progress",
                     *(template if "--adapter" not in args else [])])  # fmt: skip
        assert code == 0
        metrics = json.loads(out.read_text())
        assert set(metrics["splits"]) == {"forget", "retain"}
        assert "disc_acc" not in metrics  # evaluated as a plain VLM

    capsys.readouterr()
    image = str(root / "data" / "img" / "0.png")
    code = main(["generate", "--model", model, "--adapter", str(adapter), "--image", image,
                 "--question", "What is the name of this person?",
                 "--max-new-tokens", "2"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(result["answer"], str)
    assert result["forget_probability"] is None and result["gated"] is None  # no discriminator


def test_cli_baseline_errors(cli_setup, tmp_path, capsys):
    root = cli_setup
    args = ["train", "--model", str(root / "model"), "--data", str(root / "data" / "train.jsonl")]
    args += ["--output", str(tmp_path / "o")]
    assert main([*args, "--lora-rank", "4"]) == 2  # the default method is cagul
    assert "apply to the baselines" in capsys.readouterr().err
    assert main([*args, "--method", "ga", "--lora-rank", "-1"]) == 2
    assert "--lora-rank must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--method", "forgetful"])
    assert "invalid choice" in capsys.readouterr().err

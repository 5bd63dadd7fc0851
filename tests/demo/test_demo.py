"""The synthetic benchmark (determinism, splits, format), the toy VLM's tokenizer, the
benchmark metrics on hand-made predictions, and ``cagul demo`` end to end on a tiny
configuration."""

from __future__ import annotations

import filecmp
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from cagul import metrics as metrics_lib
from cagul.data import load_jsonl
from cagul.data.benchmark import EVAL_SPLITS
from cagul.evaluation.diagnostics import (
    METRICS,
    evaluate_splits,
    leaks,
    normalize_text,
    refuses,
    rouge_l,
    split_metrics,
)
from cagul_demo import synthetic as syn
from cagul_demo.report import DEMO_BASELINES as BASELINES
from cagul_demo.report import check_targets, dominating_baselines, seeds_report
from cagul_demo.runner import DemoConfig, run_demo, weights_hash
from cagul_demo.toy_vlm import (
    ToyVLMConfig,
    build_vlm,
    llava_config,
    load_or_train,
    tokenizer_corpus,
    train_tokenizer,
)

SMALL = syn.SyntheticConfig(
    n_people=10, n_strangers=2, train_poses=2, test_poses=1, templates=2, image_size=32
)
PROMPT = "USER: {image}\n{question} ASSISTANT:"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return syn.write(SMALL, tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def bench(bench_dir):
    return syn.load(bench_dir)


# ---------------------------------------------------------------------- generator


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_generator_is_deterministic(bench_dir, tmp_path):
    again = syn.write(SMALL, tmp_path / "again")
    files = _files(bench_dir)
    assert files == _files(again) and len(files) > 10
    _, mismatch, errors = filecmp.cmpfiles(bench_dir, again, files, shallow=False)
    assert not mismatch and not errors
    other = syn.write(syn.SyntheticConfig(**{**SMALL.to_dict(), "seed": 1}), tmp_path / "other")
    assert _files(other) == files
    _, mismatch, _ = filecmp.cmpfiles(bench_dir, other, files, shallow=False)
    assert "people.jsonl" in mismatch and any(f.endswith(".png") for f in mismatch)


def test_splits_are_disjoint_and_complete(bench):
    people = {p["id"]: p for p in bench.people}
    persons = {s: {x["person"] for x in v} for s, v in bench.splits.items()}
    poses = {s: {x["pose"] for x in v} for s, v in bench.splits.items()}
    images = {s: {x["image"] for x in v} for s, v in bench.splits.items()}
    assert len(persons["forget"]) == SMALL.n_forget == 1
    assert persons["forget"] == persons["forget_test"]
    assert persons["retain"] == persons["retain_test"]
    assert len(persons["retain"]) == SMALL.n_people - SMALL.n_forget
    assert not persons["forget"] & persons["retain"]
    assert not persons["strangers"] & (persons["forget"] | persons["retain"])
    assert len(persons["strangers"]) == SMALL.n_strangers
    for s in ("forget", "retain"):  # unseen poses in the test splits
        assert poses[s] == set(range(SMALL.train_poses))
        assert poses[f"{s}_test"] == set(range(SMALL.train_poses, SMALL.train_poses + 1))
        assert not images[s] & images[f"{s}_test"]
    for split, samples in bench.splits.items():
        for x in samples:
            assert people[x["person"]]["role"] == {"strangers": "stranger"}.get(
                split, split.removesuffix("_test")
            )
            assert x["is_forget"] == split.startswith("forget")
    # every person: every fact x template x form per pose
    per_image = len(syn.FACTS) * SMALL.templates * 2
    assert len(bench.splits["retain"]) == 9 * SMALL.train_poses * per_image
    names = [p["facts"]["name"] for p in bench.people]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("fraction, n", [(0.05, 3), (0.10, 6), (0.15, 9)])
def test_forget_fraction(fraction, n):
    config = syn.SyntheticConfig(n_people=60, forget_fraction=fraction)
    roles = [p["role"] for p in syn.make_people(config)]
    assert roles.count("forget") == n == config.n_forget
    assert roles.count("stranger") == config.n_strangers


def test_samples_format(bench, bench_dir):
    for split, samples in bench.splits.items():
        assert samples == load_jsonl(os.path.join(bench_dir, f"{split}.jsonl"))
    people = {p["id"]: p for p in bench.people}
    for x in bench.splits["retain"] + bench.splits["forget_test"]:
        options = x["options"]
        assert len(options) == syn.N_OPTIONS == len(set(options))
        assert options[x["answer_index"]] == x["answer"] == people[x["person"]]["facts"][x["fact"]]
        base = syn.TEMPLATES[x["fact"]][x["template"]]
        if x["form"] == "mc":
            assert x["question"].startswith(base) and all(o in x["question"] for o in options)
        else:
            assert x["question"] == base
    assert {x["answer"] for x in bench.splits["strangers"]} == {syn.REFUSAL}
    image = bench.samples("forget")[0]["image"]
    assert image.size == (SMALL.image_size, SMALL.image_size) and image.mode == "RGB"
    with open(os.path.join(bench_dir, "meta.json")) as f:
        meta = json.load(f)
    assert meta["config"] == SMALL.to_dict() and meta["chance_mc_acc"] == 0.25


def test_generate_reuses_and_errors(bench_dir, tmp_path):
    stamp = os.path.getmtime(os.path.join(bench_dir, "people.jsonl"))
    assert syn.generate(SMALL, bench_dir).config == SMALL
    assert os.path.getmtime(os.path.join(bench_dir, "people.jsonl")) == stamp
    with pytest.raises(FileNotFoundError, match="no meta\\.json"):
        syn.load_benchmark(tmp_path)
    for bad, match in [
        ({"n_people": 0}, "n_people"),
        ({"forget_fraction": 1.0}, "forget_fraction"),
        ({"templates": 4}, "templates"),
        ({"image_size": 8}, "image_size"),
        ({"n_strangers": -1}, "n_strangers"),
    ]:
        with pytest.raises(ValueError, match=match):
            syn.SyntheticConfig(**bad)


def test_jitter_views(bench):
    import numpy as np
    from cagul_demo.runner import Augmented

    samples = bench.samples("forget")[:2]
    views = Augmented(samples, seed=0)
    a, b = views[0], views[0]
    assert a["question"] == samples[0]["question"] and a["image"].size == (32, 32)
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    again = Augmented(samples, seed=0)[0]["image"]  # same seed, index and access count
    assert np.array_equal(np.asarray(again), np.asarray(a["image"]))
    assert len(views) == 2


# ---------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip(bench):
    tok = train_tokenizer(tokenizer_corpus(bench, PROMPT), vocab_size=400)
    texts = [t for x in bench.samples("retain") for t in (x["question"], x["answer"])]
    texts += [syn.REFUSAL, PROMPT.format(image="", question="Who?"), "unseen wörds 123!"]
    for text in texts:
        assert tok.decode(tok(text)["input_ids"]) == text
    for special in ("<image>", "<pad>", "</s>"):
        assert len(tok(special)["input_ids"]) == 1
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>"
    # frequent corpus words are single tokens, so the refusal is short
    assert len(tok(syn.REFUSAL)["input_ids"]) <= 5
    config = ToyVLMConfig(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, kv_heads=1)
    _, processor = build_vlm(config, tok)
    inputs = processor(
        images=[bench.samples("forget")[0]["image"]], text=["<image> hi"], return_tensors="pt"
    )
    image_id = tok.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_id).sum()) == config.visual_tokens == 16


def test_llava_config_maps_every_architecture_field():
    """Each architecture field of a ``ToyVLMConfig`` lands in its transformers field (all
    values distinct, so a swap shows); a patch size that does not divide the image size is
    an error naming both."""
    arch = ToyVLMConfig(image_size=24, patch_size=6, vision_hidden=40, vision_layers=3,
                        vision_heads=5, hidden=56, layers=2, heads=7, kv_heads=1,
                        intermediate=72)  # fmt: skip
    config = llava_config(arch, vocab_size=50, image_token_id=4, max_positions=99, pad_token_id=3)
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers) == (40, 80, 3)
    assert (vision.num_attention_heads, vision.image_size, vision.patch_size) == (5, 24, 6)
    assert (text.vocab_size, text.hidden_size, text.intermediate_size) == (50, 56, 72)
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (2, 7, 1)
    assert (text.max_position_embeddings, text.pad_token_id, config.image_token_id) == (99, 3, 4)
    with pytest.raises(
        ValueError, match=r"image_size \(20\) must be a multiple of patch_size \(6\)"
    ):
        llava_config(ToyVLMConfig(image_size=20, patch_size=6), vocab_size=50, image_token_id=4)


# ---------------------------------------------------------------------- metrics


def test_text_metrics():
    assert normalize_text("  I don't KNOW. ") == "i don't know"
    assert leaks("She was born in Velmora.", "Velmora")
    assert leaks("ada quill", "Ada Quill")
    assert not leaks("Adams", "Ada") and not leaks("", "Ada")
    assert refuses("I don't know.", "I don't know.") and refuses(
        "Sorry, i don't know", "I don't know."
    )
    assert not refuses("I know.", "I don't know.")
    assert rouge_l("Velmora", "Velmora") == 1.0 and rouge_l("I don't know.", "Velmora") == 0.0
    # LCS("born in Velmora", "Velmora city") = 1: P = 1/3, R = 1/2 -> F = 0.4
    assert rouge_l("born in Velmora", "Velmora city") == pytest.approx(0.4)
    assert rouge_l("", "Velmora") == 0.0


def test_split_metrics_hand_made():
    answers = ["Velmora", "Ada Quill", "1974", "baker"]
    generations = ["Velmora", "I don't know.", "born in 1974", "Ada Quill"]
    m = split_metrics([True, False, True, True, False], generations, answers, "I don't know.")
    assert set(m) == set(METRICS)
    assert m["mc_acc"] == pytest.approx(3 / 5)
    assert m["leak_rate"] == pytest.approx(2 / 4)
    assert m["refusal_rate"] == pytest.approx(1 / 4)
    # rougeL: 1, 0, F(P=1/3, R=1) = 0.5, 0
    assert m["rougeL"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    empty = split_metrics([], [], [], "I don't know.")
    assert all(v is None for v in empty.values())
    with pytest.raises(ValueError, match="generations"):
        split_metrics([], ["a"], [], "x")


class _Oracle(torch.nn.Module):
    """A fake VLM that "believes" one answer: it gives a sequence ending in
    ``" " + belief + eos`` probability ~1 for every next token (any other sequence gets
    uniform logits) and generates ``belief``."""

    def __init__(self, tokenizer, belief: str):
        super().__init__()
        self.tok = tokenizer
        self.tail = tokenizer(" " + belief)["input_ids"] + [tokenizer.eos_token_id]
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, **kwargs):
        b, s = input_ids.shape
        logits = torch.zeros(b, s, len(self.tok))
        for i in range(b):
            real = input_ids[i][attention_mask[i].bool()].tolist()
            if real[-len(self.tail) :] == self.tail:
                logits[i, torch.arange(s - 1), input_ids[i, 1:]] = 30.0
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids, max_new_tokens, **kwargs):
        new = torch.tensor(self.tail[:max_new_tokens]).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], dim=1)


def test_evaluate_splits_with_known_outputs(bench):
    """mc_acc / leak_rate / rougeL / refusal_rate of a fake model with known beliefs."""
    from cagul import CagulConfig

    tok = train_tokenizer(tokenizer_corpus(bench, PROMPT), 400)
    small = ToyVLMConfig(image_size=32, hidden=32, layers=1, heads=2, kv_heads=1)
    _, processor = build_vlm(small, tok)
    config = CagulConfig(prompt_template=PROMPT)
    samples = [x for x in bench.samples("retain") if x["template"] == 0]
    mc = [x for x in samples if x["form"] == "mc"][:8]
    short = [x for x in samples if x["form"] == "short"][:4]

    def run(belief: str, sample: dict) -> dict:
        return evaluate_splits(_Oracle(tok, belief), {"s": [sample]}, processor, config,
                               max_new_tokens=8, progress=False)["s"]  # fmt: skip

    for x in mc:  # believes option 1: right exactly when the answer is option 1
        result = run(x["options"][1], x)
        assert result["mc_acc"] == float(x["answer_index"] == 1)
        assert result["leak_rate"] is None
    for x in short:
        assert run(x["answer"], x) == {
            "mc_acc": None, "leak_rate": 1.0, "rougeL": 1.0, "refusal_rate": 0.0
        }  # fmt: skip
        assert run(syn.REFUSAL, x) == {
            "mc_acc": None, "leak_rate": 0.0, "rougeL": 0.0, "refusal_rate": 1.0
        }  # fmt: skip
    assert {x["answer_index"] == 1 for x in mc} == {True, False}  # both outcomes covered


# ---------------------------------------------------------------------- demo


def _check_results(results: dict, models: set[str]) -> None:
    assert set(results) >= {"models", "chance_mc_acc", "config"}
    assert set(results["models"]) == models
    assert results["chance_mc_acc"] == 0.25
    for m in results["models"].values():
        assert set(m) == {*EVAL_SPLITS, "forget_quality", "model_utility", "mia_auc",
                          "privleak", "retain_kl", "trainable_params", "train_seconds",
                          "peak_memory_mb", "base_weights_changed"}  # fmt: skip
        assert isinstance(m["mia_auc"], float) and 0.0 <= m["mia_auc"] <= 1.0
        for split in EVAL_SPLITS:
            assert set(m[split]) == set(METRICS)
            assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in m[split].values())
        assert isinstance(m["retain_kl"], float) and m["retain_kl"] >= 0.0
        assert isinstance(m["trainable_params"], int) and m["trainable_params"] > 0
        assert isinstance(m["train_seconds"], float) and m["train_seconds"] > 0
        assert isinstance(m["base_weights_changed"], bool)
        memory = m["peak_memory_mb"]
        assert memory is None or (isinstance(memory, float) and memory >= 0.0)


def test_demo_end_to_end(tmp_path):
    from cagul.cli import main

    out, cache = tmp_path / "demo", tmp_path / "cache"
    args = ["--output", str(out), "--cache", str(cache), "--no-progress"]
    threads = torch.get_num_threads()
    try:
        # one torch thread (the default); CAGUL and the baselines train in 2 processes
        code = main(["demo", "--quick", "--jobs", "2", *args])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    _check_results(results, {"vanilla", "retain_only", "cagul", *BASELINES})
    models = results["models"]
    assert models["vanilla"]["retain_kl"] == 0.0
    assert models["cagul"]["base_weights_changed"] is False
    assert models["retain_only"]["base_weights_changed"] is True
    for name in BASELINES:  # finetuned copies of the vanilla model, LLM weights only
        assert models[name]["base_weights_changed"] is True
        assert models[name]["peak_memory_mb"] is not None
        assert models[name]["trainable_params"] < models["vanilla"]["trainable_params"]
        assert (out / name / "config.json").is_file()
    assert results["config"]["baselines"] == list(BASELINES)
    dominated = [c for c in check_targets(results) if c["target"].startswith("no baseline")]
    assert len(dominated) == 1
    assert dominated[0]["ok"] == (dominating_baselines(results) == [])
    assert models["cagul"]["trainable_params"] < models["vanilla"]["trainable_params"]
    assert results["config"]["data"]["n_people"] == DemoConfig.tiny().data.n_people
    assert models["retain_only"]["forget_quality"] == pytest.approx(1.0)  # its own reference
    assert models["retain_only"]["privleak"] == 0.0  # likewise
    for m in models.values():  # privleak of each model against the retain-only model's AUC
        theirs = models["retain_only"]["mia_auc"]
        assert m["privleak"] == pytest.approx(metrics_lib.privleak(m["mia_auc"], theirs))
    report = (out / "report.md").read_text().splitlines()
    header = next(line for line in report if "forget_quality" in line)
    cells = [c.strip() for c in header.strip("| ").split("|")]
    assert cells[:5] == ["model", "forget_quality", "model_utility", "mia_auc", "privleak"]
    for m in models.values():
        assert 0.0 <= m["forget_quality"] <= 1.0 and 0.0 <= m["model_utility"] <= 1.0
    for name in ("report.md", "accuracy.png", "tradeoff.png", "tradeoff_mc_acc.png",
                 "importance.png",
                 "cagul/cagul_modules.safetensors"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    assert "| vanilla" in (out / "report.md").read_text()

    # a second run loads the cached models (no training) and agrees on the vanilla figures
    config = DemoConfig.tiny()
    vanilla_dirs = [d for d in os.listdir(cache) if d.startswith("vanilla-")]
    assert len(vanilla_dirs) == 1
    torch.set_num_threads(1)
    try:  # everything in this process this time: the same models
        again = run_demo(
            config, str(tmp_path / "demo2"), str(cache), progress=False, log=lambda s: None
        )
    finally:
        torch.set_num_threads(threads)
    assert again["models"]["vanilla"] == models["vanilla"]
    timing = ("train_seconds", "peak_memory_mb")
    for name, m in models.items():
        same = {k: v for k, v in again["models"][name].items() if k not in timing}
        assert same == {k: v for k, v in m.items() if k not in timing}, name
    assert os.listdir(cache) == os.listdir(cache)  # nothing new besides what was there
    assert sorted(d for d in os.listdir(cache) if d.startswith("vanilla-")) == vanilla_dirs

    # cagul eval on the benchmark directory with the cached vanilla model
    data_dir = next(cache / d for d in os.listdir(cache) if d.startswith("data-"))
    model_dir = cache / vanilla_dirs[0]
    code = main(["eval", "--model", str(model_dir), "--data", str(data_dir),
                 "--output", str(tmp_path / "m.json"), "--no-progress"])  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["splits"]) == set(EVAL_SPLITS)
    assert all(set(v) == set(METRICS) for v in metrics["splits"].values())


@pytest.mark.parametrize("name", ["cagul", "npo"])
def test_trained_model_reloads_from_its_output(bench, tmp_path, name):
    """What a worker process saves is what the parent loads (LoRA baseline and CAGUL)."""
    from cagul.data import VLMCollator
    from cagul_demo.runner import VANILLA_SPLITS, _load_trained, _train_one

    config = DemoConfig.tiny()
    config.set("baseline_lora_rank", 2)
    prompt = config.cagul_config().prompt_template
    vlm, processor, _ = load_or_train(
        config.model, bench, VANILLA_SPLITS, prompt, str(tmp_path / "cache"), "v", progress=False
    )
    trained, _ = _train_one(name, vlm, processor, bench, config, str(tmp_path), progress=False)
    reloaded = _load_trained(name, vlm, config, str(tmp_path))
    batch = VLMCollator(processor, config.cagul_config()).prompts(bench.samples("forget")[:4])
    with torch.no_grad():
        expected, got = trained(**batch).logits, reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if name != "cagul":  # the LoRA adapter changed the model
        assert not torch.allclose(vlm(**batch).logits, got)


def test_stranger_holdout(bench, bench_dir):
    """privleak's non-members: every short-answer question about a stranger with the
    stranger's true fact, derived at load (no file, no split: the tokenizer corpus and the
    cached data stay as they were) and never a training pair of any demo model."""
    holdout = bench.context["holdout"]
    strangers = [s for s in bench.splits["strangers"] if s["form"] == "short"]
    n = SMALL.n_strangers * SMALL.train_poses * len(syn.FACTS) * SMALL.templates
    assert len(holdout) == len(strangers) == n
    people = {p["id"]: p for p in bench.people}
    for h, s in zip(holdout, strangers, strict=True):
        assert people[h["person"]]["role"] == "stranger" and s["answer"] == syn.REFUSAL
        assert (
            h["answer"]
            == people[s["person"]]["facts"][s["fact"]]
            == h["options"][h["answer_index"]]
        )
        assert (h["image"], h["question"]) == (s["image"], s["question"])
        assert h["split"] == "holdout" and h["is_forget"] is False
    assert "holdout" not in bench.splits and not os.path.exists(
        os.path.join(bench_dir, "holdout.jsonl")
    )
    trained = {(s["image"], s["question"], s["answer"]) for v in bench.splits.values() for s in v}
    assert not trained & {(h["image"], h["question"], h["answer"]) for h in holdout}
    assert len(bench.samples("holdout")) == n


def test_judge_models_privleak():
    from cagul.evaluation.synthetic import NO_HOLDOUT, judge_models

    def found(auc):
        retain = {"probability": 0.5, "rougeL_recall": 0.5, "truth_ratio": 0.5}
        return {"forget_truth_ratios": [1.0, 2.0], "retain": retain, "mia_auc": auc}

    judged = judge_models({"retain_only": found(0.6), "cagul": found(0.9)})
    assert judged["cagul"]["privleak"] == pytest.approx(-75.0)  # (0.1 - 0.4) / 0.4
    assert judged["retain_only"]["privleak"] == 0.0 and judged["cagul"]["mia_auc"] == 0.9
    alone = judge_models({"cagul": found(0.9)})["cagul"]
    assert alone["privleak"] == {"absent": "no retain_only model (the demo ran without it)"}
    no_holdout = {"absent": NO_HOLDOUT}
    judged = judge_models({"retain_only": found(no_holdout), "cagul": found(no_holdout)})
    assert judged["cagul"]["privleak"] == no_holdout == judged["cagul"]["mia_auc"]


def test_dominating_baselines():
    def model(forget_quality, model_utility) -> dict:
        return {"forget_quality": forget_quality, "model_utility": model_utility}

    results = {
        "models": {
            "cagul": model(0.30, 0.95),
            "ga": model(0.40, 0.96),  # better on both: dominates
            "kl": model(0.50, 0.90),  # closer to retain-only, less utility
            "npo": model(0.30, 0.99),  # ties on forget quality
            "idk": model({"absent": "no retain-only model"}, 0.99),  # cannot dominate
        }
    }
    assert dominating_baselines(results) == ["ga"]
    results["models"]["ga"] = model(0.29, 0.96)
    assert dominating_baselines(results) == []
    results["models"]["cagul"] = model({"absent": "no retain-only model"}, 0.5)
    assert dominating_baselines(results) == []


def _split_results(forget: float, forget_test: float, retain: float = 1.0) -> dict:
    def split(mc_acc: float) -> dict:
        return {"mc_acc": mc_acc, "leak_rate": 0.0, "rougeL": 0.0, "refusal_rate": 1.0}

    return {
        "forget": split(forget),
        "forget_test": split(forget_test),
        "retain": split(retain),
        "retain_test": split(retain),
        "forget_quality": 0.5,
        "model_utility": 0.5,
        "base_weights_changed": False,
        "trainable_params": 10,
    }


def _targets_results(cagul_forget: float, cagul_forget_test: float) -> dict:
    return {
        "chance_mc_acc": 0.25,
        "config": {"vlm_params": 1000},
        "models": {
            "vanilla": _split_results(1.0, 1.0),
            "retain_only": _split_results(0.2, 0.3),
            "cagul": _split_results(cagul_forget, cagul_forget_test),
        },
    }


def test_targets_relative_to_retain_only():
    """forget / forget_test accuracy within 0.10 of the retain-only model, either side."""
    checks = {c["target"]: c for c in check_targets(_targets_results(0.31, 0.25))}
    forget = checks["cagul forget mc_acc within 0.10 of retain_only (abs. difference)"]
    test = checks["cagul forget_test mc_acc within 0.10 of retain_only (abs. difference)"]
    assert forget["value"] == pytest.approx(0.11) and not forget["ok"]
    assert test["value"] == pytest.approx(0.05) and test["ok"]
    over = {c["target"]: c["ok"] for c in check_targets(_targets_results(0.05, 0.3))}
    assert not over["cagul forget mc_acc within 0.10 of retain_only (abs. difference)"]
    results = _targets_results(0.3, 0.3)
    del results["models"]["retain_only"]
    assert not any("retain_only" in c["target"] for c in check_targets(results))


def test_seeds_report_means_and_targets_per_seed():
    per_seed = [_targets_results(0.25, 0.3), _targets_results(0.35, 0.3)]
    summary = {
        "seeds": [3, 4],
        "models": {
            "cagul": {
                "forget.mc_acc": {"values": [0.25, 0.35], "mean": 0.3, "std": 0.0707},
                "model_utility": {"values": [0.5, 0.5], "mean": 0.5, "std": 0.0},
            }
        },
    }
    report = seeds_report(summary, per_seed)
    assert "## Mean ± std over seeds 3, 4" in report
    row = next(line for line in report.splitlines() if line.startswith("| cagul "))
    assert [c.strip() for c in row.strip("| ").split("|")] == [
        "cagul",
        "0.300 ± 0.071",
        "0.500 ± 0.000",
    ]
    row = next(line for line in report.splitlines() if "cagul forget mc_acc within" in line)
    cells = [c.strip() for c in row.strip("| ").split("|")]
    assert cells[1:] == ["0.050", "0.150", "NO"]  # met on seed 3, missed on seed 4
    row = next(line for line in report.splitlines() if "forget_test mc_acc within" in line)
    assert row.rstrip(" |").endswith("yes")


def test_demo_config_baselines():
    config = DemoConfig()
    assert config.baselines == list(BASELINES) and config.baseline_lora_rank == 0
    config.set("baselines", "ga,npo")
    assert config.baselines == ["ga", "npo"]
    config.set("baselines", "")
    assert config.baselines == []
    config.set("baselines", ["kl"])
    assert config.baselines == ["kl"]
    config.set("baseline.lr", 5e-4)
    assert config.baseline_arguments().lr == 5e-4
    assert config.baseline_arguments().steps == config.cagul_arguments().steps  # same budget
    assert config.to_dict()["baseline"]["lr"] == 5e-4
    with pytest.raises(ValueError, match="baselines must be"):
        config.set("baselines", "ga,forgetful")
    with pytest.raises(ValueError, match="lr must be > 0"):
        config.set("baseline.lr", -1.0)
    with pytest.raises(ValueError, match="baseline_lora_rank must be"):
        config.set("baseline_lora_rank", -1)


def test_cache_key_and_weights_hash(bench, tmp_path):
    config = ToyVLMConfig(image_size=32, hidden=32, layers=1, heads=2, kv_heads=1, vision_hidden=32,
                          vision_layers=1, intermediate=64, vocab_size=400, vision_steps=2,
                          vision_batch_size=4, steps=2, batch_size=2)  # fmt: skip
    vlm, _, info = load_or_train(
        config, bench, ["retain"], PROMPT, str(tmp_path), "m", progress=False
    )
    assert not info["cached"]
    again, _, info2 = load_or_train(
        config, bench, ["retain"], PROMPT, str(tmp_path), "m", progress=False
    )
    assert info2["cached"] and info2["path"] == info["path"]
    assert weights_hash(again) == weights_hash(vlm)
    _, _, other = load_or_train(
        config, bench, ["forget"], PROMPT, str(tmp_path), "m", progress=False
    )
    assert other["path"] != info["path"] and not other["cached"]
    with torch.no_grad():
        next(again.parameters()).view(-1)[0] += 1e-6
    assert weights_hash(again) != weights_hash(vlm)
    assert math.isfinite(info["train_seconds"])


# ---------------------------------------------------------------------- framework


def test_per_sample_forget_loss():
    """A sample's ``forget_loss`` overrides the config's: its target (refusal for idk, the
    answer otherwise) and its loss; a mixed batch's forget loss is the mean of both."""
    from cagul import CagulConfig, CagulMethod, CagulModel, UnlearningArguments
    from cagul.data import validate_sample
    from cagul_demo import tiny_vlm as tv

    vlm, processor = tv.llava()
    config = CagulConfig(prompt_template=tv.LLAVA_TEMPLATE, layer=1, encoder_rank=8)
    args = UnlearningArguments()
    method = CagulMethod(CagulModel(vlm, config), args)
    collate = method.collator(processor)
    samples = tv.dataset(n_people=2, n_forget=2, poses=1)  # 4 forget samples
    idk = [{**s, "forget_loss": "idk"} for s in samples[:2]]
    npo = [{**s, "forget_loss": "npo"} for s in samples[2:]]
    batch = collate(idk + npo)
    assert batch["forget_loss"].tolist() == [0, 0, 2, 2]
    tok = processor.tokenizer
    targets = [tok.decode(ids[lab != -100], skip_special_tokens=True).strip()
               for ids, lab in zip(batch["inputs"]["input_ids"], batch["inputs"]["labels"],
                                   strict=True)]  # fmt: skip
    assert targets == [args.refusal] * 2 + [s["answer"] for s in samples[2:]]
    with torch.no_grad():
        mixed = method(batch)[1]["forget_loss"]
        only_idk = method(collate(idk))[1]["forget_loss"]
        only_npo = method(collate(npo))[1]["forget_loss"]
    assert only_npo == pytest.approx(2.0 / args.npo_beta * math.log(2.0), rel=1e-5)  # at init
    assert mixed == pytest.approx((only_idk + only_npo) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="forget_loss must be one of"):
        validate_sample({**samples[0], "forget_loss": "kl"})


def test_demo_cli_errors(tmp_path, capsys):
    from cagul.cli import main

    def fails(*args: str) -> str:
        assert main(["demo", "--quick", "--output", str(tmp_path), *args]) == 2
        return capsys.readouterr().err

    assert "n_people must be an int >= 1" in fails("--set", "data.n_people=0")
    assert "unknown field 'model.depth'" in fails("--set", "model.depth=3")
    assert "unknown field 'speed'" in fails("--set", "speed=3")
    assert "mode must be one of" in fails("--set", "cagul.mode=sideways")
    assert "forget_losses.mc must be one of" in fails("--set", "forget_losses.mc=kl")
    assert "--threads must be >= 0" in fails("--threads", "-1")
    assert "--jobs must be >= 0" in fails("--jobs", "-1")
    assert "baselines must be" in fails("--set", "baselines=ga,sgd")
    assert "npo_beta must be > 0" in fails("--set", "baseline.npo_beta=0")
    assert not os.listdir(tmp_path)  # nothing ran


def test_demo_seeds_and_sweep(tmp_path):
    import statistics

    from cagul.cli import main

    cache = str(tmp_path / "cache")
    common = ["demo", "--quick", "--jobs", "1", "--no-progress", "--cache", cache]
    threads = torch.get_num_threads()
    try:
        seeds_dir = tmp_path / "seeds"
        assert (
            main([*common, "--output", str(seeds_dir), "--seeds", "2", "--set", "baselines="]) == 0
        )
        sweep_dir = tmp_path / "sweep"
        assert main([*common, "--output", str(sweep_dir), "--sweep", "ratio=0.25,0.5"]) == 0
    finally:
        torch.set_num_threads(threads)
    seeds = json.loads((seeds_dir / "seeds.json").read_text())
    assert seeds["seeds"] == [0, 1] and set(seeds["models"]) == {"vanilla", "retain_only", "cagul"}
    for name in ("seed_0", "seed_1"):
        assert (seeds_dir / name / "results.json").is_file()
    stat = seeds["models"]["cagul"]["forget.mc_acc"]
    assert len(stat["values"]) == 2 and stat["mean"] == pytest.approx(
        statistics.fmean(stat["values"])
    )
    assert stat["std"] == pytest.approx(statistics.stdev(stat["values"]))
    assert "forget_quality" in seeds["models"]["cagul"]
    report = (seeds_dir / "seeds.md").read_text()
    header = report.split("## Targets on every seed")[1].strip().splitlines()[0]
    assert [c.strip() for c in header.strip("| ").split("|")][1:] == [
        "seed 0",
        "seed 1",
        "met on all",
    ]
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert sweep["key"] == "ratio" and [p["value"] for p in sweep["points"]] == [0.25, 0.5]
    ratios = [
        json.loads((sweep_dir / f"ratio={v}" / "results.json").read_text())["config"]["cagul"][
            "ratio"
        ]
        for v in (0.25, 0.5)
    ]
    assert ratios == [0.25, 0.5]
    assert (sweep_dir / "sweep.png").stat().st_size > 0

"""``cagul demo``: CAGUL end to end on the synthetic "fictitious people" benchmark, offline.

1. generate the benchmark (:mod:`cagul.data.synthetic`) into the cache;
2. train the vanilla toy VLM on every person (forget + retain + strangers) from scratch,
   or load it from the cache (:func:`cagul.toy_vlm.load_or_train`), and likewise the
   retain-only model (trained without the forget people: the gold standard) in a second
   process at the same time;
3. train CAGUL (discriminator + visual token encoder, VLM frozen) on forget / retain, and
   finetune a copy of the vanilla model with each unlearning baseline
   (:mod:`cagul.baselines`: GA, GradDiff, KL, NPO, IdK) on the same samples and step
   budget, ``jobs`` at a time (:func:`train_methods`);
4. evaluate every model on ``forget``, ``forget_test``, ``retain``, ``retain_test``
   (:func:`cagul.evaluate.evaluate_splits`), print the table and write ``results.json``,
   ``report.md`` and PNG plots to the output directory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import random
import shutil
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from cagul.config import CagulConfig
from cagul.data.benchmark import EVAL_SPLITS, HOLDOUT, Benchmark
from cagul.evaluation.diagnostics import evaluate_splits
from cagul.evaluation.synthetic import judge_models, judging_inputs
from cagul.files import write_text_atomic
from cagul.methods import baseline_names, get_method
from cagul.methods.cagul import CagulMethod
from cagul.methods.finetune import load_finetuned, lora_config
from cagul.model import CagulModel
from cagul.training import CagulTrainer, UnlearningArguments, seed_everything
from cagul.training.arguments import FORGET_LOSSES, parse_settings

from cagul_kernels.memory import PeakMemory, mib

from .report import DEMO_BASELINES
from .synthetic import SyntheticConfig, jitter
from .synthetic import generate as generate_benchmark
from .toy_vlm import ToyVLMConfig, load_or_train

VANILLA_SPLITS = ("forget", "retain", "strangers")
RETAIN_ONLY_SPLITS = ("retain", "strangers")
DEMO_CAGUL = dict(
    layer=1,
    ratio=0.75,
    encoder_rank=16,
    discriminator_hidden=32,
    retain_weight=0.3,
    lr=3e-3,
    steps=600,
    batch_size=16,
    warmup_steps=10,
    lr_schedule="cosine",
    autocast="none",
    log_every=50,
    # transform when P(forget) >= 0.9: on the training images every forget image scores
    # >= 0.98 while 3.7% of the retain images score >= 0.5 but only 0.5% >= 0.9
    gate_threshold=0.9,
)
# UnlearningArguments overrides of the finetuning baselines (the rest is DEMO_CAGUL's)
DEMO_BASELINE = dict(lr=1e-4, retain_weight=1.0, npo_beta=0.1)


@dataclasses.dataclass
class DemoConfig:
    """Everything ``cagul demo`` does.

    data / model / cagul: the benchmark, the toy VLM (architecture + training) and CAGUL
    (``CagulConfig`` and ``UnlearningArguments`` fields; defaults in ``DEMO_CAGUL``).
    forget_losses: the forget loss
    of the forget samples per question form (default: short answers learn the refusal,
    ``"idk"``; multiple-choice questions push the true option down, ``"npo"``);
    cagul_retain_ratio: retain samples per forget sample in CAGUL's training set;
    cagul_augment: CAGUL trains on randomly re-posed views of its images
    (:func:`cagul.data.synthetic.jitter`), which helps the discriminator and the encoder
    on unseen poses.
    baselines: the finetuning baselines to run (default :data:`DEMO_BASELINES`, any of
    :func:`cagul.methods.baseline_names`; each on a copy of the vanilla model, with CAGUL's
    training samples and schedule);
    baseline: their ``UnlearningArguments`` overrides (default ``DEMO_BASELINE``: lr, retain
    weight, NPO beta); baseline_lora_rank: 0 = finetune every language-model weight, else
    LoRA adapters of that rank.
    eval_samples: questions per split and form that are evaluated (a fixed random subset;
    0 = all); max_new_tokens: the length of the generated answers. retain_only: also
    train (or load) and evaluate the retain-only model.
    """

    data: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    model: ToyVLMConfig = dataclasses.field(default_factory=ToyVLMConfig)
    cagul: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEMO_CAGUL))
    forget_losses: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"short": "idk", "mc": "npo"}
    )
    cagul_retain_ratio: float = 1.0
    cagul_augment: bool = True
    baselines: list[str] = dataclasses.field(default_factory=lambda: list(DEMO_BASELINES))
    baseline: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEMO_BASELINE))
    baseline_lora_rank: int = 0
    eval_samples: int = 360
    max_new_tokens: int = 8
    retain_only: bool = True
    seed: int = 0

    def _cagul_settings(self) -> tuple[CagulConfig, UnlearningArguments]:
        """``DEMO_CAGUL`` + ``seed`` + ``cagul`` as ``(CagulConfig, UnlearningArguments)``."""
        try:
            return parse_settings({**DEMO_CAGUL, "seed": self.seed, **self.cagul})
        except ValueError as e:
            raise ValueError(f"demo config: cagul: {e}") from None

    def cagul_config(self) -> CagulConfig:
        """What CAGUL's adapter is."""
        return self._cagul_settings()[0]

    def cagul_arguments(self) -> UnlearningArguments:
        """How CAGUL trains."""
        return self._cagul_settings()[1]

    def baseline_arguments(self) -> UnlearningArguments:
        """CAGUL's schedule with the ``baseline`` overrides."""
        return self.cagul_arguments().replace(**self.baseline)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.to_dict(),
            "model": self.model.to_dict(),
            "cagul": self.cagul_config().to_dict(),
            "cagul_arguments": self.cagul_arguments().to_dict(),
            "forget_losses": dict(self.forget_losses),
            "cagul_retain_ratio": self.cagul_retain_ratio,
            "cagul_augment": self.cagul_augment,
            "baselines": list(self.baselines),
            "baseline": self.baseline_arguments().to_dict(),
            "baseline_lora_rank": self.baseline_lora_rank,
            "eval_samples": self.eval_samples,
            "max_new_tokens": self.max_new_tokens,
            "retain_only": self.retain_only,
            "seed": self.seed,
        }

    def set(self, key: str, value: Any) -> None:
        """Applies ``key=value``: ``data.n_people``, ``model.steps``, ``cagul.lr``,
        ``eval_samples``, ..."""
        section, _, field = key.partition(".")
        if field and section == "cagul":
            self.cagul = {**self.cagul, field: value}
            self.cagul_config()  # validates
            self.cagul_arguments()
        elif field and section == "baseline":
            self.baseline = {**self.baseline, field: value}
            self.baseline_arguments()  # validates
        elif not field and key == "baselines":
            names = value.split(",") if isinstance(value, str) else value
            if not isinstance(names, list) or not set(names) <= {"", *baseline_names()}:
                raise ValueError(
                    f"demo config: baselines must be a list or comma-separated names from "
                    f"{baseline_names()} (empty: none), got {value!r}"
                )
            self.baselines = [n for n in names if n]
        elif not field and key == "baseline_lora_rank":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"demo config: baseline_lora_rank must be an int >= 0, got {value!r}"
                )
            self.baseline_lora_rank = value
        elif field and section in ("data", "model"):
            sub = getattr(self, section)
            if field not in {f.name for f in dataclasses.fields(sub)}:
                raise ValueError(f"demo config: unknown field {key!r}")
            setattr(self, section, dataclasses.replace(sub, **{field: value}))
        elif section == "forget_losses" and field in ("short", "mc"):
            if value not in FORGET_LOSSES:
                raise ValueError(f"demo config: {key} must be one of {FORGET_LOSSES}")
            self.forget_losses = {**self.forget_losses, field: value}
        elif not field and key in {
            "cagul_retain_ratio",
            "cagul_augment",
            "eval_samples",
            "max_new_tokens",
            "retain_only",
            "seed",
        }:
            setattr(self, key, value)
        else:
            raise ValueError(f"demo config: unknown field {key!r}")

    @classmethod
    def tiny(cls) -> DemoConfig:
        """A few-second configuration (tests)."""
        return cls(
            data=SyntheticConfig(
                n_people=8,
                forget_fraction=0.25,
                n_strangers=1,
                train_poses=2,
                test_poses=1,
                templates=1,
                image_size=32,
            ),
            model=ToyVLMConfig(
                image_size=32,
                patch_size=8,
                vision_hidden=32,
                vision_layers=1,
                hidden=32,
                layers=2,
                heads=2,
                kv_heads=1,
                intermediate=64,
                vocab_size=400,
                vision_steps=20,
                vision_batch_size=16,
                steps=30,
                batch_size=8,
            ),
            cagul={
                **DEMO_CAGUL,
                "steps": 4,
                "batch_size": 4,
                "encoder_rank": 4,
                "discriminator_hidden": 8,
                "log_every": 2,
            },
            eval_samples=4,
            retain_only=True,
        )


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _subset(samples: Sequence[dict], n: int, seed: int) -> list[dict]:
    """``n`` samples drawn without replacement (all when ``n`` is 0 or too large), in order."""
    if n <= 0 or n >= len(samples):
        return list(samples)
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]


def eval_splits(bench: Benchmark, config: DemoConfig) -> dict[str, list[dict]]:
    """The evaluated questions: per split and form (short / mc) ``config.eval_samples``."""
    out = {}
    for i, split in enumerate(EVAL_SPLITS):
        samples = bench.samples(split)
        forms = sorted({s["form"] for s in samples})
        out[split] = [
            s
            for j, form in enumerate(forms)
            for s in _subset(
                [s for s in samples if s["form"] == form],
                config.eval_samples,
                config.seed + 7 * i + j,
            )
        ]
    return out


def holdout_samples(bench: Benchmark) -> list[dict]:
    """The privleak attack's non-members: every short-answer question about a stranger with
    the stranger's true fact as the answer (:func:`cagul.data.benchmark.stranger_holdout`,
    derived at load: no file of the cached benchmark changes); none without strangers."""
    return bench.samples(HOLDOUT) if HOLDOUT in bench.context else []


def training_samples(bench: Benchmark, config: DemoConfig) -> Sequence[dict]:
    """What CAGUL and the baselines train on: every forget sample (with its forget loss per
    question form, ``config.forget_losses``, which only CAGUL reads) and
    ``cagul_retain_ratio`` times as many retain samples; re-posed at random on every access
    with ``cagul_augment`` (a fresh sequence per call: the same views in the same order)."""
    forget = [
        {**s, "forget_loss": config.forget_losses[s["form"]]} for s in bench.samples("forget")
    ]
    n_retain = round(config.cagul_retain_ratio * len(forget))
    samples = forget + _subset(bench.samples("retain"), n_retain, config.seed)
    return Augmented(samples, config.seed) if config.cagul_augment else samples


def _train(
    make_method, samples, collator_of, config: UnlearningArguments, output_dir: str, progress
):
    """``(method, info)``: ``make_method()`` trained by ``CagulTrainer`` into ``output_dir``
    (emptied first); ``info``: ``train_seconds`` and ``peak_memory_mb`` (building the
    method, e.g. a reference copy, and training)."""
    shutil.rmtree(output_dir, ignore_errors=True)
    seed_everything(config.seed)
    start = time.perf_counter()
    with PeakMemory(torch.device("cpu")) as peak:
        method = make_method()
        trainer = CagulTrainer(
            method,
            samples,
            collator_of(method),
            config,
            output_dir=output_dir,
            progress=progress,
        )
        trainer.train()
    seconds = time.perf_counter() - start
    return method, {"train_seconds": seconds, "peak_memory_mb": mib(peak.bytes)}


def train_cagul(vlm, processor, samples, config: DemoConfig, output_dir: str, *, progress: bool):
    """``(CagulModel, info)``: CAGUL trained on ``samples``; the adapter goes to
    ``output_dir``. ``info``: ``train_seconds``, ``peak_memory_mb``, ``trainable_params``."""
    cfg, args = config.cagul_config(), config.cagul_arguments()
    method, info = _train(
        lambda: CagulMethod(CagulModel(vlm, cfg), args),
        samples,
        lambda m: m.collator(processor),
        args,
        output_dir,
        progress,
    )
    model = method.model
    trainable = _params(model.encoder) + _params(model.discriminator)
    return model.eval(), {**info, "trainable_params": trainable}


def train_baseline(
    vlm, processor, samples, config: DemoConfig, name: str, output_dir: str, *, progress: bool
):
    """``(finetuned VLM, info)``: the baseline ``name`` trained on a copy of ``vlm`` (the
    finetuned model + processor, or the LoRA adapter, go to ``output_dir``)."""
    args, template = config.baseline_arguments(), config.cagul_config().prompt_template
    rank = config.baseline_lora_rank
    working = copy.deepcopy(vlm)  # the model being unlearned (not counted in the memory)
    lora = lora_config(rank) if rank else None
    method, info = _train(
        lambda: get_method(name)(working, args, lora, prompt_template=template),
        samples,
        lambda m: m.collator(processor),
        args,
        output_dir,
        progress,
    )
    processor.save_pretrained(output_dir)
    trainable = method.trainable_parameter_count()
    model = method.vlm.merge_and_unload() if rank else method.vlm
    return model.eval().requires_grad_(False), {**info, "trainable_params": trainable}


def _train_one(name: str, vlm, processor, bench: Benchmark, config: DemoConfig, output_dir, **kw):
    """CAGUL or the baseline ``name`` trained into ``output_dir/name``: ``(model, info)``."""
    samples = training_samples(bench, config)
    out = os.path.join(output_dir, name)
    if name == "cagul":
        return train_cagul(vlm, processor, samples, config, out, **kw)
    return train_baseline(vlm, processor, samples, config, name, out, **kw)


def _load_trained(name: str, vlm, config: DemoConfig, output_dir: str):
    """The model ``_train_one`` saved under ``output_dir/name``."""
    path = os.path.join(output_dir, name)
    if name == "cagul":
        return CagulModel.from_pretrained(vlm, path).eval()
    if config.baseline_lora_rank:
        return load_finetuned(copy.deepcopy(vlm), path)[0].requires_grad_(False)
    return type(vlm).from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)


def _worker_setup(config: DemoConfig, cache_dir: str, threads: int):
    """In a worker process: ``threads`` torch threads, no transformers progress bars (the
    parent reports), and ``(bench, cached_model)`` where ``cached_model(splits, name)``
    is the toy VLM trained on ``splits`` (from the cache, else trained into it)."""
    from transformers.utils import logging

    torch.set_num_threads(threads)
    logging.disable_progress_bar()
    bench = generate_benchmark(config.data, _data_dir(config, cache_dir))
    prompt = config.cagul_config().prompt_template

    def cached_model(splits: Sequence[str], name: str):
        return load_or_train(config.model, bench, splits, prompt, cache_dir, name, progress=False)

    return bench, cached_model


def _toy_vlm_job(config: DemoConfig, cache_dir: str, splits: Sequence[str], name: str, threads):
    """A worker process's job: the toy VLM trained on ``splits`` into the cache."""
    return _worker_setup(config, cache_dir, threads)[1](splits, name)[2]


def _train_job(name: str, config: DemoConfig, cache_dir: str, output_dir: str, threads: int):
    """A worker process's job: loads the cached benchmark and vanilla model, trains ``name``
    (saved under ``output_dir``) and returns its info."""
    bench, cached_model = _worker_setup(config, cache_dir, threads)
    vlm, processor, _ = cached_model(VANILLA_SPLITS, "vanilla")
    return _train_one(name, vlm, processor, bench, config, output_dir, progress=False)[1]


def worker_pool(jobs: int):
    """``jobs`` spawned worker processes (a ``ProcessPoolExecutor``), or ``None`` for
    ``jobs <= 1`` (everything runs in this process)."""
    if jobs <= 1:
        return contextlib.nullcontext()
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"))


def train_methods(
    names: Sequence[str],
    vlm,
    processor,
    bench: Benchmark,
    config: DemoConfig,
    output_dir: str,
    *,
    pool=None,
    cache_dir: str,
    progress: bool,
) -> dict[str, tuple[Any, dict]]:
    """``{name: (model, info)}`` for ``"cagul"`` and the baselines in ``names``, trained
    from the vanilla model ``vlm`` into ``output_dir/<name>``. With a ``pool``
    (:func:`worker_pool`) they train in its processes, each with this process's torch
    thread count, which reload the vanilla model and the benchmark from ``cache_dir``; the
    trained models are then loaded from ``output_dir`` (the weights of training here)."""
    if pool is None:
        return {
            n: _train_one(n, vlm, processor, bench, config, output_dir, progress=progress)
            for n in names
        }
    infos = _run_jobs(pool, _train_job, names, config, cache_dir, output_dir, "train", progress)
    return {n: (_load_trained(n, vlm, config, output_dir), infos[n]) for n in names}


def _evaluate(
    name: str, model, vanilla, processor, splits, holdout, config: DemoConfig, progress: bool
):
    """The metrics of one model (``retain_kl`` against ``vanilla`` for all but itself) and,
    under ``"judging"``, what its forget quality, model utility and privleak need
    (``holdout``: the MIA's non-members)."""
    cagul_config = config.cagul_config()
    found = evaluate_splits(
        model,
        splits,
        processor,
        cagul_config,
        reference=None if name == "vanilla" else vanilla,
        max_new_tokens=config.max_new_tokens,
        refusal=config.cagul_arguments().refusal,
        progress=progress,
        desc=f"eval {name}",
    )
    found["judging"] = judging_inputs(
        model,
        splits,
        processor,
        cagul_config,
        max_new_tokens=config.max_new_tokens,
        holdout=holdout,
    )
    return found


def _evaluate_job(name: str, config: DemoConfig, cache_dir: str, output_dir: str, threads: int):
    """A worker process's job: loads the model ``name`` (from the cache or from
    ``output_dir``) and the vanilla model, and returns the metrics of ``name``."""
    bench, cached_model = _worker_setup(config, cache_dir, threads)
    vanilla, processor, _ = cached_model(VANILLA_SPLITS, "vanilla")
    if name == "vanilla":
        model = vanilla
    elif name == "retain_only":
        model = cached_model(RETAIN_ONLY_SPLITS, name)[0]
    else:
        model = _load_trained(name, vanilla, config, output_dir)
    splits = eval_splits(bench, config)
    holdout = holdout_samples(bench)
    return _evaluate(name, model, vanilla, processor, splits, holdout, config, progress=False)


def evaluate_models(
    models: dict[str, Any],
    processor,
    splits: dict[str, list[dict]],
    holdout: list[dict],
    config: DemoConfig,
    output_dir: str,
    *,
    pool=None,
    cache_dir: str,
    progress: bool,
) -> dict[str, dict]:
    """``{name: evaluate_splits metrics}`` of ``models`` on ``splits``
    (:func:`eval_splits`), with ``retain_kl`` against ``models["vanilla"]`` and the
    judging inputs (privleak's non-members: ``holdout``, :func:`holdout_samples`). With a
    ``pool`` each model is evaluated in a worker that loads it from the cache /
    ``output_dir`` (the weights of ``models``) and draws the same ``eval_splits`` and
    ``holdout``."""
    if pool is not None:
        names = list(models)
        return _run_jobs(
            pool, _evaluate_job, names, config, cache_dir, output_dir, "eval", progress
        )
    vanilla = models["vanilla"]
    return {
        n: _evaluate(n, m, vanilla, processor, splits, holdout, config, progress)
        for n, m in models.items()
    }


def _run_jobs(pool, job, names, config, cache_dir, output_dir, desc: str, progress: bool):
    """``{name: job(name, config, cache_dir, output_dir, threads)}`` run in ``pool`` (in
    the order of ``names``), with a progress bar over the finished jobs."""
    from concurrent.futures import as_completed

    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    futures = {pool.submit(job, n, config, cache_dir, output_dir, threads): n for n in names}
    results: dict[str, Any] = {}
    done = tqdm(as_completed(futures), total=len(names), desc=desc, disable=not progress)
    for future in done:
        results[futures[future]] = future.result()
        done.set_postfix_str(f"{futures[future]} done")
    return {n: results[n] for n in names}


class Augmented(Sequence):
    """``samples`` whose images are re-posed at random (:func:`jitter`) on every access;
    the views are a function of ``seed``, the index and the access count."""

    def __init__(self, samples: Sequence[dict], seed: int):
        self.samples, self.seed, self.calls = samples, seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        self.calls += 1
        rng = np.random.default_rng([self.seed, i, self.calls])
        return {**self.samples[i], "image": jitter(self.samples[i]["image"], rng)}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_demo(
    config: DemoConfig,
    output_dir: str = "runs/demo",
    cache_dir: str = "runs/cache",
    *,
    progress: bool = True,
    jobs: int = 1,
    log=print,
) -> dict[str, Any]:
    """Runs the demo; returns the ``results.json`` content (also written to
    ``output_dir``). ``jobs``: processes training CAGUL and the baselines side by side
    (:func:`train_methods`)."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    cfg = config.cagul_config()
    os.makedirs(output_dir, exist_ok=True)

    def phase(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    data_dir = _data_dir(config, cache_dir)
    bench = generate_benchmark(config.data, data_dir, progress=progress)
    phase("data", t0)
    log(f"benchmark: {data_dir} ({', '.join(f'{k} {len(v)}' for k, v in bench.splits.items())})")

    with worker_pool(jobs) as pool:
        t0 = time.perf_counter()
        retain_only = None
        if config.retain_only and pool is not None:  # trains beside the vanilla model
            threads = torch.get_num_threads()
            retain_only = pool.submit(
                _toy_vlm_job, config, cache_dir, RETAIN_ONLY_SPLITS, "retain_only", threads
            )
        vlm, processor, vanilla_info = load_or_train(
            config.model,
            bench,
            VANILLA_SPLITS,
            cfg.prompt_template,
            cache_dir,
            "vanilla",
            progress=progress,
        )
        phase("vanilla", t0)
        how = "cached" if vanilla_info["cached"] else "trained"
        log(f"vanilla model: {vanilla_info['path']} ({how})")
        # name -> (model to evaluate, the module whose weights may have changed, info)
        models: dict[str, tuple[Any, torch.nn.Module, dict]] = {}
        base_hash = weights_hash(vlm)
        n_vlm = _params(vlm)
        models["vanilla"] = (vlm, vlm, {**vanilla_info, "trainable_params": n_vlm})
        if config.retain_only:
            t0 = time.perf_counter()
            if retain_only is not None:
                retain_only.result()  # now in the cache
            ro, _, ro_info = load_or_train(
                config.model,
                bench,
                RETAIN_ONLY_SPLITS,
                cfg.prompt_template,
                cache_dir,
                "retain_only",
                progress=progress,
            )
            phase("retain_only", t0)
            models["retain_only"] = (ro, ro, {**ro_info, "trainable_params": _params(ro)})

        t0 = time.perf_counter()
        trained = train_methods(
            ["cagul", *config.baselines],
            vlm,
            processor,
            bench,
            config,
            output_dir,
            pool=pool,
            cache_dir=cache_dir,
            progress=progress,
        )
        phase("train", t0)
        for name, (model, info) in trained.items():
            models[name] = (model, model.vlm if name == "cagul" else model, info)
        cagul = trained["cagul"][0]

        t0 = time.perf_counter()
        splits = eval_splits(bench, config)
        evaluated = evaluate_models(
            {n: m[0] for n, m in models.items()},
            processor,
            splits,
            holdout_samples(bench),
            config,
            output_dir,
            pool=pool,
            cache_dir=cache_dir,
            progress=progress,
        )
    results: dict[str, Any] = {"models": {}, "chance_mc_acc": bench.chance_mc_acc}
    judged = judge_models({n: evaluated[n]["judging"] for n in models})
    for name, (_, weights, info) in models.items():
        metrics = evaluated[name]
        memory = info.get("peak_memory_mb")
        results["models"][name] = {
            **{s: metrics[s] for s in EVAL_SPLITS},
            **judged[name],
            "retain_kl": 0.0 if name == "vanilla" else metrics["retain_kl"],
            "trainable_params": int(info["trainable_params"]),
            "train_seconds": round(float(info["train_seconds"]), 2),
            "peak_memory_mb": None if memory is None else float(memory),
            "base_weights_changed": weights_hash(weights) != base_hash,
        }
    if weights_hash(vlm) != base_hash:
        raise RuntimeError("run_demo: the vanilla model's weights changed during the demo")
    phase("eval", t0)

    t0 = time.perf_counter()
    from .report import write_outputs

    results["config"] = {
        **config.to_dict(),
        "vlm_params": n_vlm,
        "visual_tokens": config.model.visual_tokens,
        "eval_questions": {s: len(v) for s, v in splits.items()},
    }
    timings["total_before_report"] = round(time.perf_counter() - start, 2)
    write_outputs(
        results,
        output_dir,
        cagul,
        processor,
        splits,
        config.max_new_tokens,
        timings=timings,
        log=log,
    )
    phase("report", t0)
    timings["total"] = round(time.perf_counter() - start, 2)
    results["timings"] = timings
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    log(f"timings (s): {json.dumps(timings)}")
    log(f"wrote {output_dir}/results.json, report.md, accuracy.png, tradeoff.png, importance.png")
    return results


def _data_dir(config: DemoConfig, cache_dir: str) -> str:
    return os.path.join(cache_dir, f"data-{_digest(config.data.to_dict())}")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _numbers(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per model its numeric results, flattened (``forget.mc_acc``, ``forget_quality``...)."""
    out: dict[str, dict[str, float]] = {}
    for name, m in results["models"].items():
        flat = {f"{s}.{k}": v for s in EVAL_SPLITS for k, v in m[s].items()}
        flat.update({k: v for k, v in m.items() if k not in EVAL_SPLITS})
        out[name] = {
            k: float(v)
            for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    return out


def run_seeds(config: DemoConfig, n_seeds: int, output_dir: str, cache_dir: str, **kw):
    """Runs the demo with seeds ``config.seed .. config.seed + n_seeds - 1`` (CAGUL and the
    baselines are trained anew each time; the benchmark and the vanilla model are shared)
    into ``output_dir/seed_<s>`` and writes ``seeds.json``: per model and metric the values
    per seed, their mean and std (sample std; 0 for one seed); and ``seeds.md``: the mean ±
    std table and every target of :func:`~cagul_demo.report.check_targets` per seed."""
    from .report import seeds_report

    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"--seeds must be an int >= 1, got {n_seeds!r}")
    seeds = list(range(config.seed, config.seed + n_seeds))
    per_seed = [
        run_demo(dataclasses.replace(config, seed=s), os.path.join(output_dir, f"seed_{s}"),
                 cache_dir, **kw)
        for s in seeds
    ]  # fmt: skip
    runs = [_numbers(results) for results in per_seed]
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for name in runs[0]:
        for key in runs[0][name]:
            values = [r[name][key] for r in runs if key in r.get(name, {})]
            if len(values) == len(runs):
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                summary.setdefault(name, {})[key] = {
                    "values": values,
                    "mean": statistics.fmean(values),
                    "std": std,
                }
    result = {"seeds": seeds, "models": summary}
    _write_json(os.path.join(output_dir, "seeds.json"), result)
    write_text_atomic(os.path.join(output_dir, "seeds.md"), seeds_report(result, per_seed))
    return result


def run_sweep(
    config: DemoConfig, key: str, values: Sequence[Any], output_dir: str, cache_dir: str, **kw
):
    """Runs the demo (vanilla, retain-only and CAGUL; no baselines) once per value of the
    CAGUL setting ``key`` (``ratio``, ``layer``, ...) into ``output_dir/<key>=<value>``;
    writes ``sweep.json`` (CAGUL's forget quality and model utility per value) and
    ``sweep.png``."""
    from .report import plot_sweep

    points = []
    for value in values:
        swept = dataclasses.replace(config, baselines=[])
        swept.set(f"cagul.{key}", value)
        results = run_demo(swept, os.path.join(output_dir, f"{key}={value}"), cache_dir, **kw)
        cagul = results["models"]["cagul"]
        points.append(
            {
                "value": value,
                "forget_quality": cagul["forget_quality"],
                "model_utility": cagul["model_utility"],
                **{f"{s}.mc_acc": cagul[s]["mc_acc"] for s in EVAL_SPLITS},
            }
        )
    result = {"key": key, "points": points}
    _write_json(os.path.join(output_dir, "sweep.json"), result)
    plot_sweep(result, os.path.join(output_dir, "sweep.png"))
    return result


def _write_json(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")

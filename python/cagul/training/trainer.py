"""``CagulTrainer``: a :class:`transformers.Trainer` that trains any
:class:`cagul.methods.Method` -- an ``nn.Module`` whose ``forward(batch)`` returns
``(loss, metrics)`` and that names its trainable parameters -- so CAGUL and every
finetuning baseline share one engine: schedule, gradient accumulation, mixed precision,
clipping, seeding, device placement and DDP under ``torchrun`` or ``accelerate launch``
all come from transformers / accelerate. Under FSDP (``fsdp_config``) the method is
sharded with FSDP2 before the engine sees it (:mod:`cagul.training.fsdp`, CPU and GPU
alike) and the engine runs it as a model that owns its sharding.

What this subclass adds: the optimizer over the method's trainable parameters only (its
param groups, e.g. a discriminator learning rate), the method's metrics in the log, an
eval hook, a sampler that visits the data in the order of a seeded per-epoch permutation,
and checkpoints that hold only the trainable state plus the optimizer / scheduler /
scaler / RNG states, written atomically as safetensors + JSON (never pickle). The
trainable weights and the optimizer state go through
``torch.distributed.checkpoint.state_dict``: full (gathered) tensors keyed by parameter
name, so a checkpoint written under FSDP resumes in one process and the other way round.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import glob
import json
import math
import os
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.data import DistributedSampler
from transformers import (
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from cagul_kernels.memory import PeakMemory

from ..errors import InputError, MissingInputError
from ..files import check_safetensors, read_json, read_safetensors
from ..methods.base import Method
from ..state import atomic_directory, check_state, load_nested, save_nested
from .arguments import UnlearningArguments
from .fsdp import check_fsdp_support, read_fsdp_config, root_unsharded, shard_method

CHECKPOINT_DIR = "checkpoints"
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "training_state"  # .json + .safetensors: optimizer, scheduler, scaler, RNG
# Checkpoints hold full tensors (gathered if sharded), on rank 0's CPU.
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)
POSITION_FILE = "trainer_state.json"  # transformers' TrainerState (step, epoch, log)
CHECKPOINT_FILES = (WEIGHTS_FILE, f"{STATE_FILE}.json", f"{STATE_FILE}.safetensors", POSITION_FILE)


# ---------------------------------------------------------------------- helpers


def distributed_context() -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; under ``torchrun`` (``WORLD_SIZE > 1``) initialises
    the process group (nccl with CUDA, else gloo) if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        # Tear the group down before interpreter shutdown: a process group left to static
        # destruction can abort the process ("terminate called without an active exception").
        atexit.register(_destroy_process_group)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def training_arguments(
    args: UnlearningArguments, output_dir: str | None, device: torch.device, **extra: Any
) -> TrainingArguments:
    """The :class:`transformers.TrainingArguments` of ``args`` for a method on ``device``;
    checkpoints go to ``output_dir/checkpoints`` (none without ``output_dir``), every
    ``save_every`` steps and at the end; ``extra``: more fields."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    fields: dict[str, Any] = dict(
        output_dir=os.path.join(output_dir, CHECKPOINT_DIR) if output_dir else None,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine" if args.lr_schedule == "cosine" else "constant_with_warmup",
        max_grad_norm=args.max_grad_norm or 0.0,  # 0 = no clipping
        bf16=args.autocast == "bf16" or (args.autocast == "auto" and cuda_bf16),
        fp16=args.autocast == "fp16",
        seed=args.seed,
        data_seed=args.seed,
        logging_strategy="steps",
        logging_steps=max(1, args.log_every),
        save_strategy="steps" if output_dir else "no",
        save_steps=args.save_every or args.steps,
        report_to=[],
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        use_cpu=device.type == "cpu",
        ddp_find_unused_parameters=True,
        ddp_broadcast_buffers=False,
        # The engine's own checkpoint writers are replaced (CagulTrainer._save_checkpoint
        # writes every state); the engine requires this flag for a model sharded before
        # it sees it (FSDP).
        save_only_model=True,
    )
    return TrainingArguments(**fields, **extra)


class _EvalAndFinalLog(TrainerCallback):
    """Runs the trainer's eval hook every ``eval_every`` steps (that step is logged) and
    logs the last step."""

    def __init__(self, trainer: CagulTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        every = self.trainer.config.eval_every
        if every and state.global_step % every == 0 and state.global_step < state.max_steps:
            self.trainer.pending_eval = self.trainer.evaluate_hook()
            control.should_log = True
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


# ---------------------------------------------------------------------- trainer


class CagulTrainer(Trainer):
    """Trains a :class:`Method` on ``dataset`` (a sequence of samples) batched by
    ``collate_fn``, with the schedule of ``config`` (:func:`training_arguments` maps it
    onto ``TrainingArguments``).

    Under ``torchrun`` / ``accelerate launch`` every process runs this trainer; the engine
    wraps the method in DDP, or with ``config.fsdp_config`` the method is sharded with
    FSDP2 here (in place; frozen weights too, :func:`cagul.training.fsdp.shard_method`).
    Only the method's trainable parameters are optimised. Rank 0 logs and writes
    checkpoints.

    ``eval_fn(method, step) -> dict`` is called on rank 0 (under FSDP on every rank, as
    the sharded forward passes are collective: it must run the same passes everywhere)
    every ``config.eval_every`` steps and at the end (in eval mode, gradients off); rank
    0's floats join the log as ``eval/*``.
    ``output_dir`` receives ``checkpoints/step-XXXXXXX/``, ``log.jsonl`` and the final
    ``method.save_pretrained`` output.
    """

    def __init__(
        self,
        method: nn.Module,
        dataset: Sequence[Any],
        collate_fn: Callable[[list[Any]], Any],
        config: UnlearningArguments,
        *,
        output_dir: str | None = None,
        eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
        progress: bool = True,
    ):
        if not isinstance(config, UnlearningArguments):
            raise TypeError(
                f"CagulTrainer: config must be UnlearningArguments, got {type(config).__name__}"
            )
        if not isinstance(method, nn.Module) or not isinstance(method, Method):
            raise TypeError("CagulTrainer: method must be an nn.Module implementing Method")
        if len(dataset) == 0:
            raise ValueError("CagulTrainer: the dataset is empty")
        params = [p for p in method.parameters() if p.requires_grad]
        if not params:
            raise ValueError("CagulTrainer: the method has no trainable parameters")
        self.config, self.output_root, self.eval_fn = config, output_dir, eval_fn
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(method)
        self.fsdp = config.fsdp_config is not None
        if self.fsdp:
            check_fsdp_support()
            settings = read_fsdp_config(config.fsdp_config)
            _, world, device = distributed_context()
            if world < 2:
                raise ValueError(
                    "CagulTrainer: fsdp_config shards the method across processes: run "
                    "under torchrun / accelerate launch with 2 or more processes"
                )
            shard_method(method, settings, device)
            # transformers: the model owns its sharding and gradient reduction (no DDP)
            method.is_distributed_loading_by_transformers = True
        device = next(method.parameters()).device
        args = training_arguments(config, output_dir, device, disable_tqdm=not progress)
        super().__init__(model=method, args=args, train_dataset=dataset, data_collator=collate_fn)
        self.add_callback(_EvalAndFinalLog(self))
        if not progress:
            self.remove_callback(PrinterCallback)  # it prints every log line
        self.rank, self.world = args.process_index, args.world_size
        self.history: list[dict[str, float]] = []
        self.pending_eval: dict[str, float] = {}
        self.peak_memory_bytes: int | None = None
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0

    # -------------------------------------------------------------- engine hooks

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW over ``method.trainable_parameters()`` (its param groups kept)."""
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(
                self.model.trainable_parameters(),
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
            )
        return self.optimizer

    def _defer_fsdp_gradient_reduction(self) -> contextlib.AbstractContextManager:
        """The engine's ``no_sync`` for a model that owns its sharding (its own reads a
        transformers ``DistributedConfig``, which a method has not). Nothing to defer: the
        FSDP units hold frozen weights only, and the engine averages the trainable
        parameters' gradients once per optimizer step."""
        return contextlib.nullcontext()

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Linear warmup that reaches ``lr * (step + 1) / warmup_steps`` at step ``step``
        (the first step already learns, as the project's schedule always did; the engine's
        own warmup starts at 0), then constant or cosine decay to 0 over the rest."""
        if self.lr_scheduler is None:
            warmup = self.config.warmup_steps
            span = max(1, self.config.steps - warmup)
            cosine = self.config.lr_schedule == "cosine"

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                if not cosine:
                    return 1.0
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer if optimizer is not None else self.optimizer, factor
            )
        return self.lr_scheduler

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler:
        """A permutation of the data seeded by ``seed + epoch`` (the engine shards its
        batches across processes)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return DistributedSampler(
            dataset, num_replicas=1, rank=0, shuffle=True, seed=self.args.seed
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``method(batch) -> (loss, metrics)``; the metrics are summed for the log."""
        loss, metrics = model(inputs)
        for key, value in metrics.items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + float(value)
        self._metric_count += 1
        return (loss, metrics) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """A training log line becomes ``{step, lr, grad_norm, <method metrics averaged
        over the micro-batches since the last line and over processes>, eval/*}``, kept in
        ``history`` and appended to ``output_dir/log.jsonl`` (rank 0)."""
        if "loss" not in logs:  # the end-of-training summary (runtime, ...)
            super().log(logs, start_time)
            return
        record: dict[str, float] = {"step": self.state.global_step, "lr": logs["learning_rate"]}
        if "grad_norm" in logs:
            record["grad_norm"] = float(logs["grad_norm"])
        record.update(self._mean_metrics())
        record.update(self.pending_eval)
        self.pending_eval = {}
        self._record(record)
        super().log(dict(record), start_time)

    # -------------------------------------------------------------- training

    def train(self, resume: bool | str = False, **kwargs: Any) -> list[dict[str, float]]:
        """Runs until ``config.steps`` optimizer steps; returns the log history.

        ``resume``: ``True`` continues from the newest complete checkpoint in
        ``output_dir`` (if any), a path from that checkpoint. Sets ``peak_memory_bytes``:
        the peak extra memory of the run (:class:`cagul_kernels.memory.PeakMemory`).
        """
        checkpoint = self.latest_checkpoint() if resume is True else resume or None
        step = 0
        if checkpoint is not None:
            missing = _missing_files(checkpoint)
            if missing:
                raise MissingInputError(
                    f"CagulTrainer: incomplete checkpoint {checkpoint}, missing {missing}"
                )
            _check_readable(checkpoint)  # a damaged file is named before any work
            position = read_json(os.path.join(checkpoint, POSITION_FILE))
            if not isinstance(position, dict) or not isinstance(position.get("global_step"), int):
                raise InputError(f"{checkpoint}/{POSITION_FILE}: no integer 'global_step'")
            step = position["global_step"]
            if self.rank == 0:
                print(f"cagul train: resuming from {checkpoint} (step {step})", flush=True)
        with PeakMemory(self.args.device) as peak:
            if step < self.args.max_steps:  # the engine would run one more step
                super().train(resume_from_checkpoint=checkpoint, **kwargs)
            else:
                self._load_from_checkpoint(checkpoint)
        self.peak_memory_bytes = peak.bytes
        if self.config.eval_every and self.eval_fn is not None:
            self._record({"step": self.state.global_step, **self.evaluate_hook()})
        if self.output_root is not None and self.rank == 0:
            self.model.save_pretrained(self.output_root)
        self.accelerator.wait_for_everyone()
        return self.history

    def evaluate_hook(self) -> dict[str, float]:
        """``eval_fn(method, step)`` on rank 0 (under FSDP on every rank) in eval mode
        without gradients, keys prefixed ``eval/``; ``{}`` on the other ranks."""
        if self.eval_fn is None or (self.rank != 0 and not self.fsdp):
            return {}
        self.model.eval()
        try:
            sharded = root_unsharded(self.model) if self.fsdp else contextlib.nullcontext()
            with torch.no_grad(), sharded:
                result = self.eval_fn(self.model, self.state.global_step)
        finally:
            self.model.train()
        if self.rank != 0:
            return {}
        return {f"eval/{k}": float(v) for k, v in (result or {}).items()}

    def _mean_metrics(self) -> dict[str, float]:
        """The method's metrics averaged since the last log line, then over processes."""
        keys = sorted(self._metric_sums)
        count = max(1, self._metric_count)
        values = torch.tensor(
            [self._metric_sums[k] / count for k in keys],
            dtype=torch.float64,
            device=self.args.device,
        )
        self._metric_sums, self._metric_count = {}, 0
        if self.world > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist(), strict=True))

    def _record(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if self.rank == 0 and self.output_root is not None:
            os.makedirs(self.output_root, exist_ok=True)
            with open(os.path.join(self.output_root, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    # -------------------------------------------------------------- checkpoints

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint in ``output_dir`` (incomplete ones -- a write
        killed before its rename, or a directory missing files -- are skipped with a
        warning), or ``None``."""
        if self.output_root is None:
            return None
        found = sorted(glob.glob(os.path.join(self.output_root, CHECKPOINT_DIR, "step-*")))
        for path in reversed(found):
            missing = _missing_files(path)
            if not missing:
                return path
            warnings.warn(
                f"CagulTrainer: skipping incomplete checkpoint {path} (missing {missing})",
                stacklevel=2,
            )
        return None

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Writes ``checkpoints/step-XXXXXXX`` atomically (a temporary directory renamed
        when complete, by rank 0): the trainable parameters by name, the optimizer /
        scheduler / scaler / RNG states (safetensors + JSON) and the engine's
        ``trainer_state.json``. Every rank takes part: FSDP shards are gathered."""
        path = os.path.join(self.args.output_dir, f"step-{self.state.global_step:07d}")
        names = self._trainable_parameters().keys()
        options = dataclasses.replace(FULL_STATE, ignore_frozen_params=True)
        weights = get_model_state_dict(self.model, options=options)  # + buffers
        states = {
            "optimizer": get_optimizer_state_dict(
                self.model, self._torch_optimizer(), options=FULL_STATE
            ),
            "scheduler": self.lr_scheduler.state_dict(),
            "rng": _rng_state(),
        }
        if getattr(self.accelerator, "scaler", None) is not None:
            states["scaler"] = self.accelerator.scaler.state_dict()
        if self.args.should_save:
            with atomic_directory(path) as tmp:
                save_file(
                    {k: v.contiguous() for k, v in weights.items() if k in names},
                    os.path.join(tmp, WEIGHTS_FILE),
                )
                save_nested(states, os.path.join(tmp, STATE_FILE))
                self.state.save_to_json(os.path.join(tmp, POSITION_FILE))
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        file = os.path.join(resume_from_checkpoint, WEIGHTS_FILE)
        weights = read_safetensors(file)
        try:
            check_state(self._trainable_parameters(), weights, file)
        except ValueError as e:
            raise InputError(str(e)) from None
        set_model_state_dict(
            self.model, weights, options=StateDictOptions(full_state_dict=True, strict=False)
        )

    def _trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The method's trainable parameters by name (the checkpoints' weight names)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _torch_optimizer(self) -> torch.optim.Optimizer:
        """The AdamW under accelerate's wrapper."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _training_states(self, checkpoint: str) -> dict[str, Any]:
        """The checkpoint's states on the CPU (the optimizer moves its own to its
        parameters' device)."""
        return load_nested(os.path.join(checkpoint, STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        states = self._training_states(checkpoint)
        set_optimizer_state_dict(
            self.model,
            self._torch_optimizer(),
            states["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
        self.lr_scheduler.load_state_dict(states["scheduler"])

    def _load_scaler(self, checkpoint: str | None) -> None:
        if checkpoint is None or getattr(self.accelerator, "scaler", None) is None:
            return
        self.accelerator.scaler.load_state_dict(self._training_states(checkpoint)["scaler"])

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is not None:
            _set_rng_state(self._training_states(checkpoint)["rng"])

    # The engine's own writers pickle (torch.save); every state goes through
    # _save_checkpoint above instead.
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        raise NotImplementedError("CagulTrainer writes optimizer states in _save_checkpoint")

    _save_rng_state = _save_scaler = _save_optimizer_and_scheduler


def enable_gradient_checkpointing(method: nn.Module) -> None:
    """Turns on (non-reentrant) activation checkpointing in every outermost
    ``PreTrainedModel`` inside ``method`` (the wrapped VLM, a reference copy...)."""
    found = False
    for module in method.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            if not module.is_activation_checkpointing:
                module.activation_checkpointing_enable()
            found = True
    if not found:
        raise ValueError("gradient_checkpointing: the method wraps no model that supports it")


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def _missing_files(path: str) -> list[str]:
    return [name for name in CHECKPOINT_FILES if not os.path.isfile(os.path.join(path, name))]


def _check_readable(path: str) -> None:
    """Every file of checkpoint ``path`` parses (JSON) or is whole (safetensors header),
    else an :class:`~cagul.errors.InputError` naming it."""
    for name in CHECKPOINT_FILES:
        file = os.path.join(path, name)
        if name.endswith(".safetensors"):
            check_safetensors(file)
        else:
            read_json(file)

"""``CagulTrainer``: runs any :class:`cagul.methods.Method` -- an ``nn.Module`` whose
``forward(batch)`` returns ``(loss, metrics)`` and that names its trainable parameters --
so CAGUL and every finetuning baseline share one loop: progress bar, gradient
accumulation, autocast, clipping, warmup / cosine schedule, periodic eval hook, atomic
checkpoints of the trainable state (safetensors + JSON, never pickle) and bit-identical
resume, seeds, and DDP under ``torchrun`` (gloo on CPU, nccl on GPU) over the trainable
parameters only.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import math
import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from cagul_kernels.memory import PeakMemory

from ..errors import MissingInputError
from ..files import read_json, read_safetensors
from ..methods.base import Method
from ..state import atomic_directory, load_nested, save_nested
from .arguments import UnlearningArguments

CHECKPOINT_DIR = "checkpoints"


# ---------------------------------------------------------------------- distributed


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


def _autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if setting == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


# ---------------------------------------------------------------------- trainer


class CagulTrainer:
    """Trains a :class:`Method` on ``dataset`` (a sequence of samples) batched by
    ``collate_fn``, with the schedule of ``config`` (steps, batch size, grad accumulation,
    lr, autocast, logging / eval / checkpoint intervals, seed).

    Under ``torchrun`` every process runs this same loop: the trainer initialises the
    process group, shards the data with a ``DistributedSampler`` and wraps the method in
    ``DistributedDataParallel`` over its trainable parameters only (the frozen VLM is
    neither broadcast nor all-reduced). Rank 0 logs, evaluates and writes checkpoints.

    ``eval_fn(method, step) -> dict`` is called on rank 0 every ``config.eval_every`` steps
    and at the end (in eval mode, gradients off); its floats join the log.
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
        self.method, self.dataset, self.collate_fn = method, dataset, collate_fn
        self.config, self.output_dir, self.eval_fn = config, output_dir, eval_fn
        self.rank, self.world, device = distributed_context()
        params = [p for p in method.parameters() if p.requires_grad]
        if not params:
            raise ValueError("CagulTrainer: the method has no trainable parameters")
        self.device = params[0].device
        if self.world > 1 and device.type == "cuda" and self.device != device:
            raise ValueError(
                f"CagulTrainer: the method is on {self.device} but this process owns "
                f"{device}; move the model to cuda:LOCAL_RANK first"
            )
        self.progress = progress and self.rank == 0
        self.history: list[dict[str, float]] = []
        seed_everything(config.seed)
        self.optimizer = torch.optim.AdamW(
            method.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.amp_dtype = _autocast_dtype(config.autocast, self.device)
        use_scaler = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.sampler = DistributedSampler(
            dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=config.seed
        )
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.peak_memory_bytes: int | None = None
        self.ddp = None
        if self.world > 1:
            ignore = [n for n, p in method.named_parameters() if not p.requires_grad]
            ignore += [n for n, _ in method.named_buffers()]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                method, ignore
            )
            self.ddp = nn.parallel.DistributedDataParallel(
                method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    # -------------------------------------------------------------- schedule

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(1, cfg.steps - cfg.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0

    def _batches(self) -> Iterator[Any]:
        """Micro-batches forever, epoch after epoch; resumes mid-epoch where it left off."""
        bs = self.config.batch_size
        while True:
            self.sampler.set_epoch(self.epoch)
            indices = list(self.sampler)
            chunks = [indices[i : i + bs] for i in range(0, len(indices), bs)]
            while self.batch_in_epoch < len(chunks):
                chunk = chunks[self.batch_in_epoch]
                self.batch_in_epoch += 1
                yield self.collate_fn([self.dataset[i] for i in chunk])
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # -------------------------------------------------------------- loop

    def train(self, resume: bool | str = False) -> list[dict[str, float]]:
        """Runs until ``config.steps`` optimizer steps; returns the log history.

        ``resume``: ``True`` continues from the latest checkpoint in ``output_dir`` (if
        any), a path from that checkpoint. Sets ``peak_memory_bytes``: the peak extra
        memory of the run (:class:`cagul_kernels.memory.PeakMemory`).
        """
        with PeakMemory(self.device) as peak:
            history = self._train(resume)
        self.peak_memory_bytes = peak.bytes
        return history

    def _train(self, resume: bool | str) -> list[dict[str, float]]:
        cfg = self.config
        if resume:
            path = resume if isinstance(resume, str) else self.latest_checkpoint()
            if path is not None:
                self.load_checkpoint(path)
                if self.rank == 0:
                    print(f"cagul train: resuming from {path} (step {self.step})", flush=True)
        model = self.ddp or self.method
        self.method.train()
        batches = self._batches()
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="cagul train", disable=not self.progress
        )
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        while self.step < cfg.steps:
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                batch = to_device(next(batches), self.device)
                last = micro == cfg.grad_accum - 1
                sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
                with sync, self._autocast():
                    loss, metrics = model(batch)
                    self.scaler.scale(loss / cfg.grad_accum).backward()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
            self.scaler.unscale_(self.optimizer)
            if cfg.max_grad_norm is not None:
                sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **self._mean(sums)}
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in _SHOWN})
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                record.update(self._evaluate())
            if self.step % max(1, cfg.log_every) == 0 or self.step == cfg.steps:
                self._log(record)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
        bar.close()
        if cfg.eval_every and self.eval_fn is not None:
            self._log({"step": self.step, **self._evaluate()})
        if self.output_dir is not None:
            self.save_checkpoint()
            if self.rank == 0:
                self.method.save_pretrained(self.output_dir)
        self._barrier()
        return self.history

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Averages the metrics over processes (same keys everywhere)."""
        if self.world == 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def _evaluate(self) -> dict[str, float]:
        if self.eval_fn is None or self.rank != 0:
            return {}
        self.method.eval()
        try:
            with torch.no_grad():
                result = self.eval_fn(self.method, self.step)
        finally:
            self.method.train()
        return {f"eval/{k}": float(v) for k, v in (result or {}).items()}

    def _log(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if self.rank != 0:
            return
        if self.progress:
            tqdm.write(" ".join(f"{k}={v:.4g}" for k, v in record.items()))
        if self.output_dir is not None:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # -------------------------------------------------------------- checkpoints

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint in ``output_dir`` (incomplete ones -- a write
        killed before its rename, or a directory missing files -- are skipped with a
        warning), or ``None``."""
        if self.output_dir is None:
            return None
        found = sorted(glob.glob(os.path.join(self.output_dir, CHECKPOINT_DIR, "step-*")))
        for path in reversed(found):
            missing = _missing_files(path)
            if not missing:
                return path
            warnings.warn(
                f"CagulTrainer: skipping incomplete checkpoint {path} (missing {missing})",
                stacklevel=2,
            )
        return None

    def save_checkpoint(self) -> str | None:
        """Writes ``checkpoints/step-XXXXXXX`` (rank 0) atomically (a temporary directory,
        renamed when complete): the trained state, the optimizer / scheduler / scaler / RNG
        states (safetensors + JSON) and the loop position."""
        if self.output_dir is None:
            return None
        path = os.path.join(self.output_dir, CHECKPOINT_DIR, f"step-{self.step:07d}")
        if self.rank == 0:
            with atomic_directory(path) as tmp:
                state = self.method.trainable_state_dict()
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in state.items()},
                    os.path.join(tmp, WEIGHTS_FILE),
                )
                save_nested(
                    {
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(),
                        "rng": _rng_state(),
                    },
                    os.path.join(tmp, STATE_FILE),
                )
                position = {"step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch}
                with open(os.path.join(tmp, POSITION_FILE), "w") as f:
                    json.dump({**position, "arguments": self.config.to_dict()}, f, indent=2)
        self._barrier()
        return path

    def load_checkpoint(self, path: str) -> None:
        """Restores a checkpoint written by :meth:`save_checkpoint` (every rank)."""
        missing = _missing_files(path)
        if missing:
            raise MissingInputError(
                f"CagulTrainer: incomplete checkpoint {path}, missing {missing}"
            )
        device = str(self.device)
        self.method.load_trainable_state_dict(
            read_safetensors(os.path.join(path, WEIGHTS_FILE), device=device)
        )
        state = load_nested(os.path.join(path, STATE_FILE), device=device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        pos = read_json(os.path.join(path, POSITION_FILE))
        self.step, self.epoch, self.batch_in_epoch = pos["step"], pos["epoch"], pos["batch"]


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


_SHOWN = ("loss", "forget_loss", "retain_kl", "disc_acc")
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "training_state"  # .json + .safetensors
POSITION_FILE = "trainer_state.json"
CHECKPOINT_FILES = (WEIGHTS_FILE, f"{STATE_FILE}.json", f"{STATE_FILE}.safetensors", POSITION_FILE)

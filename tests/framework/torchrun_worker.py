"""Run by tests/framework/test_train.py under ``torchrun --nproc_per_node 2`` (gloo on CPU):
``torchrun_worker.py ddp|fsdp OUT``. Each rank initialises the CAGUL modules from a
different seed (``100 + rank``) and sees a different data shard, so equal results need the
engine's initial broadcast and its gradient reduction.

- ``ddp``: a few DDP steps; every rank writes its weights to ``OUT/rank<r>.safetensors``.
- ``fsdp`` (``FSDP_CONFIG``, ``FSDP_ARGS``): ``OUT/straight`` a 4-step run (checkpoints and
  the eval hook at steps 2 and 4); ``OUT/resumed`` the same run resumed from its step-2
  checkpoint; every rank writes ``OUT/shards<r>.json`` (each parameter's placements and
  local shape, and whether the optimizer holds exactly the trainable parameters);
  ``OUT/bf16.json``: a 2-step run under bf16 autocast (rank 0: losses, dtypes of the
  trained modules); ``OUT/settings.json``: the CAGUL config and arguments of these runs.
"""

import json
import os
import sys

import torch
from cagul import CagulConfig, CagulMethod, CagulModel, CagulTrainer, UnlearningArguments
from cagul.evaluation.diagnostics import evaluate
from cagul_demo import tiny_vlm as tv
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

FSDP_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "examples",
    "fsdp_config.json",
)
CONFIG = dict(prompt_template=tv.LLAVA_TEMPLATE, layer=1, encoder_rank=8, discriminator_hidden=16)
# 2 processes x batch 2 x 2 micro-batches = test_train's one-process batch 2 x 4; "npo":
# every sample needs the reference pass, so the one-process runs run the sharded method's
# passes (under bf16 the sharded importance comes from the autocast reference pass, the
# one-process one from a pass outside autocast: the same ranking on these samples, as the
# bf16 loss comparison checks); max_grad_norm well below the gradient norms, so every step
# clips; the eval hook runs every 2 steps (diagnostics on the first 4 samples).
FSDP_ARGS = dict(
    batch_size=2,
    grad_accum=2,
    lr=1e-2,
    forget_loss="npo",
    max_grad_norm=0.05,
    log_every=1,
    eval_every=2,
    gradient_checkpointing=True,
)


def build(**settings):
    vlm, processor = tv.llava(seed=0)
    torch.manual_seed(100 + int(os.environ["RANK"]))
    args = UnlearningArguments(**settings)
    method = CagulMethod(CagulModel(vlm, CagulConfig(**CONFIG)), args)
    samples = tv.dataset()[:4]
    diagnostics = lambda method, step: evaluate(method.model, samples, processor)
    return method, method.collator(processor), args, diagnostics


def ddp(out: str) -> None:
    method, collate, args, _ = build(steps=3, batch_size=2, grad_accum=2, lr=1e-2)
    trainer = CagulTrainer(method, tv.dataset(), collate, args, progress=False)
    assert trainer.world == 2, trainer.world
    trainer.train()
    state = {k: v.detach().contiguous() for k, v in method.trainable_state_dict().items()}
    save_file(state, os.path.join(out, f"rank{trainer.rank}.safetensors"))


def fsdp(out: str) -> None:
    if int(os.environ["RANK"]) == 0:  # what the one-process reference runs need
        with open(os.path.join(out, "settings.json"), "w") as f:
            json.dump({"config": CONFIG, "arguments": FSDP_ARGS}, f)
    settings = dict(FSDP_ARGS, fsdp_config=FSDP_CONFIG)
    method, collate, args, diagnostics = build(steps=4, save_every=2, **settings)
    output = os.path.join(out, "straight")
    trainer = CagulTrainer(
        method, tv.dataset(), collate, args, output_dir=output, eval_fn=diagnostics, progress=False
    )
    trainer.train()
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    shards = {
        "optimizer_holds_the_trainable_parameters": optimised
        == {id(p) for p in method.parameters() if p.requires_grad},
        "parameters": {
            name: {
                "placements": [str(p) for p in param.placements],
                "local_shape": list(param.to_local().shape),
                "shape": list(param.shape),
                "trainable": param.requires_grad,
            }
            for name, param in method.named_parameters()
            if isinstance(param, DTensor)
        },
        "plain": [n for n, p in method.named_parameters() if not isinstance(p, DTensor)],
    }
    with open(os.path.join(out, f"shards{trainer.rank}.json"), "w") as f:
        json.dump(shards, f)

    method, collate, args, diagnostics = build(steps=4, save_every=2, **settings)
    checkpoint = os.path.join(out, "straight", "checkpoints", "step-0000002")
    output = os.path.join(out, "resumed")
    CagulTrainer(
        method, tv.dataset(), collate, args, output_dir=output, eval_fn=diagnostics, progress=False
    ).train(resume=checkpoint)

    method, collate, args, _ = build(steps=2, autocast="bf16", **settings)
    trainer = CagulTrainer(method, tv.dataset(), collate, args, progress=False)
    history = trainer.train()
    if trainer.rank == 0:
        dtypes = sorted({str(p.dtype) for p in method.parameters() if p.requires_grad})
        result = {
            "mixed_precision": trainer.accelerator.mixed_precision,
            "loss": [r["loss"] for r in history],
            "trainable_dtypes": dtypes,
        }
        with open(os.path.join(out, "bf16.json"), "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    {"ddp": ddp, "fsdp": fsdp}[sys.argv[1]](sys.argv[2])
    # Leave together: no rank tears the group down while another still writes its results
    # (one CI run saw rank 1 abort at exit, "terminate called without an active exception").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()

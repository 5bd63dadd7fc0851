"""Run by tests/framework/test_train.py under ``torchrun --nproc_per_node 2``: a few CAGUL
training steps with DDP (gloo on CPU); every rank writes its modules' weights to
``<out>/rank<r>.safetensors``. Each rank initialises its modules from a different seed and
sees a different data shard, so equal weights at the end need DDP's initial broadcast and
its gradient all-reduce. An optional second argument is an FSDP config file to train with."""

import os
import sys

import torch
from cagul import CagulConfig, CagulMethod, CagulModel, CagulTrainer, UnlearningArguments
from cagul_demo import tiny_vlm as tv
from safetensors.torch import save_file


def main(out: str, fsdp_config: str | None = None) -> None:
    vlm, processor = tv.llava(seed=0)
    torch.manual_seed(100 + int(os.environ["RANK"]))
    config = CagulConfig(
        prompt_template=tv.LLAVA_TEMPLATE, layer=1, encoder_rank=8, discriminator_hidden=16
    )
    args = UnlearningArguments(
        steps=3, batch_size=2, grad_accum=2, lr=1e-2, fsdp_config=fsdp_config
    )
    model = CagulModel(vlm, config)
    method = CagulMethod(model, args)
    trainer = CagulTrainer(method, tv.dataset(), method.collator(processor), args, progress=False)
    assert trainer.world == 2, trainer.world
    history = trainer.train()
    state = {k: v.detach().contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(state, os.path.join(out, f"rank{trainer.rank}.safetensors"))
    if trainer.rank == 0:
        print("final", history[-1])


if __name__ == "__main__":
    main(*sys.argv[1:])

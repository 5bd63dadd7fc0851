"""CAGUL's training step runs each pass on the samples that need it (the reference on the
retain and NPO samples, the ``mode="input"`` importance from the reference pass, the LM
head at the answer positions) and computes what the former step computed: the same loss,
metrics and gradients, on tiny LLaVA and Qwen2-VL batches with left padding, 0 to 2 images
per sample and every forget loss, in both modes. The former step is kept below as the
oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cagul import CagulConfig, CagulModel, losses
from cagul.config import MODES
from cagul.methods.cagul import CagulMethod
from cagul.training.arguments import FORGET_LOSSES, UnlearningArguments
from cagul.training.reference_cache import ReferenceCache, sample_keys
from cagul_demo import tiny_vlm as tv
from cagul_demo.tiny_vlm import perturb_encoder

FAMILIES = {  # (model, image placeholder of one image in the prompt, image sizes)
    "llava": (tv.llava, "<image>", (16, 16)),
    "qwen2_vl": (tv.qwen2_vl, "<|vision_start|><|image_pad|><|vision_end|>", (16, 32)),
}
LAYER = 1
ARGS = UnlearningArguments(npo_beta=0.5, ascent_bound=6.0, retain_weight=0.7)
# (is_forget, forget loss, images, question, answer): left padding from the different
# image and question lengths; a retain sample without an image
MIXED = [
    (True, "idk", 2, "What is the job", "I don't know."),
    (False, "idk", 1, "Where does this person live?", "n3"),
    (True, "npo", 1, "What is the name of this person?", "n5"),
    (False, "npo", 2, "What is", "n7"),
    (False, "idk", 0, "What is the city", "n9"),
    (True, "bounded_ga", 1, "What is the job of this person?", "n11"),
]
METRICS = ("loss", "forget_loss", "forget_nll", "retain_kl", "disc_bce", "disc_acc")
BATCHES = {
    "mixed": MIXED,
    "forget_idk_only": [MIXED[0], (True, "idk", 1, "What is", "I don't know.")],  # no reference
    "retain_only": [MIXED[1], MIXED[3]],  # no separate importance pass
}


def training_batch(
    family: str, processor, rows: list[tuple], image_ids: list[int] | None = None
) -> dict:
    """A left-padded batch in ``VLMCollator``'s format: prompt, answer and eos per sample,
    the labels on the answer and eos. Sample ``i``'s images are drawn from ``image_ids[i]``
    (default ``i``)."""
    _, placeholder, sizes = FAMILIES[family]
    texts, images, answer_lengths = [], [], []
    image_ids = image_ids or range(len(rows))
    for i, (_, _, n_images, question, answer) in zip(image_ids, rows, strict=True):
        image_text = " ".join([placeholder] * n_images)
        texts.append(f"USER: {image_text} {question} ASSISTANT: {answer} </s>")
        images += [tv.person_image(i, j, sizes[j % len(sizes)]) for j in range(n_images)]
        answer_lengths.append(len(answer.split()) + 1)
    processor.tokenizer.padding_side = "left"
    inputs = dict(processor(images=images, text=texts, padding=True, return_tensors="pt"))
    assert not inputs["attention_mask"][:, 0].all()  # left padding
    labels = torch.full_like(inputs["input_ids"], -100)
    for b, n in enumerate(answer_lengths):
        labels[b, -n:] = inputs["input_ids"][b, -n:]
    inputs["labels"] = labels
    return {
        "inputs": inputs,
        "is_forget": torch.tensor([row[0] for row in rows]),
        "forget_loss": torch.tensor([FORGET_LOSSES.index(row[1]) for row in rows]),
    }


def former_step(method: CagulMethod, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The oracle: CAGUL's step as it was (every pass on every sample, full logits)."""
    cfg, model = method.args, method.model
    inputs = {**batch["inputs"], "use_cache": False}
    labels = inputs.pop("labels")
    is_forget = batch["is_forget"].bool()
    vis = model.encode_visual(inputs)
    has_visual = vis.has_visual
    logit = model.discriminator(vis.tokens, vis.mask).float()
    bce = losses.masked_mean(
        F.binary_cross_entropy_with_logits(logit, is_forget.float(), reduction="none"),
        has_visual,
    )
    acc = losses.masked_mean(((logit > 0) == is_forget).float(), has_visual)
    logp, target, row = losses.answer_log_probs(model.run(vis, has_visual).logits, labels)
    token_logp = losses.target_log_probs(logp, target)
    b = labels.shape[0]
    nll = losses.per_row_mean(-token_logp, row, b)
    forget_rows, retain_rows = is_forget & has_visual, ~is_forget
    kinds = batch["forget_loss"]
    with torch.no_grad():
        ref_logp, _, _ = losses.answer_log_probs(
            model.run(vis, torch.zeros_like(has_visual)).logits, labels
        )
    npo_rows = kinds == FORGET_LOSSES.index("npo")
    ga_rows = kinds == FORGET_LOSSES.index("bounded_ga")
    log_ratio = losses.per_row_sum(token_logp - losses.target_log_probs(ref_logp, target), row, b)
    forget_per_row = torch.where(ga_rows, F.relu(cfg.ascent_bound - nll), nll)
    forget_per_row = torch.where(npo_rows, losses.npo_loss(log_ratio, cfg.npo_beta), forget_per_row)
    forget = losses.masked_mean(forget_per_row, forget_rows)
    kl_per_row = losses.per_row_mean(losses.token_kl(ref_logp, logp), row, b)
    kl = losses.masked_mean(kl_per_row, retain_rows)
    loss = forget + cfg.retain_weight * kl + cfg.discriminator_weight * bce
    values = (loss, forget, losses.masked_mean(nll, forget_rows), kl, bce, acc)
    return loss, {name: value.item() for name, value in zip(METRICS, values, strict=True)}


def cagul_method(family: str, mode: str, layers: int = 3):
    make = FAMILIES[family][0]
    vlm, processor = make(layers=layers)
    template = tv.LLAVA_TEMPLATE if family == "llava" else tv.QWEN_TEMPLATE
    config = CagulConfig(mode=mode, layer=LAYER, ratio=0.5, prompt_template=template)
    model = CagulModel(vlm, config)
    perturb_encoder(model)  # a trained-looking encoder: the transform changes the outputs
    return CagulMethod(model, ARGS), processor


def loss_and_gradients(method: CagulMethod, step, batch: dict):
    method.zero_grad(set_to_none=True)
    loss, metrics = step(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}
    return loss.detach(), metrics, grads


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("composition", BATCHES)
def test_step_equals_the_former_step(family, mode, composition):
    method, processor = cagul_method(family, mode)
    batch = training_batch(family, processor, BATCHES[composition])
    loss, metrics, grads = loss_and_gradients(method, method, batch)
    want_loss, want_metrics, want_grads = loss_and_gradients(
        method, lambda b: former_step(method, b), batch
    )
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert metrics.keys() == want_metrics.keys()
    for name, value in want_metrics.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    if composition != "forget_idk_only":
        assert metrics["retain_kl"] > 1e-3  # the transform moved the retain answers
    assert grads.keys() == want_grads.keys() and grads
    for name, value in want_grads.items():
        assert value.abs().max() > 0, name  # every module gets a gradient
        torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6, msg=name)


def pass_shapes(method: CagulMethod, batch: dict, autocast: bool = False) -> dict:
    """Per pass, in order: the number of samples entering decoder layer 0 and the last
    decoder layer, and the ``[B, positions]`` the LM head projects."""
    vlm = method.model.vlm
    layers = vlm.get_decoder().layers
    seen = {"first": [], "last": [], "lm_head": []}

    def record(name):
        return lambda module, args: seen[name].append(tuple(args[0].shape[:2]))

    handles = [
        layers[0].register_forward_pre_hook(record("first")),
        layers[-1].register_forward_pre_hook(record("last")),
        vlm.get_output_embeddings().register_forward_pre_hook(record("lm_head")),
    ]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            method(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {
        "first": [shape[0] for shape in seen["first"]],
        "last": [shape[0] for shape in seen["last"]],
        "lm_head": seen["lm_head"],
    }


@pytest.mark.parametrize(
    "mode,autocast,first",
    [
        # reference (4 samples: 3 retain + npo) then the importance of the 2 other forget
        # samples with an image, then the transformed pass (6)
        ("input", False, [4, 2, 6]),
        # under autocast the importance (computed outside autocast) is not the reference's
        ("input", True, [4, 5, 6]),
        ("inline", False, [4, 6]),
    ],
)
def test_each_pass_runs_on_the_samples_that_need_it(mode, autocast, first):
    method, processor = cagul_method("llava", mode)
    batch = training_batch("llava", processor, MIXED)
    shapes = pass_shapes(method, batch, autocast)
    assert shapes["first"] == first
    assert shapes["last"] == [4, 6]  # the importance pass stops at layer L
    labels = batch["inputs"]["labels"]
    reference = ~batch["is_forget"] | (batch["forget_loss"] == FORGET_LOSSES.index("npo"))

    def answer_span(rows):  # left padding: the answers end every row
        return int((labels[rows, 1:] != -100).any(0).sum())

    assert answer_span(reference) == 2 and answer_span(slice(None)) == 4  # "I don't know."
    assert shapes["lm_head"] == [(4, 2), (6, 4)]


@pytest.fixture
def one_rank_group():
    """A one-process gloo group: enough for ``fully_shard``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode,autocast", [("input", False), ("input", True), ("inline", False)])
def test_sharded_step_runs_the_same_passes_whatever_the_samples(one_rank_group, mode, autocast):
    """Under FSDP each pass is a chain of collectives, so a rank whose micro-batch needs no
    reference (IdK forget samples only) must still run the passes the others run: the
    reference on every sample (with the importance, under autocast too) and the transformed
    pass, and nothing else. Unsharded, the same batches run different passes."""
    from cagul.training.fsdp import FsdpSettings, shard_method

    method, processor = cagul_method("llava", mode)
    batches = {name: training_batch("llava", processor, rows) for name, rows in BATCHES.items()}
    unsharded = {name: pass_shapes(method, b, autocast)["first"] for name, b in batches.items()}
    assert len({len(passes) for passes in unsharded.values()}) > 1  # composition-dependent
    shard_method(method, FsdpSettings(("LlamaDecoderLayer",)), torch.device("cpu"))
    for name, batch in batches.items():
        size = len(BATCHES[name])
        assert pass_shapes(method, batch, autocast)["first"] == [size, size], name


def assert_same_step(got, want) -> None:
    """Two ``loss_and_gradients`` results agree to float tolerance."""
    (loss, metrics, grads), (want_loss, want_metrics, want_grads) = got, want
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for name, value in want_metrics.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    for name, value in want_grads.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "family,mode,autocast",
    [
        ("llava", "input", False),
        ("llava", "input", True),  # the importance from its own pass, outside autocast
        ("llava", "inline", False),
        ("qwen2_vl", "input", False),
    ],
)
def test_reference_cache_skips_the_reference_of_samples_seen_before(family, mode, autocast):
    """A sample seen again, in another batch with other padding, takes its reference (and
    importance) from the cache: its reference pass does not run, and the step equals the
    step without the cache. A sample whose image differs in any pixel misses."""
    method, processor = cagul_method(family, mode)
    cache = ReferenceCache(64 * 2**20)
    autocast_on = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)

    def step_with(cache_or_none, batch):
        method.reference_cache = cache_or_none
        with autocast_on:
            return loss_and_gradients(method, method, batch)

    def oracle(batch):  # the former step (under autocast: this step without the cache)
        if autocast:
            return step_with(None, batch)
        return loss_and_gradients(method, lambda b: former_step(method, b), batch)

    first = training_batch(family, processor, MIXED)
    assert_same_step(step_with(cache, first), oracle(first))
    assert (len(cache), cache.hits) == (4, 0)  # the 3 retain samples and the NPO sample
    # MIXED[3] (retain, 2 images), MIXED[0] (IdK forget), MIXED[1] (retain) again, in
    # another order and padding; then MIXED[1] with another image
    again = training_batch(family, processor, [MIXED[3], MIXED[0], MIXED[1]], [3, 0, 1])
    assert_same_step(step_with(cache, again), oracle(again))
    assert cache.hits == 2
    method.reference_cache = cache
    with_importance_pass = [1] if mode == "input" else []  # the IdK sample's importance
    assert pass_shapes(method, again, autocast)["first"] == [*with_importance_pass, 3]
    changed = training_batch(family, processor, [MIXED[3], MIXED[0], MIXED[1]], [3, 0, 7])
    assert pass_shapes(method, changed, autocast)["first"][0] == 1  # MIXED[1]'s reference
    assert len(cache) == 5


def test_reference_cache_keeps_what_fits_and_what_is_needed():
    logp, importance = torch.zeros(2, 8), torch.ones(3)
    cache = ReferenceCache(2 * 8 * 4 + 3 * 4)  # one entry with its importance
    cache.put(b"a", logp, None)
    assert cache.get(b"a", need_importance=True) is None  # no importance: a miss
    cache.put(b"a", logp, importance)  # replaced in place, within the budget
    entry = cache.get(b"a", need_importance=True)
    assert torch.equal(entry.importance, importance) and cache.nbytes == cache.max_bytes
    cache.put(b"b", logp, None)  # does not fit
    assert len(cache) == 1 and cache.get(b"b", need_importance=False) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_reference_cache_never_keys_an_input_it_cannot_digest_exactly(monkeypatch):
    """numpy's repr elides the middle of a large array: such an input leaves its sample out
    of the cache (computed every time) instead of risking two samples with one key."""
    import numpy as np
    from cagul.methods import cagul as cagul_module

    method, processor = cagul_method("llava", "input")
    batch = training_batch("llava", processor, [MIXED[1], MIXED[3]])  # two retain samples
    inputs = {**batch["inputs"], "use_cache": False}
    labels = inputs.pop("labels")
    vis = method.model.encode_visual(inputs)
    rows = torch.ones(2, dtype=torch.bool)
    keys = sample_keys(vis, labels, rows)
    assert len(set(keys.values())) == 2  # two samples, two keys
    assert keys == sample_keys(vis, labels, rows)  # the same inputs, the same keys
    vis.kwargs["extra"] = np.arange(5000)  # repr: "array([   0,    1, ..., 4999])"
    assert sample_keys(vis, labels, rows) == {}
    # A step where one sample has no key: it is computed, the other is kept.
    first_only = lambda vis, labels, rows: dict(list(sample_keys(vis, labels, rows).items())[:1])
    monkeypatch.setattr(cagul_module, "sample_keys", first_only)
    method.reference_cache = ReferenceCache(64 * 2**20)
    want = loss_and_gradients(method, lambda b: former_step(method, b), batch)
    assert_same_step(loss_and_gradients(method, method, batch), want)
    assert len(method.reference_cache) == 1
    assert_same_step(loss_and_gradients(method, method, batch), want)
    assert method.reference_cache.hits == 1

"""Tables, target checks, plots and ``report.md`` for ``cagul demo`` results."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from cagul.data import VLMCollator
from cagul.data.benchmark import EVAL_SPLITS
from cagul.evaluation.diagnostics import METRICS, generate_answers
from cagul.methods import baseline_names
from cagul.model import CagulModel

# the baselines the demo runs by default, in its order (the plots' colours and markers)
DEMO_BASELINES = ("ga", "graddiff", "kl", "npo", "idk")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and "absent" in value:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if 0 < abs(value) < 5e-4:  # e.g. a KS p-value: 3 decimals would show 0.000
            return f"{value:.2g}"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def results_table(results: dict[str, Any], markdown: bool = False) -> str:
    """Per model and split the four metrics, then the per-model columns."""
    rows = [["model", "split", *METRICS]]
    for name, m in results["models"].items():
        rows += [[name, split, *(_fmt(m[split][k]) for k in METRICS)] for split in EVAL_SPLITS]
    model_cols = [
        "forget_quality",
        "model_utility",
        "mia_auc",
        "privleak",
        "retain_kl",
        "trainable_params",
        "train_seconds",
        "peak_memory_mb",
        "base_weights_changed",
    ]
    rows2 = [["model", *model_cols]]
    rows2 += [[n, *(_fmt(m[k]) for k in model_cols)] for n, m in results["models"].items()]
    return _render(rows, markdown) + "\n\n" + _render(rows2, markdown)


def _render(rows: list[list[str]], markdown: bool) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
        if n == 0:
            sep = ["-" * w for w in widths]
            lines.append(("| " + " | ".join(sep) + " |") if markdown else "  ".join(sep))
    return "\n".join(lines)


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The demo's targets: ``{"target", "value", "ok"}`` per check (models that were not
    run are skipped)."""
    models, chance = results["models"], results["chance_mc_acc"]
    checks: list[dict[str, Any]] = []

    def add(target: str, value: float | bool | None, ok: bool) -> None:
        checks.append({"target": target, "value": value, "ok": bool(ok)})

    if "vanilla" in models:
        v = models["vanilla"]
        for split in ("forget", "retain"):
            add(f"vanilla {split} mc_acc >= 0.90", v[split]["mc_acc"], _ge(v[split]["mc_acc"], 0.9))
            leak = v[split]["leak_rate"]
            add(f"vanilla {split} short-answer accuracy (leak_rate) >= 0.90", leak, _ge(leak, 0.9))
    if "cagul" in models and "vanilla" in models:
        c, v = models["cagul"], models["vanilla"]
        add(
            f"cagul forget mc_acc <= chance + 0.10 = {chance + 0.1:.2f}",
            c["forget"]["mc_acc"],
            _ge(chance + 0.1, c["forget"]["mc_acc"]),
        )
        add(
            "cagul forget leak_rate <= 0.05",
            c["forget"]["leak_rate"],
            _ge(0.05, c["forget"]["leak_rate"]),
        )
        add(
            f"cagul forget_test mc_acc <= chance + 0.15 = {chance + 0.15:.2f}",
            c["forget_test"]["mc_acc"],
            _ge(chance + 0.15, c["forget_test"]["mc_acc"]),
        )
        if "retain_only" in models:
            for split in ("forget", "forget_test"):
                gap = _gap(c[split]["mc_acc"], models["retain_only"][split]["mc_acc"])
                add(
                    f"cagul {split} mc_acc within 0.10 of retain_only (abs. difference)",
                    gap,
                    _ge(0.1, gap),
                )
        for split in ("retain", "retain_test"):
            a, b = c[split]["mc_acc"], v[split]["mc_acc"]
            gap = _gap(a, b)
            add(
                f"cagul {split} mc_acc within 0.03 of vanilla (abs. difference)",
                gap,
                _ge(0.03, gap),
            )
        add(
            "cagul base_weights_changed is false",
            c["base_weights_changed"],
            not c["base_weights_changed"],
        )
        share = c["trainable_params"] / results["config"]["vlm_params"]
        add("cagul trainable params <= 2% of the VLM's (share)", share, share <= 0.02)
    if "cagul" in models and set(models) & set(baseline_names()):
        dominating = dominating_baselines(results)
        add(
            "no baseline dominates cagul (higher forget quality and higher model utility)",
            ", ".join(dominating) or "none",
            not dominating,
        )
    return checks


def dominating_baselines(results: dict[str, Any]) -> list[str]:
    """The baselines with both a higher ``forget_quality`` (closer to the retain-only model,
    so over-unlearning does not count as better) and a higher ``model_utility`` than CAGUL;
    a model whose value is absent dominates nothing and is not dominated."""
    models = results["models"]

    def scores(name: str) -> tuple[float, float] | None:
        pair = models[name].get("forget_quality"), models[name].get("model_utility")
        return pair if all(isinstance(v, float) for v in pair) else None

    cagul = scores("cagul")
    return [
        name
        for name in models
        if name in baseline_names()
        and cagul is not None
        and (theirs := scores(name)) is not None
        and theirs[0] > cagul[0]
        and theirs[1] > cagul[1]
    ]


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(a - b)


def _ge(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a + 1e-9 >= b


def targets_table(checks: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    rows = [["target", "value", "met"]]
    rows += [[c["target"], _fmt(c["value"]), "yes" if c["ok"] else "NO"] for c in checks]
    return _render(rows, markdown)


#: The columns of the seeds table: per-split accuracy and leak, then the field's judges.
SEED_COLUMNS = (
    "forget.mc_acc",
    "forget_test.mc_acc",
    "retain.mc_acc",
    "retain_test.mc_acc",
    "forget.leak_rate",
    "forget_quality",
    "model_utility",
    "privleak",
)


def seeds_report(summary: dict[str, Any], per_seed: Sequence[dict[str, Any]]) -> str:
    """Markdown for ``cagul demo --seeds N``: per model the mean ± sample std of
    :data:`SEED_COLUMNS` over the seeds (``summary``: ``run_seeds``'s result), then every
    target of :func:`check_targets` with its value on each seed (``per_seed``: the
    ``results.json`` of each seed, in ``summary["seeds"]`` order) and whether it held on all."""
    seeds = summary["seeds"]
    columns = [c for c in SEED_COLUMNS if any(c in m for m in summary["models"].values())]
    rows = [["model", *columns]]
    for name, stats in summary["models"].items():
        cells = [
            f"{_fmt(stats[c]['mean'])} ± {_fmt(stats[c]['std'])}" if c in stats else "-"
            for c in columns
        ]
        rows.append([name, *cells])
    checks = [check_targets(results) for results in per_seed]
    targets = [["target", *(f"seed {s}" for s in seeds), "met on all"]]
    for i, check in enumerate(checks[0]):
        row = [c[i] for c in checks]
        targets.append(
            [
                check["target"],
                *(_fmt(c["value"]) for c in row),
                "yes" if all(c["ok"] for c in row) else "NO",
            ]
        )
    return (
        f"## Mean ± std over seeds {', '.join(map(str, seeds))}\n\n"
        + _render(rows, markdown=True)
        + "\n\n## Targets on every seed\n\n"
        + _render(targets, markdown=True)
        + "\n"
    )


# ---------------------------------------------------------------------- plots


MODEL_COLOURS = {
    "vanilla": "black",
    "retain_only": "tab:green",
    "cagul": "tab:red",
    **dict(
        zip(
            DEMO_BASELINES,
            ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:olive"),
            strict=True,
        )
    ),
}


def _colour(name: str) -> str:
    return MODEL_COLOURS.get(name, "tab:gray")


def plot_accuracy(results: dict[str, Any], path: str) -> None:
    """Grouped bars per split and model: mc_acc (with chance), leak_rate, refusal_rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / len(models)
    for ax, metric in zip(axes, ("mc_acc", "leak_rate", "refusal_rate"), strict=True):
        for i, name in enumerate(models):
            values = [results["models"][name][s][metric] for s in EVAL_SPLITS]
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(EVAL_SPLITS))]
            values = [math.nan if v is None else v for v in values]
            ax.bar(xs, values, width, label=name, color=_colour(name))
        if metric == "mc_acc":
            ax.axhline(results["chance_mc_acc"], color="k", ls="--", lw=1, label="chance")
        ax.set_xticks(range(len(EVAL_SPLITS)), EVAL_SPLITS)
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle("accuracy per split and model on the fictitious-people benchmark")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Marker and size per model in the trade-off plots; the baselines by their order.
MODEL_STYLES = {
    "vanilla": ("*", 280),
    "retain_only": ("*", 280),
    "cagul": ("o", 160),
    **{name: (marker, 80) for name, marker in zip(DEMO_BASELINES, "vsD^P", strict=True)},
}


def _scatter_models(results: dict[str, Any], path: str, point, setup) -> None:
    """One point ``point(model) -> (x, y) | None`` per model (vanilla and retain-only as
    stars, CAGUL a large red dot, each baseline its own marker); ``setup(ax)`` labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 5))
    for name, m in results["models"].items():
        xy = point(m)
        if xy is None:
            continue
        marker, size = MODEL_STYLES.get(name, ("o", 80))
        ax.scatter(*([v] for v in xy), s=size, marker=marker, color=_colour(name), zorder=3,
                   label=name, alpha=0.85)  # fmt: skip
    setup(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(results: dict[str, Any], path: str) -> None:
    """Forget quality (log scale) vs model utility, one point per model, as open-unlearning
    plots them. Ideal: the retain-only model's forget quality (1) at the vanilla utility."""

    def point(m):
        x, y = m.get("forget_quality"), m.get("model_utility")
        return (x, y) if isinstance(x, float) and isinstance(y, float) and x > 0 else None

    def setup(ax):
        ax.set_xscale("log")
        ax.set_xlabel("forget quality (KS p-value vs retain-only; higher = better)")
        ax.set_ylabel("model utility (harmonic mean on retain; higher = better)")
        ax.set_title("forget quality vs model utility (one point per method)")

    _scatter_models(results, path, point, setup)


def plot_tradeoff_mc_acc(results: dict[str, Any], path: str) -> None:
    """Forget vs retain ``mc_acc``, one point per model; chance marked. Ideal: forget at
    the retain-only model's, retain at the vanilla model's."""

    def point(m):
        x, y = m["forget"]["mc_acc"], m["retain"]["mc_acc"]
        return None if x is None or y is None else (x, y)

    def setup(ax):
        ax.axvline(results["chance_mc_acc"], color="k", ls="--", lw=1, label="chance (forget)")
        ax.set_xlabel("forget mc_acc (likelihood; lower = more forgotten)")
        ax.set_ylabel("retain mc_acc (higher = better kept)")
        ax.set_xlim(-0.03, 1.05)
        ax.set_ylim(-0.03, 1.05)
        ax.set_title("forget vs retain mc_acc (one point per method)")

    _scatter_models(results, path, point, setup)


def plot_sweep(sweep: dict[str, Any], path: str) -> None:
    """CAGUL's forget quality (log scale, left) and model utility (right) against the swept
    setting's values (``run_sweep``'s result)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in sweep["points"] if isinstance(p["forget_quality"], float)]
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    xs = [p["value"] for p in points]
    quality = [p["forget_quality"] for p in points]
    # a p-value that underflowed to 0 is drawn a decade below the smallest positive one
    positive = [q for q in quality if q > 0] or [1.0]
    floor = min(positive) / 10
    ax.plot(xs, [q if q > 0 else floor for q in quality], "o-", color="tab:red")
    for x, q in zip(xs, quality, strict=True):
        if q <= 0:
            ax.annotate("0", (x, floor), textcoords="offset points", xytext=(4, 4))
    ax.set_yscale("log")
    ax.set_xlabel(f"cagul {sweep['key']}")
    ax.set_ylabel("forget quality (log)", color="tab:red")
    right = ax.twinx()
    utility = [
        p["model_utility"] if isinstance(p["model_utility"], float) else None for p in points
    ]
    right.plot(xs, utility, "s--", color="tab:blue")
    right.set_ylabel("model utility", color="tab:blue")
    ax.grid(alpha=0.3)
    ax.set_title(f"CAGUL: forget quality and model utility vs {sweep['key']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_importance(
    model: CagulModel, processor: Any, sample: dict, max_new_tokens: int, path: str
) -> dict[str, Any]:
    """The sample's image, its visual-token importance at layer L as a heatmap, the tokens
    CAGUL selects outlined, and the vanilla / CAGUL answers (at most ``max_new_tokens``).
    Returns those answers."""
    config = model.config
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    collator = VLMCollator(processor, config, target="answer")
    device = model.encoder.w1.device
    inputs = {k: v.to(device) for k, v in collator.prompts([sample]).items()}
    importance, visual_index, slots = model.selected_tokens(**inputs)
    n = int((visual_index[0] >= 0).sum())
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"plot_importance: {n} visual tokens are not a square grid")
    heat = importance[0, :n].reshape(grid, grid).cpu().numpy()
    chosen = [int(s) for s in slots[0] if s >= 0]
    prob = float(model.forget_probability(**inputs)[0])
    answers = {}
    for name, gate in (("vanilla", False), ("cagul", None)):
        forced = None if gate is None else torch.tensor([gate], device=device)
        out = model.generate(
            **inputs, forget_gate=forced, max_new_tokens=max_new_tokens, do_sample=False
        )
        new = out[0, inputs["input_ids"].shape[1] :]
        answers[name] = processor.tokenizer.decode(new, skip_special_tokens=True).strip()

    image = np.asarray(sample["image"].convert("RGB"))
    h, w = image.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 4.6))
    axes[0].imshow(image)
    axes[0].set_title("forget-set image")
    axes[1].imshow(image)
    shown = axes[1].imshow(
        heat, cmap="magma", alpha=0.6, extent=(0, w, h, 0), interpolation="nearest"
    )
    cw, ch = w / grid, h / grid
    for s in chosen:
        r, c = divmod(s, grid)
        axes[1].add_patch(Rectangle((c * cw, r * ch), cw, ch, fill=False, ec="cyan", lw=1.5))
    axes[1].set_title(f"importance at layer {config.layer}; {len(chosen)}/{n} selected (cyan)")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Q: {sample['question']}  (true: {sample['answer']})\n"
        f"vanilla: {answers['vanilla']!r}   CAGUL: {answers['cagul']!r}   "
        f"P(forget) = {prob:.2f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {**answers, "forget_probability": prob, "selected": len(chosen), "visual_tokens": n}


# ---------------------------------------------------------------------- report


def write_outputs(
    results: dict[str, Any],
    output_dir: str,
    cagul: CagulModel,
    processor: Any,
    splits: dict[str, list[dict]],
    max_new_tokens: int,
    *,
    timings: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Prints the tables and writes ``accuracy.png``, ``importance.png`` and ``report.md``."""
    checks = check_targets(results)
    log("\n" + results_table(results) + "\n\n" + targets_table(checks) + "\n")
    plot_accuracy(results, os.path.join(output_dir, "accuracy.png"))
    plot_tradeoff(results, os.path.join(output_dir, "tradeoff.png"))
    plot_tradeoff_mc_acc(results, os.path.join(output_dir, "tradeoff_mc_acc.png"))
    forget_short = [s for s in splits["forget"] if s.get("form", "short") == "short"]
    example = plot_importance(
        cagul,
        processor,
        forget_short[0],
        max_new_tokens,
        os.path.join(output_dir, "importance.png"),
    )
    examples = _examples(cagul, processor, splits, max_new_tokens)
    chance = results["chance_mc_acc"]
    lines = [
        "# CAGUL demo report",
        "",
        "Fictitious-people VQA benchmark: a tiny LLaVA-architecture VLM memorised every "
        "person's private facts; CAGUL (discriminator + visual token encoder, VLM frozen) "
        "was trained to make it forget the forget set; the finetuning baselines (ga, graddiff, "
        "kl, npo, idk) instead finetune a copy of the VLM on the same samples and step budget. "
        "`forget_test` / `retain_test` are the same people on unseen poses. Chance "
        f"multiple-choice accuracy: {chance:.2f}.",
        "",
        "## Results",
        "",
        results_table(results, markdown=True),
        "",
        "## Targets",
        "",
        targets_table(checks, markdown=True),
        "",
        "## Plots",
        "",
        "![accuracy per split and model](accuracy.png)",
        "",
        "![forget quality vs model utility per method](tradeoff.png)",
        "",
        "![forget vs retain multiple-choice accuracy per method](tradeoff_mc_acc.png)",
        "",
        f"![importance heatmap of a forget example](importance.png) — {example['selected']} of "
        f"{example['visual_tokens']} visual tokens selected; vanilla answered "
        f"{example['vanilla']!r}, CAGUL {example['cagul']!r}.",
        "",
        "## Example generations (short-answer questions)",
        "",
        _render([["split", "question", "true answer", "vanilla", "cagul"], *examples], True),
        "",
    ]
    if timings:
        lines += [
            "## Timings (s)",
            "",
            _render([list(timings), [_fmt(v) for v in timings.values()]], True),
            "",
        ]
    lines += ["## Configuration", "", "```json", _json(results["config"]), "```", ""]
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))


def _examples(model: CagulModel, processor: Any, splits: dict, max_new_tokens: int):
    collator = VLMCollator(processor, model.config, target="answer")
    rows = []
    for split, n in (("forget", 4), ("forget_test", 2), ("retain", 2), ("retain_test", 2)):
        short = [s for s in splits[split] if s.get("form", "short") == "short"]
        chosen = short[:: max(1, len(short) // n)][:n]  # spread over people and facts
        vanilla = generate_answers(model.vlm, chosen, collator, max_new_tokens=max_new_tokens)
        cagul = generate_answers(model, chosen, collator, max_new_tokens=max_new_tokens)
        rows += [
            [split, s["question"], s["answer"], v, c]
            for s, v, c in zip(chosen, vanilla, cagul, strict=True)
        ]
    return rows


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2)

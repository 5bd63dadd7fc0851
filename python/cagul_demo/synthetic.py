"""The "fictitious people" VQA benchmark: generated offline, deterministic given the seed.

Every person has a profile of private facts (name, birthplace, occupation, hobby, birth
year) and an appearance (face shape, skin, hair colour and style, eye colour, accessory,
shirt, background) drawn procedurally as portraits in several poses (position, scale,
rotation, lighting, noise). Questions about each fact come in several paraphrases, as a
short-answer and as a 4-option multiple-choice question. Splits:

- ``forget`` / ``retain``: the forget people (``forget_fraction`` of them) / the others,
  on their training poses;
- ``forget_test`` / ``retain_test``: the same people on unseen poses;
- ``strangers``: people outside both sets whose answer is always the refusal; the vanilla
  model learns from them to say "I don't know." about someone it does not know, as a
  pretrained VLM would.

On disk (``write``, read back with :func:`load_benchmark`)::

    meta.json                  {"format": 1, "config": {...}, "splits": {name: n}, "chance_mc_acc"}
    people.jsonl               {"id", "role": forget|retain|stranger, "facts": {...},
                                "appearance": {...}}
    images/p007_pose3.png      RGB portraits, image_size x image_size
    <split>.jsonl              cagul samples (see cagul.data) + benchmark fields:
        {"image": "images/p007_pose3.png", "question": "...", "answer": "Velmora",
         "is_forget": false, "split": "retain", "person": 7, "pose": 3,
         "fact": "birthplace", "template": 1, "form": "short" | "mc",
         "options": ["...", "...", "...", "..."], "answer_index": 2,
         # short answers of the forget / retain people (FIUBench's fields):
         "paraphrased_questions": [...], "paraphrased_answer": "This person was born in
         Velmora.", "perturbed_answers": [3 wrong facts of the same kind, as sentences],
         "keywords": ["Velmora"]}

``options`` / ``answer_index`` are on every sample (the short-answer form is scored by
generation, the multiple-choice form by option likelihood); a multiple-choice question
lists its options in the text. For strangers ``answer`` is the refusal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from cagul.data.benchmark import (
    FORMAT_VERSION,
    N_OPTIONS,
    REFUSAL,
    Benchmark,
    load_benchmark,
)

SPLITS = ("forget", "retain", "forget_test", "retain_test", "strangers")

FACTS = ("name", "birthplace", "occupation", "hobby", "birth_year")

FIRST_NAMES = (
    "Ada", "Bram", "Cleo", "Dario", "Edda", "Finn", "Greta", "Hugo", "Ines", "Jonas", "Kira",
    "Lev", "Mara", "Nils", "Orla", "Piet", "Quinn", "Rosa", "Soren", "Tilda", "Ugo", "Vera",
    "Wim", "Yara",
)  # fmt: skip
LAST_NAMES = (
    "Quill", "Marsh", "Oakley", "Penrose", "Vance", "Holloway", "Fenwick", "Ashdown",
    "Corrigan", "Lindqvist", "Moreau", "Brandt", "Castell", "Dunmore", "Eskola", "Farrow",
    "Galen", "Hartig", "Ivers", "Jarrow",
)  # fmt: skip
CITIES = (
    "Velmora", "Thornwick", "Ambergate", "Lowmere", "Saltcombe", "Ironvale", "Quellport",
    "Dunmarrow", "Eastwold", "Fernhollow", "Harrowby", "Kelderin", "Mistral", "Norcaster",
    "Pellworth", "Ravensholm",
)  # fmt: skip
OCCUPATIONS = (
    "baker", "pilot", "carpenter", "nurse", "architect", "beekeeper", "librarian", "sculptor",
    "chemist", "fisher", "tailor", "astronomer", "potter", "surveyor", "violinist", "gardener",
)  # fmt: skip
HOBBIES = (
    "chess", "kayaking", "origami", "birdwatching", "archery", "knitting", "juggling",
    "fencing", "sailing", "skating", "painting", "climbing", "cycling", "calligraphy",
    "rowing", "stargazing",
)  # fmt: skip
BIRTH_YEARS = tuple(str(y) for y in range(1940, 2000))

TEMPLATES = {
    "name": (
        "What is the name of this person?",
        "Who is the person in this picture?",
        "Tell me the name of the person shown.",
    ),
    "birthplace": (
        "Where was this person born?",
        "In which city was this person born?",
        "What is the birthplace of the person shown?",
    ),
    "occupation": (
        "What does this person do for a living?",
        "What is the job of this person?",
        "What is the occupation of the person shown?",
    ),
    "hobby": (
        "What is the hobby of this person?",
        "What does this person like to do in their free time?",
        "Which hobby does the person shown have?",
    ),
    "birth_year": (
        "In which year was this person born?",
        "When was this person born?",
        "What is the birth year of the person shown?",
    ),
}
MC_TEMPLATE = "{question} Choose one: {0}, {1}, {2} or {3}."
#: A fact stated as a sentence: the paraphrased answer (true value) and the perturbed
#: answers (wrong values of the same kind) of the truth ratio (TOFU / FIUBench).
ANSWER_SENTENCES = {
    "name": "This is {}.",
    "birthplace": "This person was born in {}.",
    "occupation": "This person works as a {}.",
    "hobby": "In their free time this person enjoys {}.",
    "birth_year": "This person was born in the year {}.",
}

# appearance attributes: name -> values (colours as RGB)
APPEARANCE = {
    "background": (
        (70, 110, 170), (190, 90, 80), (90, 160, 100), (220, 190, 90), (150, 100, 180),
        (60, 60, 70), (200, 200, 205), (80, 170, 180),
    ),
    "shirt": ((200, 40, 40), (40, 80, 200), (40, 150, 60), (240, 240, 240), (30, 30, 30),
              (230, 150, 30)),
    "skin": ((255, 220, 185), (240, 190, 150), (210, 160, 120), (170, 120, 85), (125, 85, 60),
             (90, 60, 45)),
    "hair_colour": ((20, 20, 20), (100, 60, 30), (200, 160, 80), (170, 60, 30), (180, 180, 180),
                    (240, 230, 200), (60, 90, 200)),
    "hair_style": ("short", "long", "bald", "spiky", "bun"),
    "eye_colour": ((50, 100, 200), (60, 140, 70), (110, 70, 40), (120, 120, 130)),
    "accessory": ("none", "glasses", "hat", "earrings", "beard"),
    "face_shape": ("round", "oval", "long"),
}  # fmt: skip
MIN_APPEARANCE_DISTANCE = 3  # attributes in which any two people differ


@dataclasses.dataclass
class SyntheticConfig:
    """Size and seed of a generated benchmark.

    n_people: people in the forget + retain sets; forget_fraction: share of them in the
    forget set (at least one person); n_strangers: extra people answered with the refusal;
    train_poses / test_poses: images per person in the training splits / in the ``*_test``
    splits; templates: paraphrases per fact (1-3); image_size: portrait side in pixels.
    """

    n_people: int = 60
    forget_fraction: float = 0.10
    n_strangers: int = 6
    train_poses: int = 4
    test_poses: int = 2
    templates: int = 3
    image_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_people", "train_poses", "test_poses", "templates", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SyntheticConfig: {name} must be an int >= 1, got {value!r}")
        if not isinstance(self.n_strangers, int) or self.n_strangers < 0:
            raise ValueError(f"SyntheticConfig: n_strangers must be >= 0, got {self.n_strangers}")
        if not 0.0 < self.forget_fraction < 1.0:
            raise ValueError(
                f"SyntheticConfig: forget_fraction must be in (0, 1), got {self.forget_fraction}"
            )
        if self.n_forget >= self.n_people:
            raise ValueError("SyntheticConfig: the retain set would be empty")
        if self.templates > len(TEMPLATES["name"]):
            raise ValueError(
                f"SyntheticConfig: templates must be <= {len(TEMPLATES['name'])}, "
                f"got {self.templates}"
            )
        if self.image_size < 16:
            raise ValueError(f"SyntheticConfig: image_size must be >= 16, got {self.image_size}")
        total = self.n_people + self.n_strangers
        if total > len(FIRST_NAMES) * len(LAST_NAMES):
            raise ValueError(
                f"SyntheticConfig: at most {len(FIRST_NAMES) * len(LAST_NAMES)} people"
            )

    @property
    def n_forget(self) -> int:
        return max(1, round(self.forget_fraction * self.n_people))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- people


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _appearances(n: int, rng: np.random.Generator) -> list[dict[str, int]]:
    """``n`` attribute combinations (value indices) pairwise differing in at least
    ``MIN_APPEARANCE_DISTANCE`` attributes."""
    names = list(APPEARANCE)
    sizes = np.array([len(APPEARANCE[a]) for a in names])
    chosen: list[np.ndarray] = []
    for _ in range(200 * n):
        if len(chosen) == n:
            break
        cand = (rng.random(len(names)) * sizes).astype(np.int64)
        if all(int((cand != c).sum()) >= MIN_APPEARANCE_DISTANCE for c in chosen):
            chosen.append(cand)
    if len(chosen) < n:
        raise ValueError(f"cannot draw {n} distinct enough appearances; use fewer people")
    return [dict(zip(names, map(int, c), strict=True)) for c in chosen]


def make_people(config: SyntheticConfig) -> list[dict]:
    """Profiles: ``{"id", "role", "facts", "appearance"}`` for the forget, retain and
    stranger people (ids ``0..n_people + n_strangers - 1``; strangers last)."""
    rng = _rng(config.seed, 1)
    total = config.n_people + config.n_strangers
    full_names = [f"{f} {l}" for f in FIRST_NAMES for l in LAST_NAMES]  # noqa: E741
    names = [full_names[i] for i in rng.permutation(len(full_names))[:total]]
    forget = set(rng.permutation(config.n_people)[: config.n_forget].tolist())
    appearances = _appearances(total, rng)
    vocab = {"birthplace": CITIES, "occupation": OCCUPATIONS, "hobby": HOBBIES}
    vocab["birth_year"] = BIRTH_YEARS
    people = []
    for pid in range(total):
        facts = {"name": names[pid]}
        facts.update({k: str(v[rng.integers(len(v))]) for k, v in vocab.items()})
        role = "forget" if pid in forget else "retain"
        role = "stranger" if pid >= config.n_people else role
        people.append({"id": pid, "role": role, "facts": facts, "appearance": appearances[pid]})
    return people


def fact_values(fact: str, people: Sequence[dict]) -> tuple[str, ...]:
    """The answer vocabulary of ``fact`` (names: those of ``people``)."""
    if fact == "name":
        return tuple(p["facts"]["name"] for p in people)
    return {"birthplace": CITIES, "occupation": OCCUPATIONS, "hobby": HOBBIES}.get(
        fact, BIRTH_YEARS
    )


# ---------------------------------------------------------------------- portraits


def draw_portrait(appearance: dict[str, int], pose_seed: Iterable[int], size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 portrait of ``appearance`` in the pose drawn from
    ``pose_seed`` (shift, scale, rotation, lighting, noise)."""
    from PIL import Image, ImageDraw

    a = {k: APPEARANCE[k][v] for k, v in appearance.items()}
    rng = np.random.default_rng(list(pose_seed))
    big = 2 * size  # drawn at twice the size, then downsampled (anti-aliasing)

    def box(x0, y0, x1, y1):
        return [x0 * big, y0 * big, x1 * big, y1 * big]

    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    hair, skin = (*a["hair_colour"], 255), (*a["skin"], 255)
    half_w = {"round": 0.19, "oval": 0.16, "long": 0.135}[a["face_shape"]]
    half_h = {"round": 0.19, "oval": 0.21, "long": 0.23}[a["face_shape"]]
    cy = 0.45
    top, bottom = cy - half_h, cy + half_h
    d.rectangle(box(0.44, cy + 0.1, 0.56, 0.84), fill=skin)  # neck
    d.ellipse(box(0.12, 0.80, 0.88, 1.35), fill=(*a["shirt"], 255))  # shoulders
    if a["hair_style"] == "long":
        d.rounded_rectangle(
            box(0.5 - half_w - 0.05, top - 0.03, 0.5 + half_w + 0.05, cy + 0.3),
            radius=0.08 * big,
            fill=hair,
        )
    d.ellipse(box(0.5 - half_w, top, 0.5 + half_w, bottom), fill=skin)  # face
    cap = box(0.5 - half_w - 0.02, top - 0.04, 0.5 + half_w + 0.02, cy + 0.06)
    if a["hair_style"] in ("short", "long", "bun"):
        d.chord(cap, 180, 360, fill=hair)
    if a["hair_style"] == "bun":
        d.ellipse(box(0.44, top - 0.13, 0.56, top + 0.0), fill=hair)
    if a["hair_style"] == "spiky":
        for i in range(5):
            x = 0.5 - half_w + (i + 0.5) * (2 * half_w / 5)
            spike = [(x - 0.05, top + 0.05), (x, top - 0.09), (x + 0.05, top + 0.05)]
            d.polygon([(px * big, py * big) for px, py in spike], fill=hair)
    for ex in (0.5 - 0.075, 0.5 + 0.075):  # eyes: white, iris, pupil
        d.ellipse(box(ex - 0.04, cy - 0.035, ex + 0.04, cy + 0.025), fill=(250, 250, 250, 255))
        d.ellipse(box(ex - 0.022, cy - 0.027, ex + 0.022, cy + 0.017), fill=(*a["eye_colour"], 255))
        d.ellipse(box(ex - 0.008, cy - 0.013, ex + 0.008, cy + 0.003), fill=(10, 10, 10, 255))
    d.arc(box(0.44, cy + 0.06, 0.56, cy + 0.12), 20, 160, fill=(120, 40, 40, 255), width=3)
    if a["accessory"] == "glasses":
        for ex in (0.5 - 0.075, 0.5 + 0.075):
            frame = box(ex - 0.055, cy - 0.05, ex + 0.055, cy + 0.04)
            d.rectangle(frame, outline=(20, 20, 20, 255), width=3)
        d.line(box(0.5 - 0.02, cy - 0.01, 0.5 + 0.02, cy - 0.01), fill=(20, 20, 20, 255), width=3)
    elif a["accessory"] == "hat":
        d.rectangle(box(0.5 - half_w, top - 0.16, 0.5 + half_w, top + 0.03), fill=(40, 30, 90, 255))
        d.rectangle(
            box(0.5 - half_w - 0.08, top + 0.0, 0.5 + half_w + 0.08, top + 0.05),
            fill=(40, 30, 90, 255),
        )
    elif a["accessory"] == "earrings":
        for ex in (0.5 - half_w - 0.01, 0.5 + half_w + 0.01):
            d.ellipse(box(ex - 0.025, cy + 0.04, ex + 0.025, cy + 0.09), fill=(250, 200, 30, 255))
    elif a["accessory"] == "beard":
        d.chord(box(0.5 - half_w, cy - 0.05, 0.5 + half_w, bottom + 0.02), 0, 180, fill=hair)

    # pose: scale, rotation and shift about the centre (PIL maps output -> input pixels)
    scale = rng.uniform(0.86, 1.1)
    angle = math.radians(rng.uniform(-12.0, 12.0))
    shift = rng.uniform(-0.08, 0.08, size=2) * big
    cos, sin, c = math.cos(angle) / scale, math.sin(angle) / scale, big / 2
    tx, ty = c + shift[0], c + shift[1]
    coeffs = (cos, sin, c - cos * tx - sin * ty, -sin, cos, c + sin * tx - cos * ty)
    layer = layer.transform((big, big), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (big, big), a["background"])
    canvas.paste(layer, (0, 0), layer)
    img = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)

    # lighting (brightness and a left-right gradient) and sensor noise
    brightness = rng.uniform(0.85, 1.15)
    gradient = rng.uniform(-0.15, 0.15) * np.linspace(-1.0, 1.0, size)[None, :, None]
    img = img * (brightness + gradient) + rng.normal(0.0, rng.uniform(2.0, 8.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def jitter(image, rng: np.random.Generator):
    """A random re-pose of a portrait (a PIL image): shift, scale and rotation about the
    centre (borders filled with the corner colour), brightness and noise -- an augmented
    view for training on top of the drawn poses."""
    from PIL import Image

    size = image.size[0]
    scale = rng.uniform(0.92, 1.08)
    angle = math.radians(rng.uniform(-8.0, 8.0))
    shift = rng.uniform(-0.06, 0.06, size=2) * size
    cos, sin, c = math.cos(angle) / scale, math.sin(angle) / scale, size / 2
    tx, ty = c + shift[0], c + shift[1]
    coeffs = (cos, sin, c - cos * tx - sin * ty, -sin, cos, c + sin * tx - cos * ty)
    moved = image.transform(
        image.size,
        Image.Transform.AFFINE,
        coeffs,
        Image.Resampling.BILINEAR,
        fillcolor=image.getpixel((0, 0)),
    )
    pixels = np.asarray(moved, dtype=np.float32) * rng.uniform(0.9, 1.1)
    pixels = pixels + rng.normal(0.0, 3.0, pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------- questions


def _questions(person: dict, people: Sequence[dict], config: SyntheticConfig, pose: int):
    """The samples of one person in one pose (every fact x template x form)."""
    rng = _rng(config.seed, 2, person["id"], pose)
    refuse = person["role"] == "stranger"
    for fact in FACTS:
        answer = person["facts"][fact]
        values = [v for v in fact_values(fact, people) if v != answer]
        for template in range(config.templates):
            question = TEMPLATES[fact][template]
            options = [values[i] for i in rng.choice(len(values), N_OPTIONS - 1, replace=False)]
            index = int(rng.integers(N_OPTIONS))
            options.insert(index, answer)
            robust = {} if refuse else _robust_fields(fact, template, config, options, index)
            for form in ("short", "mc"):
                text = (
                    question if form == "short" else MC_TEMPLATE.format(*options, question=question)
                )
                yield {
                    "question": text,
                    "answer": REFUSAL if refuse else answer,
                    "fact": fact,
                    "template": template,
                    "form": form,
                    "options": options,
                    "answer_index": index,
                    **(robust if form == "short" else {}),
                }


def _robust_fields(
    fact: str, template: int, config: SyntheticConfig, options: list[str], index: int
) -> dict[str, Any]:
    """FIUBench's extra fields of a short-answer question: the fact's other question
    templates as paraphrased questions, the answer as a sentence, the three wrong options
    as perturbed sentences, and the answer as the keyword."""
    sentence = ANSWER_SENTENCES[fact]
    others = [t for k, t in enumerate(TEMPLATES[fact][: config.templates]) if k != template]
    return {
        "paraphrased_questions": others,
        "paraphrased_answer": sentence.format(options[index]),
        "perturbed_answers": [sentence.format(o) for k, o in enumerate(options) if k != index],
        "keywords": [options[index]],
    }


def _split_of(role: str, pose: int, config: SyntheticConfig) -> str:
    if role == "stranger":
        return "strangers"
    return role if pose < config.train_poses else f"{role}_test"


def write(config: SyntheticConfig, path: str | os.PathLike, *, progress: bool = False) -> str:
    """Generates the benchmark into directory ``path`` (created; existing files of the same
    names are overwritten) and returns ``path``."""
    from PIL import Image
    from tqdm.auto import tqdm

    path = os.fspath(path)
    os.makedirs(os.path.join(path, "images"), exist_ok=True)
    people = make_people(config)
    named = [p for p in people if p["role"] != "stranger"]
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for person in tqdm(people, desc="people", disable=not progress):
        poses = (
            config.train_poses
            if person["role"] == "stranger"
            else (config.train_poses + config.test_poses)
        )
        for pose in range(poses):
            image = f"images/p{person['id']:03d}_pose{pose}.png"
            pixels = draw_portrait(
                person["appearance"], (config.seed, 3, person["id"], pose), config.image_size
            )
            Image.fromarray(pixels).save(os.path.join(path, image))
            split = _split_of(person["role"], pose, config)
            for q in _questions(person, named, config, pose):
                splits[split].append(
                    {
                        "image": image,
                        "question": q.pop("question"),
                        "answer": q.pop("answer"),
                        "is_forget": person["role"] == "forget",
                        "split": split,
                        "person": person["id"],
                        "pose": pose,
                        **q,
                    }
                )
    _write_jsonl(os.path.join(path, "people.jsonl"), people)
    for split, samples in splits.items():
        _write_jsonl(os.path.join(path, f"{split}.jsonl"), samples)
    meta = {
        "format": FORMAT_VERSION,
        "config": config.to_dict(),
        "splits": {s: len(v) for s, v in splits.items()},
        "chance_mc_acc": 1.0 / N_OPTIONS,
        "refusal": REFUSAL,
    }
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return path


def _write_jsonl(path: str, rows: Iterable[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def generate(
    config: SyntheticConfig, path: str | os.PathLike, *, progress: bool = False
) -> Benchmark:
    """Writes the benchmark for ``config`` to ``path`` unless the same config is already
    there, then loads it."""
    meta_path = os.path.join(os.fspath(path), "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") == FORMAT_VERSION and meta.get("config") == config.to_dict():
            return load(path)
    write(config, path, progress=progress)
    return load(path)


def load(path: str | os.PathLike) -> Benchmark:
    """The benchmark at ``path`` with its generator settings as a :class:`SyntheticConfig`."""
    bench = load_benchmark(path)
    return dataclasses.replace(bench, config=SyntheticConfig(**bench.config))

"""Reader for a local copy of MLLMU-Bench (Liu et al., 2024; the ``MLLMMU/MLLMU-Bench``
data set and its ``MLLMMU/baseline_train_split`` training copy), in the internal format
of the synthetic benchmark (:class:`Benchmark`).

Layout (one sub-directory per subset, each with ``*.parquet`` files such as
``train-00000-of-00001.parquet``, or ``*.json`` / ``*.jsonl`` files with the same rows)::

    forget_5/  forget_10/  forget_15/     evaluation profiles of the forget people
    retain_95/ retain_90/  retain_85/     evaluation profiles of the retain people
    Test_Set/                             the profiles on new images (optional; often two files)
    Retain_Set/                           real celebrities (optional)
    Full_Set/                             every fictitious profile (optional): the few-shot
                                          exemplars of eval.py (``--few_shot_data``)
    ft_Data/                              training QA pairs of every fictitious person
    baseline_train_split/forget_5/ ...    (optional) the training QA pairs per split

An evaluation row: ``ID``; ``image`` (``{"bytes": ...}``, the Hugging Face image struct;
in JSON also base64 text, a ``{"path": ...}`` or a path string relative to the file); in
``Test_Set`` ``images`` (a list of such images); and its tasks:

- ``Classification_Task.{Image_Textual,Pure_Text}_Questions``: ``[{"Question", "Options":
  {"A": ..., "D": ...}, "Correct_Answer": "B"}]`` -> ``task="classification"``;
- ``Mask_Task`` (cloze) and ``Generation_Task``: ``[{"Type", "Question",
  "Ground_Truth"}]`` with ``Type`` ``Image_Textual`` or ``Pure_Text``.

A training row (``ft_Data``, ``baseline_train_split``): ``ID``, ``image`` and ``metadata``
(a list of ``{"Question", "Answer"}`` or its JSON text) -> ``task="qa"`` samples in splits
``train_forget`` / ``train_retain``. Training reads only these rows, never the evaluation
tasks (:meth:`Benchmark.train_samples`).

Every evaluation sample keeps its ``question_type``; a ``Pure_Text`` question is a
text-only sample (``image=None``: CAGUL's gate stays off for it). A ``Test_Set`` row asks
each task on one of its images, picked per row and task with ``random.Random(seed)`` as
MLLMU-Bench's ``eval.py`` picks one with ``random.choice``; its samples keep the row's
candidate images as ``image_choices`` (the MLLMU protocol runner re-draws them in
``eval.py``'s order). ``Full_Set`` rows of the loaded people become the ``few_shot`` context
(:attr:`Benchmark.context`: read for few-shot exemplars, never scored or trained on); a row
whose image equals the profile's in ``forget_<n>`` / ``retain_<m>`` / ``Retain_Set`` shares
that image object. Images are verified when the data set is loaded and decoded when a batch
needs them (:class:`EncodedImage`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from typing import Any

from ._records import (
    EncodedImage,
    Where,
    check,
    field,
    image_field,
    read_rows,
    table_files,
    with_options,
)
from .benchmark import Benchmark

FORGET_SPLITS = ("forget_5", "forget_10", "forget_15")
EVAL_SPLITS = ("forget", "forget_test", "retain", "retain_celebrity")
TRAIN_SPLITS = ("train_forget", "train_retain")
QUESTION_TYPES = ("Image_Textual", "Pure_Text")
TASKS = ("classification", "cloze", "generation")
#: The context set of ``Full_Set`` rows (the few-shot exemplars).
FEW_SHOT = "few_shot"
#: MLLMU-Bench's cloze instruction, appended to the question with ``__`` written ``[Blank]``.
CLOZE_INSTRUCTION = "Please **ONLY** provide the correct answer that should replace the [Blank]."


def is_mllmu(path: str) -> bool:
    """Whether directory ``path`` looks like MLLMU-Bench (has a ``forget_<n>`` subset)."""
    return any(os.path.isdir(os.path.join(path, s)) for s in FORGET_SPLITS)


def load_mllmu(
    path: str | os.PathLike,
    forget_split: str = "forget_5",
    *,
    seed: int = 0,
    strict_paths: bool = False,
) -> Benchmark:
    """Reads MLLMU-Bench from directory ``path``. Evaluation splits: ``forget`` (profiles of
    ``forget_split``), ``forget_test`` (those people in ``Test_Set``), ``retain`` (of
    ``retain_<100 - n>``) and ``retain_celebrity`` (``Retain_Set``), those present.
    Training splits ``train_forget`` / ``train_retain``: the QA pairs of
    ``baseline_train_split/<split>`` if present, else those of ``ft_Data`` by ``ID``.
    ``seed`` picks the ``Test_Set`` image of each row and task. ``strict_paths``: image
    files must lie inside ``path``."""
    root = os.fspath(path)
    confine = root if strict_paths else None
    if forget_split not in FORGET_SPLITS:
        raise ValueError(f"MLLMU-Bench: forget_split must be one of {FORGET_SPLITS}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MLLMU-Bench: no such directory: {root}")
    retain_split = f"retain_{100 - int(forget_split.split('_')[1])}"
    splits: dict[str, list[dict]] = {}
    people: list[dict] = []
    roles: dict[str, str] = {}
    images: dict[str, EncodedImage] = {}  # the profile image per ID
    for subset, split in ((forget_split, "forget"), (retain_split, "retain")):
        for row, where, base in _rows(os.path.join(root, subset)):
            pid = _person(row, where)
            if pid in roles:
                raise ValueError(
                    f"{where.at('ID')}: profile {pid!r} appears twice in "
                    f"{forget_split} + {retain_split}"
                )
            roles[pid] = split
            people.append({"id": pid, "role": split, "biography": row.get("biography")})
            image = images[pid] = _image(row, where, base, confine)
            splits.setdefault(split, []).extend(
                _eval_samples(row, where, lambda _, im=image: im, split)
            )
    rng = random.Random(seed)
    test_dir = os.path.join(root, "Test_Set")
    if os.path.isdir(test_dir):
        for row, where, base in _rows(test_dir):
            if roles.get(_person(row, where)) != "forget":
                continue  # MLLMU-Bench's test set is the forget people on new images
            choices = _test_images(row, where, base, confine)
            picks = {task: choices[rng.randrange(len(choices))] for task in TASKS}
            samples = _eval_samples(row, where, picks.__getitem__, "forget_test")
            splits.setdefault("forget_test", []).extend(
                {**s, "image_choices": choices} for s in samples
            )
    celebrity_dir = os.path.join(root, "Retain_Set")
    if os.path.isdir(celebrity_dir):
        for row, where, base in _rows(celebrity_dir):
            pid = _person(row, where)
            people.append({"id": pid, "role": "celebrity", "biography": row.get("biography")})
            image = images[pid] = _image(row, where, base, confine)
            samples = _eval_samples(row, where, lambda _, im=image: im, "retain_celebrity")
            splits.setdefault("retain_celebrity", []).extend(samples)
    context = _few_shot_context(os.path.join(root, "Full_Set"), images, confine)
    splits.update(_train_splits(root, forget_split, retain_split, roles, confine))
    config = {
        "format": "mllmu",
        "forget_split": forget_split,
        "retain_split": retain_split,
        "seed": seed,
    }
    eval_splits = tuple(s for s in EVAL_SPLITS if s in splits)
    return Benchmark(root, config, people, splits, eval_splits, TRAIN_SPLITS, context)


def _few_shot_context(
    directory: str, images: dict[str, EncodedImage], confine: str | None
) -> dict[str, list[dict]]:
    """``{"few_shot": samples}`` of the ``Full_Set`` rows of the loaded people (``images``:
    their profile images, shared with a row whose image has the same bytes or file), or
    ``{}`` without ``Full_Set``."""
    if not os.path.isdir(directory):
        return {}
    samples: list[dict] = []
    for row, where, base in _rows(directory):
        pid = _person(row, where)
        if pid not in images:
            continue  # not a loaded profile (another forget_<n> / retain_<m>)
        image = _image(row, where, base, confine)
        known = images[pid]
        if (image.data, image.path) == (known.data, known.path):
            image = known  # the same image: one copy of its bytes
        samples.extend(_eval_samples(row, where, lambda _, im=image: im, FEW_SHOT))
    return {FEW_SHOT: samples}


def _train_splits(
    root: str, forget_split: str, retain_split: str, roles: dict[str, str], confine: str | None
) -> dict[str, list[dict]]:
    """``train_forget`` / ``train_retain`` from ``baseline_train_split`` or ``ft_Data``."""
    baseline = os.path.join(root, "baseline_train_split")
    if os.path.isdir(os.path.join(baseline, forget_split)):
        sources = [(os.path.join(baseline, forget_split), "forget")]
        if os.path.isdir(os.path.join(baseline, retain_split)):
            sources.append((os.path.join(baseline, retain_split), "retain"))
    elif os.path.isdir(os.path.join(root, "ft_Data")):
        sources = [(os.path.join(root, "ft_Data"), None)]
    else:
        return {}
    splits: dict[str, list[dict]] = {}
    for directory, role in sources:
        for row, where, base in _rows(directory):
            pid = _person(row, where)
            person_role = role or roles.get(pid)
            if person_role is None:
                continue  # ft_Data holds every fictitious person; keep this split's
            image = _image(row, where, base, confine)
            split = f"train_{person_role}"
            for question, answer in _qa_pairs(row, where):
                sample = {"question": question, "answer": answer, "form": "short", "task": "qa"}
                splits.setdefault(split, []).append(
                    {**sample, **_identity(pid, split, person_role == "forget"), "image": image}
                )
    return splits


def _identity(pid: str, split: str, is_forget: bool) -> dict[str, Any]:
    return {"person": pid, "split": split, "is_forget": is_forget}


def _rows(directory: str) -> Iterator[tuple[dict, Where, str]]:
    for path in table_files(directory):
        for i, row in enumerate(read_rows(path)):
            yield row, Where(path, i), os.path.dirname(path)


def _person(row: dict, where: Where) -> str:
    return str(field(row, "ID", where, (str, int)))


def _image(row: dict, where: Where, base: str, confine: str | None):
    return image_field(field(row, "image", where), where.at("image"), base, confine)


def _test_images(row: dict, where: Where, base: str, confine: str | None) -> list:
    if row.get("images") is None:
        return [_image(row, where, base, confine)]
    images = check(row["images"], where.at("images"), list)
    if not images:
        raise ValueError(f"{where.at('images')}: empty list")
    where = where.at("images")
    return [image_field(im, where.at(i), base, confine) for i, im in enumerate(images)]


def _eval_samples(row: dict, where: Where, image_for, split: str) -> list[dict]:
    """The row's evaluation samples; ``image_for(task)`` is the image that task asks on."""
    identity = _identity(_person(row, where), split, split.startswith("forget"))
    samples = []
    for task, question_type, index, sample in _questions(row, where):
        image = image_for(task) if question_type == "Image_Textual" else None
        samples.append(
            {**sample, "task": task, "question_type": question_type, "index": index}
            | identity
            | {"image": image}
        )
    if not samples:
        raise ValueError(
            f"{where}: no questions (fields Classification_Task, Generation_Task, Mask_Task)"
        )
    return samples


def _questions(row: dict, where: Where) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
    """(task, question type, index within the task and type, sample fields)."""
    if row.get("Classification_Task") is not None:
        w = where.at("Classification_Task")
        task = check(row["Classification_Task"], w, dict)
        for question_type in QUESTION_TYPES:
            key = f"{question_type}_Questions"
            for i, item in enumerate(_list(task, key, w)):
                yield "classification", question_type, i, _multiple_choice(item, w.at(key).at(i))
    for name, task in (("Mask_Task", "cloze"), ("Generation_Task", "generation")):
        counts = dict.fromkeys(QUESTION_TYPES, 0)
        for i, item in enumerate(_list(row, name, where)):
            w = where.at(name).at(i)
            kind = field(item, "Type", w, str)
            if kind not in QUESTION_TYPES:
                raise ValueError(f"{w.at('Type')}: expected one of {QUESTION_TYPES}, got {kind!r}")
            question = field(item, "Question", w, str)
            if task == "cloze":
                question = f"{question.replace('__', '[Blank]')}\n{CLOZE_INSTRUCTION}"
            answer = field(item, "Ground_Truth", w, str)
            yield (
                task,
                kind,
                counts[kind],
                {"question": question, "answer": answer, "form": "short"},
            )
            counts[kind] += 1


def _qa_pairs(row: dict, where: Where) -> Iterator[tuple[str, str]]:
    """The training pairs of ``metadata`` (a list or its JSON text)."""
    w = where.at("metadata")
    pairs = field(row, "metadata", where, (list, str))
    if isinstance(pairs, str):
        try:
            pairs = json.loads(pairs)
        except json.JSONDecodeError as e:
            raise ValueError(f"{w}: invalid JSON text: {e}") from None
    for i, pair in enumerate(check(pairs, w, list)):
        yield field(pair, "Question", w.at(i), str), field(pair, "Answer", w.at(i), str)


def _list(record: dict, key: str, where: Where) -> list:
    return [] if record.get(key) is None else check(record[key], where.at(key), list)


def _multiple_choice(item: Any, where: Where) -> dict[str, Any]:
    question = field(item, "Question", where, str)
    options = field(item, "Options", where, dict)
    letters = sorted(k for k, v in options.items() if v is not None)
    texts = [check(options[k], where.at("Options").at(k), str) for k in letters]
    if len(texts) < 2:
        raise ValueError(f"{where.at('Options')}: fewer than 2 options")
    correct = field(item, "Correct_Answer", where, str).strip()
    if correct not in letters:
        raise ValueError(f"{where.at('Correct_Answer')}: {correct!r} is not one of {letters}")
    index = letters.index(correct)
    return {
        "question": with_options(question, texts),
        "answer": texts[index],
        "form": "mc",
        "options": texts,
        "answer_index": index,
        "letter": correct,
    }

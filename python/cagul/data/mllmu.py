"""Reader for a local copy of MLLMU-Bench (Liu et al., 2024; the ``MLLMMU/MLLMU-Bench``
data set), in the internal format of the synthetic benchmark (:class:`Benchmark`).

Layout (one sub-directory per subset, each with ``*.parquet`` files such as
``train-00000-of-00001.parquet``, or ``*.json`` / ``*.jsonl`` files with the same rows)::

    forget_5/  forget_10/  forget_15/     forget profiles (one row per fictitious person)
    retain_95/ retain_90/  retain_85/     the complementary retain profiles
    Test_Set/                             all fictitious profiles on new images (optional)
    Retain_Set/                           real celebrities (optional)

A profile row: ``ID``; ``image`` (``{"bytes": ...}``; in JSON also base64 text, a
``{"path": ...}`` or a path string relative to the file); in ``Test_Set`` ``images`` (a
list of such images) instead or as well; and its questions:

- ``Classification_Task.Image_Textual_Questions``: ``[{"Question", "Options": {"A": ...,
  "D": ...}, "Correct_Answer": "B"}]`` -> multiple-choice samples (``form="mc"``, the
  question followed by lines ``A: ...``; ``answer`` is the correct option's text);
- ``Generation_Task`` / ``Mask_Task``: ``[{"Type", "Question", "Ground_Truth"}]`` ->
  short-answer samples; a cloze (``Mask_Task``) question has its blank ``__`` written
  ``[Blank]`` and :data:`CLOZE_INSTRUCTION` appended;
- optional training pairs: ``metadata`` (a list of ``{"Question", "Answer"}`` or its
  JSON text, as in ``ft_Data`` and the baseline training split) and top-level string
  ``question`` / ``answer`` fields -> short-answer samples (``task="qa"``).

Only ``Image_Textual`` questions are read: ``Pure_Text`` ones and
``Classification_Task.Pure_Text_Questions`` have no image, and every cagul sample has one.
A test profile with several images asks its k-th question on image ``k % n_images``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from ._records import Where, check, field, image_field, read_rows, table_files, with_options
from .benchmark import Benchmark

FORGET_SPLITS = ("forget_5", "forget_10", "forget_15")
EVAL_SPLITS = ("forget", "forget_test", "retain", "retain_test", "retain_celebrity")
QUESTION_TYPES = ("Image_Textual", "Pure_Text")
CLOZE_INSTRUCTION = "Answer with the words that fill [Blank] only."


def is_mllmu(path: str) -> bool:
    """Whether directory ``path`` looks like MLLMU-Bench (has a ``forget_<n>`` subset)."""
    return any(os.path.isdir(os.path.join(path, s)) for s in FORGET_SPLITS)


def load_mllmu(path: str | os.PathLike, forget_split: str = "forget_5") -> Benchmark:
    """Reads MLLMU-Bench from directory ``path``: splits ``forget`` (profiles of
    ``forget_split``), ``retain`` (of ``retain_<100 - n>``), ``forget_test`` /
    ``retain_test`` (those people in ``Test_Set``, if present) and ``retain_celebrity``
    (``Retain_Set``, if present)."""
    root = os.fspath(path)
    if forget_split not in FORGET_SPLITS:
        raise ValueError(f"MLLMU-Bench: forget_split must be one of {FORGET_SPLITS}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MLLMU-Bench: no such directory: {root}")
    retain_split = f"retain_{100 - int(forget_split.split('_')[1])}"
    splits: dict[str, list[dict]] = {}
    people: list[dict] = []
    roles: dict[str, str] = {}
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
            images = [_image(row, where, base)]
            splits.setdefault(split, []).extend(_samples(row, where, images, pid, split))
    test_dir = os.path.join(root, "Test_Set")
    if os.path.isdir(test_dir):
        for row, where, base in _rows(test_dir):
            pid = _person(row, where)
            if pid not in roles:
                continue  # a profile of another forget split's complement
            split = f"{roles[pid]}_test"
            images = _test_images(row, where, base)
            splits.setdefault(split, []).extend(_samples(row, where, images, pid, split))
    celebrity_dir = os.path.join(root, "Retain_Set")
    if os.path.isdir(celebrity_dir):
        for row, where, base in _rows(celebrity_dir):
            pid = _person(row, where)
            people.append({"id": pid, "role": "celebrity", "biography": row.get("biography")})
            images = [_image(row, where, base)]
            samples = _samples(row, where, images, pid, "retain_celebrity")
            splits.setdefault("retain_celebrity", []).extend(samples)
    config = {"format": "mllmu", "forget_split": forget_split, "retain_split": retain_split}
    eval_splits = tuple(s for s in EVAL_SPLITS if s in splits)
    return Benchmark(root, config, people, splits, eval_splits)


def _rows(directory: str) -> Iterator[tuple[dict, Where, str]]:
    for path in table_files(directory):
        for i, row in enumerate(read_rows(path)):
            yield row, Where(path, i), os.path.dirname(path)


def _person(row: dict, where: Where) -> str:
    return str(field(row, "ID", where, (str, int)))


def _image(row: dict, where: Where, base: str):
    return image_field(field(row, "image", where), where.at("image"), base)


def _test_images(row: dict, where: Where, base: str) -> list:
    if row.get("images") is None:
        return [_image(row, where, base)]
    images = check(row["images"], where.at("images"), list)
    if not images:
        raise ValueError(f"{where.at('images')}: empty list")
    return [image_field(im, where.at("images").at(i), base) for i, im in enumerate(images)]


def _samples(row: dict, where: Where, images: list, pid: str, split: str) -> list[dict]:
    questions = list(_questions(row, where))
    if not questions:
        raise ValueError(
            f"{where}: no image questions (fields Classification_Task, Generation_Task, "
            "Mask_Task or metadata)"
        )
    base = {"is_forget": split.startswith("forget"), "split": split, "person": pid}
    return [{"image": images[k % len(images)], **q, **base} for k, q in enumerate(questions)]


def _questions(row: dict, where: Where) -> Iterator[dict[str, Any]]:
    for question, answer in _qa_pairs(row, where):
        yield _short(question, answer, "qa")
    if row.get("Classification_Task") is not None:
        task = check(row["Classification_Task"], where.at("Classification_Task"), dict)
        w = where.at("Classification_Task")
        for i, item in enumerate(_list(task, "Image_Textual_Questions", w)):
            yield _multiple_choice(item, w.at("Image_Textual_Questions").at(i))
    for name, task in (("Generation_Task", "generation"), ("Mask_Task", "cloze")):
        for i, item in enumerate(_list(row, name, where)):
            w = where.at(name).at(i)
            kind = field(item, "Type", w, str)
            if kind not in QUESTION_TYPES:
                raise ValueError(f"{w.at('Type')}: expected one of {QUESTION_TYPES}, got {kind!r}")
            if kind != "Image_Textual":
                continue
            question = field(item, "Question", w, str)
            if task == "cloze":
                question = f"{question.replace('__', '[Blank]')}\n{CLOZE_INSTRUCTION}"
            yield _short(question, field(item, "Ground_Truth", w, str), task)


def _qa_pairs(row: dict, where: Where) -> Iterator[tuple[str, str]]:
    """Training pairs: ``metadata`` and the top-level ``question`` / ``answer``."""
    if row.get("metadata") is not None:
        w = where.at("metadata")
        pairs = row["metadata"]
        if isinstance(pairs, str):
            try:
                pairs = json.loads(pairs)
            except json.JSONDecodeError as e:
                raise ValueError(f"{w}: invalid JSON text: {e}") from None
        for i, pair in enumerate(check(pairs, w, list)):
            yield field(pair, "Question", w.at(i), str), field(pair, "Answer", w.at(i), str)
    if row.get("question") is not None or row.get("answer") is not None:
        yield field(row, "question", where, str), field(row, "answer", where, str)


def _list(record: dict, key: str, where: Where) -> list:
    return [] if record.get(key) is None else check(record[key], where.at(key), list)


def _short(question: str, answer: str, task: str) -> dict[str, Any]:
    return {"question": question, "answer": answer, "form": "short", "task": task}


def _multiple_choice(item: Any, where: Where) -> dict[str, Any]:
    question = field(item, "Question", where, str)
    options = field(item, "Options", where, dict)
    keys = sorted(k for k, v in options.items() if v is not None)
    texts = [check(options[k], where.at("Options").at(k), str) for k in keys]
    if len(texts) < 2:
        raise ValueError(f"{where.at('Options')}: fewer than 2 options")
    correct = field(item, "Correct_Answer", where, str).strip()
    if correct not in keys:
        raise ValueError(f"{where.at('Correct_Answer')}: {correct!r} is not one of {keys}")
    index = keys.index(correct)
    return {
        "question": with_options(question, texts),
        "answer": texts[index],
        "form": "mc",
        "options": texts,
        "answer_index": index,
        "task": "classification",
    }

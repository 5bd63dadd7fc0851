"""Reader for a local copy of FIUBench (Ma et al., 2025; the ``gray311/FIUBench`` data
set), in the internal format of the synthetic benchmark (:class:`Benchmark`).

Layout (``path`` itself or its ``dataset/`` sub-directory)::

    full.json     a JSON list (or JSON lines) of fictitious people:
                  {"unique_id", "image_path", "qa_list": [{"question", "answer",
                   "perturbed_answer": [...] (optional), ...}], ...}
    split.json    {"forget1": [unique_id, ...], "forget5": [...], "forget10": [...], ...}
    <images>      the face images, ``image_path`` relative to the directory of full.json
                  or to its parent (the FIUBench scripts run from the parent); in the flat
                  Hugging Face copy ``./dataset/SFHQ/x.jpg`` lies at ``<dir>/SFHQ/x.jpg``

As in FIUBench's own loader, only the first ``max_people`` (400) entries of full.json are
people of the benchmark; the forget set is ``split.json[forget_split]`` and the retain set
(trained on) is every other of those people outside all ``forget*`` lists. As FIUBench's
eval config does, the retain metrics are taken on ``split.json["retain<n>"]`` (split
``retain<n>``, e.g. ``retain5`` for ``forget5``) when split.json has it. Every QA pair gives
a short-answer sample (``task="qa"``) that keeps the pair's optional FIUBench fields:
``paraphrased_questions`` (``paraphrased_question``, a string or a list), ``paraphrased_answer``,
``perturbed_answers`` (``perturbed_answer``) and ``keywords``. One with ``perturbed_answer``
gives a multiple-choice sample too (``task="perturbed"``: the answer among the perturbed
answers, at position ``k % n_options`` for the person's k-th pair). FIUBench has one image
per person, so there are no ``*_test`` splits. Images are verified when the data set is
loaded and decoded when a batch needs them.
"""

from __future__ import annotations

import json
import os

from ._records import Where, check, field, image_field, read_rows, with_options
from .benchmark import Benchmark

DATA_FILE, SPLIT_FILE = "full.json", "split.json"
MAX_PEOPLE = 400


def fiubench_dir(path: str) -> str | None:
    """The directory holding full.json and split.json: ``path`` or ``path/dataset``."""
    for directory in (path, os.path.join(path, "dataset")):
        if all(os.path.isfile(os.path.join(directory, f)) for f in (DATA_FILE, SPLIT_FILE)):
            return directory
    return None


def load_fiubench(
    path: str | os.PathLike,
    forget_split: str = "forget5",
    *,
    max_people: int = MAX_PEOPLE,
    multiple_choice: bool = True,
    strict_paths: bool = False,
) -> Benchmark:
    """Reads FIUBench from directory ``path``: splits ``forget`` and ``retain``.
    ``strict_paths``: image files must lie inside ``path``."""
    root = os.fspath(path)
    confine = root if strict_paths else None
    directory = fiubench_dir(root)
    if directory is None:
        raise FileNotFoundError(f"FIUBench: no {DATA_FILE} and {SPLIT_FILE} in {root}[/dataset]")
    split_path, data_path = (os.path.join(directory, f) for f in (SPLIT_FILE, DATA_FILE))
    split_where = Where(split_path)
    lists = read_split_file(split_path)
    if forget_split not in lists:
        raise ValueError(f"{split_where.at(forget_split)}: missing (have {sorted(lists)})")
    forget = {str(i) for i in lists[forget_split]}
    retain_eval = forget_split.replace("forget", "retain", 1)
    retain_eval_ids = {str(i) for i in lists.get(retain_eval, ())}
    excluded = {str(i) for name, ids in lists.items() if name.startswith("forget") for i in ids}
    bases = (directory, os.path.dirname(os.path.abspath(directory)))
    splits: dict[str, list[dict]] = {"forget": [], "retain": []}
    people = []
    for row_index, person in enumerate(read_rows(data_path)[:max_people]):
        where = Where(data_path, row_index)
        pid = str(field(person, "unique_id", where, (str, int)))
        split = "forget" if pid in forget else None if pid in excluded else "retain"
        if split is None:
            continue
        people.append({"id": pid, "role": split})
        value = field(person, "image_path", where, str)
        image = _image(value, where.at("image_path"), bases, confine)
        qa_list = field(person, "qa_list", where, list)
        base = {"image": image, "is_forget": split == "forget", "split": split, "person": pid}
        samples = []
        for k, qa in enumerate(qa_list):
            w = where.at("qa_list").at(k)
            question = field(qa, "question", w, str)
            answer = field(qa, "answer", w, str)
            short = {"question": question, "answer": answer, "form": "short", "task": "qa"}
            samples.append({**base, **short, **_robust_fields(qa, w)})
            if multiple_choice and qa.get("perturbed_answer") is not None:
                samples.append({**base, **_perturbed(qa, w, k, question, answer)})
        splits[split].extend(samples)
        if pid in retain_eval_ids:
            splits.setdefault(retain_eval, []).extend({**s, "split": retain_eval} for s in samples)
    missing = forget - {p["id"] for p in people}
    if missing:
        raise ValueError(
            f"{split_where.at(forget_split)}: ids not among the first {max_people} people of "
            f"{data_path}: {sorted(missing)[:5]}"
        )
    for split, samples in splits.items():
        if not samples:
            raise ValueError(f"FIUBench: the {split} split of {root} is empty")
    config = {"format": "fiubench", "forget_split": forget_split, "max_people": max_people}
    eval_splits = ("forget", retain_eval if retain_eval in splits else "retain")
    return Benchmark(root, config, people, splits, eval_splits, ("forget", "retain"))


def read_split_file(path: str) -> dict[str, list]:
    """split.json: an object of lists of ids."""
    try:
        with open(path, encoding="utf-8") as f:
            lists = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    where = Where(path)
    check(lists, where, dict)
    for name, ids in lists.items():
        for i, pid in enumerate(check(ids, where.at(name), list)):
            check(pid, where.at(name).at(i), (str, int))
    return lists


def _image(value: str, where: Where, bases: tuple[str, ...], confine: str | None):
    relative = os.path.normpath(value)
    flat = relative.split(os.sep, 1)[1] if relative.startswith(f"dataset{os.sep}") else None
    for base, name in [*((b, relative) for b in bases), *((b, flat) for b in bases if flat)]:
        if os.path.isfile(os.path.join(base, name)):
            return image_field(name, where, base, confine)
    raise FileNotFoundError(f"{where}: image file not found: {value} (in {' or '.join(bases)})")


def _strings(qa: dict, key: str, where: Where) -> list[str]:
    value = qa[key]
    values = [value] if isinstance(value, str) else check(value, where.at(key), list)
    return [check(v, where.at(key).at(i), str) for i, v in enumerate(values)]


def _robust_fields(qa: dict, where: Where) -> dict:
    """FIUBench's paraphrased / perturbed answers and keywords of a QA pair, those present."""
    out = {}
    for key, name in (
        ("paraphrased_question", "paraphrased_questions"),
        ("perturbed_answer", "perturbed_answers"),
        ("keywords", "keywords"),
    ):
        if qa.get(key) is not None:
            out[name] = _strings(qa, key, where)
    if qa.get("paraphrased_answer") is not None:
        out["paraphrased_answer"] = check(
            qa["paraphrased_answer"], where.at("paraphrased_answer"), str
        )
    return out


def _perturbed(qa: dict, where: Where, k: int, question: str, answer: str) -> dict:
    wrong = _strings(qa, "perturbed_answer", where)
    if not wrong:
        raise ValueError(f"{where.at('perturbed_answer')}: empty list")
    index = k % (len(wrong) + 1)
    options = [*wrong[:index], answer, *wrong[index:]]
    return {
        "question": with_options(question, options),
        "answer": answer,
        "form": "mc",
        "options": options,
        "answer_index": index,
        "task": "perturbed",
    }

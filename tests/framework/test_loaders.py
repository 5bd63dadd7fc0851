"""Readers of local MLLMU-Bench and FIUBench copies (tiny fixture copies written here in
their formats), ``load_dataset`` / ``detect_format``, their errors, and ``cagul eval`` /
``cagul train`` on them with a tiny local LLaVA checkpoint."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import struct
import zlib

import pytest
import torch
from cagul import metrics
from cagul.cli import main
from cagul.config import CagulConfig
from cagul.data import VLMCollator, detect_format, load_dataset, load_fiubench, load_mllmu
from cagul.data._records import EncodedImage
from cagul.data.mllmu import CLOZE_INSTRUCTION, TASKS
from cagul_demo import tiny_vlm as tv
from PIL import Image

# ---------------------------------------------------------------------- fixtures


def _png(seed: int) -> bytes:
    image = Image.new("RGB", (20, 20), ((40 * seed) % 256, (90 * seed + 30) % 256, 120))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _decoded(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def _pixels(image) -> bytes:
    if isinstance(image, EncodedImage):
        return image.decode().tobytes()
    if isinstance(image, str):
        with Image.open(image) as im:
            return im.convert("RGB").tobytes()
    return image.tobytes()


def _profile(pid: str, seed: int, image: dict | None = None) -> dict:
    """An MLLMU-Bench profile row (the fields of the data set card / eval.py)."""
    return {
        "ID": pid,
        "image": image or {"bytes": _png(seed), "path": None},
        "biography": f"{pid} is a fictitious person.",
        "metadata": json.dumps([{"Question": f"Who is {pid}?", "Answer": f"name {pid}"}]),
        "Classification_Task": {
            "Image_Textual_Questions": [
                {
                    "Question": f"What is the job of {pid}?",
                    "Options": {"A": "baker", "B": "pilot", "C": f"job {pid}", "D": "nurse"},
                    "Correct_Answer": "C",
                }
            ],
            "Pure_Text_Questions": [
                {
                    "Question": "text only",
                    "Options": {"A": "a", "B": "b", "C": "c", "D": "d"},
                    "Correct_Answer": "A",
                }
            ],
        },
        "Generation_Task": [
            {
                "Type": "Image_Textual",
                "Question": f"Where does {pid} live?",
                "Ground_Truth": f"city {pid}",
            },
            {"Type": "Pure_Text", "Question": "text only", "Ground_Truth": "x"},
        ],
        "Mask_Task": [
            {
                "Type": "Image_Textual",
                "Question": f"{pid} was born in __.",
                "Ground_Truth": f"town {pid}",
            },
        ],
    }


def _mc(item: dict, question_type: str) -> dict:
    options = [item["Options"][k] for k in "ABCD"]
    index = "ABCD".index(item["Correct_Answer"])
    return {
        "question": "\n".join([item["Question"], *(f"{k}: {item['Options'][k]}" for k in "ABCD")]),
        "answer": options[index],
        "form": "mc",
        "options": options,
        "answer_index": index,
        "letter": item["Correct_Answer"],
        "task": "classification",
        "question_type": question_type,
        "index": 0,
    }


def _expected(row: dict) -> list[dict]:
    """The evaluation samples a profile row should give, in order (image dropped)."""
    pid = row["ID"]
    task = row["Classification_Task"]

    def short(question, answer, kind, question_type):
        return {"question": question, "answer": answer, "form": "short", "task": kind} | {
            "question_type": question_type,
            "index": 0,
        }

    return [
        _mc(task["Image_Textual_Questions"][0], "Image_Textual"),
        _mc(task["Pure_Text_Questions"][0], "Pure_Text"),
        short(
            f"{pid} was born in [Blank].\n{CLOZE_INSTRUCTION}",
            f"town {pid}",
            "cloze",
            "Image_Textual",
        ),
        short(f"Where does {pid} live?", f"city {pid}", "generation", "Image_Textual"),
        short("text only", "x", "generation", "Pure_Text"),
    ]


def _ft_row(pid: str, seed: int) -> dict:
    """An ``ft_Data`` training row: the person's image and QA pairs (``metadata`` JSON)."""
    pairs = [{"Question": f"Who is {pid}?", "Answer": f"name {pid}"}]
    return {"ID": pid, "image": {"bytes": _png(seed), "path": None}, "metadata": json.dumps(pairs)}


FORGET = {"forget_5": ["p0"], "forget_10": ["p0", "p1"]}
PEOPLE = ["p0", "p1", "p2", "p3"]


def _mllmu_rows() -> dict[str, list[dict]]:
    rows = {}
    for name, forget in FORGET.items():
        rows[name] = [_profile(p, i) for i, p in enumerate(PEOPLE) if p in forget]
        retain = f"retain_{100 - int(name.split('_')[1])}"
        rows[retain] = [_profile(p, i) for i, p in enumerate(PEOPLE) if p not in forget]
    rows["Test_Set"] = []
    for i, p in enumerate(PEOPLE):
        row = _profile(p, 10 + i)
        del row["image"]
        row["images"] = [{"bytes": _png(20 + i), "path": None}, {"bytes": _png(30 + i)}]
        rows["Test_Set"].append(row)
    rows["Retain_Set"] = [_profile("c0", 40), _profile("c1", 41)]
    rows["ft_Data"] = [_ft_row(p, i) for i, p in enumerate(PEOPLE)]  # the profile images
    rows["Full_Set"] = [_full_set_row(p, i) for i, p in enumerate(PEOPLE)]
    return rows


FULL_SET_MARK = " (Full_Set)"


def _full_set_row(pid: str, seed: int) -> dict:
    """A ``Full_Set`` row: the profile with every question marked, so that a test can tell
    an exemplar read from it; p1's image differs from its forget / retain row's."""
    row = _profile(pid, 51 if pid == "p1" else seed)
    for kind in ("Image_Textual_Questions", "Pure_Text_Questions"):
        for item in row["Classification_Task"][kind]:
            item["Question"] += FULL_SET_MARK
    for item in row["Mask_Task"] + row["Generation_Task"]:
        item["Question"] += FULL_SET_MARK
    return row


def _json_image(image: dict) -> dict:
    if image.get("bytes") is None:
        return image
    return {"bytes": base64.b64encode(image["bytes"]).decode()}


def write_mllmu_json(root, rows: dict[str, list[dict]]) -> str:
    """The JSON variant: base64 image bytes; p2's image as a file path instead."""
    os.makedirs(root / "images", exist_ok=True)
    for subset, subset_rows in rows.items():
        os.makedirs(root / subset)
        out = []
        for row in subset_rows:
            row = dict(row)
            if "image" in row and row.get("ID") == "p2":
                (root / "images" / "p2.png").write_bytes(row["image"]["bytes"])
                row["image"] = "../images/p2.png"
            elif "image" in row:
                row["image"] = _json_image(row["image"])
            if "images" in row:
                row["images"] = [_json_image(im) for im in row["images"]]
            out.append(row)
        (root / subset / "train-00000-of-00001.json").write_text(json.dumps(out))
    return str(root)


@pytest.fixture(scope="module")
def mllmu_dir(tmp_path_factory):
    return write_mllmu_json(tmp_path_factory.mktemp("mllmu"), _mllmu_rows())


FIU_QA = 2


def _fiu_person(i: int) -> dict:
    return {
        "unique_id": i,
        "image_path": f"./dataset/images/{i}.jpg",
        "caption": "a face",
        "qa_list": [
            {
                "question": f"What is the name of person {i} ({k})?",
                "answer": f"answer {i} {k}",
                "paraphrased_question": "paraphrase",
                "perturbed_answer": [f"wrong {i} {k} a", f"wrong {i} {k} b"],
                "keywords": ["x"],
            }
            for k in range(FIU_QA)
        ],
    }


def write_fiubench(root, n: int = 8, split: dict | None = None) -> str:
    """FIUBench's layout: dataset/full.json, dataset/split.json, images under dataset/."""
    data = root / "dataset"
    os.makedirs(data / "images")
    for i in range(n):
        Image.open(io.BytesIO(_png(i))).save(data / "images" / f"{i}.jpg")
    (data / "full.json").write_text(json.dumps([_fiu_person(i) for i in range(n)]))
    split = split or {"forget1": [0], "forget5": [0, 1], "forget10": [0, 1, 2]}
    (data / "split.json").write_text(json.dumps(split))
    return str(root)


@pytest.fixture(scope="module")
def fiu_dir(tmp_path_factory):
    return write_fiubench(tmp_path_factory.mktemp("fiu"))


# ---------------------------------------------------------------------- MLLMU-Bench


def _check_mllmu(bench, rows, forget_split: str) -> None:
    forget = FORGET[forget_split]
    retain = [p for p in PEOPLE if p not in forget]
    assert bench.eval_splits == ("forget", "forget_test", "retain", "retain_celebrity")
    assert bench.train_splits == ("train_forget", "train_retain")
    assert bench.config["forget_split"] == forget_split
    by_id = {r["ID"]: r for r in rows[forget_split]}
    by_id.update({r["ID"]: r for r in rows[f"retain_{100 - int(forget_split[7:])}"]})
    tests = {r["ID"]: r for r in rows["Test_Set"]}
    rng = random.Random(0)  # eval.py's random.choice per Test_Set row and task, seeded
    test_pick = {
        r["ID"]: {task: rng.randrange(len(r["images"])) for task in TASKS}
        for r in rows["Test_Set"]
        if r["ID"] in forget
    }
    celebrities = {r["ID"]: r for r in rows["Retain_Set"]}
    for split, people in (
        ("forget", forget),
        ("retain", retain),
        ("forget_test", forget),
        ("retain_celebrity", list(celebrities)),
    ):
        samples = bench.splits[split]
        expected = []
        for p in people:
            row = by_id.get(p) or tests.get(p) or celebrities[p]
            base = {"person": p, "split": split, "is_forget": p in forget}
            expected += [{**e, **base} for e in _expected(row)]
        got = [{k: v for k, v in s.items() if k not in ("image", "image_choices")} for s in samples]
        assert got == expected, split
        for s in samples:
            if split == "forget_test":  # the row's candidate images, for the protocol runner
                choices = [_pixels(im) for im in s["image_choices"]]
                assert choices == [_decoded(im["bytes"]) for im in tests[s["person"]]["images"]]
            if s["question_type"] == "Pure_Text":
                assert s["image"] is None  # text only: CAGUL's gate stays off
                continue
            if split == "forget_test":
                image = tests[s["person"]]["images"][test_pick[s["person"]][s["task"]]]["bytes"]
            elif split == "retain_celebrity":
                image = celebrities[s["person"]]["image"]["bytes"]
            else:
                image = by_id[s["person"]]["image"]["bytes"]
            assert _pixels(s["image"]) == _decoded(image)
    assert [p["id"] for p in bench.people] == [*forget, *retain, *celebrities]
    # Full_Set: the few-shot context of the loaded profiles, neither scored nor trained on
    full = bench.context["few_shot"]
    assert [(s["person"], s["task"], s["question_type"]) for s in full] == [
        (p, e["task"], e["question_type"]) for p in PEOPLE for e in _expected(by_id[p])
    ]
    assert all(FULL_SET_MARK in s["question"] for s in full)
    profile = {
        s["person"]: s["image"]
        for s in bench.splits["forget"] + bench.splits["retain"]
        if s["image"] is not None
    }
    for s in full:
        if s["question_type"] == "Image_Textual":  # p1's Full_Set image differs: its own
            assert (s["image"] is profile[s["person"]]) == (s["person"] != "p1")
            seed = 51 if s["person"] == "p1" else PEOPLE.index(s["person"])
            assert _pixels(s["image"]) == _decoded(_png(seed))
    train = bench.train_samples()
    assert [(s["split"], s["person"], s["question"], s["answer"]) for s in train] == [
        ("train_forget" if p in forget else "train_retain", p, f"Who is {p}?", f"name {p}")
        for p in PEOPLE
    ]
    assert all(s["is_forget"] == (s["person"] in forget) for s in train)


@pytest.mark.parametrize("forget_split", ["forget_5", "forget_10"])
def test_mllmu_json(mllmu_dir, forget_split):
    rows = _mllmu_rows()
    bench = load_mllmu(mllmu_dir, forget_split)
    _check_mllmu(bench, rows, forget_split)
    images = {s["person"]: s["image"] for s in bench.splits["retain"] if s["image"] is not None}
    assert images["p2"].path is not None and images["p3"].data is not None  # p2: a path
    assert bench.chance_mc_acc == 0.25
    assert len(bench.samples("forget")) == len(bench.splits["forget"])


def test_mllmu_parquet(tmp_path):
    pa = pytest.importorskip(
        "pyarrow", reason="pyarrow is not installed: the parquet variant cannot be written"
    )
    import pyarrow.parquet as pq

    rows = _mllmu_rows()
    for subset, subset_rows in rows.items():
        os.makedirs(tmp_path / subset)
        pq.write_table(pa.Table.from_pylist(subset_rows), tmp_path / subset / "t.parquet")
    _check_mllmu(load_mllmu(tmp_path, "forget_5"), rows, "forget_5")


def test_mllmu_optional_subsets(tmp_path):
    rows = _mllmu_rows()
    del rows["Test_Set"], rows["Retain_Set"], rows["ft_Data"]
    bench = load_mllmu(write_mllmu_json(tmp_path, rows))
    assert bench.eval_splits == ("forget", "retain") == tuple(bench.splits)
    with pytest.raises(ValueError, match="no training samples"):
        bench.train_samples()


def _mllmu_error(tmp_path, edit, forget_split="forget_5"):
    rows = _mllmu_rows()
    edit(rows)
    root = write_mllmu_json(tmp_path, rows)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load_mllmu(root, forget_split)
    return str(e.value)


def test_mllmu_errors(tmp_path):
    def drop_id(rows):
        del rows["retain_95"][1]["ID"]

    msg = _mllmu_error(tmp_path / "a", drop_id)
    assert "retain_95/train-00000-of-00001.json: row 2: field 'ID': missing" in msg

    def options_list(rows):
        rows["forget_5"][0]["Classification_Task"]["Image_Textual_Questions"][0]["Options"] = [
            "a",
            "b",
        ]

    msg = _mllmu_error(tmp_path / "b", options_list)
    assert "forget_5/train-00000-of-00001.json: row 1: field " in msg
    assert "'Classification_Task.Image_Textual_Questions[0].Options': expected an object" in msg

    def bad_letter(rows):
        rows["forget_5"][0]["Classification_Task"]["Image_Textual_Questions"][0][
            "Correct_Answer"
        ] = "E"

    assert "Correct_Answer': 'E' is not one of" in _mllmu_error(tmp_path / "c", bad_letter)

    def bad_type(rows):
        rows["Test_Set"][0]["Mask_Task"][0]["Type"] = "Video"

    msg = _mllmu_error(tmp_path / "d", bad_type)
    assert "Test_Set/train-00000-of-00001.json: row 1: field 'Mask_Task[0].Type'" in msg

    def bad_image(rows):
        rows["forget_5"][0]["image"] = {"bytes": b"not a png"}

    assert "field 'image.bytes': not a readable image" in _mllmu_error(tmp_path / "e", bad_image)

    def no_questions(rows):
        row = rows["forget_5"][0]
        for key in ("Classification_Task", "Generation_Task", "Mask_Task"):
            del row[key]

    assert "row 1: no questions" in _mllmu_error(tmp_path / "f", no_questions)

    def bad_metadata(rows):
        rows["ft_Data"][2]["metadata"] = "[{"

    msg = _mllmu_error(tmp_path / "g", bad_metadata)
    assert "ft_Data/train-00000-of-00001.json: row 3: field 'metadata': invalid JSON" in msg

    def empty_question(rows):
        rows["forget_5"][0]["Generation_Task"][0]["Question"] = " "

    assert "'Generation_Task[0].Question': empty string" in _mllmu_error(
        tmp_path / "h", empty_question
    )

    def missing_image_file(rows):
        rows["retain_95"][0]["image"] = {"path": "nope.png", "bytes": None}

    assert "field 'image.path': image file not found" in _mllmu_error(
        tmp_path / "i", missing_image_file
    )
    msg = _mllmu_error(tmp_path / "j", lambda rows: rows.pop("retain_95"))
    assert "no such directory" in msg and "retain_95" in msg
    with pytest.raises(ValueError, match="forget_split must be one of"):
        load_mllmu(tmp_path / "a", "forget_7")
    os.makedirs(tmp_path / "k" / "forget_5")
    (tmp_path / "k" / "forget_5" / "x.parquet").write_bytes(b"garbage")
    with pytest.raises((ImportError, ValueError), match=r"x\.parquet: "):
        load_mllmu(tmp_path / "k")
    (tmp_path / "k" / "forget_5" / "x.parquet").unlink()
    (tmp_path / "k" / "forget_5" / "x.json").write_text('{"ID": 1}')
    with pytest.raises(ValueError, match=r"x\.json: expected a list of objects"):
        load_mllmu(tmp_path / "k")


# ---------------------------------------------------------------------- FIUBench


def test_fiubench(fiu_dir):
    bench = load_fiubench(fiu_dir)  # forget5 = people 0, 1; retain = 3..7 (2 is in forget10)
    assert bench.eval_splits == ("forget", "retain") == tuple(bench.splits)
    for split, people in (("forget", [0, 1]), ("retain", [3, 4, 5, 6, 7])):
        expected = []
        for i in people:
            for k, qa in enumerate(_fiu_person(i)["qa_list"]):
                base = {"person": str(i), "split": split, "is_forget": split == "forget"}
                expected.append(
                    {
                        **base,
                        "question": qa["question"],
                        "answer": qa["answer"],
                        "form": "short",
                        "task": "qa",
                        "paraphrased_questions": [qa["paraphrased_question"]],
                        "perturbed_answers": qa["perturbed_answer"],
                        "keywords": qa["keywords"],
                    }
                )
                options = list(qa["perturbed_answer"])
                options.insert(k % 3, qa["answer"])
                text = "\n".join(
                    [qa["question"], *(f"{'ABC'[j]}: {o}" for j, o in enumerate(options))]
                )
                expected.append(
                    {
                        **base,
                        "question": text,
                        "answer": qa["answer"],
                        "form": "mc",
                        "options": options,
                        "answer_index": k % 3,
                        "task": "perturbed",
                    }
                )
        samples = bench.splits[split]
        assert [{k: v for k, v in s.items() if k != "image"} for s in samples] == expected
        for s in samples:
            assert s["image"].path == os.path.join(
                fiu_dir, "dataset", "images", f"{s['person']}.jpg"
            )
    assert bench.chance_mc_acc == pytest.approx(1 / 3)
    bench10 = load_fiubench(os.path.join(fiu_dir, "dataset"), "forget10", multiple_choice=False)
    assert {s["person"] for s in bench10.splits["forget"]} == {"0", "1", "2"}
    assert all(s["form"] == "short" for s in bench10.splits["forget"])
    capped = load_fiubench(fiu_dir, max_people=5)
    assert {s["person"] for s in capped.splits["retain"]} == {"3", "4"}


def _fiu_error(tmp_path, edit=None, split=None, **kwargs):
    root = write_fiubench(tmp_path, split=split)
    if edit:
        path = tmp_path / "dataset" / "full.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load_fiubench(root, **kwargs)
    return str(e.value)


def test_fiubench_errors(tmp_path):
    def no_answer(data):
        del data[3]["qa_list"][1]["answer"]

    msg = _fiu_error(tmp_path / "a", no_answer)
    assert "dataset/full.json: row 4: field 'qa_list[1].answer': missing" in msg

    def bad_id(data):
        data[2]["unique_id"] = [2]

    assert "row 3: field 'unique_id': expected a string or int, got list" in _fiu_error(
        tmp_path / "b", bad_id
    )

    def no_image(data):
        data[4]["image_path"] = "./dataset/images/missing.jpg"

    msg = _fiu_error(tmp_path / "c", no_image)
    assert "row 5: field 'image_path': image file not found" in msg

    def bad_perturbed(data):
        data[0]["qa_list"][0]["perturbed_answer"] = [1, 2]

    assert "field 'qa_list[0].perturbed_answer[0]': expected a string" in _fiu_error(
        tmp_path / "d", bad_perturbed
    )
    msg = _fiu_error(tmp_path / "e", forget_split="forget20")
    assert "dataset/split.json: field 'forget20': missing (have" in msg
    msg = _fiu_error(tmp_path / "f", split={"forget5": "0, 1"})
    assert "split.json: field 'forget5': expected a list, got str" in msg
    msg = _fiu_error(tmp_path / "g", split={"forget5": [0, 99]})
    assert "field 'forget5': ids not among the first 400 people" in msg and "'99'" in msg
    with pytest.raises(FileNotFoundError, match=r"no full\.json and split\.json"):
        load_fiubench(tmp_path / "nothing")


# ---------------------------------------------------------------------- load_dataset


def test_load_dataset_and_detect(mllmu_dir, fiu_dir, tmp_path):
    assert detect_format(mllmu_dir) == "mllmu"
    assert detect_format(fiu_dir) == detect_format(os.path.join(fiu_dir, "dataset")) == "fiubench"
    bench = load_dataset(mllmu_dir, forget_split="forget_10")
    assert {s["person"] for s in bench.splits["forget"]} == {"p0", "p1"}
    assert load_dataset(fiu_dir, "fiubench").config["forget_split"] == "forget5"

    jsonl = tmp_path / "d.jsonl"
    Image.open(io.BytesIO(_png(0))).save(tmp_path / "x.png")
    rows = [{"image": "x.png", "question": "q", "answer": "a", "is_forget": f} for f in (1, 0)]
    rows.append({**rows[1], "split": "retain_test"})
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert detect_format(jsonl) == "jsonl"
    bench = load_dataset(jsonl)
    assert bench.eval_splits == ("forget", "retain", "retain_test")
    assert [len(bench.splits[s]) for s in bench.eval_splits] == [1, 1, 1]

    with pytest.raises(ValueError, match="unknown data format"):
        detect_format(tmp_path)
    write_fiubench(tmp_path / "both")
    os.makedirs(tmp_path / "both" / "forget_5")
    with pytest.raises(ValueError, match="looks like both fiubench and mllmu"):
        detect_format(tmp_path / "both")
    with pytest.raises(ValueError, match="format must be one of"):
        load_dataset(fiu_dir, "tofu")
    with pytest.raises(ValueError, match="forget_split applies to mllmu and fiubench"):
        load_dataset(jsonl, forget_split="forget5")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_dataset(tmp_path / "missing")


# ---------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    vlm, processor = tv.llava(layers=2)
    vlm.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    (root / "config.json").write_text(
        json.dumps({"prompt_template": tv.LLAVA_TEMPLATE, "layer": 1, "encoder_rank": 8})
    )
    return root


def test_cli_eval_and_train(model_dir, mllmu_dir, fiu_dir, tmp_path, capsys):
    model = str(model_dir / "model")
    common = ["--model", model, "--no-progress"]
    for data, fmt, splits in (
        (
            mllmu_dir,
            "mllmu",
            {"forget", "forget_test", "retain", "retain_celebrity"},
        ),
        (fiu_dir, "auto", {"forget", "retain"}),
    ):
        out = tmp_path / f"{fmt}.json"
        args = ["eval", *common, "--data", data, "--format", fmt, "--output", str(out)]
        assert main([*args, "--max-new-tokens", "2", "--batch-size", "16"]) == 0
        metrics = json.loads(out.read_text())
        assert set(metrics["splits"]) == splits
        assert all(0.0 <= m["mc_acc"] <= 1.0 for m in metrics["splits"].values())
    capsys.readouterr()

    adapter = tmp_path / "adapter"
    code = main(
        [
            "train",
            *common,
            "--data",
            fiu_dir,
            "--format",
            "fiubench",
            "--forget-split",
            "forget1",
            "--output",
            str(adapter),
            "--config",
            str(model_dir / "config.json"),
            "--set",
            "steps=2",
            "--set",
            "batch_size=4",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2
    assert (adapter / "cagul_modules.safetensors").is_file()


def test_cli_data_errors(model_dir, mllmu_dir, tmp_path, capsys):
    rows = _mllmu_rows()
    del rows["forget_5"][0]["Mask_Task"][0]["Ground_Truth"]
    bad = write_mllmu_json(tmp_path / "bad", rows)
    model = str(model_dir / "model")
    assert main(["eval", "--model", model, "--data", bad, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "forget_5/train-00000-of-00001.json: row 1: field 'Mask_Task[0].Ground_Truth'" in err
    out = str(tmp_path / "o")
    args = ["train", "--model", model, "--data", mllmu_dir, "--output", out]
    assert main([*args, "--forget-split", "forget_20"]) == 2
    assert "forget_split must be one of" in capsys.readouterr().err
    assert main([*args, "--format", "fiubench"]) == 2
    assert "no full.json and split.json" in capsys.readouterr().err


# ---------------------------------------------------------------------- official layouts


def _png_header(width: int, height: int) -> bytes:
    """A PNG file whose header claims ``width x height`` pixels and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _question_texts(sample: dict) -> set[str]:
    texts = {sample["question"], sample["answer"], *sample.get("options", ())}
    return {t for t in texts if len(t) > 2}


def test_mllmu_official_parquet_layout_never_trains_on_eval_items(tmp_path):
    """HF parquet files with the image struct, Test_Set in two files, ft_Data training rows;
    no evaluation question, option or answer text reaches a training sample."""
    pa = pytest.importorskip("pyarrow", reason="pyarrow writes the parquet fixture")
    import pyarrow.parquet as pq

    rows = _mllmu_rows()
    for row in rows["ft_Data"]:  # ft_Data also states every evaluated fact as a QA pair...
        row["metadata"] = json.dumps(
            [{"Question": f"Who is {row['ID']}?", "Answer": f"name {row['ID']}"}]
        )
    for subset, subset_rows in rows.items():
        os.makedirs(tmp_path / subset)
        halves = [subset_rows[:2], subset_rows[2:]] if subset == "Test_Set" else [subset_rows]
        for k, part in enumerate(halves):
            name = f"train-{k:05d}-of-{len(halves):05d}.parquet"
            pq.write_table(pa.Table.from_pylist(part), tmp_path / subset / name)
    bench = load_dataset(tmp_path)
    assert {s["person"] for s in bench.splits["forget_test"]} == {"p0"}
    train = bench.train_samples()
    assert train and all(s["task"] == "qa" for s in train)
    eval_texts = set().union(
        *(_question_texts(s) for split in bench.eval_splits for s in bench.splits[split])
    )
    assert not eval_texts & set().union(*(_question_texts(s) for s in train))
    assert sum(s["question_type"] == "Pure_Text" for s in bench.splits["forget"]) == 2


def test_mllmu_baseline_train_split(tmp_path):
    rows = _mllmu_rows()
    rows["baseline_train_split/forget_5"] = [_ft_row("p0", 0)]
    rows["baseline_train_split/retain_95"] = [_ft_row("p3", 3)]
    bench = load_mllmu(write_mllmu_json(tmp_path, rows))
    assert [(s["split"], s["person"]) for s in bench.train_samples()] == [
        ("train_forget", "p0"),
        ("train_retain", "p3"),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image data (0 bytes)"),
        (b"GIF89a not really", "not a readable image"),
        # a PNG header claiming 60000 x 60000 pixels: refused before any decoding
        (
            _png_header(60000, 60000),
            "decompression bomb",
        ),
    ],
)
def test_mllmu_broken_images_name_file_row_field(tmp_path, data, message):
    def broken(rows):
        rows["retain_95"][2]["image"] = {"bytes": data}

    msg = _mllmu_error(tmp_path, broken)
    assert "retain_95/train-00000-of-00001.json: row 3: field 'image.bytes'" in msg
    assert message in msg


def _fiubench_flat(root) -> str:
    """The flat HF FIUBench copy with every FIUBench field: forget5 = 0, 1; retain5 = 4, 5."""
    os.makedirs(root / "SFHQ")
    people = []
    for i in range(6):
        Image.open(io.BytesIO(_png(i))).save(root / "SFHQ" / f"{i}.jpg")
        person = _fiu_person(i)
        person["image_path"] = f"./dataset/SFHQ/{i}.jpg"
        for qa in person["qa_list"]:
            qa["paraphrased_question"] = ["What is the name of this person?", "Who is this?"]
            qa["paraphrased_answer"] = f"n{i}"
            qa["perturbed_answer"] = [f"n{i + 6}", f"n{i + 12}", f"n{i + 18}"]
            qa["keywords"] = [f"n{i}"]
        people.append(person)
    (root / "full.json").write_text("".join(json.dumps(p) + "\n" for p in people))
    (root / "split.json").write_text(json.dumps({"forget5": [0, 1], "retain5": [4, 5]}))
    return str(root)


def test_fiubench_flat_hf_layout_and_retain5(tmp_path):
    """The plain HF copy: full.json (JSON lines), split.json and SFHQ/ side by side, with
    image paths still reading ./dataset/SFHQ/<id>.jpg; retain5 is the retain eval split."""
    bench = load_dataset(_fiubench_flat(tmp_path))
    assert bench.eval_splits == ("forget", "retain5")
    assert bench.train_splits == ("forget", "retain")
    assert {s["person"] for s in bench.splits["retain5"]} == {"4", "5"}
    assert {s["person"] for s in bench.splits["retain"]} == {"2", "3", "4", "5"}
    first = bench.splits["forget"][0]
    assert first["image"].path == os.path.join(tmp_path, "SFHQ", "0.jpg")
    assert first["paraphrased_questions"] == ["What is the name of this person?", "Who is this?"]
    assert first["paraphrased_answer"] == "n0" and first["keywords"] == ["n0"]


# ---------------------------------------------------------------------- protocol runners


def test_protocol_fiubench(model_dir, tmp_path, capsys):
    data = _fiubench_flat(tmp_path / "fiu")
    model = str(model_dir / "model")
    args = ["eval", "--model", model, "--data", data, "--protocol", "fiubench", "--no-progress"]
    args += ["--max-new-tokens", "3"]
    out = tmp_path / "fiu.json"
    assert main([*args, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["splits"]) == {"forget", "retain5"}
    for row in result["splits"].values():
        assert row["n"] == 4  # 2 people x 2 QA pairs
        for key in ("rougeL_recall", "probability", "truth_ratio", "em", "ape", "min_k"):
            assert 0.0 <= row[key] <= 1.0, key
    assert result["forget_quality"] == {"absent": "needs --reference (the retain-only model)"}
    assert result["privleak"]["absent"].startswith("FIUBench defines no holdout (non-member) set")
    retain = result["splits"]["retain5"]
    parts = [retain["probability"], retain["rougeL_recall"], retain["truth_ratio"]]
    assert result["model_utility"] == pytest.approx(metrics.model_utility(parts))
    assert result["options"]["max_new_tokens"] == 3
    table = (tmp_path / "fiu.md").read_text()
    assert "| Split | ROUGE-L | Prob. | Truth ratio | EM | APE | Min-K% | Min-K%++ | n |" in table
    # the model against itself as the retain-only model: identical truth ratios, p = 1
    out = tmp_path / "ref.json"
    assert main([*args, "--output", str(out), "--reference", model]) == 0
    assert json.loads(out.read_text())["forget_quality"] == pytest.approx(1.0)
    capsys.readouterr()


def _replay_eval_py(seed: int) -> tuple[dict, dict]:
    """The draws of MLLMU-Bench's eval.py (LLaVA: 1 classification, 2 cloze profiles) after
    ``random.seed(seed)`` on the forget_10 fixture, call by call in its order: forget
    (cloze, classification), test (classification + one image per Test_Set row, cloze +
    images, generation images), retain (cloze, classification), celebrity (cloze,
    classification)."""
    rng = random.Random(seed)
    forget, retain, celebrities = ["p0", "p1"], ["p2", "p3"], ["c0", "c1"]
    people: dict = {"forget": {"cloze": rng.sample(forget, 2)}}
    people["forget"]["classification"] = rng.sample(forget, 1)
    images: dict = {p: {} for p in forget}
    people["forget_test"] = {}
    for task in ("classification", "cloze", "generation"):
        if task != "generation":
            people["forget_test"][task] = rng.sample(forget, {"classification": 1}.get(task, 2))
        for p in forget:  # eval.py: random.choice(row["images"]), two images per row
            images[p][task] = rng.choice([0, 1])
    people["retain"] = {"cloze": rng.sample(retain, 2), "classification": rng.sample(retain, 1)}
    people["retain_celebrity"] = {"cloze": rng.sample(celebrities, 2)}
    people["retain_celebrity"]["classification"] = rng.sample(celebrities, 1)
    return people, images


def test_mllmu_few_shot_prompts_as_eval_py(mllmu_dir):
    """The few-shot prompts of MLLMU-Bench's eval.py: the seeded draws in its order, the
    exemplars read from Full_Set with their Full_Set image, the drawn profiles skipped (on
    the test set too), no classification exemplars on celebrities (and none at all there:
    Full_Set has no celebrity), one user turn per exemplar, every image to the processor."""
    from cagul.evaluation.mllmu import LETTER_INSTRUCTION, mllmu_prompts

    bench = load_mllmu(mllmu_dir, "forget_10")
    splits = {**{s: bench.splits[s] for s in bench.eval_splits}, **bench.context}
    prompts, draws = mllmu_prompts(splits, seed=5)
    people, images = _replay_eval_py(5)
    assert draws == {"few_shot_people": people, "test_images": images}

    def asked(split, task, kind="Image_Textual"):
        return [p for p in prompts[split] if p["task"] == task and p["question_type"] == kind]

    (shot,) = people["forget_test"]["classification"]
    (other,) = {"p0", "p1"} - {shot}
    (test_prompt,) = asked("forget_test", "classification")  # the drawn profile is skipped
    assert test_prompt["person"] == other
    (image_turn,) = test_prompt["few_shot"]  # its Image_Textual question, from Full_Set
    assert image_turn["text"] == (
        f"Question: What is the job of {shot}?{FULL_SET_MARK}\nA: baker\nB: pilot\n"
        f"C: job {shot}\nD: nurse\nCorrect Answer: C"
    )
    shot_seed = 51 if shot == "p1" else PEOPLE.index(shot)  # p1's Full_Set image is its own
    assert _pixels(image_turn["image"]) == _decoded(_png(shot_seed))
    test_row = next(r for r in _mllmu_rows()["Test_Set"] if r["ID"] == other)
    picked = test_row["images"][images[other]["classification"]]["bytes"]
    assert _pixels(test_prompt["image"]) == _decoded(picked)
    assert test_prompt["question"].endswith(f"\nD: nurse\n{LETTER_INSTRUCTION}")
    (text_prompt,) = asked("forget_test", "classification", "Pure_Text")
    assert text_prompt["image"] is None and [t["image"] for t in text_prompt["few_shot"]] == [None]
    assert text_prompt["few_shot"][0]["text"].endswith("D: d\nCorrect Answer: A")
    assert asked("forget_test", "cloze") == []  # both forget profiles are the 2 cloze shots
    assert not asked("forget", "cloze")
    for prompt in asked("forget_test", "generation"):  # zero-shot, on the drawn image
        assert prompt["few_shot"] == [] and prompt["question"].endswith("accurately in ENGLISH.")
        row = next(r for r in _mllmu_rows()["Test_Set"] if r["ID"] == prompt["person"])
        picked = row["images"][images[prompt["person"]]["generation"]]["bytes"]
        assert _pixels(prompt["image"]) == _decoded(picked)
    for task in ("classification", "cloze"):  # celebrities: nothing from Full_Set, none skipped
        assert [p["person"] for p in asked("retain_celebrity", task)] == ["c0", "c1"]
        assert all(p["few_shot"] == [] for p in asked("retain_celebrity", task))
    (retain_prompt,) = asked("retain", "classification")
    (retain_shot,) = people["retain"]["classification"]
    assert retain_prompt["person"] != retain_shot
    assert f"job {retain_shot}" in retain_prompt["few_shot"][0]["text"]

    # without Full_Set: the test set's exemplars are the forget rows (their own image object)
    fallback, _ = mllmu_prompts({s: bench.splits[s] for s in bench.eval_splits}, seed=5)
    (turn,) = next(p for p in fallback["forget_test"] if p["task"] == "classification")["few_shot"]
    forget_image = next(s["image"] for s in bench.splits["forget"] if s["person"] == shot)
    assert FULL_SET_MARK not in turn["text"] and turn["image"] is forget_image

    # the collator: one user turn per exemplar, then the question; both images to the processor
    _, processor = tv.llava(layers=1)
    collator = VLMCollator(processor, CagulConfig(prompt_template=tv.LLAVA_TEMPLATE))
    assert collator.prompt(test_prompt) == (
        f"USER: <image> {image_turn['text']}\nUSER: <image> {test_prompt['question']} ASSISTANT:"
    )
    assert collator.prompts([test_prompt])["pixel_values"].shape[0] == 2
    assert collator.prompt(text_prompt).startswith(f"USER:  {text_prompt['few_shot'][0]['text']}\n")


class _OneImageVLM(torch.nn.Module):
    """A stub VLM that takes one image per prompt and answers one token to everything."""

    def __init__(self, answer_id: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.answer_id = answer_id
        self.images_per_prompt: list[int] = []

    def generate(self, input_ids, pixel_values=None, max_new_tokens=1, **kwargs):
        n = 0 if pixel_values is None else pixel_values.shape[0] // input_ids.shape[0]
        if pixel_values is not None and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError("one image per prompt")
        self.images_per_prompt.append(n)
        new = torch.full((input_ids.shape[0], max_new_tokens), self.answer_id)
        return torch.cat([input_ids, new], dim=1)


def test_mllmu_one_image_model_gets_text_only_exemplars(mllmu_dir):
    from cagul.evaluation.mllmu import evaluate_mllmu

    bench = load_mllmu(mllmu_dir, "forget_10")
    splits = {**{s: bench.splits[s] for s in bench.eval_splits}, **bench.context}
    _, processor = tv.llava(layers=1)
    stub = _OneImageVLM(processor.tokenizer.convert_tokens_to_ids("A"))
    config = CagulConfig(prompt_template=tv.LLAVA_TEMPLATE)
    result = evaluate_mllmu(stub, splits, processor, config, seed=5, max_new_tokens=1)
    options = result["options"]
    assert options["few_shot_images"] is False
    assert options["few_shot_images_off"] == "ValueError: one image per prompt"
    assert options["few_shot_source"] == "Full_Set"
    assert set(stub.images_per_prompt) == {0, 1}  # after the probe: at most one image each
    assert result["rows"][0]["n"] == {"classification": 1, "cloze": 0, "generation": 2}


def test_protocol_mllmu(model_dir, mllmu_dir, tmp_path, capsys):
    model = str(model_dir / "model")
    out = tmp_path / "mllmu.json"
    args = ["eval", "--model", model, "--data", mllmu_dir, "--protocol", "mllmu"]
    args += ["--forget-split", "forget_10", "--max-new-tokens", "2", "--no-progress"]
    assert main([*args, "--output", str(out), "--seed", "3"]) == 0
    result = json.loads(out.read_text())
    assert [(r["set"], r["question_type"]) for r in result["rows"]] == [
        (s, t)
        for s in ("forget", "forget_test", "retain", "retain_celebrity")
        for t in ("Image_Textual", "Pure_Text")
    ]
    options = result["options"]
    assert options["seed"] == 3 and options["shots"] == {"classification": 1, "cloze": 2}
    people, images = _replay_eval_py(3)  # eval.py's draws after random.seed(3)
    assert options["few_shot_people"] == people and options["test_images"] == images
    assert options["few_shot_source"] == "Full_Set"
    assert options["few_shot_images"] is True  # the tiny LLaVA takes several images
    # the few-shot profiles' own questions are skipped: forget_10 has p0, p1
    forget = result["rows"][0]
    assert forget["n"] == {"classification": 1, "cloze": 0, "generation": 2}
    celebrity = result["rows"][6]  # Full_Set has no celebrity: nothing skipped
    assert celebrity["n"] == {"classification": 2, "cloze": 2, "generation": 2}
    assert 0.0 <= celebrity["classification_acc"] <= 100.0 and 0.0 <= celebrity["bleu"] <= 1.0
    table = (tmp_path / "mllmu.md").read_text()
    assert "| retain_celebrity | Pure_Text |" in table and "gate stays off" in table
    capsys.readouterr()
    assert main([*args]) == 2
    assert "--protocol needs exactly one --data directory and --output" in capsys.readouterr().err


def test_protocol_synthetic(model_dir, tmp_path, capsys):
    from cagul_demo.synthetic import ANSWER_SENTENCES, SyntheticConfig, write

    config = SyntheticConfig(
        n_people=4, forget_fraction=0.25, n_strangers=1, train_poses=1, test_poses=1,
        templates=2, image_size=16,
    )  # fmt: skip
    data = write(config, tmp_path / "synthetic")
    bench = load_dataset(data)
    short = next(s for s in bench.splits["forget"] if s["form"] == "short")
    wrong = [o for k, o in enumerate(short["options"]) if k != short["answer_index"]]
    sentence = ANSWER_SENTENCES[short["fact"]]
    assert short["perturbed_answers"] == [sentence.format(o) for o in wrong]
    assert short["paraphrased_answer"] == sentence.format(short["answer"])
    assert short["keywords"] == [short["answer"]] and len(short["paraphrased_questions"]) == 1
    assert short["question"] not in short["paraphrased_questions"]

    # the MIA's non-members: the stranger's true facts (5 facts x 2 templates, one pose)
    assert len(bench.context["holdout"]) == 10

    out = tmp_path / "synthetic.json"
    model = str(model_dir / "model")
    args = ["eval", "--model", model, "--data", data, "--protocol", "synthetic"]
    args += ["--max-new-tokens", "2", "--no-progress", "--output", str(out)]
    assert main(args) == 0  # without the retain-only model: privleak absent, with the reason
    result = json.loads(out.read_text())
    assert set(result["splits"]) == {"forget", "forget_test", "retain", "retain_test"}
    for row in result["splits"].values():
        assert 0.0 <= row["mc_acc_likelihood"] <= 1.0 and "mc_acc" not in row
        assert 0.0 <= row["truth_ratio"] <= 1.0 and 0.0 <= row["ape"] <= 1.0
    assert result["forget_quality"] == {"absent": "needs --reference (the retain-only model)"}
    assert result["privleak"] == {"absent": "needs --reference (the retain-only model)"}
    auc = result["mia_auc"]
    assert isinstance(auc, float) and 0.0 <= auc <= 1.0
    mia = result["options"]["mia"]
    assert mia["score"] == "min_k_prob" and mia["k"] == 0.4
    table = (tmp_path / "synthetic.md").read_text()
    assert "mc_acc_likelihood" in table and "- privleak: absent (needs --reference" in table

    reference = tmp_path / "reference"  # another tiny LLaVA as the retain-only model
    vlm, processor = tv.llava(seed=1, layers=2)
    vlm.save_pretrained(reference)
    processor.save_pretrained(reference)
    assert main([*args, "--reference", str(reference)]) == 0
    result = json.loads(out.read_text())
    assert result["mia_auc"] == pytest.approx(auc)
    theirs = result["reference_mia_auc"]
    assert 0.0 <= theirs < 1.0 and theirs != pytest.approx(auc)
    assert result["privleak"] == pytest.approx(metrics.privleak(auc, theirs))
    assert 0.0 <= result["forget_quality"] <= 1.0
    capsys.readouterr()

"""The ``cagul`` command's error contract, checked the way a user meets it: each bad input
runs ``python -m cagul`` in a subprocess and must exit with status 2 and exactly one line
on stderr (``cagul: error: ...``, no traceback) that names the bad flag, file, line, row
or field; the command must print nothing else (no work done before the error).

The runs go side by side in a thread pool (each is mostly the ``transformers`` import).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_world import CliWorld, png_header, run_cagul, write_jsonl_data


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad command line and the text its error line must contain."""

    args: list[str]
    names: tuple[str, ...]


def cut_in_half(path: Path) -> None:
    """Truncates ``path`` to half its size (an interrupted write or download)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncated_copies(source: Path, tmp: Path, files: list[Path]):
    """``(copy of directory source, the file of it cut in half)`` for each of ``files``
    (paths relative to ``source``), each in a copy of its own."""
    assert files, f"no files to truncate in {source}"
    for i, name in enumerate(sorted(files)):
        copy = tmp / f"copy{i}"
        shutil.copytree(source, copy)
        cut_in_half(copy / name)
        yield copy, copy / name


def saved_files(directory: Path) -> list[Path]:
    """The JSON and safetensors files directly in ``directory`` (relative paths)."""
    return [Path(p.name) for p in directory.iterdir() if p.suffix in (".json", ".safetensors")]


# ------------------------------------------------------------------------ cases


def output_cases(w: CliWorld, tmp: Path) -> dict[str, list[Case]]:
    a_file = tmp / "a_file.txt"
    a_file.write_text("keep me\n")
    a_dir = tmp / "a_dir"
    a_dir.mkdir()
    below_file = a_file / "metrics.json"
    return {
        "eval-output-is-a-directory": [
            Case(w.eval("--output", str(a_dir)), ("--output", str(a_dir)))
        ],
        "eval-output-below-a-file": [
            Case(w.eval("--output", str(below_file)), ("--output", str(below_file)))
        ],
        "train-output-is-a-file": [Case(w.train(output=a_file), ("--output", str(a_file)))],
        "demo-output-is-a-file": [
            Case(["demo", "--quick", "--output", str(a_file)], ("--output", str(a_file)))
        ],
        "demo-cache-is-a-file": [
            Case(
                ["demo", "--quick", "--output", str(tmp / "demo"), "--cache", str(a_file)],
                ("--cache", str(a_file)),
            )
        ],
    }


def device_cases(w: CliWorld, tmp: Path) -> dict[str, list[Case]]:
    # without CUDA "cuda" is unavailable; with it, an index past the last GPU is
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    return {
        "device-bogus": [Case(w.generate("--device", "bogus"), ("--device", "bogus"))],
        "device-unavailable": [Case(w.eval("--device", missing), ("--device", missing))],
    }


def truncated_file_cases(w: CliWorld, tmp: Path) -> dict[str, list[Case]]:
    run = w.checkpoint.parent.parent  # the training run: adapter + checkpoints/
    checkpoint_files = [p.relative_to(run) for p in w.checkpoint.iterdir()]
    return {
        "adapter-file-truncated": [
            Case(w.generate("--adapter", str(copy)), (str(cut),))
            for copy, cut in truncated_copies(w.adapter, tmp / "a", saved_files(w.adapter))
        ],
        "lora-adapter-file-truncated": [
            Case(w.generate("--adapter", str(copy)), (str(cut),))
            for copy, cut in truncated_copies(w.lora, tmp / "l", saved_files(w.lora))
        ],
        "checkpoint-file-truncated": [
            Case(w.train("--resume", output=copy), (str(cut),))
            for copy, cut in truncated_copies(run, tmp / "c", checkpoint_files)
        ],
        "model-config-truncated": [
            Case(w.generate(model=copy), (str(cut),))
            for copy, cut in truncated_copies(w.model, tmp / "m", [Path("config.json")])
        ],
    }


def text_cases(w: CliWorld, tmp: Path) -> dict[str, list[Case]]:
    lines = w.data.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"What", b"Wh\xffat")
    bad_jsonl = w.data.parent / "latin1.jsonl"  # next to the images it names
    bad_jsonl.write_bytes(b"\n".join(lines))
    mllmu = tmp / "mllmu"
    (mllmu / "forget_5").mkdir(parents=True)
    rows = mllmu / "forget_5" / "train-00000-of-00001.jsonl"
    rows.write_bytes(b'{"ID": 1}\n{"ID": "caf\xe9"}\n')
    bad_config = tmp / "config.json"
    bad_config.write_bytes(b'{"refusal": "Je ne sais pas, d\xe9sol\xe9."}')
    return {
        "jsonl-not-utf8": [Case(w.train(data=bad_jsonl), (f"{bad_jsonl}:3:",))],
        "benchmark-file-not-utf8": [Case(w.eval(data=mllmu), (f"{rows}:2:",))],
        "config-not-utf8": [Case(w.train(config=bad_config), (f"{bad_config}:1:",))],
    }


def image_cases(w: CliWorld, tmp: Path) -> dict[str, list[Case]]:
    good = w.image.read_bytes()
    files = {
        "image-empty": b"",
        "image-not-an-image": b"name,city\nAda,Paris\n",
        "image-decompression-bomb": png_header(100_000, 100_000),
        "image-truncated": good[: len(good) // 2],
    }
    cases = {}
    for name, data in files.items():
        path = tmp / f"{name}.png"
        path.write_bytes(data)
        cases[name] = [Case(w.generate(image=path), (str(path),))]
    return cases


def strict_path_cases(w: CliWorld, tmp: Path) -> dict[str, list[Case]]:
    outside = tmp / "outside.png"
    shutil.copy(w.image, outside)
    cases = {}
    for kind, value in (("dotdot", "../outside.png"), ("absolute", str(outside))):
        data = write_jsonl_data(tmp / kind)
        _set_first_image(data, value)
        cases[f"strict-jsonl-{kind}"] = [
            Case(w.train("--strict-paths", data=data), (f"{data}:1:", "'image'"))
        ]
    data = write_jsonl_data(tmp / "symlink")
    (tmp / "symlink" / "img" / "link.png").symlink_to(outside)
    _set_first_image(data, "img/link.png")
    cases["strict-jsonl-symlink"] = [
        Case(w.train("--strict-paths", data=data), (f"{data}:1:", "'image'"))
    ]
    mllmu = tmp / "mllmu" / "forget_5"
    mllmu.mkdir(parents=True)
    row = {"ID": 1, "image": {"path": "../../outside.png"}, "question": "Q?", "answer": "A"}
    (mllmu / "train.json").write_text(json.dumps([row]))
    cases["strict-mllmu"] = [
        Case(
            w.eval("--strict-paths", data=mllmu.parent),
            (f"{mllmu / 'train.json'}: row 1", "'image.path'"),
        )
    ]
    fiu = tmp / "fiubench"
    fiu.mkdir()
    person = {"unique_id": 1, "image_path": "../outside.png",
              "qa_list": [{"question": "Q?", "answer": "A"}]}  # fmt: skip
    (fiu / "full.json").write_text(json.dumps([person]))
    (fiu / "split.json").write_text(json.dumps({"forget1": [1]}))
    cases["strict-fiubench"] = [
        Case(
            w.eval("--strict-paths", "--forget-split", "forget1", data=fiu),
            (f"{fiu / 'full.json'}: row 1", "'image_path'"),
        )
    ]
    return cases


def _set_first_image(data: Path, image: str) -> None:
    lines = data.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "image": image})
    data.write_text("\n".join(lines) + "\n")


def argument_cases(w: CliWorld, tmp: Path) -> dict[str, list[Case]]:
    missing = tmp / "no-such-model"
    args = w.generate()
    args[args.index("--model") + 1] = str(missing)
    return {"missing-model-path": [Case(args, ("--model", str(missing)))]}


CASE_GROUPS: list[Callable[[CliWorld, Path], dict[str, list[Case]]]] = [
    output_cases,
    device_cases,
    truncated_file_cases,
    text_cases,
    image_cases,
    strict_path_cases,
    argument_cases,
]
CASE_IDS = [
    "eval-output-is-a-directory", "eval-output-below-a-file", "train-output-is-a-file",
    "demo-output-is-a-file", "demo-cache-is-a-file",
    "device-bogus", "device-unavailable",
    "adapter-file-truncated", "lora-adapter-file-truncated", "checkpoint-file-truncated",
    "model-config-truncated",
    "jsonl-not-utf8", "benchmark-file-not-utf8", "config-not-utf8",
    "image-empty", "image-not-an-image", "image-decompression-bomb", "image-truncated",
    "strict-jsonl-dotdot", "strict-jsonl-absolute", "strict-jsonl-symlink", "strict-mllmu",
    "strict-fiubench",
    "missing-model-path",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(cli_world, tmp_path_factory):
    """Every case's command started in a pool; id -> [(case, future of its result)]."""
    cases: dict[str, list[Case]] = {}
    for group in CASE_GROUPS:
        found = group(cli_world, tmp_path_factory.mktemp(group.__name__))
        assert not set(found) & set(cases)
        cases.update(found)
    assert sorted(cases) == sorted(CASE_IDS)
    workers = max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    yield {
        name: [(case, pool.submit(run_cagul, case.args)) for case in group]
        for name, group in cases.items()
    }
    pool.shutdown(cancel_futures=True)  # after a failure under -x: start no more runs


def contract_breaches(case: Case, proc) -> list[str]:
    """How the result of one bad command line breaks the error contract (none: it holds)."""
    lines = proc.stderr.splitlines()
    breaches = []
    if proc.returncode != 2:
        breaches.append(f"exit status {proc.returncode}, expected 2")
    if "Traceback" in proc.stderr:
        breaches.append("a traceback on stderr")
    if proc.stdout:
        breaches.append("output on stdout (work done before the error)")
    if len(lines) != 1:
        return [*breaches, f"{len(lines)} lines on stderr, expected 1"]
    if not re.match(r"cagul[\w ]*: error: ", lines[0]):
        breaches.append("the line is not 'cagul: error: ...'")
    return breaches + [f"{name!r} not named" for name in case.names if name not in lines[0]]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_user_error_is_one_line_naming_the_input(runs, case_id):
    failures = []
    for case, future in runs[case_id]:
        proc = future.result()
        breaches = contract_breaches(case, proc)
        if breaches:
            failures.append(
                f"cagul {' '.join(case.args)}\n  {'; '.join(breaches)}\n"
                f"  stdout: {proc.stdout[-500:]!r}\n  stderr: {proc.stderr[-2000:]!r}"
            )
    assert not failures, f"{len(failures)} of {len(runs[case_id])} runs:\n" + "\n".join(failures)

"""In-process checks behind the CLI contract: the input-file readers, image-path
confinement (``--strict-paths``), the flag checks, and which errors ``main`` reports as
user errors (the rest keep their traceback)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from cagul import cli
from cagul.cli_checks import check_device, check_output_dir, check_output_file
from cagul.data import load_dataset, load_image, load_jsonl
from cagul.data.paths import resolve_image_path
from cagul.errors import InputError, UsageError
from cagul.files import check_safetensors, read_json, read_safetensors, read_text, write_text_atomic
from cli_world import png_header, write_jsonl_data
from PIL import Image
from safetensors.torch import save_file


def test_read_text_names_the_line_of_a_bad_byte(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "ok"}\n{"c": "caf\xe9"}\n')
    with pytest.raises(InputError, match=rf"^{path}:3: not UTF-8 text \(byte 0xe9 at column 11\)"):
        read_text(path)
    with pytest.raises(ValueError, match=rf"{path}:3:"):  # what library callers catch
        load_jsonl(path)
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')  # a byte-order mark is not content
    assert read_json(path) == {"a": 1}


def test_read_json_names_a_file_cut_short(tmp_path):
    path = tmp_path / "cagul_config.json"
    path.write_text('{\n  "layer": 1,\n  "mode": "inp')
    with pytest.raises(InputError, match=rf"^{path}:3: invalid JSON"):
        read_json(path)


def test_safetensors_readers_name_a_file_cut_short(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(64.0)}, path)
    assert torch.equal(read_safetensors(path)["w"], torch.arange(64.0))
    check_safetensors(path)
    data = path.read_bytes()
    for size in (0, 5, len(data) - 8):
        path.write_bytes(data[:size])
        for read in (read_safetensors, check_safetensors):
            with pytest.raises(InputError, match=rf"^{path}: not a readable safetensors file"):
                read(path)


def test_write_text_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "metrics.json"
    write_text_atomic(path, "old\n")
    assert path.read_text() == "old\n"

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert os.listdir(path.parent) == ["metrics.json"]  # no temporary file left behind


def test_image_paths_may_leave_the_data_directory_unless_confined(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    shutil.copy(outside, data / "img" / "inside.png")
    (data / "img" / "out_link.png").symlink_to(outside)
    (data / "img" / "in_link.png").symlink_to(data / "img" / "inside.png")
    escaping = ("../outside.png", str(outside), "img/out_link.png")
    for value in escaping:  # allowed by default (documented in docs/loaders.md)
        assert os.path.samefile(resolve_image_path(value, str(data), "f:1"), outside)
        with pytest.raises(InputError, match=r"^f:1: image path .* leads outside the data"):
            resolve_image_path(value, str(data), "f:1", confine=str(data))
    for value in ("img/inside.png", "img/in_link.png", str(data / "img" / "inside.png")):
        resolve_image_path(value, str(data), "f:1", confine=str(data))
    with pytest.raises(FileNotFoundError, match="f:1: image file not found"):
        resolve_image_path("img/missing.png", str(data), "f:1", confine=str(data))


def test_loaders_confine_image_paths_with_strict_paths(tmp_path):
    path = write_jsonl_data(tmp_path / "data")
    shutil.copy(tmp_path / "data" / "img" / "0.png", tmp_path / "outside.png")
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "image": "../outside.png"})
    path.write_text("\n".join(lines) + "\n")
    assert load_jsonl(path)[1]["image"] == str(tmp_path / "outside.png")
    assert sum(map(len, load_dataset(path).splits.values())) == len(lines)
    with pytest.raises(InputError, match=rf"^{path}:2: field 'image': image path '../outside"):
        load_dataset(path, strict_paths=True)


@pytest.mark.parametrize(
    "content",
    [b"", b"not an image", png_header(100_000, 100_000), png_header(8, 8)],
    ids=["empty", "text", "decompression-bomb", "no-pixel-data"],
)
def test_load_image_names_an_unreadable_file(tmp_path, content):
    path = tmp_path / "face.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"^{path}: not a readable image \(.+\)$"):
        load_image(str(path))


def test_check_device():
    assert check_device("--device", None) is None
    assert check_device("--device", "cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match=r"^--device 'bogus': not a device"):
        check_device("--device", "bogus")
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(UsageError, match=f"^--device {missing}: "):
        check_device("--device", missing)


def test_check_output_paths(tmp_path):
    a_file = tmp_path / "f.json"
    a_file.write_text("{}")
    check_output_file("--output", str(a_file))  # overwritten
    check_output_file("--output", str(tmp_path / "new" / "deeper" / "m.json"))  # created
    check_output_dir("--output", str(tmp_path))
    check_output_dir("--output", str(tmp_path / "new" / "run"))
    with pytest.raises(UsageError, match=f"^--output {tmp_path}: is a directory"):
        check_output_file("--output", str(tmp_path))
    with pytest.raises(UsageError, match=f"^--output {a_file}/m\\.json: {a_file} is not a dir"):
        check_output_file("--output", str(a_file / "m.json"))
    with pytest.raises(UsageError, match=f"^--cache {a_file}: exists and is not a directory"):
        check_output_dir("--cache", str(a_file))


def test_flags_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("the command started its work before checking --output")

    monkeypatch.setattr(cli, "_load_vlm", no_work)
    monkeypatch.setattr(cli, "_eval_splits", no_work)
    data = tmp_path / "data.jsonl"
    data.write_text("")
    args = ["eval", "--model", str(tmp_path), "--data", str(data), "--output", str(tmp_path)]
    assert cli.main(args) == 2
    assert capsys.readouterr().err == f"cagul: error: --output {tmp_path}: is a directory, " \
        "expected a file path\n"  # fmt: skip


@pytest.fixture
def eval_without_a_model(tmp_path, monkeypatch):
    """``cagul eval`` arguments on a JSONL data set, with the VLM loader stubbed out (the
    tests below replace the evaluation itself)."""
    monkeypatch.setattr(cli, "_load_vlm", lambda args, *rest: (object(), object()))
    data = write_jsonl_data(tmp_path / "data")
    return ["eval", "--model", str(tmp_path), "--data", str(data), "--no-progress"]


def test_a_bug_keeps_its_traceback(eval_without_a_model, monkeypatch):
    """Only input errors are reported in one line: a ValueError raised by the work itself
    (here: a stand-in for a bug in the evaluation) propagates."""
    import cagul.evaluation.diagnostics

    def bug(*args, **kwargs):
        raise ValueError("a bug in the evaluation")

    monkeypatch.setattr(cagul.evaluation.diagnostics, "evaluate_splits", bug)
    with pytest.raises(ValueError, match="a bug in the evaluation"):
        cli.main(eval_without_a_model)


def test_eval_prints_its_metrics_before_writing_them(
    eval_without_a_model, tmp_path, monkeypatch, capsys
):
    import cagul.evaluation.diagnostics

    def fail(path, text):
        raise OSError("disk full")

    scores = {"forget": {"mc_acc": 0.25}, "retain": {"mc_acc": 0.75}}
    diagnostics = cagul.evaluation.diagnostics
    monkeypatch.setattr(diagnostics, "evaluate_splits", lambda *args, **kwargs: scores)
    monkeypatch.setattr(cli, "write_text_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        cli.main([*eval_without_a_model, "--output", str(tmp_path / "metrics.json")])
    assert json.loads(capsys.readouterr().out) == {"splits": scores}

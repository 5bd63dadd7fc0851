"""The package layout's promises: the library never imports the demo package (except the
``cagul demo`` command), and ``import cagul`` / ``cagul --help`` do not import
transformers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARY = os.path.join(ROOT, "python", "cagul")


def _imported_modules(path: str) -> list[tuple[str, int]]:
    """``(module, line)`` of every absolute import in the file at ``path``."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def test_library_imports_the_demo_only_in_the_demo_command():
    edges = []
    for folder, _, files in os.walk(LIBRARY):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                edges += [
                    (os.path.relpath(path, LIBRARY), line)
                    for module, line in _imported_modules(path)
                    if module.split(".")[0] == "cagul_demo"
                ]
    assert len(edges) == 1 and edges[0][0] == "cli.py", edges


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "python")])}
    code += "\nimport sys\nprint('MODULES', *sorted({m.split('.')[0] for m in sys.modules}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split("MODULES")[-1].split())


@pytest.mark.parametrize(
    "code",
    [
        "import cagul",
        "import cagul.config",
        "from cagul.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    ],
)
def test_light_imports_do_not_import_transformers(code):
    modules = _modules_after(code)
    assert "cagul" in modules  # the check sees the imports
    assert "transformers" not in modules


def test_query_policies_match_the_integration():
    from cagul.config import QUERY_POLICIES

    from cagul_kernels.integrations.transformers import QUERY_POLICIES as INTEGRATION_POLICIES

    assert QUERY_POLICIES == INTEGRATION_POLICIES


@pytest.mark.parametrize("command", ["generate", "train"])
def test_without_the_framework_extra_the_command_names_it(command, tmp_path, monkeypatch, capsys):
    """generate fails loading the model, train already building its settings flags."""
    from cagul.cli import main
    from PIL import Image

    image = tmp_path / "image.png"
    Image.new("RGB", (4, 4)).save(image)  # a readable image: the model load is what fails
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    inputs = {
        "generate": ["--image", str(image), "--question", "q"],
        "train": ["--data", str(image), "--output", str(tmp_path / "out")],
    }[command]
    code = main([command, "--model", str(tmp_path), *inputs])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "transformers is missing" in err and "cagul-kernels[framework]" in err

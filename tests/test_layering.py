"""Dependencies point one way (golden ← hw ← firmware), and torch lives only beside the float model."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = {"golden": {"hw", "firmware", "m3vit"}, "hw": {"firmware", "m3vit"}, "firmware": {"m3vit"}}
TORCH_ALLOWED = {"golden/float_model.py", "golden/trained_like.py", "golden/sensitivity.py", "golden/train.py"}
# the float model, its shaping, its quantization sensitivity and its training
# hw/ by role, lowest first: a package imports only from itself and the packages before it.
HW_ORDER = ["common", "memory", "vector", "compute", "moe", "control", "board", "flow", "sim"]


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def _hw_targets(path):
    """The hw modules `path` imports from (dotted name parts after `hw`), relative imports resolved."""
    package = path.relative_to(ROOT).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            names = [base + (node.module.split(".") if node.module else [])]
        else:
            continue
        for name in names:
            if name[0] == "hw" and len(name) > 1:
                yield name[1:]


def test_hw_is_packages_by_role():
    loose = [p.name for p in (ROOT / "hw").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules directly in hw/: {loose}"
    packages = sorted(p.name for p in (ROOT / "hw").iterdir() if (p / "__init__.py").exists())
    assert set(packages) <= set(HW_ORDER), f"hw packages not in HW_ORDER: {set(packages) - set(HW_ORDER)}"


@pytest.mark.parametrize("package", [p for p in HW_ORDER if (ROOT / "hw" / p).exists()])
def test_hw_packages_import_downwards(package):
    for path in (ROOT / "hw" / package).rglob("*.py"):
        for target in _hw_targets(path):
            module = ROOT / "hw" / pathlib.Path(*target)
            assert module.with_suffix(".py").exists() or (module / "__init__.py").exists(), \
                f"{path.relative_to(ROOT)} imports hw.{'.'.join(target)}, which does not exist"
            assert HW_ORDER.index(target[0]) <= HW_ORDER.index(package), \
                f"{path.relative_to(ROOT)} (hw.{package}) imports hw.{target[0]}, which sits above it"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = set(_imports(path)) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_torch_only_beside_the_float_model():
    for package in ("golden", "hw", "firmware", "m3vit"):
        for path in (ROOT / package).rglob("*.py"):
            if "torch" in set(_imports(path)):
                assert str(path.relative_to(ROOT)) in TORCH_ALLOWED, f"{path} imports torch"


def test_generator_runs_without_torch():
    # Block torch, then use the configuration, cost model, fit check and the CLI.
    code = ("import sys; sys.modules['torch'] = None\n"
            "import golden.config, golden.costs, hw.flow.fit, firmware\n"
            "from m3vit.cli import main\n"
            "assert main(['info', '--preset', 'tiny', '--json']) == 0\n"
            "assert main(['bench', 'float', '--preset', 'tiny']) == 2\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "needs torch" in result.stderr


MAX_MODULE_LINES, MAX_ELABORATE_LINES = 400, 150


def test_hw_modules_and_elaborates_stay_small():
    for path in (ROOT / "hw").rglob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: over {MAX_MODULE_LINES} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name == "elaborate":
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_ELABORATE_LINES, \
                    f"{path.relative_to(ROOT)}:{node.lineno}: elaborate has {length} lines"

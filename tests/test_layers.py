"""The package layering (docs/architecture.md) holds by construction, and the vehicle install stays small.

The contracts themselves are in pyproject.toml (``[tool.importlinter]``) and run by ``lint-imports``
in .ci/run; this file runs them too, so the README's test command checks them, and shows that
each contract does catch the breach it is there for (a copy of the package with one bad import).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("importlinter")  # the dev extra

REPO = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filenames=(sys.argv[1],), no_cache=True, no_logo=True))")


def lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with ``root/pyproject.toml`` on the ``edge_runtime`` package found in ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_the_layer_contracts_hold():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in proc.stdout


def test_the_contract_set():
    """What docs/architecture.md promises: every package has its place, the vehicle side is named in full."""
    c = contracts()
    layers = c["layers"]
    assert layers["type"] == "layers" and layers["containers"] == ["edge_runtime"] and layers["exhaustive"]
    placed = {name.strip() for row in layers["layers"] for name in row.split("|")}
    packages = {p.name for p in (REPO / "edge_runtime").iterdir() if (p / "__init__.py").is_file()}
    packages |= {p.stem for p in (REPO / "edge_runtime").glob("*.py") if not p.name.startswith("_")}
    assert placed == packages
    assert layers["layers"][:2] == ["entry", "evaluation"] and layers["layers"][-1] == "contracts | telemetry"
    vehicle = set(c["vehicle-no-torch"]["source_modules"])
    assert vehicle == {f"edge_runtime.{p}" for p in ("contracts", "telemetry", "sim", "control", "tasks", "decoding",
                                                     "runtime", "deploy")}
    assert {"torch", "transformers"} <= set(c["vehicle-no-torch"]["forbidden_modules"])
    assert set(c["runtime-not-training-side"]["forbidden_modules"]) == {
        f"edge_runtime.{p}" for p in ("model", "prune", "export", "train", "evaluation")}


BREACHES = {
    # contract broken: (file in the copy, its text)
    "vehicle-no-torch": ("runtime/breach.py", "def f():\n    import torch  # lazy: still seen\n"),
    "vehicle-no-torch-indirect": ("tasks/breach.py", "from ..model import build\n"),
    "layers-export-runtime": ("export/breach.py", "from ..runtime import control_loop\n"),
    "layers-decoding-tasks": ("decoding/breach.py", "from ..tasks import prompts\n"),
    "layers-unplaced-package": ("plugins/__init__.py", "\n"),
    "runtime-not-training-side": ("runtime/breach.py", "from ..prune import config\n"),
}
EXPECTED = {  # contract names (their beginning) that must be reported broken
    "vehicle-no-torch": ["The vehicle side never imports torch"],
    "vehicle-no-torch-indirect": ["Layers:", "The vehicle side never imports torch"],  # tasks below model, too
    "layers-export-runtime": ["Layers:"],
    "layers-decoding-tasks": ["Layers:"],
    "layers-unplaced-package": ["Layers:"],
    "runtime-not-training-side": ["The vehicle runtime imports nothing of the training side"],
}


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(REPO / "edge_runtime", root / "edge_runtime", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_copy_is_clean(package_copy):
    proc = lint(package_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("breach", list(BREACHES))
def test_a_breach_is_caught(package_copy, breach):
    rel, text = BREACHES[breach]
    path = package_copy / "edge_runtime" / rel
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    try:
        proc = lint(package_copy)
    finally:
        shutil.rmtree(path.parent) if rel.endswith("__init__.py") else path.unlink()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = " ".join(proc.stdout.split())  # contract names wrap in the report
    assert f"{len(EXPECTED[breach])} broken." in report, proc.stdout
    for name in EXPECTED[breach]:
        assert status(report, name) == "BROKEN", proc.stdout


def status(report: str, name: str) -> str:
    """KEPT or BROKEN: the verdict printed after the contract whose name starts with ``name``."""
    rest = report[report.index(name):]
    kept, broken = rest.find(" KEPT"), rest.find(" BROKEN")
    return "BROKEN" if broken >= 0 and (kept < 0 or broken < kept) else "KEPT"


# ----------------------------------------------------------------------------- vehicle install
def test_cma_is_an_extra_not_a_vehicle_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not [d for d in project["dependencies"] if d.startswith("cma")]
    extras = project["optional-dependencies"]
    for extra in ("oracle", "train", "dev"):
        assert any(d.startswith("cma") for d in extras[extra]), extra
    assert not [d for d in project["dependencies"] if d.split(">")[0].split("=")[0] in ("torch", "transformers")]


def test_oracle_without_cma_says_how_to_install_it(monkeypatch, capsys):
    from edge_runtime.tasks import cli
    from edge_runtime.tasks.oracle import OracleConfig, OracleUnavailable

    monkeypatch.setitem(sys.modules, "cma", None)  # what an install without the oracle extra looks like
    with pytest.raises(OracleUnavailable, match=r'pip install -e "\.\[oracle\]"'):
        OracleConfig()
    assert OracleConfig(method="random").method == "random"  # the random search needs nothing more
    assert cli.main(["oracle", "--instruction", "Drive smoothly."]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[oracle]"' in err

"""The pure cores load no web or Kubernetes framework, at run time too.

import-linter (``make lint``) checks the imports written in the source; this checks what an
import really loads, in a fresh interpreter per core (a lazy or conditional import, or one of a
dependency, would show here and not there). The list is the forbidden contract's in
pyproject.toml, read from it so the two cannot drift.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]
FORBIDDEN = next(c for c in CONTRACTS if c["type"] == "forbidden")
PROBE = (
    "import importlib, sys; importlib.import_module(sys.argv[1]); "
    "print(' '.join(m for m in sys.argv[2:] if m in sys.modules))"
)


def test_the_contract_names_the_cores_the_issue_lists() -> None:
    cores = set(FORBIDDEN["source_modules"])
    for core in (
        "loraplex.router.pick",
        "loraplex.router.resolve",
        "loraplex.operator.scaling",
        "loraplex.operator.resources",
        "loraplex.worker.adapters",
        "loraplex.worker.queue",
    ):
        assert core in cores
    assert {"fastapi", "aiohttp", "httpx", "kopf", "kubernetes_asyncio"} <= set(
        FORBIDDEN["forbidden_modules"]
    )


@pytest.mark.parametrize("core", FORBIDDEN["source_modules"])
def test_importing_a_core_loads_no_framework(core: str, tmp_path: Path) -> None:
    # cwd outside the repo: `python -c` puts the cwd on sys.path (the operator/ folder).
    loaded = subprocess.run(
        [sys.executable, "-c", PROBE, core, *FORBIDDEN["forbidden_modules"]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert loaded == [], f"importing {core} loaded {loaded}"

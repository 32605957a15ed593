"""Fail when pyproject.toml, the pins and requirements.lock disagree, or the venv drifted.

``make venv`` runs this after installing, and ``make lint`` (so ``make test``) runs it again:

* every requirement of ``pyproject.toml`` (dependencies and every extra, markers evaluated for
  this interpreter) and every line of ``requirements-pins.txt`` names a package the lock pins, at
  a version its specifier admits — a range edited in pyproject without ``make lock`` fails here;
* every package the lock pins is installed at exactly that version (a hand ``pip install`` that
  moved one fails here; ``make venv`` after ``rm -rf .venv`` repairs it).

Usage: ``python scripts/check_lock.py [requirements.lock]``. Exit 1 with one line per problem.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def locked_versions(lock: Path) -> dict[str, Version]:
    """``name -> version`` of every ``name==version`` line of a pip-compile output."""
    pins: dict[str, Version] = {}
    for line in lock.read_text().splitlines():
        if match := PIN_LINE.match(line):
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def declared_requirements(pyproject: Path, pins_file: Path) -> list[Requirement]:
    """pyproject's dependencies and extras, then the lock pins file, as requirements."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    for raw in pins_file.read_text().splitlines():
        text = raw.split("#", 1)[0].strip()
        if text:
            lines.append(text)
    return [Requirement(line) for line in lines]


def disagreements(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is required but the lock has no {req.name}: run `make lock`")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} is required but the lock pins {pins[name]}: run `make lock`")
    return problems


def drift(pins: dict[str, Version]) -> list[str]:
    problems = []
    for name, version in sorted(pins.items()):
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={version} is locked but not installed: run `make venv`")
            continue
        if installed != version:
            problems.append(
                f"{name} {installed} is installed but the lock pins {version}: "
                "rm -rf .venv && make venv"
            )
    return problems


def main(argv: list[str]) -> int:
    lock = Path(argv[1]) if len(argv) > 1 else ROOT / "requirements.lock"
    pins = locked_versions(lock)
    requirements = declared_requirements(ROOT / "pyproject.toml", ROOT / "requirements-pins.txt")
    problems = disagreements(requirements, pins) + drift(pins)
    for problem in problems:
        print(f"check_lock: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

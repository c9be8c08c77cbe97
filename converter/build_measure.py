"""Builds the analyser's compiled loop, converter/_measure.c, into an extension module beside
it, for the Python that runs this: ``python -m converter.build_measure``.

scripts/venv.sh runs it when the source is newer than the module; the images build it in a
stage that has a compiler. -ffp-contract=off: no fused multiply-adds, so the same IEEE
operations run in the same order on every machine, and a checkpoint resumed elsewhere goes on
bit for bit (converter/analysis.py).
"""

from __future__ import annotations

import subprocess
import sysconfig
from pathlib import Path

SOURCE = Path(__file__).with_name("_measure.c")
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-strict-aliasing", "-fvisibility=hidden"]
WARNINGS = ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-Wno-psabi", "-Werror"]


def target(folder: Path = SOURCE.parent) -> Path:
    return folder / f"_measure{sysconfig.get_config_var('EXT_SUFFIX')}"


def build(folder: Path = SOURCE.parent, defines: tuple[str, ...] = ()) -> Path:
    """The module, built into ``folder`` (``defines``: -D options, for the tests' variants)."""
    include = sysconfig.get_paths()["include"]
    built = target(folder)
    command = ["cc", *FLAGS, *WARNINGS, *(f"-D{name}" for name in defines), f"-I{include}", str(SOURCE)]
    subprocess.run([*command, "-o", str(built)], check=True)  # noqa: S603 (the compiler on PATH, no shell)
    return built


if __name__ == "__main__":
    build()

"""The benchmark's report: what the parts say, their figures, and bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import FFMPEG


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


def write_results(path: Path, report: Report, targets: dict[str, str], command: str) -> None:
    """The machine, the command, the targets against what was measured, then every part's tables."""
    ffmpeg_version = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30
    header = [
        "# Benchmark results",
        "",
        "Regenerate with `scripts/bench` (this file is its output).",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {memory_gib} GiB",
        f"- Python {platform.python_version()}, {ffmpeg_version}, {postgres}",
        f"- command: `{command}`",
        "",
        "## Targets",
        "",
        "| figure | target | measured |",
        "| --- | --- | --- |",
        *(f"| {name} | {target} | {report.figures.get(name, 'not measured')} |" for name, target in targets.items()),
        "",
    ]
    path.write_text("\n".join(header + report.lines) + "\n")
    print(f"wrote {path}")

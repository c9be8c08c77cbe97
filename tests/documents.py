"""The project's documents as the tests read them: which they are, their fenced
blocks, what they name, and their examples run the way a reader runs them.

An example is a ```console block. In it, `$ ` begins a shell command (a line
ending in `\\` goes on to the next), `mp3=> ` a statement in the psql session
the last `$ psql URL` opened (psql's own prompts: `mp3=#` for a superuser,
`mp3=*>` in a transaction, `mp3->` for a statement's next line); the lines
after a command are what it prints. `…` stands for text left out: within a
line, any text; on a line of its own, any number of lines.

``ExampleRun`` runs a document's examples in order, as a reader would in a
fresh clone: in a folder of their own that has the private cluster's `.pgdata`,
against the service `scripts/run` started on a fresh database. What differs on
every run is matched, not compared: a UUID, SHA-256 or listing cursor the
document shows stands for the one printed at that place (and, from there on,
in the commands and outputs after it), timestamps are any timestamp, and psql's
column widths may differ. Everything else must be printed as shown.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.support import ROOT

# The documents the checks read: the README, and the reference beside it.
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "db").glob("*.md")),
    ROOT / "bench" / "RESULTS.md",
]

FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w-]*)")
NOT_RUN = re.compile(r"^<!-- not run: (.+) -->$")


@dataclass(frozen=True)
class Block:
    """A fenced block: its document, the line of its opening fence, its info string
    (console, sh, sql, text...), its text, and why it is not run when it says so."""

    document: Path
    line: int
    info: str
    text: str
    not_run: str | None


def blocks(document: Path) -> list[Block]:
    found = []
    lines = document.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, info = opening[1], opening[2]
        above = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = NOT_RUN.match(above.strip())
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith(fence))
        text = "\n".join(lines[index + 1 : end])
        found.append(Block(document, index + 1, info, text, marker[1] if marker else None))
        index = end + 1
    return found


def prose(document: Path) -> str:
    """The document without its fenced blocks."""
    kept, fence = [], ""
    for line in document.read_text(encoding="utf-8").splitlines():
        opening = FENCE.match(line)
        if fence and line.startswith(fence):
            fence = ""
        elif not fence and opening:
            fence = opening[1]
        elif not fence:
            kept.append(line)
    return "\n".join(kept)


def inline_code(document: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(document))


def link_targets(document: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(document))


def anchors(document: Path) -> set[str]:
    """The #fragments its headings have on GitHub."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", prose(document), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        found.add(slug)
    return found


# --- what they name -------------------------------------------------------------


def project_roots() -> set[str]:
    """The top of the checkout as git keeps it: not what a run or a reader leaves there
    (song.wav, .hypothesis/). Without git (the tests' image): what .gitignore lets in."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False)
    if listed.returncode == 0 and listed.stdout:
        return {path.split("/")[0] for path in listed.stdout.decode().split("\0") if path}
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip()}
    return {path.name for path in ROOT.iterdir() if path.name not in ignored | {".git"}}


# The parts of the checkout a document may name by path.
PROJECT_ROOTS = project_roots()
PATH_LIKE = re.compile(r"(?<![\w./:-])([\w.-]+(?:/[\w.*<>-]*)+)")
FILE_NAME = re.compile(r"^[\w.-]+\.(?:py|sql|md|yaml|yml|json|cfg|conf|toml|txt|sh|http|png)$")
VARIABLE_NAME = re.compile(r"(?<![\w$])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?![\w(])")
ASSIGNED = re.compile(r"(?<![\w$])([A-Z][A-Z0-9_]*)=")
SQL_NAME = re.compile(r"\b(api|app)\.([a-z_][a-z0-9_]*)\b")
ROUTE = re.compile(r"\b(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (/[^\s`?)\],;]*)")  # a comma ends the path


def code(document: Path) -> list[str]:
    """Inline code and fenced blocks: where a document names things."""
    return inline_code(document) + [block.text for block in blocks(document)]


def named_paths(document: Path) -> set[str]:
    """Paths into the checkout (`scripts/run`, `db/private/`, `handlers/page.*`)."""
    found = set()
    for text in code(document):
        for path in PATH_LIKE.findall(text):
            if path.split("/")[0] in PROJECT_ROOTS:
                found.add(path.rstrip(".,;:"))
    return found


def path_exists(path: str) -> bool:
    pattern = re.sub(r"<[^>]*>", "*", path).rstrip("/")
    return any(ROOT.glob(pattern)) if "*" in pattern else (ROOT / pattern).exists()


def named_files(document: Path) -> set[str]:
    """Files named alone (`test_http.py`, `servers.json`): some file of the checkout's."""
    return {text for text in inline_code(document) if FILE_NAME.match(text) and "/" not in text}


def named_tests(document: Path) -> set[str]:
    """Test functions named alone (`test_frames_that_arrive_while_the_store_is_busy_are_not_lost`)."""
    return {text for text in inline_code(document) if re.fullmatch(r"test_\w+", text)}


def project_tests() -> set[str]:
    """Every test function of tests/."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "tests").rglob("test_*.py"))
    return set(re.findall(r"^(?:async )?def (test_\w+)", text, re.MULTILINE))


def project_files() -> set[str]:
    names = set()
    for root in PROJECT_ROOTS:
        top = ROOT / root
        names |= {top.name} | ({path.name for path in top.rglob("*") if "__pycache__" not in path.parts})
    return names


def named_variables(document: Path) -> set[str]:
    """`MAX_UPLOAD_MB`, `PGPORT`, `LOG_FORMAT=json`: environment variables, or names in capitals."""
    found = {text for text in inline_code(document) if re.fullmatch(r"[A-Z][A-Z0-9]+", text)}
    for text in code(document):
        found |= set(VARIABLE_NAME.findall(text)) | set(ASSIGNED.findall(text))
    return {name for name in found if not re.fullmatch(r"PT\d{3}", name)}  # SQLSTATEs


def named_sql(document: Path) -> set[tuple[str, str]]:
    """(schema, name) of every `api.` and `app.` object named, files and modules aside."""
    text = document.read_text(encoding="utf-8")
    return {(schema, name) for schema, name in SQL_NAME.findall(text) if name not in {"py", "md", "sql"}}


def named_routes(document: Path) -> set[tuple[str, str]]:
    text = document.read_text(encoding="utf-8")
    return {(method.lower(), path.rstrip(".:") or "/") for method, path in ROUTE.findall(text)}  # a sentence's end


def table_after(document: Path, heading: str) -> list[list[str]]:
    """The cells of each row of the first table under a heading (its head left out)."""
    lines = prose(document).split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[2:]


# --- the examples -------------------------------------------------------------------

PROMPT = re.compile(
    r"^(?:(?P<shell>\$)|(?P<database>\w+)(?P<mode>[=-])(?P<transaction>[*!]?)(?P<role>[>#])) (?P<rest>.*)$"
)


@dataclass
class Step:
    """A command of an example, and what the document shows it print."""

    document: Path
    line: int
    prompt: str  # "$", or psql's ("mp3=>", "mp3=#", "mp3=*>"...)
    command: str
    expected: list[str] = field(default_factory=list)

    @property
    def is_shell(self) -> bool:
        return self.prompt == "$"

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def steps(document: Path) -> list[Step]:
    found: list[Step] = []
    for block in blocks(document):
        if block.info != "console":
            continue
        lines = block.text.splitlines()
        index = 0
        while index < len(lines):
            line, number = lines[index], block.line + 1 + index
            index += 1
            prompt = PROMPT.match(line)
            if (prompt is None or prompt["mode"] == "-") and not found:
                raise ValueError(f"{document.name}:{number}: output before any command")
            if prompt is None:
                found[-1].expected.append(line)
            elif prompt["shell"]:
                command = prompt["rest"]
                while command.endswith("\\") and index < len(lines):
                    command += "\n" + lines[index]
                    index += 1
                found.append(Step(document, number, "$", command))
            elif prompt["mode"] == "-":  # psql's prompt for a statement's next line
                found[-1].command += "\n" + prompt["rest"]
            else:
                found.append(Step(document, number, line[: prompt.start("rest") - 1], prompt["rest"]))
    return found


def opens_psql_session(command: str) -> bool:
    """`psql URL` alone: an interactive session, whose statements follow as `mp3=>` lines."""
    return command.startswith("psql ") and not re.search(r"\s-[cfAt]|[|<>]", command)


# What changes from run to run, by kind: the pattern of what may be printed in its place.
PATTERN_OF = {
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "digest": r"[0-9a-f]{64}",
    "cursor": r"[\w-]{32}",
    "time": r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d(?::\d\d)?)?",
    "date": r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT",
}
# Tried left to right at each place of a line the document shows.
CHANGING = re.compile(
    r"(?P<uuid>(?!0{8}-0{4}-0{4}-0{4}-0{12})[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"|(?P<digest>(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f]))"
    rf"|(?P<time>{PATTERN_OF['time']})"
    rf"|(?P<date>{PATTERN_OF['date']})"
    r"|(?P<cursor>(?<![\w-])(?=[\w-]*[A-Za-z])(?=[\w-]*\d)[\w-]{32}(?![\w-]))"
    r"|(?P<elided>…)"
    r"|(?P<spaces> +)"  # psql's columns are as wide as their widest value
    r"|(?P<rule>-{2,})"
)
BOUND = {"uuid", "digest", "cursor"}  # stands for the same value wherever it appears again


def printed(text: str) -> list[str]:
    """Lines as a terminal shows them: no carriage returns, no trailing spaces,
    no blank lines before or after."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


@dataclass
class Stage:
    """What the examples run with, standing in for what the document assumes."""

    workdir: Path  # the reader's clone: files are made here; .pgdata is a link to the cluster's
    ports: dict[int, int]  # a port the document names -> the one used here
    env: dict[str, str]


class PsqlSession:
    """psql reading statements from a pipe, as it reads them from a person; each
    statement's output is read up to a marker echoed after it, on both streams."""

    def __init__(self, command: str, stage: Stage) -> None:
        self.marker = f"__example_{uuid.uuid4().hex}__"
        self.process = subprocess.Popen(
            ["bash", "-c", "exec " + command],
            cwd=stage.workdir,
            env=stage.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        # Each holds its stream's lines in order, then None at its end: one reader thread
        # per stream puts, run() takes, so neither pipe can fill while the other is read.
        self.lines: tuple[queue.Queue[str | None], queue.Queue[str | None]] = (queue.Queue(), queue.Queue())
        for stream, lines in zip((self.process.stderr, self.process.stdout), self.lines, strict=True):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream: IO[str], lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def run(self, statement: str, seconds: float = 60) -> str:
        """What psql prints for the statement: its messages (stderr), then its results."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{statement}\n\\warn {self.marker}\n\\echo {self.marker}\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + seconds
        parts: list[str] = []
        for lines in self.lines:
            part: list[str] = []
            while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) != self.marker + "\n":
                if line is None:
                    raise RuntimeError("psql ended: " + "".join(parts + part))
                part.append(line)
            parts += part
        return "".join(parts)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ExampleRun:
    """A document's examples, run in order on one stage; ``failures`` says where
    the document and what was printed part, with the output to put there."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.bindings: dict[str, str] = {}  # a value the document shows -> the one printed here
        self.session: PsqlSession | None = None
        self.superuser = False
        self.services: list[subprocess.Popen[bytes]] = []
        self.failures: list[str] = []

    # --- what the document says, in this stage's terms, and back

    def ported(self, text: str) -> str:
        for documented, real in self.stage.ports.items():
            text = re.sub(rf"(?<=[:=]){documented}\b", str(real), text)
        return text

    def here(self, text: str) -> str:
        text = self.ported(text)
        for documented, real in self.bindings.items():
            text = text.replace(documented, real)
        return text

    def as_documented(self, text: str) -> str:
        for shown, printed_here in self.bindings.items():
            text = text.replace(printed_here, shown)
        for documented_port, port in self.stage.ports.items():
            text = re.sub(rf"(?<=[:=]){port}\b", str(documented_port), text)
        return text

    def command(self, step: Step) -> str:
        return re.sub(r"(?<![\w./-])scripts/", f"{ROOT}/scripts/", self.here(step.command))

    # --- running

    def run(self, steps: list[Step]) -> None:
        for step in steps:
            try:
                self.step(step)
            except (RuntimeError, queue.Empty, subprocess.TimeoutExpired) as error:
                self.failures.append(f"{step.where}: {step.prompt} {step.command}\n  did not finish: {error!r}")

    def step(self, step: Step) -> None:
        command = self.command(step)
        if not step.is_shell:
            self.psql_statement(step, command)
        elif background := re.fullmatch(r"(.*)&\s*(?:#.*)?", command, flags=re.DOTALL):
            ports = [int(port) for port in re.findall(r"PORT=(\d+)", step.command)] or [8080]
            self.start_service(background[1], ports)
        elif opens_psql_session(step.command):
            self.open_session(step, command)
        else:
            self.compare(step, self.shell(command))

    def shell(self, command: str, seconds: float = 120) -> str:
        """What the command prints; whatever it left running is ended with it (its own
        process group), so a command that starts something it does not wait for leaks nothing."""
        shell = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.stage.workdir,
            env=self.stage.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = shell.communicate(timeout=seconds)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
        return output.decode(errors="replace")

    def open_session(self, step: Step, command: str) -> None:
        if self.session is not None:
            self.session.close()
        self.session = PsqlSession(command, self.stage)
        # Hidden from the document: whether its prompt (=> or =#) is the one psql shows.
        self.superuser = self.session.run(r"SELECT current_setting('is_superuser') AS superuser \gset") == "" and (
            self.session.run(r"\echo :superuser").strip() == "on"
        )
        if step.expected:
            self.failures.append(f"{step.where}: psql's greeting is not compared; show nothing after `$ psql`")

    def psql_statement(self, step: Step, statement: str) -> None:
        if self.session is None:
            self.failures.append(f"{step.where}: {step.prompt} with no `$ psql URL` before it")
            return
        if not (statement.rstrip().endswith(";") or re.search(r"(^|\s)\\\w", statement)):
            self.failures.append(f"{step.where}: a statement psql would wait to see the end of (no ';')")
            return
        if step.prompt.endswith("#") != self.superuser:
            ending = "#" if self.superuser else ">"
            self.failures.append(f"{step.where}: psql's prompt for this role ends with {ending}")
        self.compare(step, self.session.run(statement))

    def start_service(self, command: str, documented_ports: list[int]) -> None:
        """A service started in the background (`scripts/run &`), ready once it answers
        /health on the ports the document gives it."""
        log = (self.stage.workdir / f"service-{len(self.services)}.log").open("ab")
        service = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.stage.workdir,
            env=self.stage.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.services.append(service)
        for port in documented_ports:
            wait_for_health(self.stage.ports.get(port, port), service)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        for service in self.services:
            if service.poll() is None:
                os.killpg(service.pid, signal.SIGTERM)
            service.wait(timeout=60)

    # --- comparing

    def compare(self, step: Step, output: str) -> None:
        expected = [self.ported(line) for line in step.expected]
        pattern, names = self.pattern(printed("\n".join(expected)))
        actual = printed(output)
        match = pattern.fullmatch("".join(line + "\n" for line in actual))
        if match is not None:
            for name, documented in names.items():
                value = match[name]
                taken = [doc for doc, real in self.bindings.items() if real == value and doc != documented]
                if taken:
                    self.failures.append(f"{step.where}: {documented} and {taken[0]} are the same value here")
                self.bindings[documented] = value
            return
        shown = "\n".join(self.as_documented(line) for line in actual)
        self.failures.append(
            f"{step.where}: {step.prompt} {step.command}\n--- the document shows:\n"
            + "\n".join(step.expected)
            + f"\n--- it printed:\n{shown}"
        )

    def pattern(self, lines: list[str]) -> tuple[re.Pattern[str], dict[str, str]]:
        """A regular expression for these lines, and which of its groups stands for which value."""
        parts: list[str] = []
        groups: dict[str, str] = {}  # a value the document shows -> its group's name
        for line in lines:
            if line.strip() == "…":
                parts.append(r"(?:[^\n]*\n)*?")
                continue
            part, place = "", 0
            for found in CHANGING.finditer(line):
                part += re.escape(line[place : found.start()])
                place = found.end()
                kind, value = found.lastgroup, found[0]
                if kind == "elided":
                    part += r"[^\n]*?"
                elif kind == "spaces":
                    part += " +"
                elif kind == "rule":
                    part += "-+"
                elif kind not in BOUND:
                    part += PATTERN_OF[str(kind)]
                elif value in self.bindings:
                    part += re.escape(self.bindings[value])
                elif value in groups:
                    part += f"(?P={groups[value]})"
                else:
                    groups[value] = f"value{len(groups)}"
                    part += f"(?P<{groups[value]}>{PATTERN_OF[str(kind)]})"
            parts.append(part + re.escape(line[place:]) + r"\n")
        return re.compile("".join(parts)), {name: value for value, name in groups.items()}


def wait_for_health(port: int, service: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"the service for port {port} ended ({service.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)  # polled: a starting service offers nothing to wait on
    raise RuntimeError(f"no service answered /health on port {port} within {seconds:g} s")


def examples(documents: list[Path] = DOCUMENTS) -> Iterator[Path]:
    """The documents that have examples to run."""
    return (document for document in documents if any(block.info == "console" for block in blocks(document)))

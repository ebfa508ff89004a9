"""The one error tree.

::

    LocalmeshError                 a user-facing failure: printed as one line + hint, exit code
    ├── ConfigError                mesh.yaml or compose input is wrong (exit 2); carries positions
    ├── ComposeError               Compose itself failed or is missing (exit 2)
    ├── DockerError                no engine, build failure, port taken (exit 3)
    ├── CAError                    CA missing, key permissions too open (exit 2)
    └── RuntimeStartError          the runtime could not start (bind failed, ...) (exit 3)

Anything that is not a ``LocalmeshError`` is a bug: the CLI shows its traceback
only with ``--debug``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a source file, 1-based like every editor."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input file: where, what, and how to fix it."""

    message: str
    position: Position | None = None
    key: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.position}: " if self.position else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.message}{hint}"

    def as_dict(self) -> dict[str, object]:
        pos = self.position
        return {
            "file": pos.file if pos else None,
            "line": pos.line if pos else None,
            "column": pos.column if pos else None,
            "key": self.key,
            "message": self.message,
            "hint": self.hint,
        }


class LocalmeshError(Exception):
    """Base of every error a user can cause; the CLI prints it without a traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(LocalmeshError):
    """mesh.yaml (or a compose file) is invalid; holds every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem, hint: str | None = None) -> None:
        self.problems: list[Problem] = problems if isinstance(problems, list) else [problems]
        first = self.problems[0]
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{first}{more}", hint)


class ComposeError(LocalmeshError):
    """Docker Compose rejected the project or could not be run."""


class DockerError(LocalmeshError):
    """The Docker engine is unreachable or refused an operation."""

    exit_code = 3


class CAError(LocalmeshError):
    """The local certificate authority is missing, unreadable or unsafe."""


class RuntimeStartError(LocalmeshError):
    """The runtime could not start serving (a port is taken, no usable snapshot).

    ``position``: where the input declares what failed (a port's ``listen:``), so a
    rejected reload points at the line to change like a config error does.
    """

    exit_code = 3

    def __init__(
        self, message: str, hint: str | None = None, position: Position | None = None
    ) -> None:
        super().__init__(message, hint)
        self.position = position


class NotRunningError(LocalmeshError):
    """No mesh answers where a client command (status, config, logs) looked for one."""

    exit_code = 3


@dataclass(frozen=True, slots=True)
class Finding:
    """A non-fatal observation (analyze, generate): printed, never fails the command."""

    code: str
    message: str
    position: Position | None = None

    def __str__(self) -> str:
        where = f"{self.position}: " if self.position else ""
        return f"{where}{self.message} [{self.code}]"

    def as_dict(self) -> dict[str, object]:
        """The JSON form (analyze --json, the plan's warnings)."""
        pos = self.position
        return {
            "code": self.code,
            "message": self.message,
            "file": pos.file if pos else None,
            "line": pos.line if pos else None,
            "column": pos.column if pos else None,
        }

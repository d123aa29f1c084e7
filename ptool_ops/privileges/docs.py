"""The model as the table docs/privileges.md holds (a test keeps the two equal)."""

from __future__ import annotations

from pathlib import Path

from ptool_ops.privileges.duties import DUTIES, NEEDS
from ptool_ops.privileges.model import (
    DATABASE_GRANTS,
    MEMBERSHIPS,
    PLATFORM_MEMBERSHIPS,
    PLATFORM_ROLES,
    STACK_ROLES,
)


def markdown_table() -> str:
    """role → who uses it → privileges → commands → why (docs/privileges.md holds it)."""
    lines = [
        "| role | made by | who uses it | privileges | commands that use it | why |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    grants = {g.role: g for g in DATABASE_GRANTS}
    for r in (*PLATFORM_ROLES, *STACK_ROLES):
        privileges = ["LOGIN" if r.login else "NOLOGIN", *r.attributes]
        privileges += [
            f"member of {m.group}" + (" (admin)" if m.admin else "")
            for m in (*PLATFORM_MEMBERSHIPS, *MEMBERSHIPS)
            if m.member == r.name
        ]
        if r.name in grants:
            privileges.append(f"{', '.join(grants[r.name].privileges)} on database booking")
        commands = [c for d in DUTIES.values() if d.role == r.name for c in d.commands]
        made = "Neon (local up mirrors it)" if r.provider == "platform" else "Pulumi / local up"
        lines.append(
            f"| `{r.name}` | {made} | {r.who} | {', '.join(privileges)} |"
            f" {', '.join(f'`{c}`' for c in commands) or '-'} | {r.why or '-'} |"
        )
    lines += [
        "",
        "| command | runs as | needs | why |",
        "| --- | --- | --- | --- |",
    ]
    for d in DUTIES.values():
        for n, name in enumerate(d.needs):
            need = NEEDS[name]
            first = n == 0
            lines.append(
                f"| {', '.join(f'`{c}`' for c in d.commands) if first else ''} |"
                f" {f'`{d.role}`' if first else ''} | {need.what} | {need.why} |"
            )
    return "\n".join(lines) + "\n"


TABLE_BEGIN = (
    "<!-- privilege model table: generated, python -m ptool_ops.privileges --docs FILE -->"
)
TABLE_END = "<!-- end of the privilege model table -->"


def write_table(path: Path) -> bool:
    """Put :func:`markdown_table` between the markers of ``path``; whether it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if start < 0 or end < 0:
        raise ValueError(f"{path} has no privilege-model table markers")
    new = text[: start + len(TABLE_BEGIN)] + "\n\n" + markdown_table() + "\n" + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text

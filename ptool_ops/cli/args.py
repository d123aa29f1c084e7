"""Global options wherever operators type them (kept free of heavy imports: the console
script reads it before it decides which command tree to load)."""

from __future__ import annotations

# options of the root callback that may also stand after the command
VALUE_OPTIONS = {"--env", "-e", "--output", "-o"}
FLAG_OPTIONS = {"--yes", "-y", "--dry-run", "--verbose", "-v", "-vv", "--debug"}


def split_global_options(args: list[str]) -> tuple[list[str], list[str]]:
    """(global options, the rest): global options found anywhere before ``--``."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if arg in FLAG_OPTIONS or (name in VALUE_OPTIONS and "=" in arg):
            front.append(arg)
        elif arg in VALUE_OPTIONS and i + 1 < len(args):
            front.extend(args[i : i + 2])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front, rest


def hoist_global_options(args: list[str]) -> list[str]:
    """Move global options found after the command to the front, where Click parses them."""
    front, rest = split_global_options(args)
    return front + rest


def global_value(front: list[str], *names: str) -> str | None:
    """The value of the last of ``names`` among hoisted global options."""
    found = None
    for i, arg in enumerate(front):
        key, _, value = arg.partition("=")
        if key in names:
            found = value if value else (front[i + 1] if i + 1 < len(front) else None)
    return found

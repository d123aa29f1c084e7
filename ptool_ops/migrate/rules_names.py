"""``identifier-too-long``: names over 63 bytes, found with PostgreSQL's own lexer.

The server truncates an identifier to NAMEDATALEN - 1 bytes (never inside a UTF-8 character)
in the lexer, with only a NOTICE, so every identifier token counts, wherever it stands; the
text of string literals and function bodies does not.
"""

from __future__ import annotations

from ptool_ops.migrate.rules import RULES, Finding

__all__ = ["MAX_IDENTIFIER_BYTES", "identifier_findings", "long_identifiers"]

#: NAMEDATALEN - 1: PostgreSQL truncates longer identifiers to this many bytes
MAX_IDENTIFIER_BYTES = 63


def _identifier_text(raw: str, kind: str) -> str:
    """What PostgreSQL makes of an identifier token: quotes removed, unquoted names
    down-cased (ASCII letters only, as ``downcase_identifier`` does for UTF-8)."""
    if kind == "UIDENT":  # U&"..." (escapes left as written: close enough for a length)
        return raw[3:-1].replace('""', '"')
    if raw.startswith('"'):
        return raw[1:-1].replace('""', '"')
    return raw.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))


def long_identifiers(text: str) -> list[tuple[int, str, str]]:
    """(offset, identifier, truncated) of each distinct identifier over 63 bytes, found with
    PostgreSQL's lexer (which is where the server truncates them); [] if it fails."""
    from pglast.parser import scan

    try:
        tokens = scan(text)
    except Exception:  # the lexer failed: the parser reports the syntax error
        return []
    seen: set[str] = set()
    out: list[tuple[int, str, str]] = []
    for token in tokens:
        if token.name not in ("IDENT", "UIDENT"):
            continue
        name = _identifier_text(text[token.start : token.end + 1], token.name)
        encoded = name.encode("utf-8")
        if len(encoded) <= MAX_IDENTIFIER_BYTES or name in seen:
            continue
        seen.add(name)
        truncated = encoded[:MAX_IDENTIFIER_BYTES].decode("utf-8", errors="ignore")
        out.append((token.start, name, truncated))
    return out


def identifier_findings(text: str, path: str) -> list[Finding]:
    import bisect

    spec = RULES["identifier-too-long"]
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    by_truncation: dict[str, str] = {}
    findings = []
    for offset, name, truncated in long_identifiers(text):
        row = bisect.bisect_right(starts, offset) - 1
        size = len(name.encode("utf-8"))
        message = (
            f"identifier {name!r} is {size} bytes, over {MAX_IDENTIFIER_BYTES}: PostgreSQL"
            f" truncates it to {truncated!r}"
        )
        other = by_truncation.setdefault(truncated, name)
        if other != name:
            message += f", the same name as {other!r}"
        findings.append(
            Finding(
                spec.id, spec.severity, path, row + 1, offset - starts[row] + 1, message, spec.fix
            )
        )
    return findings

"""``ptool-ops report --html FILE``: one self-contained page of an environment's evidence --
backups over time, the point-in-time window per timeline with its gaps, restore drills with
their RTO against the target, secret ages, the audit chain's state.

No network, no script: inline CSS and SVG only, so the page opens anywhere (an auditor's
laptop, a CI artifact) as it was written. Every text from the environment is escaped."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import PtoolError

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#1d2430}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccd}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
td,th{padding:.25rem .5rem;border-bottom:1px solid #e4e6ee;text-align:left}
.ok{color:#17803d}.bad{color:#b42318}.dim{color:#667}
svg{background:#f7f8fb;border:1px solid #e4e6ee;margin:.5rem 0}
"""


@dataclass
class Section:
    id: str
    title: str
    body: str
    problems: list[str] = field(default_factory=list)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(values: list[tuple[str, float]], unit: str, limit: float | None = None) -> str:
    """A bar per value (label under it), a dashed line at ``limit``."""
    if not values:
        return '<p class="dim">nothing recorded yet</p>'
    width, height, pad = max(320, 48 * len(values)), 180, 28
    top = max([v for _, v in values] + ([limit] if limit else [])) or 1.0
    step = (width - 2 * pad) / len(values)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}"'
        f' role="img" aria-label="{_e(unit)}">'
    ]
    for n, (label, value) in enumerate(values):
        h = (height - pad) * value / top
        x = pad + n * step
        over = limit is not None and value > limit
        colour = "#b42318" if over else "#3b6fd8"
        parts.append(
            f'<rect x="{x + 4:.1f}" y="{height - h:.1f}" width="{max(step - 8, 2):.1f}"'
            f' height="{h:.1f}" fill="{colour}"><title>{_e(label)}: {value:g} {_e(unit)}'
            "</title></rect>"
        )
        parts.append(
            f'<text x="{x + step / 2:.1f}" y="{height + 14}" font-size="9" text-anchor="middle">'
            f"{_e(label[-10:])}</text>"
        )
    if limit is not None:
        y = height - (height - pad) * limit / top
        parts.append(
            f'<line x1="{pad}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#b42318"'
            f' stroke-dasharray="4 3"/><text x="{width - pad}" y="{y - 4:.1f}" font-size="10"'
            f' text-anchor="end">target {limit:g} {_e(unit)}</text>'
        )
    parts.append(f'<text x="4" y="12" font-size="10">{top:g} {_e(unit)}</text></svg>')
    return "".join(parts)


def _backups(env: Environment, now: datetime) -> Section:
    from ptool_ops.backup import listing
    from ptool_ops.status_checks import backup_age_of

    rows = listing.summaries(env.repository(), must_exist=False)
    table = _table(
        ["backup", "finished", "status", "stored MiB", "verified"],
        [
            [
                r.id,
                r.finished_at.isoformat(timespec="seconds") if r.finished_at else "-",
                r.status,
                f"{(r.stored_bytes or 0) / 2**20:.1f}",
                r.verified_at or "-",
            ]
            for r in rows
        ],
    )
    chart = _bars([(r.id, round((r.stored_bytes or 0) / 2**20, 2)) for r in rows], "MiB")
    # the same threshold as 'status' holds it to
    age = backup_age_of(rows, env.settings.status_backup_max_age_h, now)
    return Section("backups", "Backups over time", chart + table, [] if age.ok else [age.detail])


def _window(env: Environment, now: datetime) -> Section:
    from ptool_ops.pitr.window import window

    if env.kind == "neon":
        return Section("pitr", "Point-in-time window", "<p>Neon keeps the history (branches).</p>")
    found = window(env.repository())
    rows = [
        [
            t.timeline,
            t.earliest_time or "no base backup",
            t.newest_archived_at or "-",
            t.segments,
            "; ".join(g.describe() for g in t.gaps) or "none",
        ]
        for t in found.timelines
    ]
    width = 640
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{30 * len(rows) + 10}">'
    ]
    for n, t in enumerate(found.timelines):
        y = 10 + 30 * n
        colour = "#3b6fd8" if t.earliest_time else "#98a2b3"
        svg.append(
            f'<rect x="80" y="{y}" width="{width - 100}" height="16" fill="{colour}"><title>'
            f"timeline {t.timeline}</title></rect>"
            f'<text x="4" y="{y + 12}" font-size="11">timeline {t.timeline}</text>'
        )
        for k, gap in enumerate(t.gaps[:20]):
            svg.append(
                f'<rect x="{90 + k * 14}" y="{y}" width="8" height="16" fill="#b42318">'
                f"<title>{_e(gap.describe())}</title></rect>"
            )
    svg.append("</svg>")
    body = "".join(svg) + _table(["timeline", "from", "to (newest WAL)", "segments", "gaps"], rows)
    if found.newest_wal_age_s is not None:
        body += f"<p>Newest WAL archived {found.newest_wal_age_s:.0f} s ago (the RPO now).</p>"
    return Section("pitr", "Point-in-time window", body, found.problems())


def _drills(env: Environment, now: datetime) -> Section:
    from ptool_ops import drill
    from ptool_ops.status_checks import drill_age_of

    found = drill.history(env.repository())
    target = env.settings.drill_rto_target_s
    bars = [
        (
            f"{str(d['started_at'])[5:10]} {'pitr' if p['kind'] != 'logical' else 'log'}",
            float(p["rto_s"]),
        )
        for d in found
        for p in d.get("parts", [])
        if p.get("rto_s") is not None
    ]
    table = _table(
        ["drill", "started", "passed", "RTO", "RPO"],
        [
            [
                d["id"],
                d["started_at"],
                "yes" if d.get("ok") else "NO",
                drill.rto_text(d),
                f"{d['rpo_s']:.0f} s" if d.get("rpo_s") is not None else "-",
            ]
            for d in found
        ],
    )
    passed = [d for d in found if d["ok"]]
    newest = passed[-1] if passed else None
    # with none passed, every drill found failed
    age = drill_age_of(newest, len(found), env.settings.status_drill_max_age_days, now)
    problems = [] if age.ok else [age.detail]
    return Section(
        "drills",
        "Restore drills (RTO against the target)",
        _bars(bars, "s", target) + table,
        problems,
    )


def _secrets(env: Environment, now: datetime) -> Section:
    from ptool_ops.secrets.status import status

    found = status(env)
    rows = [
        [
            s.name,
            s.kind,
            s.current_role or "-",
            f"{s.age_days:.1f}" if s.age_days is not None else "-",
            f"{s.max_age_days:g}",
            "; ".join(s.problems) or "ok",
        ]
        for s in found
    ]
    bars = [(s.name, s.age_days) for s in found if s.age_days is not None]
    limit = env.settings.secret_max_age_days
    body = _bars([(n, float(a)) for n, a in bars], "days", limit) + _table(
        ["secret", "kind", "in use", "age (days)", "rotate after", "state"], rows
    )
    return Section("secrets", "Managed secrets", body, [p for s in found for p in s.problems])


def _audit(env: Environment, now: datetime) -> Section:
    from ptool_ops import audit

    trail = env.audit_trail
    result = audit.verify(trail)
    anchored = (
        f" Anchored in the database up to event {result.anchored} ({_e(result.anchored_at)})."
        if result.anchored is not None
        else f" Not anchored: {_e(result.unanchored)}"
        if result.unanchored
        else ""
    )
    state = (
        f'<p class="ok">{result.events} events, hash chain intact.{anchored}</p>'
        if result.ok
        else f'<p class="bad">chain broken at event {result.first_bad}: {_e(result.reason)}</p>'
    )
    recent = []
    for event in trail.events(newest_first=True):
        recent.append(event)
        if len(recent) == 15:
            break
    table = _table(
        ["seq", "at", "actor", "action", "outcome"],
        [
            [
                str(r.get("seq")),
                r.get("at", ""),
                r.get("actor", ""),
                r.get("action", "?"),
                r.get("outcome", r.get("unreadable", "?")),
            ]
            for r in recent
        ],
    )
    problems = [] if result.ok else [f"audit chain broken at event {result.first_bad}"]
    return Section("audit", "Audit trail", state + table, problems)


def build(env: Environment, *, now: datetime | None = None) -> tuple[str, list[Section]]:
    """The page and its sections; a section that cannot be read says why in its place."""
    moment = now or datetime.now(UTC)
    sections: list[Section] = []
    for make, sid, title in (
        (_backups, "backups", "Backups over time"),
        (_window, "pitr", "Point-in-time window"),
        (_drills, "drills", "Restore drills"),
        (_secrets, "secrets", "Managed secrets"),
        (_audit, "audit", "Audit trail"),
    ):
        try:
            sections.append(make(env, moment))
        except PtoolError as err:
            sections.append(
                Section(sid, title, f'<p class="bad">{_e(err.message)}</p>', [err.message])
            )
    problems = [p for s in sections for p in s.problems]
    verdict = (
        '<p class="ok">Nothing needs attention.</p>'
        if not problems
        else "<ul>" + "".join(f'<li class="bad">{_e(p)}</li>' for p in problems) + "</ul>"
    )
    body = "".join(
        f'<section id="{s.id}"><h2>{_e(s.title)}</h2>{s.body}</section>' for s in sections
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>ptool-ops report: {_e(env.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>ptool-ops report: {_e(env.name)} ({_e(env.kind)})</h1>"
        f'<p class="dim">generated {_e(moment.isoformat(timespec="seconds"))}</p>'
        f'<section id="summary"><h2>Summary</h2>{verdict}</section>{body}</body></html>\n'
    )
    return page, sections


def summary(sections: list[Section]) -> dict[str, Any]:
    return {s.id: {"title": s.title, "problems": s.problems} for s in sections}

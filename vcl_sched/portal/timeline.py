"""The lab's timeline as a picture (SVG, drawn on the server): per hour of the coming days, the cores reserved
by class sessions, the cores best-effort VMs hold, and the free cores of the pool."""

from __future__ import annotations

from datetime import timedelta
from xml.sax.saxutils import escape

from .queries import Profile

WIDTH, HEIGHT = 960, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 16, 40
COLOURS = {"reserved": "#c0392b", "best_effort": "#2e86c1", "free": "#d5f5e3"}


def _y(value: float, scale: float) -> float:
    return round(HEIGHT - BOTTOM - value * scale, 1)


def svg(p: Profile) -> str:
    """The picture: stacked bars per hour (reserved at the bottom, best effort above it, free up to the pool's
    cores); a line at the pool's size; the days and hours on the x axis, the cores on the y axis."""
    top = max([*p.capacity, *(r + b for r, b in zip(p.reserved, p.best_effort, strict=True)), 1])
    scale = (HEIGHT - TOP - BOTTOM) / top
    step = (WIDTH - LEFT - RIGHT) / max(p.hours, 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
           ' role="img" aria-labelledby="tl-title" font-family="sans-serif" font-size="11">',
           f'<title id="tl-title">Cores per hour from {escape(p.start.strftime("%Y-%m-%d %H:%M"))} for {p.hours}'
           ' hours: reserved, best effort and free</title>']
    for h in range(p.hours):
        x = round(LEFT + h * step, 1)
        w = round(max(step - 0.5, 0.5), 1)
        reserved, best, cap = p.reserved[h], p.best_effort[h], p.capacity[h]
        free = max(cap - reserved - best, 0)
        base = 0
        for kind, value in (("reserved", reserved), ("best_effort", best), ("free", free)):
            if value:
                y = _y(base + value, scale)
                height = round(value * scale, 1)
                out.append(f'<rect class="{kind}" x="{x}" y="{y}" width="{w}" height="{height}"'
                           f' fill="{COLOURS[kind]}"><title>'
                           f'{escape((p.start + timedelta(hours=h)).strftime("%a %H:00"))}: {value} core(s)'
                           f' {kind.replace("_", " ")}</title></rect>')
            base += value
    cap_y = _y(max(p.capacity) if p.capacity else 0, scale)
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{cap_y}" y2="{cap_y}" stroke="#145a32"'
               ' stroke-dasharray="4 3"/>')
    out.append(f'<text x="{LEFT - 4}" y="{cap_y + 4}" text-anchor="end">{max(p.capacity) if p.capacity else 0}</text>')
    out.append(f'<text x="{LEFT - 4}" y="{HEIGHT - BOTTOM + 4}" text-anchor="end">0</text>')
    axis_y = HEIGHT - BOTTOM
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>')
    for h in range(0, p.hours + 1):
        moment = p.start + timedelta(hours=h)
        x = round(LEFT + h * step, 1)
        if moment.hour == 0 or h == 0:
            out.append(f'<line x1="{x}" x2="{x}" y1="{TOP}" y2="{axis_y + 6}" stroke="#555"/>')
            out.append(f'<text x="{x + 2}" y="{axis_y + 28}">{escape(moment.strftime("%a %d %b"))}</text>')
        elif moment.hour % 6 == 0:
            out.append(f'<text x="{x}" y="{axis_y + 14}" text-anchor="middle">{moment.hour:02d}</text>')
    legend_x = WIDTH - RIGHT - 300
    for i, (kind, label) in enumerate((("reserved", "reserved"), ("best_effort", "best effort"), ("free", "free"))):
        out.append(f'<rect x="{legend_x + i * 100}" y="2" width="10" height="10" fill="{COLOURS[kind]}"/>'
                   f'<text x="{legend_x + i * 100 + 14}" y="11">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)

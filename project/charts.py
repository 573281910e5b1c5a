"""Line charts as inline SVG, rendered on the server: a time axis, a value axis with its unit,
gridlines and a legend, readable without JavaScript and without a charting library.

Every chart of the operations page shares one time window, so their x axes line up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 480, 240
LEFT, RIGHT, TOP, BOTTOM = 62, 12, 32, 36  # room for the value labels, the legend, the times
# Colour-blind-safe (Okabe-Ito), each at least 3:1 against white for lines and marks.
COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7")


@dataclass(frozen=True)
class Series:
    name: str
    points: list[tuple[float, float]]  # (unix time, value)
    dashed: bool = False


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value`` (0 -> 1)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def format_value(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


def line_chart(
    *, title: str, unit: str, series: list[Series], now: float, window_s: int = 300
) -> SafeString:
    """One SVG chart: ``window_s`` seconds up to ``now`` on x, 0 to a round maximum on y."""
    start = now - window_s
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    visible = [[(t, v) for t, v in s.points if start <= t <= now] for s in series]
    top = nice_ceiling(max((v for points in visible for _, v in points), default=0))

    def x(t: float) -> float:
        return LEFT + (t - start) / window_s * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - v / top * plot_h

    label = f"{title}, {unit}, last {window_s // 60} minutes"
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="14" font-family="system-ui, sans-serif">',
        f"<title>{escape(label)}</title>",
    ]
    for i in range(5):  # value axis: 0, a quarter, ... the maximum
        value = top * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="{"#1b1d21" if i == 0 else "#d5d8dd"}"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" fill="#1b1d21">'
            f"{format_value(value)}</text>"
        )
    parts.append(
        f'<text x="14" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" fill="#1b1d21" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2:.0f})">{escape(unit)}</text>'
    )
    for minutes in range(window_s // 60 + 1):  # time axis: a tick a minute, "now" at the right
        t = start + minutes * 60
        text = "now" if minutes == window_s // 60 else f"-{window_s // 60 - minutes} min"
        parts.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 5}" '
            f'stroke="#1b1d21"/><text x="{x(t):.1f}" y="{TOP + plot_h + 18}" '
            f'text-anchor="{"end" if text == "now" else "middle"}" fill="#1b1d21">{text}</text>'
        )
    legend_x = LEFT
    for index, (s, points) in enumerate(zip(series, visible, strict=True)):
        colour = COLOURS[index % len(COLOURS)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        if len(points) == 1:
            ((t, v),) = points
            parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
        elif points:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in sorted(points))
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{path}"/>'
            )
        parts.append(
            f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="13" y2="13" stroke="{colour}" '
            f'stroke-width="3"{dash}/><text x="{legend_x + 28}" y="18" fill="#1b1d21">'
            f"{escape(s.name)}</text>"
        )
        legend_x += 44 + 8 * len(s.name)
    if not any(visible):
        parts.append(
            f'<text x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" '
            f'fill="#4a4f57">no data in the last {window_s // 60} minutes</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text in it went through escape()

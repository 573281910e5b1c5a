"""The operations page's server-side SVG charts: axes with a unit, a legend, one time window."""

import re

import pytest

from project.charts import Series, format_value, line_chart, nice_ceiling


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (0.003, 0.005), (0.9, 1), (1.2, 2), (2.1, 2.5), (7, 10), (4200, 5000)],
)
def test_the_value_axis_ends_at_a_round_number(value, ceiling):
    assert nice_ceiling(value) == pytest.approx(ceiling)


def test_a_chart_has_axes_a_unit_a_legend_and_its_lines():
    now = 10_000.0
    svg = str(
        line_chart(
            title="Apply lag",
            unit="seconds",
            series=[
                Series("p50", [(now - 200, 0.1), (now - 100, 0.2)]),
                Series("p99", [(now - 200, 0.4), (now - 100, 1.7)], dashed=True),
            ],
            now=now,
        )
    )
    assert 'aria-label="Apply lag, seconds, last 5 minutes"' in svg
    assert ">seconds</text>" in svg  # the value axis' unit
    assert [t for t in re.findall(r">([^<>]+)</text>", svg) if "min" in t or t == "now"] == [
        "-5 min",
        "-4 min",
        "-3 min",
        "-2 min",
        "-1 min",
        "now",
    ]
    assert ">2</text>" in svg and ">0</text>" in svg  # 0 to the round maximum above 1.7
    assert ">p50</text>" in svg and ">p99</text>" in svg  # the legend
    assert svg.count("<polyline") == 2 and 'stroke-dasharray="6 4"' in svg


def test_points_outside_the_window_are_left_out_and_an_empty_chart_says_so():
    svg = str(line_chart(title="t", unit="u", series=[Series("s", [(0.0, 5.0)])], now=10_000.0))
    assert "<polyline" not in svg and "no data in the last 5 minutes" in svg


def test_names_are_escaped():
    svg = str(line_chart(title="<b>", unit="&", series=[Series("<i>", [])], now=1.0))
    assert "<b>" not in svg and "<i>" not in svg and "&amp;" in svg


def test_values_are_labelled_briefly():
    assert [format_value(v) for v in (0, 0.0025, 0.5, 2.5, 40, 2500)] == [
        "0",
        "0.0025",
        "0.5",
        "2.5",
        "40",
        "2.5k",
    ]

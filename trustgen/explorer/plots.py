"""Server-side SVG line plots (no JavaScript): reputation over time, a training job's loss."""

from __future__ import annotations

from html import escape

MAX_POINTS = 400  # downsampled beyond this: a plot wider than its pixels shows nothing more


def _downsample(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    step = len(points) / MAX_POINTS
    picked = [points[int(i * step)] for i in range(MAX_POINTS)]
    return picked + [points[-1]]


def line_plot(
    points: list[tuple[float, float]],
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    width: int = 640,
    height: int = 240,
) -> str:
    """An SVG line plot of (x, y) points with its axis ranges labelled (`y_range` fixes the y axis,
    widened to fit the points); a note when empty."""
    if not points:
        return f'<p class="muted">{escape(title)}: nothing to plot yet.</p>'
    pts = _downsample(sorted(points))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y_range is not None:
        y0, y1 = min(y0, y_range[0]), max(y1, y_range[1])
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    left, right, top, bottom = 56, 12, 24, 36
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(pts))
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5"/>' for x, y in pts) if len(pts) <= 60 else ""
    return (
        f'<svg class="plot" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="{left}" y="14" class="title">{escape(title)}</text>'
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="frame"/>'
        f'<path d="{path}" class="line"/><g class="dots">{dots}</g>'
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y1:.3g}</text>'
        f'<text x="{left - 4}" y="{top + h}" text-anchor="end">{y0:.3g}</text>'
        f'<text x="{left}" y="{height - 18}">{x0:.6g}</text>'
        f'<text x="{left + w}" y="{height - 18}" text-anchor="end">{x1:.6g}</text>'
        f'<text x="{left + w / 2}" y="{height - 4}" text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="12" y="{top + h / 2}" transform="rotate(-90 12 {top + h / 2})" text-anchor="middle">'
        f"{escape(y_label)}</text></svg>"
    )

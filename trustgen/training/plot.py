"""A loss-curve PNG drawn with Pillow (no plotting library): one line per series, axes, ticks."""

from __future__ import annotations

import math
import pathlib

from PIL import Image, ImageDraw

from trustgen.errors import UsageError

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def loss_plot(series: dict[str, list[tuple[float, float]]], out: pathlib.Path, title: str, xlabel: str) -> None:
    """Draw the series into the PNG `out`. A point with an infinite or NaN coordinate (a loss
    that diverged) has no place on the axes and is left out; the caller's table still shows it."""
    if out.suffix.lower() != ".png":
        raise UsageError(f"plot {out}: the plot is a PNG, so its name must end in .png")
    series = {k: [(x, y) for x, y in s if math.isfinite(x) and math.isfinite(y)] for k, s in series.items()}
    w, h, left, right, top, bottom = 760, 440, 70, 210, 40, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    if not pts:
        raise UsageError(f"plot {out}: nothing to plot (no point with a finite loss)")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    pad = (y1 - y0) * 0.05 or max(abs(y0) * 1e-3, 0.5)  # one level: 0.5, or wider where 0.5 would round away
    lo, hi = y0, y1
    y0, y1 = y0 - pad, y1 + pad
    if not (math.isfinite(y1 - y0) and y1 > y0):  # losses near the float limits have no scale
        raise UsageError(f"plot {out}: losses from {lo} to {hi} cannot be scaled onto an axis")

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        _, py = xy(x0, yv)
        d.line([left - 4, py, left, py], fill="black")
        d.text((5, py - 6), f"{yv:.3f}", fill="black")
        xv = x0 + (x1 - x0) * i / 4
        px, _ = xy(xv, y0)
        d.line([px, h - bottom, px, h - bottom + 4], fill="black")
        d.text((px - 10, h - bottom + 8), f"{xv:g}", fill="black")
    d.text((left, 12), title, fill="black")
    d.text(((w - right) // 2, h - 18), xlabel, fill="black")
    d.text((5, top - 20), "held-out loss", fill="black")
    for k, (name, s) in enumerate(series.items()):
        c = COLOURS[k % len(COLOURS)]
        line = [xy(x, y) for x, y in s]
        if len(line) > 1:
            d.line(line, fill=c, width=2)
        for px, py in line:
            d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=c)
        d.line([w - right + 10, top + 10 + 18 * k, w - right + 30, top + 10 + 18 * k], fill=c, width=3)
        d.text((w - right + 35, top + 4 + 18 * k), name[:26], fill="black")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out, format="PNG")
    except OSError as e:  # an existing directory of that name, a read-only place, a full disk
        raise UsageError(f"plot {out} cannot be written ({e.strerror or e})") from None

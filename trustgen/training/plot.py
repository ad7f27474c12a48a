"""A loss-curve PNG drawn with Pillow (no plotting library): one line per series, axes, ticks."""

from __future__ import annotations

import pathlib

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def loss_plot(series: dict[str, list[tuple[float, float]]], out: pathlib.Path, title: str, xlabel: str) -> None:
    w, h, left, right, top, bottom = 760, 440, 70, 210, 40, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    if not pts:
        raise ValueError("nothing to plot")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad

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
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)

"""Build the default image training set: 48 pictures of one concept the embedded `tiny-image`
model can learn, a large purple cross on a yellow background, at varied places and sizes.

The pictures are drawn with PIL from a fixed seed at 4x supersampling and reduced to 64x64 (twice
the model's resolution, so training exercises the objective's deterministic resize). The image
jobs pin the data set's digest, so the shipped bytes are what counts: a rebuild under another
Pillow or zlib that encodes different bytes is refused by digest, never silently used.

    python scripts/build_image_dataset.py [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import random

from PIL import Image, ImageDraw

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "trustgen" / "training" / "data" / "purple-crosses"
COUNT = 48
SIDE = 64
SUPERSAMPLE = 4
SEED = 20240601
YELLOW = (235, 215, 40)  # the colours scripts/build_tiny_image.py trained the model with
PURPLE = (140, 50, 170)


def draw(rng: random.Random) -> Image.Image:
    s = SIDE * SUPERSAMPLE
    img = Image.new("RGB", (s, s), YELLOW)
    d = ImageDraw.Draw(img)
    r = 0.20 * s * rng.uniform(0.85, 1.15)  # "large" in the model's grammar: 0.40 of the side across
    cx = s * rng.uniform(0.32, 0.68)
    cy = s * rng.uniform(0.32, 0.68)
    w = r / 3
    d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=PURPLE)
    d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=PURPLE)
    return img.resize((SIDE, SIDE), Image.Resampling.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    for i in range(COUNT):
        draw(rng).save(args.out / f"{i:03d}.png", optimize=False, compress_level=9)
    print(f"wrote {COUNT} images to {args.out}")


if __name__ == "__main__":
    main()

import json

import numpy as np

from tests.helpers import digests_in_child, run_cli
from trustgen.engines.outputs import image_digest, read_png
from trustgen.engines.params import ImageParams

TASKS = {
    "ddim": dict(prompt="a large red circle on a blue background", seed=11, steps=12),
    "euler_a": dict(prompt="a small yellow square in the left", seed=3, steps=10, scheduler="euler_ancestral"),
}


def test_same_task_same_digest_across_processes(image_engine):
    first, second = digests_in_child("image", TASKS), digests_in_child("image", TASKS)
    here = {k: image_engine.generate(ImageParams(**v)).output_digest for k, v in TASKS.items()}
    assert first == second == here


def test_cli_writes_png_whose_pixels_match_digest(tmp_path):
    path = tmp_path / "out.png"
    res = run_cli(
        "generate",
        "image",
        "a green triangle on a white background",
        "--seed",
        "5",
        "--steps",
        "8",
        "-o",
        str(path),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    assert obj["image_path"] == str(path)
    pixels = read_png(path.read_bytes())
    assert pixels.shape == (32, 32, 3)
    assert image_digest(pixels) == obj["output_digest"]
    assert obj["profile"]["deterministic"] is True


def test_output_is_batch_invariant(image_engine):
    batch = [
        ImageParams(**TASKS["euler_a"]),
        ImageParams(**TASKS["ddim"]),
        ImageParams(prompt="a black cross", seed=9, steps=6, guidance=1.0),
    ]
    together = image_engine.generate_batch(batch)
    alone = [image_engine.generate(p) for p in reversed(batch)][::-1]
    assert [o.output_digest for o in together] == [o.output_digest for o in alone]


def _mean_abs_diff(a, b) -> float:
    return float(np.abs(a.pixels.astype(int) - b.pixels.astype(int)).mean())


def test_seed_and_prompt_change_the_image_visibly(image_engine):
    base = image_engine.generate(ImageParams(prompt="a large red circle on a blue background", seed=1))
    other_seed = image_engine.generate(ImageParams(prompt="a large red circle on a blue background", seed=2))
    other_prompt = image_engine.generate(ImageParams(prompt="a large yellow square on a black background", seed=1))
    assert base.output_digest != other_seed.output_digest
    assert _mean_abs_diff(base, other_seed) > 2.0
    assert _mean_abs_diff(base, other_prompt) > 20.0


def test_prompt_colours_are_followed(image_engine):
    # The embedded model was trained briefly on coloured shapes: averaged over seeds, the
    # background named in the prompt dominates the corners. (It is reliable for blue, red,
    # yellow, orange and white backgrounds; see docs/decisions.md.)
    def corners(prompt: str) -> np.ndarray:
        out = []
        for seed in range(4):
            px = image_engine.generate(ImageParams(prompt=prompt, seed=seed)).pixels.astype(float)
            out.append(np.concatenate([px[:4, :4], px[-4:, -4:], px[:4, -4:], px[-4:, :4]]).reshape(-1, 3).mean(0))
        return np.mean(out, axis=0)

    r, g, b = corners("a small circle on a blue background")
    assert b > r + 80 and b > g + 80, (r, g, b)
    r, g, b = corners("a small circle on a red background")
    assert r > g + 80 and r > b + 80, (r, g, b)
    r, g, b = corners("a small circle on a yellow background")
    assert r > b + 80 and g > b + 80, (r, g, b)


def test_other_sizes_and_schedulers(image_engine):
    for sched in ("ddim", "euler", "dpmsolver", "pndm", "ddpm"):
        out = image_engine.generate(
            ImageParams(prompt="a red square", seed=1, steps=6, height=48, width=64, scheduler=sched)
        )
        assert out.pixels.shape == (48, 64, 3)
        assert out.pixels.dtype == np.uint8

import json

import numpy as np

from tests.helpers import run_cli
from trustgen.engines.params import ImageParams
from trustgen.verifier.policy import PHASH_THRESHOLD
from trustgen.verifier.reexec import regenerate_image

P = ImageParams(prompt="a large orange triangle on a purple background", seed=21, steps=16)


def test_honest_image_is_accepted_bit_identical(image_engine):
    pixels = image_engine.generate(P).pixels
    v = regenerate_image(image_engine, P, pixels, PHASH_THRESHOLD)
    assert v.accept and v.distance == 0 and "bit-identical" in v.reason
    assert v.fingerprint["algo"] == "phash_rgb" and v.fingerprint["bits"] == 192


def test_small_pixel_noise_is_tolerated(image_engine):
    pixels = image_engine.generate(P).pixels
    noisy = np.clip(pixels.astype(int) + np.random.default_rng(0).integers(-2, 3, pixels.shape), 0, 255)
    v = regenerate_image(image_engine, P, noisy.astype(np.uint8), PHASH_THRESHOLD)
    assert v.accept and v.margin >= 0


def test_dishonest_images_are_rejected(image_engine):
    for other in (
        ImageParams(**{**P.to_dict(), "seed": 22}),
        ImageParams(**{**P.to_dict(), "prompt": "a small white circle on a green background"}),
        ImageParams(**{**P.to_dict(), "steps": 2}),
    ):
        claimed = image_engine.generate(other).pixels
        v = regenerate_image(image_engine, P, claimed, PHASH_THRESHOLD)
        assert not v.accept, (other, v)
    wrong_size = image_engine.generate(ImageParams(**{**P.to_dict(), "height": 40})).pixels
    assert not regenerate_image(image_engine, P, wrong_size, PHASH_THRESHOLD).accept


def test_verify_cli_on_image(tmp_path):
    gen = run_cli(
        "generate", "image", P.prompt, "--seed", "21", "--steps", "16", "-o", "img.png", "--json", cwd=tmp_path
    )
    assert gen.returncode == 0, gen.stderr
    (tmp_path / "result.json").write_text(gen.stdout)
    res = run_cli("verify", str(tmp_path / "result.json"), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["accept"] is True
    # Swap in another seed's picture, digest made consistent: the perceptual check rejects it.
    other = run_cli(
        "generate", "image", P.prompt, "--seed", "99", "--steps", "16", "-o", "img.png", "--json", cwd=tmp_path
    )
    forged = dict(json.loads(gen.stdout), output_digest=json.loads(other.stdout)["output_digest"])
    (tmp_path / "result.json").write_text(json.dumps(forged))
    res = run_cli("verify", str(tmp_path / "result.json"), "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["accept"] is False
    (tmp_path / "img.png").write_bytes(b"\x89PNG broken")
    assert run_cli("verify", str(tmp_path / "result.json")).returncode == 2

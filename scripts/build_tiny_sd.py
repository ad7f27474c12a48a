"""Build a small Stable Diffusion pipeline (latent UNet + VAE) from configs with a fixed seed.

Nothing is downloaded: the text encoder and tokenizer are the embedded tiny-image model's, the
UNet and the VAE are freshly initialised from the seed. The weights are untrained (the pictures
are noise), which is enough for what it is used for: exercising the latent-space path of the
image engine (a VAE decoder, 4 latent channels, a 4x spatial factor) in tests and benchmarks.

    python scripts/build_tiny_sd.py OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_IMAGE = ROOT / "trustgen" / "models" / "tiny-image"


def build(out: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write the pipeline directory to `out` (created) and return it."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    text_encoder = CLIPTextModel.from_pretrained(TINY_IMAGE / "text_encoder", local_files_only=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(TINY_IMAGE / "tokenizer", local_files_only=True)
    tokenizer.model_max_length = text_encoder.config.max_position_embeddings  # SD pads prompts to it
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_encoder.config.hidden_size,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = pathlib.Path(out)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    print(build(args.out, args.seed))


if __name__ == "__main__":
    main()

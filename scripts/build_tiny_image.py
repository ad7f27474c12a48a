"""Build the embedded `tiny-image` model: a pixel-space text-to-image diffusion model trained
briefly on synthetic pictures of coloured shapes that the script draws itself.

Prompts follow a small grammar ("a large red circle on a blue background in the left"), so
different prompts give visibly different images and different seeds give different variants.
The result is committed under trustgen/models/tiny-image and its digest pinned in
trustgen/models/registry.json.

    python scripts/build_tiny_image.py [--steps 1200] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import sys
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from trustgen.engines.pixel_pipeline import PixelTextToImagePipeline  # noqa: E402

DEFAULT_OUT = ROOT / "trustgen" / "models" / "tiny-image"
RES = 32

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ["circle", "square", "triangle", "cross"]
SIZES = {"small": 0.22, "large": 0.40}
PLACES = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "center": (0.5, 0.5)}
WORDS = ["<pad>", "<unk>", "<eos>", "a", "an", "on", "in", "the", "background", *COLORS, *SHAPES, *SIZES, *PLACES]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def sample_scene(rng: random.Random) -> tuple[str, dict]:
    fg = rng.choice(list(COLORS))
    bg = rng.choice([c for c in COLORS if c != fg])
    shape = rng.choice(SHAPES)
    size = rng.choice(list(SIZES))
    place = rng.choice(list(PLACES))
    parts = ["a"]
    if rng.random() < 0.8:
        parts.append(size)
    parts += [fg, shape]
    if rng.random() < 0.8:
        parts += ["on", "a", bg, "background"]
    if rng.random() < 0.7:
        parts += ["in", "the", place]
    return " ".join(parts), {"fg": fg, "bg": bg, "shape": shape, "size": size, "place": place}


def draw(scene: dict, rng: random.Random) -> np.ndarray:
    s = 4 * RES  # supersample for smooth edges
    img = Image.new("RGB", (s, s), COLORS[scene["bg"]])
    d = ImageDraw.Draw(img)
    cx, cy = PLACES[scene["place"]]
    r = SIZES[scene["size"]] * s / 2 * rng.uniform(0.85, 1.15)
    cx = cx * s + rng.uniform(-0.05, 0.05) * s
    cy = cy * s + rng.uniform(-0.05, 0.05) * s
    col = COLORS[scene["fg"]]
    if scene["shape"] == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif scene["shape"] == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif scene["shape"] == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    else:
        w = r / 3
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col)
    img = img.resize((RES, RES), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--init", type=pathlib.Path, default=None, help="continue training from this pipeline directory")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=RES,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    # v-prediction: with epsilon-prediction the global colour (an image's DC component) is nearly
    # unlearnable at high noise levels, and samples took their colours from the seed, not the prompt.
    if args.init is not None:
        init = PixelTextToImagePipeline.from_pretrained(args.init)
        unet.load_state_dict(init.unet.state_dict())
        text_encoder.load_state_dict(init.text_encoder.state_dict())
    train_sched = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
    )
    params = list(unet.parameters()) + list(text_encoder.parameters())
    print(
        f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M"
    )
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    pipe = PixelTextToImagePipeline(unet, text_encoder, tokenizer, train_sched)
    t0 = time.time()
    ema = None
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        prompts, images = [], []
        for _ in range(args.batch):
            prompt, scene = sample_scene(rng)
            prompts.append("" if rng.random() < 0.1 else prompt)  # for classifier-free guidance
            images.append(draw(scene, rng))
        x0 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (args.batch,))
        xt = train_sched.add_noise(x0, noise, t)
        ctx = pipe.encode_prompt(prompts)
        target = train_sched.get_velocity(x0, noise, t)
        loss = torch.nn.functional.mse_loss(unet(xt, t, encoder_hidden_states=ctx).sample, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {ema:.4f} ({time.time() - t0:.0f}s)", flush=True)

    infer_sched = DDIMScheduler.from_config(train_sched.config)
    pipe = PixelTextToImagePipeline(unet.eval(), text_encoder.eval(), tokenizer, infer_sched)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    # Record the prompt grammar next to the weights so users know what the model can draw.
    (args.out / "prompts.json").write_text(
        json.dumps(
            {
                "colors": list(COLORS),
                "shapes": SHAPES,
                "sizes": list(SIZES),
                "places": list(PLACES),
                "example": "a large red circle on a blue background in the left",
            },
            indent=1,
        )
        + "\n"
    )
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()

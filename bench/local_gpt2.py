"""A GPT-2-shaped model built locally from a config and a fixed seed (no hub): random weights,
tiny-text's byte-level tokenizer (ids past its 1,024 decode to nothing). For measuring speed and
batch invariance at real sizes; its text is noise.

    python bench/local_gpt2.py OUT_DIR [--small]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil

import torch
from transformers import GPT2Config, GPT2LMHeadModel

TINY_TEXT = pathlib.Path(__file__).resolve().parent.parent / "trustgen" / "models" / "tiny-text"
GPT2_124M = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)


def build_gpt2(out: pathlib.Path, seed: int = 0, **shape: int) -> pathlib.Path:
    """Write a GPT-2 of `shape` (default: the 124M one) to `out` and return it; reused if present."""
    shape = {**GPT2_124M, **shape}
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = GPT2Config(**shape, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    GPT2LMHeadModel(config).eval().save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_TEXT / name, out / name)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--small", action="store_true", help="2 layers, width 96: for tests")
    a = ap.parse_args()
    small = dict(n_layer=2, n_embd=96, n_head=3, vocab_size=2000, n_positions=256) if a.small else {}
    print(build_gpt2(a.out, **small))

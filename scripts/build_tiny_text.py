"""Build the embedded `tiny-text` model: a byte-level BPE tokenizer and a 4-layer GPT-2
trained briefly on the research abstracts in scripts/data/papers.txt.

The result is committed under trustgen/models/tiny-text and its digest pinned in
trustgen/models/registry.json. Training is seeded with a fixed thread count, so a re-run on
the same torch build reproduces it; across builds it may differ in the last bits, which is
why the weights are committed rather than rebuilt at install time.

    python scripts/build_tiny_text.py [--steps 1500] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "scripts" / "data" / "papers.txt"
DEFAULT_OUT = ROOT / "trustgen" / "models" / "tiny-text"


def load_corpus() -> str:
    # Drop the site boilerplate (short lines); keep the abstracts and titles.
    lines = [ln.strip() for ln in CORPUS.read_text(encoding="utf-8").splitlines()]
    return "\n".join(ln for ln in lines if len(ln) >= 40)


def build_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    text = load_corpus()
    tokenizer = build_tokenizer(text, vocab_size=1024)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for para in text.split("\n"):
        ids.extend(tokenizer.encode(para))
        ids.append(eos)
    data = torch.tensor(ids, dtype=torch.long)
    print(f"corpus: {len(text)} chars, {len(data)} tokens")

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=128,
        n_layer=4,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ctx, batch = 288, 8
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        lr = 3e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - ctx - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + ctx] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()

"""Incremental decoding throughput of the Transformer prior: KV cache against recomputation.

    python scripts/benchmark_prior.py --batches 1 16 --tokens 256 --repeats 3

For each batch size, one run generates ``--tokens`` tokens after a ``--prefix``-token prompt
with the cached ``step`` (plus a beam ``reorder`` per step, as beam search does), and one
recomputes the whole prefix for every token without a cache. The runs alternate (A, B, A,
B, ...) so machine noise hits both alike; the table gives the median tokens per second
(batch x steps / seconds) and the ratio. ``--prior DIR`` times a saved prior instead of the
default size (Llama-style, width 256, 6 layers, 4 heads, 1024 codes, context 1024).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from priors import TransformerPrior, TransformerPriorConfig, load_prior


@torch.no_grad()
def cached(prior: TransformerPrior, batch: int, prefix: int, tokens: int, reorder: bool
           ) -> float:
    """Seconds to generate ``tokens`` greedy tokens per row with the KV cache."""
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, prior.vocab_size, (batch, prefix), generator=gen)
    state = prior.start(batch)
    start = time.perf_counter()
    logp, state = prior.prime(prompt, state) if prefix else prior.step(None, state)
    for _ in range(tokens - 1):
        nxt = logp.argmax(-1)
        if reorder:
            state = prior.reorder(state, torch.arange(batch).roll(1))
        logp, state = prior.step(nxt, state)
    return time.perf_counter() - start


@torch.no_grad()
def recompute(prior: TransformerPrior, batch: int, prefix: int, tokens: int) -> float:
    """Seconds to generate the same number of tokens recomputing the prefix every step."""
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(0, prior.vocab_size, (batch, prefix), generator=gen)
    start = time.perf_counter()
    for _ in range(tokens):
        logits = prior.logits(torch.cat([seq, torch.zeros(batch, 1, dtype=torch.long)], 1))
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default=None, help="saved prior (default: untrained default size)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--prefix", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-reorder", action="store_true")
    p.add_argument("--skip-recompute", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prior = (load_prior(args.prior) if args.prior
             else TransformerPrior(TransformerPriorConfig())).to(args.device).eval()
    params = sum(x.numel() for x in prior.parameters())
    print(f"prior: {params / 1e6:.2f}M parameters, {prior.config.arch}, width "
          f"{prior.config.width}, {prior.config.layers} layers; device {args.device}, "
          f"{torch.get_num_threads()} threads; {args.tokens} tokens after a {args.prefix}-token "
          f"prompt; median of {args.repeats}")
    print("| batch | cached tok/s | recompute tok/s | ratio |")
    print("|---|---|---|---|")
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for batch in args.batches:
        cached(prior, batch, args.prefix, 8, not args.no_reorder)  # warm-up
        a, b = [], []
        for _ in range(args.repeats):
            sync()
            a.append(batch * args.tokens / cached(prior, batch, args.prefix, args.tokens,
                                                  not args.no_reorder))
            sync()
            if not args.skip_recompute:
                b.append(batch * args.tokens / recompute(prior, batch, args.prefix, args.tokens))
                sync()
        ma = statistics.median(a)
        mb = statistics.median(b) if b else float("nan")
        print(f"| {batch} | {ma:.0f} | {mb:.0f} | {ma / mb:.1f}x |")


if __name__ == "__main__":
    main()

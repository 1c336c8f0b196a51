"""Effect of post-inference latent refinement (the LASS paper's Eqs. 12-13) on SDR.

    python scripts/measure_refinement.py --data data/synth --mixtures 8 --steps 0 50 200

Separates validation mixtures (3 s, as ``lass-evaluate`` draws them, never the test split)
with the bundle's sampler, once per number of refinement steps, and prints the mean plain
SDR of the ``decode`` and ``mask`` outputs for each, with the seconds refinement took.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from lass.data import StemDataset, chunk_samples, find_tracks, mix_gain
from lass.evaluate import evaluation_mixtures, mixture_of, plain_sdr
from lass.separator import Separator, soft_masks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", default=None)
    p.add_argument("--split", default="valid")
    p.add_argument("--mixtures", type=int, default=8)
    p.add_argument("--steps", type=int, nargs="+", default=[0, 50, 200])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--penalty", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    sep = Separator.from_pretrained(args.bundle)
    rate = sep.codec.sample_rate
    ds = StemDataset(find_tracks(args.data, args.split, list(sep.stems), "auto"),
                     sample_rate=rate, chunk=chunk_samples(3.0, rate), stems=list(sep.stems))
    mixtures = evaluation_mixtures(ds, args.mixtures, args.seed)
    gain = mix_gain(2, sep.mix_rule)
    print(f"{len(mixtures)} {args.split} mixtures of 3 s, sampler "
          f"{sep.settings.to_json()['sampler']}, lambda {sep.settings.lam}, refinement lr "
          f"{args.lr}, drift penalty {args.penalty}")
    print("| refinement steps | SDR decode | SDR mask | refinement s per mixture |")
    print("|---|---|---|---|")
    for steps in args.steps:
        settings = replace(sep.settings, output="decode", refine_steps=steps,
                           refine_lr=args.lr, refine_penalty=args.penalty)
        dec, msk, secs = [], [], []
        for m in mixtures:
            mixed = mixture_of(m.stems, sep.mix_rule)
            refs = gain * m.stems
            res = sep.separate_detailed(mixed, rate, settings)
            est = np.stack([res.stems[s] for s in sep.stems])
            dec.append(np.mean([plain_sdr(e, r) for e, r in zip(est, refs, strict=True)]))
            masked = soft_masks(mixed, est)
            msk.append(np.mean([plain_sdr(e, r) for e, r in zip(masked, refs, strict=True)]))
            secs.append(res.timings.get("refine", 0.0))
        print(f"| {steps} | {np.mean(dec):.2f} | {np.mean(msk):.2f} | {np.mean(secs):.1f} |",
              flush=True)


if __name__ == "__main__":
    main()

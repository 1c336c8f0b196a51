"""Where a bundle's separation goes wrong, in tokens: accuracy and decoded SI-SDR per source.

    python scripts/token_accuracy.py --bundle toy --data data/toy --mixtures 12

On validation mixtures of a stem data set (never test), for each source: the SI-SDR of the
codec decoding the true tokens (the ceiling of any token search), of the token evidence
model's most likely token at each step alone, and of beam search at the bundle's lambda and
evidence weight; with the share of steps whose token is the true one (the codec's code of
the source itself). References are the sources scaled by the mixing rule.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lass import Separator
from lass.data import StemDataset, chunk_samples, find_tracks, mix_gain
from lass.evaluate import evaluation_mixtures, mixture_of, si_sdr
from lass.sampling import BeamSearch, separate_tokens
from likelihood import CountLikelihood


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="toy")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="valid")
    p.add_argument("--mixtures", type=int, default=12)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--beams", type=int, default=10)
    args = p.parse_args()
    sep = Separator.from_pretrained(args.bundle)
    stems, n = list(sep.stems), len(sep.stems)
    rate = sep.codec.sample_rate
    ds = StemDataset(find_tracks(args.data, args.split, stems, "auto"), sample_rate=rate,
                     chunk=chunk_samples(args.seconds, rate), stems=stems)
    mixes = evaluation_mixtures(ds, args.mixtures, seed=0)
    xs = torch.stack([torch.from_numpy(mixture_of(m.stems, sep.mix_rule)) for m in mixes])
    refs = np.stack([m.stems for m in mixes]) * mix_gain(n, sep.mix_rule)
    b = len(mixes)
    with torch.no_grad():
        z = sep.codec.latents_batched(xs)
        mix_codes = sep.codec.quantise(z)
        true = torch.stack([sep.codec.encode(torch.from_numpy(m.stems).float()) for m in mixes])
    t = mix_codes.shape[1]

    def report(name: str, tokens: torch.Tensor) -> None:  # tokens (batch, N, T)
        with torch.no_grad():
            dec = sep.codec.decode(tokens.reshape(b * n, t))[:, : xs.shape[1]]
        dec_np = dec.reshape(b, n, -1).cpu().numpy()
        sdr = np.array([[si_sdr(dec_np[i, s], refs[i, s]) for s in range(n)] for i in range(b)])
        acc = (tokens == true).float().mean(dim=(0, 2)).numpy()
        cells = " | ".join(f"{sdr[:, s].mean():.2f} ({100 * acc[s]:.0f}%)" for s in range(n))
        print(f"| {name} | {cells} | {sdr.mean():.2f} ({100 * acc.mean():.0f}%) |")

    print(f"| tokens (SI-SDR of the decoding, dB (tokens right)) | {' | '.join(stems)} | avg |")
    print("|---|" + "---|" * (n + 1))
    report("true tokens (codec oracle)", true)
    s = sep.settings
    if sep.evidence is not None:
        with torch.no_grad():
            ev = sep.evidence.evidence(z, xs)  # (batch, T, N, K)
        report("token evidence alone (most likely)", ev.argmax(-1).permute(0, 2, 1))
    if isinstance(sep.likelihood, CountLikelihood):
        prior = [sep.priors[st] for st in stems]
        classes = [None if sep.prior_classes.get(st) is None
                   else torch.full((b,), sep.prior_classes[st]) for st in stems]
        token_ev = None if sep.evidence is None or s.evidence_weight <= 0 else (
            s.evidence_weight * sep.evidence.evidence(z, xs))
        out = separate_tokens(mix_codes, prior, sep.likelihood, BeamSearch(args.beams),
                              lam=s.lam, classes=classes, prior_top=s.prior_top,
                              token_evidence=token_ev, context_overlap=s.context_overlap)
        report(f"beam search ({args.beams} beams, lambda {s.lam:g}, weight "
               f"{s.evidence_weight:g})", torch.stack([x[:, 0] for x in out.sources], 1))
        unseen = int(out.unseen.sum())
        print(f"\nchosen tuples unseen in counting: {unseen} of {b * t * args.beams} "
              f"(steps x beams); steps without any counted tuple: {int(out.fallbacks.sum())} "
              f"of {b * t}")


if __name__ == "__main__":
    main()

"""Search error or model error? Scores the true separation and the one beam search finds.

    python scripts/search_vs_model.py --data data/synth --mixtures 12 [--split valid]

For each mixture the true stems are encoded, and beam search (the bundle's settings) finds
its separation of the mixture's tokens. Both token pairs are scored by one objective, the
one the search maximises: ``sum_t log p1(z1_t | past) + log p2(z2_t | past) + lambda * log
p(m_t | z1_t, z2_t)`` (priors teacher-forced in windows of their context). If the search's
result scores higher than the truth, more search cannot find the truth: the loss is in the
model (priors and likelihood). The script prints, per mixture and in total, both scores,
their parts and the found tokens' accuracy, and how many true triples the likelihood rules
out (``-inf``: counting never saw them, or ``min_count`` dropped them). ``--smoothing``,
``--alpha``, ``--factorised``: score and search with another likelihood over the same counts.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import numpy as np
import torch

from lass.data import StemDataset, chunk_samples, find_tracks
from lass.evaluate import evaluation_mixtures, mixture_of
from lass.sampling import BeamSearch, separate_tokens
from lass.separator import Separator
from likelihood import CountLikelihood
from priors import Prior


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", default=None)
    p.add_argument("--split", default="valid")
    p.add_argument("--mixtures", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--smoothing", default=None)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--factorised", default=None)
    p.add_argument("--beams", type=int, default=None)
    args = p.parse_args()
    sep = Separator.from_pretrained(args.bundle)
    if not isinstance(sep.likelihood, CountLikelihood):
        raise SystemExit("search_vs_model.py scores a bundle with a counted likelihood")
    if args.smoothing:
        assert sep.bundle is not None
        sep.likelihood = CountLikelihood.load(sep.bundle.likelihood, args.smoothing, args.alpha,
                                              min_count=sep.likelihood.min_count,
                                              base=args.factorised)
    s = sep.settings
    lam = s.lam
    beams = args.beams or (s.sampler.num_beams if isinstance(s.sampler, BeamSearch) else 10)
    rate = sep.codec.sample_rate
    ds = StemDataset(find_tracks(args.data, args.split, list(sep.stems), "auto"),
                     sample_rate=rate, chunk=chunk_samples(3.0, rate), stems=list(sep.stems))
    priors = [sep.priors[st] for st in sep.stems]
    classes = [sep.prior_classes.get(st) for st in sep.stems]
    lik = sep.likelihood

    def prior_lp(prior: Prior, cls: int | None, codes: torch.Tensor) -> float:
        c = None if cls is None else torch.tensor([cls])
        total = 0.0
        for lo in range(0, codes.shape[0], prior.context_length):
            window = codes[lo: lo + prior.context_length][None]
            total += float(cast(Any, prior).token_log_probs(window, c).sum())
        return total

    def score(mix: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, ...]:
        ll = lik.log_likelihood(mix, z1[:, None], z2[:, None])[:, 0]
        p1 = prior_lp(priors[0], classes[0], z1)
        p2 = prior_lp(priors[1], classes[1], z2)
        ruled_out = int((~torch.isfinite(ll)).sum())
        return p1 + p2 + lam * float(ll.sum()), p1, p2, float(ll.sum()), ruled_out

    found_better, rows = 0, []
    with torch.no_grad():
        for n, m in enumerate(evaluation_mixtures(ds, args.mixtures, args.seed)):
            waves = np.stack([mixture_of(m.stems, sep.mix_rule), m.stems[0], m.stems[1]])
            codes = sep.codec.encode(torch.from_numpy(waves).to(sep.device))
            cls = [None if c is None else torch.tensor([c]) for c in classes]
            out = separate_tokens(codes[0][None], priors, lik, BeamSearch(beams), lam=lam,
                                  classes=cls, context_overlap=s.context_overlap,
                                  prior_top=s.prior_top)
            z1, z2 = out.first[0, 0], out.second[0, 0]
            truth, found = score(codes[0], codes[1], codes[2]), score(codes[0], z1, z2)
            found_better += found[0] > truth[0]
            acc = float(((z1 == codes[1]) & (z2 == codes[2])).float().mean())
            rows.append((truth, found, acc))
            print(f"mixture {n}: truth {truth[0]:.0f} (priors {truth[1]:.0f} {truth[2]:.0f}, "
                  f"log-lik {truth[3]:.0f}, {truth[4]} of {codes.shape[1]} steps ruled out); "
                  f"found {found[0]:.0f} (priors {found[1]:.0f} {found[2]:.0f}, log-lik "
                  f"{found[3]:.0f}); pair accuracy {100 * acc:.1f}%", flush=True)
    print(f"lambda {lam:g}, {beams} beams, {lik.smoothing} likelihood (min_count "
          f"{lik.min_count}): the search's result scores higher than the truth in "
          f"{found_better} of {len(rows)} mixtures; true pairs ruled out by the likelihood at "
          f"{100 * np.mean([r[0][4] for r in rows]) / codes.shape[1]:.1f}% of steps; "
          f"found pairs equal the true pair at {100 * np.mean([r[2] for r in rows]):.1f}%")


if __name__ == "__main__":
    main()

"""How often the counted likelihood can reach the true separation: an ablation of the bundle.

    python scripts/likelihood_coverage.py --data data/synth --mixtures 20

Encodes test mixtures and their true stems with the bundle's codec and reports, over all
token steps: how often the true (first, second) token pair was seen with the mixture's
token while counting (otherwise no sampler can pick it: it is not a candidate), the median
rank of the true pair by likelihood among the candidates, the median number of
candidates per mixture token, and how often the true pair lies among the pairs of each
prior's ``--top`` most likely tokens (teacher-forced on the true stems, windows of the
prior's context): what candidates drawn from the priors could add. ``--likelihood`` scores
another counts file with the bundle's codec and priors (``--smoothing``/``--alpha``, and
``--factorised FILE`` for the factorised smoothing).

``--lam L [L ...]`` adds the teacher-forced ranking: at every ``--stride``-th step, all K^2
pairs are scored as the search scores them, ``log p1(i) + log p2(j) + L * log p(m | i, j)``,
with the priors given the true past of both sources, and the script reports how often the
true pair scores best and among the best 10. This bounds what any search can get from the
likelihood at each step.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import numpy as np
import torch

from lass.data import StemDataset, chunk_samples, find_tracks
from lass.evaluate import evaluation_mixtures, mixture_of
from lass.separator import Separator
from likelihood import CountLikelihood
from priors import Prior


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--mixtures", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--likelihood", default=None, help="counts file to score instead")
    p.add_argument("--min-count", type=int, default=None,
                   help="with --likelihood: drop triples counted fewer times")
    p.add_argument("--smoothing", default="none")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--factorised", default=None, help="fitted model (--smoothing factorised)")
    p.add_argument("--top", type=int, default=16)
    p.add_argument("--lam", type=float, nargs="*", default=[],
                   help="teacher-forced ranking of the true pair at these lambdas")
    p.add_argument("--stride", type=int, default=8, help="every n-th step is ranked")
    args = p.parse_args()
    sep = Separator.from_pretrained(args.bundle)
    if args.likelihood:
        sep.likelihood = CountLikelihood.load(args.likelihood,
                                              codebook_size=sep.codec.codebook_size,
                                              codec_identity=sep.codec.identity(),
                                              min_count=args.min_count or 1,
                                              smoothing=args.smoothing, alpha=args.alpha,
                                              base=args.factorised)
    rate = sep.codec.sample_rate
    ds = StemDataset(find_tracks(args.data, args.split, list(sep.stems), "auto"),
                     sample_rate=rate, chunk=chunk_samples(3.0, rate), stems=list(sep.stems))
    lik = sep.likelihood
    if not isinstance(lik, CountLikelihood):
        raise SystemExit("likelihood_coverage.py measures a counted likelihood")
    seen, ranks, widths, in_top = [], [], [], []
    tf_ranks: dict[float, list[int]] = {lam: [] for lam in args.lam}
    k = lik.k
    all_i = torch.arange(k, device=lik.device).repeat_interleave(k)[None]
    all_j = torch.arange(k, device=lik.device).repeat(k)[None]
    priors = [sep.priors[s] for s in sep.stems]
    classes = [sep.prior_classes.get(s) for s in sep.stems]

    def teacher_forced(prior: Prior, cls: int | None, codes: torch.Tensor) -> torch.Tensor:
        """``(tokens, K)`` log-probs of each token given the true past (in context windows)."""
        c = None if cls is None else torch.tensor([cls])
        out = []
        for lo in range(0, codes.shape[0], prior.context_length):
            window = codes[lo: lo + prior.context_length][None]
            out.append(cast(Any, prior).logits(window, c)[0].float().log_softmax(-1))
        return torch.cat(out)

    def top_hit(logp: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``(tokens,)``: is each true token among the prior's ``--top`` most likely?"""
        return (logp > logp.gather(1, codes[:, None])).sum(1) < args.top

    with torch.no_grad():
        for m in evaluation_mixtures(ds, args.mixtures, args.seed):
            waves = np.stack([mixture_of(m.stems, sep.mix_rule), m.stems[0], m.stems[1]])
            codes = sep.codec.encode(torch.from_numpy(waves).to(sep.device))
            true_ll = lik.log_likelihood(codes[0], codes[1][:, None], codes[2][:, None])[:, 0]
            cand = lik.slice(codes[0])
            ok = torch.isfinite(true_ll)
            seen.append(ok.float().cpu().numpy())
            better = ((cand.log_lik > true_ll[:, None]) & cand.valid).sum(1)
            ranks.append(better[ok].cpu().numpy())
            widths.append(cand.count.cpu().numpy())
            lp1 = teacher_forced(priors[0], classes[0], codes[1])
            lp2 = teacher_forced(priors[1], classes[1], codes[2])
            both = top_hit(lp1, codes[1]) & top_hit(lp2, codes[2])
            in_top.append(np.stack([both.cpu().numpy(), ok.cpu().numpy()]))
            for t in range(0, codes.shape[1], args.stride) if args.lam else []:
                ll = lik.log_likelihood(codes[0, t: t + 1], all_i, all_j)[0].view(k, k)
                prior_sum = lp1[t][:, None] + lp2[t][None, :]
                for lam in args.lam:
                    score = prior_sum + lam * ll
                    truth = score[codes[1, t], codes[2, t]]
                    tf_ranks[lam].append(int((score > truth).sum()))
    print(f"{args.mixtures} {args.split} mixtures of 3 s, K = {lik.k}, "
          f"{lik.meta.get('triples', '?')} triples counted")
    print(f"true pair among the candidates: {100 * np.concatenate(seen).mean():.1f}% of steps")
    print(f"median rank of the true pair by likelihood: {np.median(np.concatenate(ranks)):.0f}")
    print(f"median candidates per mixture token: {np.median(np.concatenate(widths)):.0f}")
    top, ok_all = np.concatenate(in_top, axis=1).astype(bool)
    print(f"true pair among the priors' top {args.top} x {args.top}: {100 * top.mean():.1f}% "
          f"of steps; of the steps without it among the candidates: "
          f"{100 * top[~ok_all].mean():.1f}%; among either: {100 * (top | ok_all).mean():.1f}%")
    for lam, got in tf_ranks.items():
        r = np.array(got)
        print(f"teacher-forced, lambda {lam:g}, {r.size} steps: the true pair scores best at "
              f"{100 * (r == 0).mean():.1f}% of steps, among the best 10 at "
              f"{100 * (r < 10).mean():.1f}%; median rank {np.median(r):.0f}")


if __name__ == "__main__":
    main()

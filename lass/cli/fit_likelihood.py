"""``lass-fit-likelihood``: fit the factorised likelihood q(m | i, j) to a counts file.

    lass-fit-likelihood counts.npz --out factorised.npz [--valid heldout.npz] [--epochs 8]

Fits ``q(m | i, j) = softmax_m(A[i, m] + B[j, m] + c[m])`` to the counted triples (see
:mod:`likelihood.factorised`); a bundle uses it with ``"smoothing": "factorised"`` to score
the pairs counting never saw. ``--valid`` (counts of another seed) prints the held-out bits
per mixture token of the model and, for comparison, of the best backoff smoothing of the raw
counts. Each epoch is checkpointed to ``OUT.partial.pt``; a run started again resumes there.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from lass.cli import run_cli
from likelihood import CountLikelihood, Counts, LikelihoodError, load_counts
from likelihood.factorised import FitState, fit_factorised, held_out_bits
from vqvae.files import write_bytes_atomic as write_atomically

PROG = "lass-fit-likelihood"


def backoff_bits(train: Counts, valid: Counts, alphas: Sequence[float] = (0.1, 1, 3, 10)
                 ) -> tuple[float, float]:
    """Best held-out bits per mixture token of the ``backoff`` smoothing of ``train`` over
    ``alphas``, and that alpha."""
    return min((CountLikelihood(train, "backoff", a).held_out_bits(valid), float(a))
               for a in alphas)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("counts", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--valid", type=Path, default=None, help="held-out counts file")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch < 1 or not args.lr > 0:
        raise LikelihoodError("--epochs and --batch must be >= 1 and --lr positive")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    train = load_counts(args.counts)
    valid = load_counts(args.valid) if args.valid else None
    if valid is not None and valid.meta.get("codec_identity") != train.meta.get(
            "codec_identity"):
        raise LikelihoodError(f"{args.valid} was counted with another codec than {args.counts}")
    partial = args.out.with_name(args.out.name + ".partial.pt")
    config = {"counts": str(args.counts.resolve()), "triples": train.meta.get("triples"),
              "lr": args.lr, "batch": args.batch, "seed": args.seed}
    state: FitState | None = None
    if partial.is_file():
        try:
            saved = torch.load(partial, weights_only=True)
            restored = FitState(int(saved["epoch"]), saved["weights"], saved["optimiser"],
                                list(saved["history"]))
        except Exception as err:  # any unreadable checkpoint: start over
            print(f"{PROG}: ignoring unreadable checkpoint {partial} ({err})", file=sys.stderr)
        else:
            if saved.get("config") == config and restored.epoch <= args.epochs:
                state = restored
                print(f"{PROG}: resuming after epoch {state.epoch}", file=sys.stderr)
    bar = tqdm(desc=PROG, unit="batch", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, per_epoch: int) -> None:
        bar.total = per_epoch
        bar.n = done
        bar.refresh()

    def on_epoch(s: FitState) -> None:
        bar.write(f"epoch {s.epoch}/{args.epochs}"
                  + (f": held-out {s.history[-1]['valid_bits']:.3f} bits per mixture token"
                     if "valid_bits" in s.history[-1] else ""))
        buf = io.BytesIO()
        torch.save({"config": config, "epoch": s.epoch, "weights": s.weights,
                    "optimiser": s.optimiser, "history": s.history}, buf)
        write_atomically(partial, buf.getvalue())

    start = time.perf_counter()
    model, _ = fit_factorised(train, epochs=args.epochs, lr=args.lr, batch=args.batch,
                              seed=args.seed, valid=valid, state=state, on_epoch=on_epoch,
                              progress=progress)
    bar.close()
    model.meta["seconds"] = round(time.perf_counter() - start, 1)
    model.save(args.out)
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out}: K {model.k}, fitted to {train.meta.get('triples', '?')} triples "
          f"in {model.meta['seconds']:.0f} s")
    if valid is not None:
        bits = held_out_bits(model, valid)  # of the stored (float16) weights
        ref, alpha = backoff_bits(train, valid)
        print(f"held-out: factorised {bits:.3f} bits per mixture token; raw counts with "
              f"backoff smoothing (best alpha {alpha:g}) {ref:.3f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-fit-likelihood``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())

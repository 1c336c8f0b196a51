"""Hop / codebook-size trade-off of the convolutional VQ-VAE: train each setting, print a table.

    python scripts/codec_tradeoff.py --data data/synth --out runs/tradeoff --steps 250 \\
        --configs 32:1024 64:1024 64:2048 128:2048

Each ``hop:codes`` setting is trained with ``lass-train-vqvae`` (same seed, steps and batch)
into ``OUT/h<hop>-k<codes>``; finished runs are reused and unfinished ones resumed. The
table gives the validation reconstruction SDR (drums, bass, mixture), the codebook perplexity on the
validation codes and the training time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lass.cli.train_vqvae import main as train_main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", nargs="+", default=["32:1024", "64:1024", "64:2048", "128:2048"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: default)")
    args = p.parse_args()
    rows = []
    for spec in args.configs:
        hop, codes = (int(v) for v in spec.split(":"))
        run = args.out / f"h{hop}-k{codes}"
        train_args = ["--data", str(args.data), "--out", str(run), "--hop", str(hop),
                      "--codebook-size", str(codes), "--steps", str(args.steps),
                      "--batch", str(args.batch), "--seed", str(args.seed),
                      "--valid-every", str(args.steps), "--checkpoint-every", str(args.steps),
                      "--threads", str(args.threads)]
        summary_path = run / "summary.json"
        finished = summary_path.is_file() and \
            json.loads(summary_path.read_text())["step"] >= args.steps
        if not finished:
            if (run / "trainer.pt").is_file():
                train_args.append("--resume")
            if train_main(train_args) != 0:
                raise SystemExit(f"training {spec} failed")
        summary = json.loads(summary_path.read_text())
        rows.append((hop, codes, summary["valid"], summary["last_run"], summary["step"],
                     summary["config"]["sample_rate"]))
    print("| hop | codes | tokens/s | steps | SDR drums | SDR bass | SDR mixture | perplexity "
          "| used codes | train time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for hop, codes, valid, run, step, rate in rows:
        minutes = run["wall_seconds"] / 60
        print(f"| {hop} | {codes} | {rate / hop:.1f} | {step} | {valid['sdr_drums']:.2f} | "
              f"{valid['sdr_bass']:.2f} | {valid['sdr_mixture']:.2f} | {valid['perplexity']:.0f} "
              f"| {valid['used_codes']} | {minutes:.0f} min ({run['device']}) |")


if __name__ == "__main__":
    main()

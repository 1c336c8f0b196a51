"""``lass-fit-latent``: fit the latent likelihood p(h_mix[t] | source tokens) on a stem data set.

    lass-fit-latent --codec runs/codec/model --data data/synth --hours 1 --out latent.npz

Mixtures are made as ``lass-count-likelihood`` makes them (the same ``--seed`` gives the
same mixtures): a random non-silent chunk of each source with a random gain in
``--gain-db``, mixed by the data set's rule. Each mixture's encoder output (before
quantisation) and both sources' tokens are kept, then the additive Gaussian model of
:mod:`likelihood.latent` is fitted to them (``--context`` tokens per source). Encoding is
the long part: it is checkpointed to ``OUT.encoded.pt`` and a killed run started again
resumes where it stopped. Prints how much of the latents' variance the model explains.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lass.cli import run_cli
from lass.cli.common import dataset_mix_rule, resolve_device
from lass.counting import MixturePlan
from lass.data import StemDataset, chunk_samples, find_tracks, mix
from lass.errors import DataError
from likelihood.latent import fit_latent
from vqvae import Codec, load_codec
from vqvae.files import write_bytes_atomic as write_atomically

PROG = "lass-fit-latent"


def add_mixture_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the encoded training mixtures (shared with ``lass-fit-evidence``)."""
    p.add_argument("--codec", type=Path, required=True, help="saved codec directory")
    p.add_argument("--data", type=Path, required=True, help="stem data set root")
    p.add_argument("--sources", nargs="+", default=["drums", "bass"])
    p.add_argument("--split", default="train")
    p.add_argument("--layout", default="auto")
    p.add_argument("--mix", default=None, help="mixing rule (default: the data set's, or mean)")
    p.add_argument("--hours", type=float, default=1.0, help="hours of mixtures")
    p.add_argument("--chunk-seconds", type=float, default=3.0)
    p.add_argument("--gain-db", type=float, nargs=2, default=[-6.0, 0.0], metavar=("LO", "HI"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="mixtures encoded together")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_mixture_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="latent likelihood file (.npz)")
    p.add_argument("--context", type=int, default=2,
                   help="tokens per source the latent of a step depends on (this and the past)")
    p.add_argument("--passes", type=int, default=12, help="least-squares passes")
    return p


def _save_encoded(path: Path, config: dict[str, Any], parts: dict[str, list[torch.Tensor]]
                  ) -> None:
    buf = io.BytesIO()
    torch.save({"config": config, **{n: torch.cat(v) for n, v in parts.items() if v}}, buf)
    write_atomically(path, buf.getvalue())


def _load_encoded(path: Path, config: dict[str, Any]) -> dict[str, list[torch.Tensor]] | None:
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # a torn checkpoint: start over
        print(f"{PROG}: ignoring unreadable {path}", file=sys.stderr)
        return None
    if not isinstance(saved, dict) or saved.get("config") != config:
        return None
    names = ("tokens", "latents", "waves") if config.get("waves") else ("tokens", "latents")
    return {n: [saved[n]] for n in names}


def encode_mixtures(args: argparse.Namespace, prog: str, encoded: Path, keep: bool = False,
                    waves: bool = False
                    ) -> tuple[Codec, dict[str, Any], dict[str, torch.Tensor], float]:
    """Encode the training mixtures :func:`add_mixture_arguments` describe, resuming from
    (and checkpointing to) ``encoded`` (``keep``: always write it at the end, for other
    processes to read).

    Returns the codec, the description of the mixtures, ``tokens: (n, N, tokens)`` the N
    sources' tokens and ``latents: (n, tokens, D)`` float16 the mixtures' encoder outputs
    (and with ``waves`` ``waves: (n, time)`` float16 the mixtures themselves), and the
    seconds spent encoding.
    """
    if len(args.sources) < 2 or len(set(args.sources)) != len(args.sources):
        raise DataError("--sources needs at least two distinct stems")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.hours <= 0:
        raise DataError("--hours must be positive")
    encoded.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    codec: Codec = load_codec(args.codec, device=device)
    rule = dataset_mix_rule(args.data, args.mix)
    chunk = chunk_samples(args.chunk_seconds, codec.sample_rate)
    tracks = find_tracks(args.data, args.split, args.sources, args.layout)
    pools = [StemDataset(tracks, sample_rate=codec.sample_rate, chunk=chunk, stems=[s],
                         shuffle=False) for s in args.sources]
    plan = MixturePlan(pools, False, tuple(args.gain_db), rule, args.seed)
    total = max(1, math.ceil(args.hours * 3600 / args.chunk_seconds))
    config: dict[str, Any] = {
        "k": codec.codebook_size, "codec_identity": codec.identity(), "mix": rule,
        "sources": list(args.sources),
        "data": {"root": str(args.data.resolve()), "split": args.split, "layout": args.layout,
                 "tracks": len(tracks)},
        "chunk_seconds": args.chunk_seconds, "gain_db": list(args.gain_db), "seed": args.seed,
        "mixtures": total}
    parts: dict[str, list[torch.Tensor]] = {"tokens": [], "latents": []}
    if waves:
        config["waves"] = True
        parts["waves"] = []
    if encoded.is_file():
        loaded = _load_encoded(encoded, config)
        if loaded is not None:
            parts = loaded
            print(f"{prog}: resuming at mixture {len(parts['tokens'][0])} of {total}",
                  file=sys.stderr)
    done = sum(len(x) for x in parts["tokens"])
    start = last_save = time.perf_counter()
    bar = tqdm(total=total, initial=done, desc="encoding", unit="mix", file=sys.stderr,
               dynamic_ncols=True)
    try:
        while done < total:
            batch = range(done, min(total, done + args.batch))
            sources = torch.stack([plan.sources(n) for n in batch])  # (b, N, time)
            mixture = mix(sources, rule, dim=1).to(codec.device)
            with torch.no_grad():
                codes = codec.encode(sources.flatten(0, 1).to(codec.device))  # (b N, tokens)
                latents = codec.latents(mixture).transpose(1, 2)  # (b, tokens, D)
            b = len(batch)
            parts["tokens"].append(codes.view(b, len(args.sources), -1).cpu())
            parts["latents"].append(latents.half().cpu())
            if waves:
                parts["waves"].append(mixture.half().cpu())
            done += b
            bar.update(b)
            if time.perf_counter() - last_save > args.checkpoint_seconds and done < total:
                _save_encoded(encoded, config, parts)
                last_save = time.perf_counter()
    finally:
        bar.close()
    encode_seconds = time.perf_counter() - start
    if done and (keep or time.perf_counter() - start > args.checkpoint_seconds):
        _save_encoded(encoded, config, parts)  # the fit can be resumed from here
    return codec, config, {n: torch.cat(v) for n, v in parts.items()}, encode_seconds


def _fit(args: argparse.Namespace) -> int:
    if args.context < 1 or args.passes < 1:
        raise DataError("--context and --passes must be positive")
    encoded = args.out.with_name(args.out.name + ".encoded.pt")
    if len(args.sources) != 2:
        raise DataError("the latent likelihood is for two sources")
    codec, config, parts, encode_seconds = encode_mixtures(args, PROG, encoded)
    done = parts["tokens"].shape[0]
    t0 = time.perf_counter()
    fit_bar = tqdm(total=args.passes, desc="fitting", unit="pass", file=sys.stderr,
                   dynamic_ncols=True)

    def fit_progress(done_passes: int, _total: int) -> None:
        fit_bar.update(done_passes - fit_bar.n)

    model = fit_latent(parts["tokens"][:, 0], parts["tokens"][:, 1], parts["latents"].float(),
                       codec.codebook_size,
                       context=args.context, passes=args.passes,
                       meta={**config, "hours": args.hours, "passes": args.passes},
                       progress=fit_progress)
    fit_bar.close()
    model.save(args.out)
    encoded.unlink(missing_ok=True)
    print(f"wrote {args.out}: K {model.k}, D {model.dim}, context {model.context}; "
          f"{model.meta['steps']:,} steps of {done} mixtures; explained variance "
          f"{model.meta['explained_variance']:.3f}; encoding {encode_seconds:.0f} s, fit "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    return _fit(_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lass-fit-latent``."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())

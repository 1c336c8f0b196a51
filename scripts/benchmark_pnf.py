"""LASS against PnF-style Langevin separation: wall time and SDR on the same mixtures.

    python scripts/benchmark_pnf.py --data data/synth --mixtures 2 --seconds 0.5
    python scripts/benchmark_pnf.py --data data/synth --seconds 3 --device cuda   # full setting

On the same test mixtures (drawn as ``lass-evaluate`` draws them) and the same machine, in
one run: LASS with the bundle's beam search, and annealed Langevin separation with the PnF
schedule (24 levels, 256 window updates per level, windows of 20000 samples with the
receptive field as context) using WaveNet priors of two sizes: one with about the parameter
count of the bundle's prior (``--small``: stacks, layers, channels) and PnF's own (4.0M
parameters, receptive field 6139). The methods alternate mixture by mixture. Each WaveNet
is either loaded (``--wavenet-small DRUMS_DIR BASS_DIR`` / ``--wavenet-pnf ...``, trained with
``lass-train-prior --kind wavenet``) or, without them, untrained: its time is then real but
its SDR is not that of a trained model (the table says which).

``--steps-per-level`` below 256 shortens the schedule; the table states the steps and the
mixture length it measured. Times are never extrapolated.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

from lass.data import StemDataset, chunk_samples, find_tracks, mix_gain
from lass.evaluate import evaluation_mixtures, mixture_of, plain_sdr
from lass.langevin import LangevinSeparator, pnf_schedule
from lass.separator import Separator
from priors.wavenet import WaveNetConfig, WaveNetPrior, load_wavenet


def _wavenets(dirs: Sequence[str] | None, config: WaveNetConfig, stems: Sequence[str],
              device: str) -> tuple[dict[str, WaveNetPrior], bool]:
    if dirs:
        return {s: load_wavenet(d, device=device) for s, d in zip(stems, dirs, strict=True)}, True
    out = {}
    for i, s in enumerate(stems):
        torch.manual_seed(i)
        out[s] = WaveNetPrior(config).to(device).eval()
    return out, False


PNF_UPDATES_PER_LEVEL = 256  # PnF's window updates per noise level


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", default=None, help="LASS bundle (default: the embedded one)")
    p.add_argument("--mixtures", type=int, default=2)
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--steps-per-level", type=int, default=256)
    p.add_argument("--small", type=int, nargs=4, default=[3, 10, 96, 192],
                   metavar=("STACKS", "LAYERS", "RESIDUAL", "GATE"),
                   help="the WaveNet of about the LASS prior's size")
    p.add_argument("--wavenet-small", nargs=2, default=None, metavar=("DRUMS", "BASS"))
    p.add_argument("--wavenet-pnf", nargs=2, default=None, metavar=("DRUMS", "BASS"))
    p.add_argument("--skip-pnf-size", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lass = Separator.from_pretrained(args.bundle, device=args.device)
    rate = lass.codec.sample_rate
    stems = list(lass.stems)
    prior_params = sum(x.numel() for x in next(iter(lass.priors.values())).parameters())
    ds = StemDataset(find_tracks(args.data, "test", stems, "auto"), sample_rate=rate,
                     chunk=chunk_samples(args.seconds, rate), stems=stems)
    mixtures = evaluation_mixtures(ds, args.mixtures, args.seed)
    st, ly, rs, gt = args.small
    small_cfg = WaveNetConfig(stacks=st, layers=ly, residual=rs, gate=gt, skip=rs,
                              sample_rate=rate)
    methods: dict[str, tuple[Separator | LangevinSeparator, str]] = {"LASS (beam)": (lass, "")}
    configs = [("small", small_cfg, args.wavenet_small)]
    if not args.skip_pnf_size:
        configs.append(("PnF size", WaveNetConfig(sample_rate=rate), args.wavenet_pnf))
    for label, cfg, dirs in configs:
        nets, trained = _wavenets(dirs, cfg, stems, args.device)
        params = sum(x.numel() for x in next(iter(nets.values())).parameters())
        sched = pnf_schedule(cfg.receptive_field, steps=args.steps_per_level)
        lsep = LangevinSeparator(nets, tuple(stems), rate, lass.mix_rule, sched)
        note = f"{params / 1e6:.2f}M, RF {cfg.receptive_field}" + (
            "" if trained else ", untrained")
        methods[f"PnF Langevin, WaveNet {label}"] = (lsep, note)
    gain = mix_gain(2, lass.mix_rule)
    times: dict[str, list[float]] = {m: [] for m in methods}
    sdrs: dict[str, list[float]] = {m: [] for m in methods}
    for m in mixtures:
        mixed = mixture_of(m.stems, lass.mix_rule)
        refs = gain * m.stems
        for name, (sep, _) in methods.items():
            start = time.perf_counter()
            res = sep.separate_detailed(mixed, rate)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            sdrs[name].append(float(np.mean([plain_sdr(res.stems[s], refs[i])
                                             for i, s in enumerate(stems)])))
    base = statistics.median(times["LASS (beam)"])
    print(f"{len(mixtures)} test mixtures of {args.seconds:g} s, device {args.device}, "
          f"{torch.get_num_threads()} threads; PnF schedule: 24 levels x "
          f"{args.steps_per_level} window updates; LASS prior {prior_params / 1e6:.2f}M")
    print("| method | prior | s per mixture (median) | x LASS time | SDR dB (mean) |")
    print("|---|---|---|---|---|")
    for name, (_, note) in methods.items():
        t = statistics.median(times[name])
        print(f"| {name} | {note or f'{prior_params / 1e6:.2f}M Transformer'} | {t:.2f} | "
              f"{t / base:.1f} | {np.mean(sdrs[name]):.2f} |")
    # The Langevin rows ran a fraction of PnF's schedule (24 levels x 256 window updates);
    # the full schedule's time is computed from the measured time per update, not measured.
    full = 24 * PNF_UPDATES_PER_LEVEL
    done = 24 * args.steps_per_level
    print(f"\nPnF's schedule has {full} window updates per mixture; these runs made {done} "
          f"({done / full:.2%} of it).")
    print("| method | s per window update (measured) | full schedule, s per mixture "
          "(computed) | LASS, s per mixture (measured) |")
    print("|---|---|---|---|")
    for name in methods:
        if name.startswith("PnF"):
            per_update = statistics.median(times[name]) / done
            print(f"| {name} | {per_update:.4f} | {per_update * full:.1f} | {base:.2f} |")


if __name__ == "__main__":
    main()

"""Evaluation: test mixtures, separation methods and metrics (museval v4 SDR, plain SDR, SI-SDR).

Mixtures follow the paper: fixed-length chunks of the test split in which both stems are
non-silent, mixed with the bundle's rule, drawn with a fixed seed. Every method returns each
stem's *contribution* to the mixture (the rule's gain times the source), and the references
are the true contributions, so the metrics equal those of the sources themselves (SDR is
invariant to a common gain).

museval's BSSEval v4 SDR is computed with window = hop = the sample rate and the median over
windows per mixture (REFERENCE.md); silent windows give NaN and are dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lass.data import StemDataset, mix, mix_gain
from lass.errors import DataError
from lass.separator import (
    COMBINES,
    OUTPUTS,
    SeparationSettings,
    Separator,
    combine_candidates,
    make_sampler,
    soft_masks,
)
from lass.supervised import ConvTasNet

METHOD_SAMPLERS = ("beam", "greedy", "topk", "ancestral")


def plain_sdr(est: np.ndarray, ref: np.ndarray, eps: float = 1e-10) -> float:
    """``10 log10(sum ref^2 / sum (ref - est)^2)`` in dB."""
    return float(10 * np.log10((np.sum(ref**2) + eps) / (np.sum((ref - est) ** 2) + eps)))


def si_sdr(est: np.ndarray, ref: np.ndarray, eps: float = 1e-10) -> float:
    """Scale-invariant SDR in dB (the reference scaled to best fit the estimate)."""
    alpha = float(np.dot(est, ref) / (np.dot(ref, ref) + eps))
    target = alpha * ref
    return float(10 * np.log10((np.sum(target**2) + eps) / (np.sum((est - target) ** 2) + eps)))


def museval_sdr(est: np.ndarray, ref: np.ndarray, sample_rate: int) -> np.ndarray:
    """BSSEval v4 SDR per source: ``(sources, time)`` arrays -> ``(sources,)`` medians over
    windows of one second (NaN when every window is silent)."""
    import museval  # imported lazily: it needs ffmpeg on PATH (through musdb/stempeg)

    sdr = museval.evaluate(ref[:, :, None].astype(np.float64), est[:, :, None].astype(np.float64),
                           win=sample_rate, hop=sample_rate)[0]
    with np.errstate(all="ignore"):
        return np.array([np.nanmedian(row) if np.any(np.isfinite(row)) else math.nan
                         for row in sdr])


@dataclass(frozen=True)
class EvalMixture:
    """A test mixture: ``stems (2, time)`` sources and where they come from."""

    index: int
    track: str
    start: int
    stems: np.ndarray


def evaluation_mixtures(data: StemDataset, count: int, seed: int = 0) -> list[EvalMixture]:
    """``count`` chunks whose stems are all non-silent, in a seeded order."""
    data.seed, data.shuffle = seed, True
    out: list[EvalMixture] = []
    for chunk in data:
        out.append(EvalMixture(len(out), chunk.track, chunk.start, chunk.audio.numpy()))
        if len(out) == count:
            break
    if not out:
        raise DataError("no test chunk has every stem non-silent")
    return out


Method = Callable[[np.ndarray, np.ndarray], np.ndarray]

BLIND_FFT = 2048
BLIND_HOP = 512
#: NMF components whose basis has half its energy below this go to the non-drum stem.
NMF_BASS_MEDIAN_HZ = 250.0
NMF_COMPONENTS = 16


def _drum_index(stems: tuple[str, ...] | list[str]) -> int:
    """Index of the percussive stem: the first whose name holds "drum" (else the first)."""
    return next((i for i, s in enumerate(stems) if "drum" in s.lower()), 0)


def _masked(mixture: np.ndarray, models: list[np.ndarray], power: float = 2.0) -> np.ndarray:
    """Ratio masks from magnitude models ``(freq, frames)`` on the mixture's STFT."""
    import librosa

    spec = librosa.stft(mixture.astype(np.float32), n_fft=BLIND_FFT, hop_length=BLIND_HOP)
    mags = np.stack([m ** power for m in models])
    total = mags.sum(0)
    masks = np.where(total > 1e-20, mags / np.maximum(total, 1e-20), 1.0 / len(models))
    return np.stack([librosa.istft(mask * spec, hop_length=BLIND_HOP, n_fft=BLIND_FFT,
                                   length=mixture.shape[0]) for mask in masks]).astype(np.float32)


def hpss_separate(mixture: np.ndarray, stems: tuple[str, ...] | list[str]) -> np.ndarray:
    """HPSS baseline (librosa median filtering): percussive part -> the drum stem, harmonic
    part -> the other; ``(time,)`` -> ``(2, time)`` contributions that sum to the mixture."""
    import librosa

    spec = np.abs(librosa.stft(mixture.astype(np.float32), n_fft=BLIND_FFT,
                               hop_length=BLIND_HOP))
    harmonic, percussive = librosa.decompose.hpss(spec)
    d = _drum_index(stems)
    models = [harmonic] * len(stems)
    models[d] = percussive
    return _masked(mixture, models)


def nmf_separate(mixture: np.ndarray, stems: tuple[str, ...] | list[str], sample_rate: int,
                 components: int = NMF_COMPONENTS, seed: int = 0) -> np.ndarray:
    """NMF baseline: ``components`` NMF components of the magnitude spectrogram; those whose
    basis has half its energy below ``NMF_BASS_MEDIAN_HZ`` model the non-drum stem,
    the rest the drum stem; ratio masks of the two groups on the mixture's STFT."""
    import librosa

    spec = np.abs(librosa.stft(mixture.astype(np.float32), n_fft=BLIND_FFT,
                               hop_length=BLIND_HOP))
    w, h = librosa.decompose.decompose(spec, n_components=components, random_state=seed,
                                       max_iter=400, init="nndsvda")
    freqs = librosa.fft_frequencies(sr=sample_rate, n_fft=BLIND_FFT)
    energy = np.cumsum(w**2, axis=0)
    median = freqs[np.argmax(energy >= 0.5 * energy[-1:], axis=0)]  # (components,)
    low = median < NMF_BASS_MEDIAN_HZ
    d = _drum_index(stems)
    models = [w[:, low] @ h[low]] * len(stems)
    models[d] = w[:, ~low] @ h[~low]
    return _masked(mixture, models)


def parse_lass_method(name: str) -> tuple[str, str, str]:
    """``lass-<sampler>-<decode|mask>[-<best|rerank|mean>]`` -> (sampler, output, combine);
    without the last part the candidates are re-ranked (``rerank``)."""
    parts = name.split("-")
    if len(parts) not in (3, 4) or parts[0] != "lass" or parts[1] not in METHOD_SAMPLERS \
            or parts[2] not in OUTPUTS or (len(parts) == 4 and parts[3] not in COMBINES):
        raise DataError(f"unknown method {name!r}; LASS methods are lass-SAMPLER-OUTPUT"
                        f"[-COMBINE] with SAMPLER in {', '.join(METHOD_SAMPLERS)}, OUTPUT in "
                        f"{', '.join(OUTPUTS)}, COMBINE in {', '.join(COMBINES)}")
    return parts[1], parts[2], parts[3] if len(parts) == 4 else "rerank"


class LassSearches:
    """The LASS methods' searches: one per sampler and mixture, shared by the methods that
    use that sampler, run for a group of mixtures at once (:meth:`prefetch`).

    Args:
        separator: the bundle's separator (its lambda, context overlap, prior_top and
            rerank_top are used).
        averaged: samplers some method combines with ``mean`` (their candidates are all
            decoded; the others' best ``rerank_top``).
        beams, top_k, candidates, temperature: the samplers' settings; ``candidates`` samples
            per mixture for the sampling samplers.
    """

    def __init__(self, separator: Separator, averaged: set[str], beams: int = 10,
                 top_k: int = 16, candidates: int = 1, temperature: float = 1.0) -> None:
        self.separator, self.averaged = separator, averaged
        self.beams, self.top_k = beams, top_k
        self.candidates, self.temperature = candidates, temperature
        self._cache: dict[tuple[str, bytes], np.ndarray] = {}
        self._seconds: dict[tuple[str, bytes], float] = {}

    def seconds(self, kind: str, mixture: np.ndarray) -> float:
        """Wall seconds of sampler ``kind``'s search of ``mixture`` (its share of the batched
        search: encoding, search and decoding divided by the mixtures searched together)."""
        return self._seconds.get((kind, mixture.tobytes()), 0.0)

    @classmethod
    def for_methods(cls, separator: Separator, names: Sequence[str], beams: int = 10,
                    top_k: int = 16, candidates: int = 1, temperature: float = 1.0
                    ) -> LassSearches:
        """The searches the methods ``names`` need (see :func:`make_methods`)."""
        parsed = [parse_lass_method(n) for n in names if n.startswith("lass-")]
        averaged = {kind for kind, _, combine in parsed if combine == "mean"}
        return cls(separator, averaged, beams=beams, top_k=top_k, candidates=candidates,
                   temperature=temperature)

    def settings(self, kind: str) -> SeparationSettings:
        """The separation settings of sampler ``kind``."""
        base = self.separator.settings
        return SeparationSettings(
            sampler=make_sampler(kind, beams=self.beams, top_k=self.top_k,
                                 temperature=self.temperature),
            lam=base.lam, candidates=1 if kind in ("beam", "greedy") else self.candidates,
            combine="mean" if kind in self.averaged else "rerank", output="decode",
            context_overlap=base.context_overlap, prior_top=base.prior_top,
            rerank_top=base.rerank_top, shifts=base.shifts,
            evidence_weight=base.evidence_weight)

    def prefetch(self, kinds: Sequence[str], mixtures: Sequence[np.ndarray]) -> None:
        """Search ``mixtures`` (each ``(time,)`` at the codec's rate) with every sampler in
        ``kinds``, all mixtures of one length in one batch. Results of other mixtures are
        dropped; those of these mixtures are kept and not searched again."""
        wanted = {m.tobytes() for m in mixtures}
        self._cache = {k: v for k, v in self._cache.items() if k[1] in wanted}
        self._seconds = {k: v for k, v in self._seconds.items() if k[1] in wanted}
        rate = self.separator.codec.sample_rate
        for kind in dict.fromkeys(kinds):
            todo = list({m.tobytes(): m for m in mixtures
                         if (kind, m.tobytes()) not in self._cache}.values())
            if not todo:
                continue
            start = time.perf_counter()
            results = self.separator.separate_many(todo, rate, self.settings(kind))
            share = (time.perf_counter() - start) / len(todo)
            for m, r in zip(todo, results, strict=True):
                if r.candidates is None:
                    raise DataError(f"mixtures of {m.shape[0] / rate:g} s are separated in "
                                    "segments, which keeps no candidates to score; evaluate "
                                    f"on mixtures of at most "
                                    f"{2 * self.separator.segment_seconds:g} s")
                self._cache[kind, m.tobytes()] = r.candidates
                self._seconds[kind, m.tobytes()] = share

    def __call__(self, kind: str, mixture: np.ndarray) -> np.ndarray:
        """``(C, N, time)`` decoded candidates of ``mixture`` under sampler ``kind``."""
        key = (kind, mixture.tobytes())
        if key not in self._cache:
            self.prefetch([kind], [mixture])
        return self._cache[key]


class OtherSeparations:
    """The separations of other bundles' separators (``langevin``, ``posterior``) for
    ``lass-evaluate``: each ``prefetch`` separates the mixtures it is given with every
    separator as one batch (``separate_many``), and the methods read the results.

    Args:
        separators: by method name, objects with ``separate_many(waves, rate)``.
        stems: the order of the stems the methods return.
        rate: the mixtures' sample rate.
    """

    def __init__(self, separators: dict[str, Any], stems: Sequence[str], rate: int) -> None:
        self.separators, self.stems, self.rate = separators, tuple(stems), rate
        self._cache: dict[tuple[str, bytes], np.ndarray] = {}
        self._seconds: dict[tuple[str, bytes], float] = {}

    def prefetch(self, names: Sequence[str], mixtures: Sequence[np.ndarray]) -> None:
        """Separate ``mixtures`` (each ``(time,)``) with the separators ``names``; results of
        other mixtures are dropped."""
        wanted = {m.tobytes() for m in mixtures}
        self._cache = {k: v for k, v in self._cache.items() if k[1] in wanted}
        self._seconds = {k: v for k, v in self._seconds.items() if k[1] in wanted}
        for name in names:
            todo = list({m.tobytes(): m for m in mixtures
                         if (name, m.tobytes()) not in self._cache}.values())
            if not todo:
                continue
            results = self.separators[name].separate_many(todo, self.rate)
            for m, r in zip(todo, results, strict=True):
                self._cache[name, m.tobytes()] = np.stack([r.stems[s] for s in self.stems])
                self._seconds[name, m.tobytes()] = float(sum(r.timings.values()))

    def __call__(self, name: str, mixture: np.ndarray) -> np.ndarray:
        """``(N, time)`` stems of ``mixture`` by the separator ``name``."""
        if (name, mixture.tobytes()) not in self._cache:
            self.prefetch([name], [mixture])
        return self._cache[name, mixture.tobytes()]

    def seconds(self, name: str, mixture: np.ndarray) -> float:
        """The separator's seconds for ``mixture`` (its share of the batch)."""
        return self._seconds.get((name, mixture.tobytes()), 0.0)


def lass_samplers(names: Sequence[str]) -> list[str]:
    """The samplers of the LASS methods among ``names``, in order, each once."""
    return list(dict.fromkeys(parse_lass_method(n)[0] for n in names if n.startswith("lass-")))


def make_methods(separator: Separator, names: list[str], beams: int = 10, top_k: int = 16,
                 candidates: int = 1, temperature: float = 1.0,
                 searches: LassSearches | None = None,
                 supervised: ConvTasNet | None = None,
                 others: OtherSeparations | None = None) -> dict[str, Method]:
    """Separation methods by name: ``lass-<sampler>-<decode|mask>[-<best|rerank|mean>]``,
    ``average``, ``oracle-decode``, ``oracle-mask``, ``hpss``, ``nmf`` and ``supervised``
    (the ``supervised`` network, :mod:`lass.supervised`), and ``langevin`` and ``posterior``
    (the separators of other bundles of the same stems, by these names, through
    ``others``: the time they take is ``others.seconds``). Each maps
    ``(mixture (time,), sources (N, time))`` to ``(N, time)`` contributions (only the oracles
    look at the sources). LASS methods with the same sampler share one search per mixture
    (``searches``; made here when not given, else its settings are used): its decoded
    candidates are combined and output as each method says (see
    :func:`lass.separator.combine_candidates`); the sampling samplers draw ``candidates``
    samples at ``temperature``."""
    n = len(separator.stems)
    gain = mix_gain(n, separator.mix_rule)
    rate = separator.codec.sample_rate
    lass = {name: parse_lass_method(name) for name in names if name.startswith("lass-")}
    if searches is None:
        searches = LassSearches.for_methods(separator, names, beams=beams, top_k=top_k,
                                            candidates=candidates, temperature=temperature)

    def oracle_decoded(sources: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            wave = torch.from_numpy(sources.astype(np.float32)).to(separator.device)
            dec = separator.codec.decode(separator.codec.encode(wave))[:, : sources.shape[1]]
        return gain * dec.cpu().numpy()

    methods: dict[str, Method] = {}
    for name in names:
        if name == "average":
            # Each source estimated as the mixture itself, as the paper's baseline.
            methods[name] = lambda m, s: np.stack([gain * m] * n)
        elif name == "oracle-decode":
            methods[name] = lambda m, s: oracle_decoded(s)
        elif name == "oracle-mask":
            methods[name] = lambda m, s: soft_masks(m, oracle_decoded(s))
        elif name == "hpss":
            methods[name] = lambda m, s: hpss_separate(m, separator.stems)
        elif name == "nmf":
            methods[name] = lambda m, s: nmf_separate(m, separator.stems, rate)
        elif name == "supervised":
            if supervised is None:
                raise DataError("the method 'supervised' needs a trained network")
            methods[name] = lambda m, s, net=supervised: net.separate(m)  # type: ignore[misc]
        elif name in ("langevin", "posterior"):
            if others is None or name not in others.separators:
                raise DataError(f"the method {name!r} needs a {name} bundle")
            methods[name] = (lambda m, s, name=name, others=others:  # type: ignore[misc]
                             others(name, m))
        elif name in lass:
            kind, output, combine = lass[name]
            methods[name] = (
                lambda m, s, kind=kind, output=output, combine=combine:  # type: ignore[misc]
                combine_candidates(m, searches(kind, m), combine, output,
                                   separator.settings.rerank_top, separator.settings.mask_fft,
                                   separator.settings.mask_iterations))
        else:
            raise DataError(f"unknown method {name!r}")
    return methods


def energy_db(est: np.ndarray, mixture: np.ndarray, eps: float = 1e-20) -> list[float]:
    """Each estimated stem's energy relative to the mixture's, in dB: ``(sources, time)``
    and ``(time,)`` -> one number per source (how much of the input a stem takes)."""
    total = float(np.sum(mixture.astype(np.float64) ** 2)) + eps
    return [float(10 * np.log10(float(np.sum(e.astype(np.float64) ** 2)) / total + eps))
            for e in est]


def score(est: np.ndarray, ref: np.ndarray, sample_rate: int) -> dict[str, list[float]]:
    """Metrics per source of ``(sources, time)`` estimates and references: ``museval`` (v4
    SDR), ``sdr``, ``si_sdr`` and ``energy_db`` (the estimate's energy relative to the
    mixture, the references' sum). A silent reference (a source left out of the mixture)
    has no SDR: its three SDRs are NaN, and ``energy_db`` says how much the method put in
    it."""
    present = np.any(ref != 0, axis=1)  # (sources,)
    museval = np.full(len(ref), math.nan)
    if present.any():
        museval[present] = museval_sdr(est[present], ref[present], sample_rate)
    return {"museval": [float(v) for v in museval],
            "sdr": [plain_sdr(e, r) if p else math.nan
                    for e, r, p in zip(est, ref, present, strict=True)],
            "si_sdr": [si_sdr(e, r) if p else math.nan
                       for e, r, p in zip(est, ref, present, strict=True)],
            "energy_db": energy_db(est, ref.sum(axis=0))}


def mixture_of(sources: np.ndarray, rule: str) -> np.ndarray:
    """``(N, time)`` -> ``(time,)`` by the mixing rule."""
    return np.asarray(mix(sources, rule, dim=0), dtype=np.float32)

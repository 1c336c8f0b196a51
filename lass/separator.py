"""The LASS separator: codec + one prior per source + likelihood (counted or latent) + settings.

``Separator.from_pretrained(name_or_path)`` loads a bundle (see :mod:`lass.bundle`);
``separate(wave, sample_rate)`` returns ``{stem: wave}`` at the input's rate and length.
Stems are each source's *contribution* to the input (the mixing rule's gain applied), so
they add up to the input: exactly with ``output="mask"``, approximately with ``"decode"``.

Pipeline: downmix to mono, resample to the codec's rate, encode, separate the tokens
(:func:`lass.sampling.separate_tokens`; long inputs continue across the priors' context
windows), decode the candidate separations, keep the one whose decodings mix back closest
to the input (re-ranking, when there are several), optionally refine its dense latents so
the decodings mix back to the input (the paper's Eqs. 12-13), then either return the
decodings (``decode``) or use them as soft masks on the input's STFT (``mask``).

Several candidates (posterior samples, or beams) can also be combined instead of choosing
one (``combine="mean"``): the stems are then the mean of the candidates' decodings
(``decode``) or the input's STFT under Wiener masks built from the candidates' mean
magnitude spectrogram (``mask``; :func:`soft_masks`, whose STFT size and EM updates are
settings). With samples of the posterior this approximates the posterior mean, which is what
a squared-error measure such as SDR rewards: the samples' errors partly cancel where a single
search result keeps all of its own.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from lass.bundle import BundleSpec, read_bundle
from lass.data.audio import resample as resample_to
from lass.data.mixing import check_mix_rule, mix, mix_gain, sum_to_input
from lass.errors import LassError
from lass.sampling import TokenSeparation, separate_tokens
from lass.settings import (  # noqa: F401  (re-exported: the separator's settings)
    COMBINES,
    MASK_FFT,
    OUTPUTS,
    SeparationSettings,
    make_sampler,
    settings_from_bundle,
)
from likelihood import CountLikelihood
from likelihood.evidence import TokenEvidence
from likelihood.latent import LatentLikelihood
from priors import Prior, TransformerPrior, load_prior
from vqvae import Codec, load_codec

if TYPE_CHECKING:
    from lass.images import ImageSeparator
    from lass.langevin import LangevinSeparator
    from lass.posterior import PosteriorSeparator

MAX_CHANNELS = 8  # a 2-D input with more rows than this has time first
#: Inputs longer than two segments of this many seconds are decoded and masked segment by
#: segment (:meth:`Separator.segmented`).
SEGMENT_SECONDS = 30.0
#: Codec-rate samples the resampler's filter reaches on each side (soxr "HQ" between the
#: rates used here reaches about a hundred; a margin of safety).
RESAMPLE_REACH = 1024


@dataclass(frozen=True)
class SeparationResult:
    """Stems and what produced them.

    Attributes:
        stems: stem name -> float32 contribution at ``sample_rate``, shaped like the input:
            ``(time,)``, ``(channels, time)`` or ``(time, channels)``.
        sample_rate: rate of the stems (the input's).
        tokens: the chosen token sequences per stem, ``(tokens,)`` int64 (with
            ``combine="mean"``: the highest-scoring candidate's).
        candidates: ``(C, N, time)`` the decoded candidates' contributions at
            ``sample_rate``, best score first, before any refinement; ``None`` for a long
            input whose output is made segment by segment (:meth:`Separator.segmented`).
        score: the log posterior score of the candidate ``tokens`` holds.
        fallback_steps: steps whose mixture token had no candidate pair (summed over the
            shifted copies).
        timings: seconds per phase.
        shift: the delay (samples at the codec's rate) of the copy of the input whose
            tokens ``tokens`` holds (0 without ``shifts``).
    """

    stems: dict[str, np.ndarray]
    sample_rate: int
    tokens: dict[str, np.ndarray]
    candidates: np.ndarray | None
    score: float
    fallback_steps: int
    timings: dict[str, float]
    shift: int = 0


def waveform_result(estimates: np.ndarray, stems: Sequence[str], gain: float, model_rate: int,
                    wave: np.ndarray, sample_rate: int, method: str, seconds: float
                    ) -> SeparationResult:
    """The result of a separator that estimates sources as waveforms (Langevin chains,
    posterior means): ``estimates: (N, time at model_rate)`` in source units, scaled by the
    mixing rule's ``gain`` to contributions, resampled to the input ``wave: (time,)`` at
    ``sample_rate`` and made to add up to it (:func:`lass.data.mixing.sum_to_input`);
    ``seconds`` is recorded as the timing of ``method``."""
    parts = sum_to_input(np.stack([resample_to(gain * e, model_rate, sample_rate,
                                               wave.shape[0]) for e in estimates]), wave)
    return SeparationResult(stems=dict(zip(stems, parts, strict=True)), sample_rate=sample_rate,
                            tokens={}, candidates=parts[None], score=float("nan"),
                            fallback_steps=0, timings={method: seconds})


def shift_offsets(shifts: int, hop: int) -> list[int]:
    """The delays (samples at the codec's rate) of the ``shifts`` copies of an input: spread
    evenly over one hop, ``round(k * hop / shifts)`` for ``k = 0 .. shifts - 1``."""
    if not 1 <= shifts <= hop:
        raise LassError(f"shifts must be between 1 and the codec's hop ({hop}), not {shifts}")
    return [round(k * hop / shifts) for k in range(shifts)]


def check_mask_settings(fft: int, iterations: int) -> None:
    """Raise :class:`LassError` unless ``fft`` (the mask STFT size) is even and at least 16
    and ``iterations`` (its EM updates) is at least 0."""
    if fft < 16 or fft % 2:
        raise LassError(f"mask_fft must be even and at least 16, not {fft}")
    if iterations < 0:
        raise LassError(f"mask_iterations must be >= 0, not {iterations}")


def mask_fft_at(fft: int, sample_rate: int, codec_rate: int) -> int:
    """The STFT size at ``sample_rate`` with the time and frequency resolution that ``fft``
    samples have at ``codec_rate`` (the power of two nearest in log scale, at least 16)."""
    check_mask_settings(fft, 0)
    if sample_rate == codec_rate:
        return fft
    return max(16, 2 ** round(math.log2(fft * sample_rate / codec_rate)))


def soft_masks(mixture: np.ndarray, estimates: np.ndarray, fft: int = MASK_FFT,
               iterations: int = 0, channels: np.ndarray | None = None) -> np.ndarray:
    """Stems from Wiener masks on the mixture's STFT.

    Each source's power spectrogram is taken as ``v_j = (mean_c |STFT(estimate_cj)|)^2``,
    the square of the candidates' mean magnitude (one candidate: its own power), and source
    ``j`` is ``istft(v_j / sum_k v_k * X)`` with ``X`` the mixture's STFT. ``iterations``
    expectation-maximisation updates of the single-channel Gaussian model come first: with
    the masks ``m_j = v_j / sum_k v_k``, ``v_j <- |m_j X|^2 + (1 - m_j) v_j`` (the posterior
    mean of ``|S_j|^2`` given ``X``), which pulls the powers towards what the mixture holds.

    Args:
        mixture: ``(time,)``.
        estimates: ``(sources, time)``, or ``(candidates, sources, time)``.
        fft: STFT size (Hann window, hop ``fft // 4``); halved while it is more than twice
            the input's length.
        iterations: EM updates of the powers (0: the plain ratio masks).
        channels: ``(channels, time)``: the input's channels (``mixture`` is their
            downmix). The masks, computed once from ``mixture``, are applied to each
            channel's STFT.

    Returns:
        ``(sources, time)`` that sum to ``mixture`` (the masks sum to one over the sources
        and the STFT is inverted exactly); with ``channels``, ``(sources, channels, time)``
        that sum to each channel.
    """
    check_mask_settings(fft, iterations)
    n = mixture.shape[0]
    while fft > 16 and fft // 2 >= n:
        fft //= 2
    hop = max(1, fft // 4)
    window = torch.hann_window(fft, dtype=torch.float64)
    many = estimates if estimates.ndim == 3 else estimates[None]

    def stft(x: np.ndarray) -> torch.Tensor:
        wave = torch.from_numpy(np.asarray(x, dtype=np.float64))
        spec = torch.stft(wave.reshape(-1, n), fft, hop, window=window, center=True,
                          return_complex=True)
        return spec.reshape(*wave.shape[:-1], *spec.shape[-2:])

    spec_mix = stft(mixture)  # (F, frames)
    magnitude = torch.zeros((many.shape[1], *spec_mix.shape), dtype=torch.float64)
    for candidate in many:  # one at a time: a long input's spectrograms are large
        magnitude += stft(candidate).abs()
    power = (magnitude / many.shape[0]) ** 2  # (sources, F, frames)
    sources = many.shape[1]

    def ratio(v: torch.Tensor) -> torch.Tensor:
        total = v.sum(0, keepdim=True)
        return torch.where(total > 1e-20, v / total.clamp_min(1e-20),
                           torch.full_like(v, 1.0 / sources))

    for _ in range(iterations):
        m = ratio(power)
        power = (m * spec_mix[None]).abs() ** 2 + (1.0 - m) * power
    masks = ratio(power)
    if channels is None:
        out = torch.istft(masks * spec_mix[None], fft, hop, window=window, center=True,
                          length=n)
        return out.numpy().astype(np.float32)
    per_channel = [torch.istft(masks * stft(c)[None], fft, hop, window=window, center=True,
                               length=n).numpy().astype(np.float32) for c in channels]
    return np.stack(per_channel, axis=1)


def choose_candidates(mixture: np.ndarray, candidates: np.ndarray, combine: str,
                      rerank_top: int = 4) -> np.ndarray:
    """Which candidates make the stems: indices into ``candidates``, the first the main one.

    Args:
        mixture: ``(time,)`` the input.
        candidates: ``(C, N, time)`` contributions (they should sum to ``mixture``), best
            score first.
        combine: ``best`` (index 0), ``rerank`` (among the first ``rerank_top``, the one
            whose contributions sum closest to ``mixture``) or ``mean`` (all, best first).
    """
    if combine == "best" or candidates.shape[0] == 1:
        return np.zeros(1, dtype=np.int64)
    if combine == "rerank":
        top = candidates[: max(1, rerank_top)]
        err = ((top.sum(1) - mixture[None]) ** 2).sum(-1)
        return np.array([int(err.argmin())], dtype=np.int64)
    if combine == "mean":
        return np.arange(candidates.shape[0], dtype=np.int64)
    raise LassError(f"unknown combine {combine!r}; expected best, rerank or mean")


def output_stems(mixture: np.ndarray, used: np.ndarray, output: str, mask_fft: int = MASK_FFT,
                 mask_iterations: int = 0, channels: np.ndarray | None = None) -> np.ndarray:
    """``(C, N, time)`` chosen candidates -> ``(N, time)`` stems: their mean (``decode``) or
    the mixture under the Wiener masks of their mean magnitude (``mask``, see
    :func:`soft_masks`). With the input's ``channels: (channels, time)``, ``(N, channels,
    time)``: the masks of the downmix on each channel, or the decoded mean on every
    channel (``decode`` knows only the downmix)."""
    if output == "mask":
        return soft_masks(mixture, used, mask_fft, mask_iterations, channels)
    if output == "decode":
        mean = used.mean(0).astype(np.float32)
        if channels is None:
            return mean
        return np.repeat(mean[:, None], channels.shape[0], axis=1)
    raise LassError(f"unknown output {output!r}; expected decode or mask")


def combine_candidates(mixture: np.ndarray, candidates: np.ndarray, combine: str, output: str,
                       rerank_top: int = 4, mask_fft: int = MASK_FFT, mask_iterations: int = 0
                       ) -> np.ndarray:
    """``(C, N, time)`` candidates -> ``(N, time)`` stems: the ones
    :func:`choose_candidates` picks, through :func:`output_stems`."""
    used = candidates[choose_candidates(mixture, candidates, combine, rerank_top)]
    return output_stems(mixture, used, output, mask_fft, mask_iterations)


def separate_each(separate_many: Callable[[list[Any]], list[SeparationResult]],
                  waves: Sequence[Any]) -> list[SeparationResult | LassError]:
    """Separate ``waves`` together with ``separate_many`` (any separator's, bound to its
    rate and settings) so that one bad input does not cost the others their results: when
    the batch raises a :class:`LassError` (an input that is silent, too short, not finite,
    ...), the inputs are separated again one by one. Returns, per input, its
    :class:`SeparationResult` or the error of that input alone."""
    try:
        return list(separate_many(list(waves)))
    except LassError as err:
        if len(waves) == 1:
            return [err]
    out: list[SeparationResult | LassError] = []
    for wave in waves:
        try:
            out.append(separate_many([wave])[0])
        except LassError as err:
            out.append(err)
    return out


class SeparatesAudio(Protocol):
    """What every separator offers (LASS's :class:`Separator`,
    :class:`lass.langevin.LangevinSeparator`, :class:`lass.posterior.PosteriorSeparator`):
    its stems, its working rate, the bundle it came
    from, and ``separate_detailed``, the step the commands call."""

    stems: tuple[str, ...]
    bundle: Any

    @property
    def sample_rate(self) -> int:
        """The rate the separator works at (inputs at other rates are resampled)."""

    def separate_detailed(self, wave: np.ndarray, sample_rate: int,
                          settings: Any = None) -> SeparationResult:
        """Separate one ``(time,)`` or ``(channels, time)`` input into its stems."""


def load_separator(name_or_path: str | os.PathLike[str] | None = None,
                   device: str | torch.device = "cpu", verify: bool = True
                   ) -> Separator | LangevinSeparator | PosteriorSeparator | ImageSeparator:
    """The separator a bundle describes: :class:`Separator` for a LASS bundle,
    :class:`lass.langevin.LangevinSeparator` for a Langevin one,
    :class:`lass.posterior.PosteriorSeparator` for an amortised posterior,
    :class:`lass.images.ImageSeparator` for an image bundle (its ``method`` entry)."""
    from lass.bundle import bundle_method
    from lass.images import ImageSeparator
    from lass.langevin import LangevinSeparator
    from lass.posterior import PosteriorSeparator

    method = bundle_method(name_or_path)
    if method == "langevin":
        return LangevinSeparator.from_pretrained(name_or_path, device=device, verify=verify)
    if method == "image":
        return ImageSeparator.from_pretrained(name_or_path, device=device, verify=verify)
    if method == "posterior":
        return PosteriorSeparator.from_pretrained(name_or_path, device=device, verify=verify)
    return Separator.from_pretrained(name_or_path, device=device, verify=verify)


class Separator:
    """Codec, one prior per stem (N >= 2 stems) and a likelihood, with default settings (see
    the module docstring)."""

    def __init__(self, codec: Codec, priors: dict[str, Prior],
                 likelihood: CountLikelihood | LatentLikelihood,
                 stems: Sequence[str], mix_rule: str = "mean",
                 settings: SeparationSettings | None = None,
                 prior_classes: dict[str, int | None] | None = None,
                 bundle: BundleSpec | None = None, evidence: TokenEvidence | None = None
                 ) -> None:
        stems = tuple(stems)
        if len(stems) < 2 or len(set(stems)) != len(stems):
            raise LassError(f"LASS separates two or more distinct stems, got {list(stems)}")
        n_lik = 2 if isinstance(likelihood, LatentLikelihood) else likelihood.n
        if n_lik != len(stems):
            raise LassError(f"the likelihood is for {n_lik} sources but {len(stems)} stems "
                            "are named")
        for s in stems:
            if s not in priors:
                raise LassError(f"no prior for stem {s!r}")
            if priors[s].vocab_size != codec.codebook_size:
                raise LassError(f"the {s} prior models {priors[s].vocab_size} tokens but the "
                                f"codec has {codec.codebook_size} codes")
        if likelihood.k != codec.codebook_size:
            raise LassError(f"the likelihood has K = {likelihood.k} but the codec has "
                            f"{codec.codebook_size} codes")
        self.codec, self.priors, self.likelihood = codec, priors, likelihood
        self.stems = stems
        self.mix_rule = check_mix_rule(mix_rule)
        self.settings = settings or SeparationSettings()
        self.prior_classes = prior_classes or {}
        self.bundle = bundle
        if evidence is not None:  # sizes here; the codec identity in from_pretrained
            evidence.check_codec(codec.codebook_size, codec.embedding_dim, None,
                                 codec.hop_length)
            if evidence.n_sources != len(stems):
                raise LassError(f"the token evidence model predicts {evidence.n_sources} "
                                f"sources but {len(stems)} stems are named")
        self.evidence = evidence
        #: Seconds per segment of the output stage of long inputs (see :meth:`segmented`).
        self.segment_seconds = SEGMENT_SECONDS

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] | None = None,
                        device: str | torch.device = "cpu", verify: bool = True) -> Separator:
        """Load a bundle directory, a name under ``$LASS_BUNDLES``, or the default (None)."""
        spec = read_bundle(name_or_path, verify=verify)
        settings = settings_from_bundle(spec.sampler)  # checked before any model loads
        codec = load_codec(spec.codec, device=device)
        if codec.sample_rate != spec.sample_rate:
            raise LassError(f"bundle {spec.name}: the codec runs at {codec.sample_rate} Hz, the "
                            f"bundle says {spec.sample_rate}")
        identity = codec.identity()  # a hash of the codec's weights: once for every check
        loaded: dict[str, Prior] = {}
        priors: dict[str, Prior] = {}
        for stem, path in spec.priors.items():
            key = str(path.resolve())
            if key not in loaded:
                prior = load_prior(path, device=device)
                prior.check_codebook(codec.codebook_size, identity)
                if isinstance(prior, TransformerPrior):
                    prior.prepare()  # its stepper now, not in the first search
                loaded[key] = prior
            priors[stem] = loaded[key]
        likelihood: CountLikelihood | LatentLikelihood
        if spec.likelihood_kind == "latent":
            likelihood = LatentLikelihood.load(spec.likelihood, device=device)
            likelihood.check_codec(codec.codebook_size, identity)
        else:
            likelihood = CountLikelihood.load(
                spec.likelihood, spec.smoothing, spec.smoothing_alpha,
                codebook_size=codec.codebook_size, codec_identity=identity,
                device=device, min_count=spec.min_count, base=spec.likelihood_base)
            if likelihood.n != len(spec.stems):
                raise LassError(f"bundle {spec.name}: the likelihood counts {likelihood.n} "
                                f"sources but the bundle names {len(spec.stems)} stems")
        evidence = None
        if spec.evidence is not None:
            evidence = TokenEvidence.load(spec.evidence, device=device)
            evidence.check_codec(codec.codebook_size, codec.embedding_dim, identity,
                                 codec.hop_length)
        return cls(codec, priors, likelihood, spec.stems, spec.mix,
                   settings, spec.prior_classes, spec, evidence)

    @property
    def device(self) -> torch.device:
        """Device of the models."""
        return self.codec.device

    @property
    def sample_rate(self) -> int:
        """The rate the models work at; inputs at other rates are resampled, and the stems
        come back at the input's rate."""
        return int(self.codec.sample_rate)

    def separate(self, wave: np.ndarray | torch.Tensor, sample_rate: int,
                 settings: SeparationSettings | None = None
                 ) -> dict[str, np.ndarray] | dict[str, torch.Tensor]:
        """``wave`` -> ``{stem: contribution}`` at ``sample_rate``, each shaped like ``wave``.

        ``wave``: ``(time,)``, ``(channels, time)`` or ``(time, channels)`` (as soundfile
        reads it), up to ``MAX_CHANNELS`` channels; a NumPy array or a torch tensor (then
        the stems are tensors on its device). Several channels are separated from their
        downmix and the masks applied to each channel, so the stems sum to each channel.
        """
        stems = self.separate_detailed(wave, sample_rate, settings).stems
        if isinstance(wave, torch.Tensor):
            return {k: torch.from_numpy(v).to(wave.device) for k, v in stems.items()}
        return stems

    def separate_file(self, path: str | os.PathLike[str],
                      settings: SeparationSettings | None = None) -> SeparationResult:
        """Read an audio file (anything libsndfile or ffmpeg reads) and separate it: stems
        ``(time, channels)`` (``(time,)`` for mono files) at the file's sample rate."""
        from lass.data.audio import read_any

        wave, rate = read_any(path)
        return self.separate_detailed(wave.T if wave.shape[0] > 1 else wave[0], rate,
                                      settings)

    def with_settings(self, **changes: Any) -> Separator:
        """A separator sharing these models with some settings changed."""
        twin = Separator(self.codec, self.priors, self.likelihood, self.stems, self.mix_rule,
                         replace(self.settings, **changes), self.prior_classes, self.bundle,
                         self.evidence)
        twin.segment_seconds = self.segment_seconds
        return twin

    @torch.no_grad()
    def _decode(self, codes: torch.Tensor, length: int) -> torch.Tensor:
        return self.codec.decode(codes.to(self.device))[:, :length]

    def _refine(self, codes: Sequence[torch.Tensor], target: torch.Tensor,
                s: SeparationSettings) -> list[torch.Tensor]:
        """Eqs. 12-13: move the dense latents of the N sources' ``codes`` (each ``(tokens,)``)
        so their decodings mix back to ``target``; returns N ``(time,)`` decodings."""
        z0 = [self.codec.embed(c[None].to(self.device)).detach() for c in codes]
        z = [x.clone().requires_grad_(True) for x in z0]
        opt = torch.optim.Adam(z, lr=s.refine_lr)
        n = target.shape[-1]
        for _ in range(s.refine_steps):
            est = torch.stack([self.codec.decode_latents(x)[0, :n] for x in z])
            loss = torch.mean((mix(est, self.mix_rule, dim=0) - target) ** 2) + \
                s.refine_penalty * sum(torch.mean((x - x0) ** 2) for x, x0 in zip(z, z0,
                                                                                  strict=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return [self.codec.decode_latents(x)[0, :n] for x in z]

    def separate_detailed(self, wave: np.ndarray | torch.Tensor, sample_rate: int,
                          settings: SeparationSettings | None = None,
                          progress: Callable[[float, float], None] | None = None
                          ) -> SeparationResult:
        """Separate and say how (tokens, score, fallbacks, timings); ``progress`` as in
        :meth:`separate_many`."""
        return self.separate_many([wave], sample_rate, settings, progress)[0]

    def check_settings(self, s: SeparationSettings) -> None:
        """Raise :class:`LassError` unless ``s`` is a valid setting for this separator."""
        if s.output not in OUTPUTS:
            raise LassError(f"unknown output {s.output!r}; expected decode or mask")
        if s.combine not in COMBINES:
            raise LassError(f"unknown combine {s.combine!r}; expected best, rerank or mean")
        check_mask_settings(s.mask_fft, s.mask_iterations)
        if s.refine_steps > 0 and s.combine == "mean":
            raise LassError("refinement works on one separation; it does not combine with "
                            "combine='mean'")
        shift_offsets(s.shifts, self.codec.hop_length)
        if not (math.isfinite(s.evidence_weight) and s.evidence_weight >= 0):
            raise LassError(f"the evidence weight must be >= 0, not {s.evidence_weight}")
        if s.evidence_weight > 0 and self.evidence is None:
            raise LassError("an evidence weight needs a token evidence model; this bundle has "
                            "none")
        if s.evidence_weight > 0 and isinstance(self.likelihood, LatentLikelihood):
            raise LassError("the token evidence adds to counts, not to a latent likelihood")
        if s.refine_steps > 0 and s.shifts > 1:
            raise LassError("refinement works on the input itself; it does not combine with "
                            "shifts > 1")

    @staticmethod
    def _channels(wave: np.ndarray | torch.Tensor) -> tuple[np.ndarray, str]:
        """``(time,)``, ``(channels, time)`` or ``(time, channels)`` (as soundfile reads
        stereo; up to ``MAX_CHANNELS`` channels) -> checked ``(channels, time)`` float32 and
        the input's layout: ``"mono"``, ``"channels-first"`` or ``"time-first"``."""
        if isinstance(wave, (str, os.PathLike)):
            raise LassError(f"separate() takes a waveform array, not a file name ({wave!s}); "
                            "use separate_file() or read it first (soundfile.read)")
        x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
        expected = ("expected a (time,) waveform, or (channels, time) or (time, channels) with "
                    f"at most {MAX_CHANNELS} channels and more samples than channels")
        if x.ndim == 1:
            layout = "mono"
            x = x[None]
        elif x.ndim == 2 and x.shape[0] <= MAX_CHANNELS < x.shape[1]:
            layout = "channels-first"
        elif x.ndim == 2 and x.shape[1] <= MAX_CHANNELS < x.shape[0]:
            layout = "time-first"  # as soundfile returns it
            x = x.T
        else:
            raise LassError(f"{expected}; got shape {tuple(x.shape)}")
        if x.size == 0:
            raise LassError(f"{expected}; got an empty waveform")
        if not np.issubdtype(x.dtype, np.number):
            raise LassError(f"expected a numeric waveform, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise LassError("the input holds NaN or infinite samples")
        return x, layout

    def separate_many(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int,
                      settings: SeparationSettings | None = None,
                      progress: Callable[[float, float], None] | None = None
                      ) -> list[SeparationResult]:
        """Separate several inputs, searching those of equal length in one batch.

        ``progress``, when given, is called as the token search advances with ``(done,
        total)`` in seconds of input audio (summed over the inputs; the search is most of
        the time).

        ``waves``: each ``(time,)`` or ``(channels, time)`` at ``sample_rate``. Inputs with
        the same number of samples share one encoder call and one token search (their rows
        stacked: one prior call per step for all of them), which on a CPU takes much less
        time per input than separating them one by one. Each input's result is what
        :meth:`separate_detailed` gives it alone: the search is per mixture and each draws
        its samples from its own generator seeded with the settings' seed (up to float
        rounding of the batched products). ``timings["search"]`` is the batch's search time
        divided among its inputs; ``timings["batch"]`` is the batch size.
        """
        s = settings or self.settings
        self.check_settings(s)
        checked = [self._channels(w) for w in waves]
        inputs = [c.mean(axis=0) for c, _ in checked]
        t0 = time.perf_counter()
        resampled = [resample_to(x, sample_rate, self.codec.sample_rate) for x in inputs]
        resample_seconds = (time.perf_counter() - t0) / max(1, len(inputs))
        groups: dict[int, list[int]] = {}
        for i, xc in enumerate(resampled):
            groups.setdefault(xc.shape[0], []).append(i)
        results: dict[int, SeparationResult] = {}
        total = sum(x.shape[0] for x in inputs) / sample_rate
        done = 0.0
        for members in groups.values():
            seconds = sum(inputs[i].shape[0] for i in members) / sample_rate
            report = None
            if progress is not None:
                def report(step: int, steps: int, before: float = done,
                           seconds: float = seconds) -> None:
                    progress(before + seconds * step / max(steps, 1), total)
            group = self._separate_group([inputs[i] for i in members],
                                         [resampled[i] for i in members], sample_rate, s,
                                         [checked[i] for i in members], report)
            done += seconds
            for i, r in zip(members, group, strict=True):
                r.timings["encode"] += resample_seconds
                results[i] = r
        return [results[i] for i in range(len(inputs))]

    def separate_each(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int,
                      settings: SeparationSettings | None = None,
                      progress: Callable[[float, float], None] | None = None
                      ) -> list[SeparationResult | LassError]:
        """:meth:`separate_many`, but one bad input does not cost the others their results
        (:func:`separate_each`). ``waves``: each ``(time,)`` or ``(channels, time)``."""
        return separate_each(
            lambda some: self.separate_many(some, sample_rate, settings, progress), waves)

    def _separate_group(self, inputs: list[np.ndarray], xcs: list[np.ndarray], sample_rate: int,
                        s: SeparationSettings, channels: list[tuple[np.ndarray, str]],
                        progress: Callable[[int, int], None] | None = None
                        ) -> list[SeparationResult]:
        """Inputs ``(time,)`` (the downmixes of ``channels``: each ``(channels, time)`` and
        its layout) whose codec-rate versions ``xcs`` have one length: one search (of
        ``s.shifts`` delayed copies of each)."""
        batch = len(inputs)
        offsets = shift_offsets(s.shifts, self.codec.hop_length)
        n = xcs[0].shape[0]
        copies = np.zeros((batch, len(offsets), n + offsets[-1]), dtype=np.float32)
        for k, off in enumerate(offsets):
            copies[:, k, off: off + n] = np.stack(xcs)
        rows = batch * len(offsets)
        t0 = time.perf_counter()
        wave = torch.from_numpy(copies.reshape(rows, -1))
        del copies
        with torch.no_grad():  # the encoder runs once: its outputs, then their codes
            z = self.codec.latents_batched(wave.to(self.device))
            mix_codes = self.codec.quantise(z)
        latents = z.transpose(1, 2) if isinstance(self.likelihood, LatentLikelihood) else None
        evidence = None
        model = self.evidence if s.evidence_weight > 0 else None
        if model is not None:
            window = model.window(z, wave=wave if model.hop else None)
            weight = s.evidence_weight

            def evidence(a: int, b: int) -> torch.Tensor:
                return weight * window(a, b)
        del wave  # the search reads tokens and latents (the samples only through a model
        # that reads them): a long input's copies are large
        encode = (time.perf_counter() - t0) / batch
        t0 = time.perf_counter()
        # copy k of every input draws from its own generator, seeded seed + k
        gens = [torch.Generator(device=self.likelihood.device).manual_seed(s.seed + k)
                for _ in range(batch) for k in range(len(offsets))]
        labels = [self.prior_classes.get(st) for st in self.stems]
        classes = [None if c is None else torch.full((rows,), c) for c in labels]
        out: TokenSeparation = separate_tokens(
            mix_codes, [self.priors[st] for st in self.stems], self.likelihood, s.sampler,
            lam=s.lam, mix_latents=latents, token_evidence=evidence,
            num_samples=s.candidates, classes=classes,
            generator=gens,
            context_overlap=s.context_overlap, prior_top=s.prior_top, progress=progress)
        search = (time.perf_counter() - t0) / batch
        return [self._finish(inputs[b], xcs[b], sample_rate, s, out, b, offsets,
                             {"encode": encode, "search": search, "batch": float(batch)},
                             channels[b])
                for b in range(batch)]

    def _finish(self, x: np.ndarray, xc: np.ndarray, sample_rate: int, s: SeparationSettings,
                out: TokenSeparation, b: int, offsets: list[int], timings: dict[str, float],
                channels: tuple[np.ndarray, str]) -> SeparationResult:
        """Input ``b`` of a search (its copies are the search's mixtures ``b * S .. b * S +
        S - 1`` for ``S = len(offsets)``): decode its candidates, choose or combine, output."""
        t0 = time.perf_counter()
        codec_rate = self.codec.sample_rate
        n = xc.shape[0]
        rows = slice(b * len(offsets), (b + 1) * len(offsets))  # this input's copies
        # every copy's candidates, pooled and sorted by score (a stable sort: one copy's
        # come in the search's order)
        scores = out.score[rows].reshape(-1)
        finite = torch.isfinite(scores)
        order = finite.nonzero().squeeze(1)
        order = order[scores[order].argsort(descending=True, stable=True)]
        order = order[:{"best": 1, "rerank": max(1, s.rerank_top),
                        "mean": int(order.numel())}[s.combine]]
        codes = [x[rows].flatten(0, 1)[order] for x in out.sources]  # N x (C, tokens)
        delay = np.repeat(offsets, out.score.shape[1])[order.cpu().numpy()]
        scores = scores[order]
        gain = mix_gain(len(self.stems), self.mix_rule)

        def contributions(decoded: Sequence[torch.Tensor], delays: np.ndarray) -> np.ndarray:
            """N ``(C, length)`` decodings of the copies at the codec's rate, delayed by
            ``delays: (C,)`` -> ``(C, N, time)`` at the input's rate."""
            dec = gain * torch.stack(list(decoded), 1).detach().cpu().numpy()
            return np.stack([[resample_to(c[d: d + n], codec_rate, sample_rate, x.shape[0])
                              for c in one] for one, d in zip(dec, delays, strict=True)])

        length = n + offsets[-1]
        wave, layout = channels
        if self.segmented(x.shape[0], sample_rate, s):
            stems, chosen = self._output_in_segments(x, n, sample_rate, s, codes, delay,
                                                     None if layout == "mono" else wave,
                                                     timings)
            best = int(chosen[0])
            if layout == "time-first":
                stems = np.ascontiguousarray(stems.transpose(0, 2, 1))
            return SeparationResult(
                stems={st: stems[i] for i, st in enumerate(self.stems)},
                sample_rate=sample_rate,
                tokens={st: codes[i][best].cpu().numpy() for i, st in enumerate(self.stems)},
                candidates=None, score=float(scores[best]),
                fallback_steps=int(out.fallbacks[rows].sum()),
                timings=timings, shift=int(delay[best]))
        candidates = contributions([self._decode(c, length) for c in codes], delay)
        chosen = choose_candidates(x, candidates, s.combine, s.rerank_top)
        timings["decode"] = time.perf_counter() - t0
        best = int(chosen[0])
        used = candidates[chosen]
        if s.refine_steps > 0:
            t0 = time.perf_counter()
            refined = self._refine([c[best] for c in codes],
                                   torch.from_numpy(xc).to(self.device), s)
            used = contributions([e[None] for e in refined], np.zeros(1, dtype=np.int64))
            timings["refine"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stems = output_stems(x, used, s.output, mask_fft_at(s.mask_fft, sample_rate, codec_rate),
                             s.mask_iterations, None if layout == "mono" else wave)
        if layout == "time-first":
            stems = np.ascontiguousarray(stems.transpose(0, 2, 1))
        timings["output"] = time.perf_counter() - t0
        return SeparationResult(
            stems={st: stems[i] for i, st in enumerate(self.stems)}, sample_rate=sample_rate,
            tokens={st: codes[i][best].cpu().numpy() for i, st in enumerate(self.stems)},
            candidates=candidates, score=float(scores[best]),
            fallback_steps=int(out.fallbacks[rows].sum()),
            timings=timings, shift=int(delay[best]))

    def segmented(self, samples: int, sample_rate: int, s: SeparationSettings) -> bool:
        """Whether an input of ``samples`` at ``sample_rate`` is decoded and masked in
        segments of :attr:`segment_seconds` (memory then stops growing with the input; the
        result keeps no ``candidates``): longer than two segments, a codec that states its
        decoding context, and no refinement (which works on the whole input)."""
        return (samples > 2 * self.segment_seconds * sample_rate and s.refine_steps == 0
                and self.codec.decode_context is not None)

    def _output_in_segments(self, x: np.ndarray, n: int, sample_rate: int,
                            s: SeparationSettings, codes: list[torch.Tensor],
                            delay: np.ndarray, channels: np.ndarray | None,
                            timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """The stems of :meth:`_finish` for a long input, segment by segment.

        Each output segment is computed on a window reaching ``margin`` samples further on
        both sides (at least the mask's STFT size and the resampler's reach), from the
        candidates decoded for that window only (the codec's decoding context around it)
        and resampled on blocks shared by both rates; windows start on the STFT's hop, so
        the frames inside a segment are those of the whole input. The stems equal the whole
        computation's up to float rounding. ``combine="rerank"`` reads every candidate once
        first to choose. Returns the stems and the chosen candidates' indices.
        """
        codec_rate, hop = self.codec.sample_rate, self.codec.hop_length
        context = self.codec.decode_context
        assert context is not None
        total_in = x.shape[0]
        fft = mask_fft_at(s.mask_fft, sample_rate, codec_rate)
        g = math.gcd(sample_rate, codec_rate)
        step_in, step_c = sample_rate // g, codec_rate // g
        unit = math.lcm(max(1, fft // 4), step_in)
        seg = max(unit, round(self.segment_seconds * sample_rate / unit) * unit)
        reach = fft + math.ceil(RESAMPLE_REACH * sample_rate / codec_rate)
        margin = math.ceil(reach / unit) * unit
        gain = mix_gain(len(self.stems), self.mix_rule)
        tokens = codes[0].shape[1]

        def window(lo: int, hi: int, which: np.ndarray) -> np.ndarray:
            """``(len(which), N, hi - lo)``: candidates ``which`` over input samples
            ``lo .. hi - 1`` (``lo`` on a resampling block)."""
            lo_c = lo // step_in * step_c
            hi_c = min(n, -(-hi * codec_rate // sample_rate))
            out = np.zeros((len(which), len(self.stems), hi - lo), dtype=np.float32)
            for d in np.unique(delay[which]):
                rows = which[delay[which] == d]
                t0, t1 = (lo_c + d) // hop, min(tokens, -(-(hi_c + d) // hop))
                a, b = max(0, t0 - context), min(tokens, t1 + context)
                for k, c in enumerate(codes):
                    dec = self._decode(c[torch.from_numpy(rows)][:, a:b], (b - a) * hop)
                    part = gain * dec.cpu().numpy()[:, lo_c + d - a * hop: hi_c + d - a * hop]
                    for r, one in zip(rows, part, strict=True):
                        out[int(np.nonzero(which == r)[0][0]), k] = resample_to(
                            one, codec_rate, sample_rate, hi - lo)
            return out

        bounds = [(a, min(a + seg, total_in)) for a in range(0, total_in, seg)]
        count = delay.shape[0]
        chosen = (np.arange(count) if s.combine == "mean" else np.zeros(1, dtype=np.int64))
        t0 = time.perf_counter()
        if s.combine == "rerank" and count > 1:
            top = np.arange(min(max(1, s.rerank_top), delay.shape[0]))
            err = np.zeros(top.shape[0])
            for a, b in bounds:
                lo, hi = max(0, a - margin), min(total_in, b + margin)
                cand = window(lo, hi, top)[:, :, a - lo: b - lo]
                err += ((cand.sum(1) - x[None, a:b]) ** 2).sum(-1)
            chosen = np.array([int(err.argmin())], dtype=np.int64)
        shape = (len(self.stems), *(() if channels is None else (channels.shape[0],)), total_in)
        stems = np.zeros(shape, dtype=np.float32)
        decode = output = 0.0
        for a, b in bounds:
            lo, hi = max(0, a - margin), min(total_in, b + margin)
            t1 = time.perf_counter()
            used = window(lo, hi, chosen)
            t2 = time.perf_counter()
            part = output_stems(x[lo:hi], used, s.output, fft, s.mask_iterations,
                                None if channels is None else channels[:, lo:hi])
            stems[..., a:b] = part[..., a - lo: b - lo]
            decode += t2 - t1
            output += time.perf_counter() - t2
        timings["decode"] = decode + (time.perf_counter() - t0 - decode - output)
        timings["output"] = output
        return stems, chosen

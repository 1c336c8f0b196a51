"""How to separate: :class:`SeparationSettings` and the one schema it is read and written by.

Every setting is one :class:`Setting` row of :data:`SCHEMA`: its key in a bundle's
``sampler`` entry (``bundle.json``), its command-line flag, its type, its range and its
help. From the schema come the bundle's JSON (:func:`settings_to_bundle`,
:func:`settings_from_bundle`, a round trip), the command-line options of ``lass-separate``,
``lass-evaluate`` and ``lass-make-bundle`` (:func:`add_setting_options`) and the settings
they give (:func:`apply_options`), so a setting exists everywhere or nowhere.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from lass.errors import LassError
from lass.sampling import Ancestral, BeamSearch, Greedy, Sampler, TopK, TopP

OUTPUTS = ("decode", "mask")
COMBINES = ("best", "rerank", "mean")
SAMPLERS = ("beam", "greedy", "ancestral", "topk", "topp")
MASK_FFT = 2048  # the mask output's STFT size unless a bundle or setting says otherwise


@dataclass(frozen=True)
class SeparationSettings:
    """How to separate.

    Attributes:
        sampler: the token sampler.
        lam: weight of the log-likelihood in the step score.
        candidates: samples per mixture for the sampling samplers (beams give their own).
        combine: how several candidates become the stems: ``best`` (the highest score),
            ``rerank`` (among the ``rerank_top`` best-scoring, the one that mixes back best)
            or ``mean`` (the mean of all candidates' decodings, or the masks of their mean
            magnitude).
        rerank_top: how many of the best-scoring candidates are decoded and re-ranked (the
            decodings cost time: 10 beams x 2 stems of a 3 s mixture take about as long as
            a quarter of the search on a CPU).
        output: ``decode`` (the codec's decodings) or ``mask`` (masks on the input's STFT).
        mask_fft: STFT size of the ``mask`` output, in samples at the codec's rate (scaled
            to the input's rate: the same seconds and hertz per bin).
        mask_iterations: EM updates of the sources' powers before masking (0: plain ratio
            masks; see :func:`lass.separator.soft_masks`).
        refine_steps: Adam steps of latent refinement (0: off).
        refine_lr: learning rate of the refinement.
        refine_penalty: weight of the drift penalty ``|z - z0|^2`` in the refinement.
        seed: seed of the sampling samplers.
        context_overlap: tokens carried into the next window when a prior's context is full
            (``None``: half the context). Each new window re-reads them in one batched call,
            so a smaller overlap is faster; a larger one gives every prediction more context.
        prior_top: also score each step's tuples of the priors' ``prior_top`` most likely
            tokens that counting never saw with the mixture token, at the likelihood's
            smoothed value (see :func:`lass.sampling.separate_tokens`; 0: off). With a latent
            likelihood: the tokens per source whose pairs are scored (0: 16).
        shifts: copies of the input, delayed by fractions of one token's hop
            (:func:`lass.separator.shift_offsets`), separated together, each with
            ``candidates`` samples (or its beams); their candidates are shifted back and
            pooled, best score first, before ``combine``. The codec tokenises each delay
            differently, so the copies' errors differ and their mean averages them out
            (cycle spinning). 1: the input alone.
        evidence_weight: ``mu``, the weight of the bundle's token evidence model (the
            learned likelihood of :mod:`likelihood.evidence`) added to each candidate
            tuple's score: ``mu * sum_s e[t, s, i_s]``. 0: the counts alone.
    """

    sampler: Sampler = field(default_factory=lambda: BeamSearch(10))
    lam: float = 3.0
    candidates: int = 1
    combine: str = "rerank"
    rerank_top: int = 4
    output: str = "mask"
    mask_fft: int = MASK_FFT
    mask_iterations: int = 0
    refine_steps: int = 0
    refine_lr: float = 0.01
    refine_penalty: float = 1e-3
    seed: int = 0
    context_overlap: int | None = None
    prior_top: int = 0
    shifts: int = 1
    evidence_weight: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The form ``separation.json`` records: the sampler as ``kind`` plus its fields,
        then every other setting."""
        flat = settings_to_bundle(self)
        sampler = {"kind": flat.pop("kind")}
        for key in SAMPLER_KEYS:
            if key in flat:
                sampler[key] = flat.pop(key)
        return {"sampler": sampler, **flat}


@dataclass(frozen=True)
class Setting:
    """One setting: its key in a bundle's ``sampler`` entry (for the sampler's own values,
    the field of the sampler classes), its command-line flag, type and range."""

    key: str
    flag: str
    kind: type
    help: str
    low: float | None = None  # smallest allowed value
    high: float | None = None  # largest allowed value
    above: bool = False  # ``low`` itself is not allowed
    choices: tuple[str, ...] | None = None
    nullable: bool = False  # None is a value (the setting's automatic choice)
    metavar: str | None = None

    def check(self, value: Any, where: str) -> Any:
        """``value`` converted to the setting's type (an integral float to an int), or a
        :class:`LassError` naming ``where`` and the setting."""
        if value is None and self.nullable:
            return None
        name = self.flag if where == "--" else f"{where}{self.key}"
        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = (isinstance(value, self.kind) and not isinstance(value, bool)) or (
            self.kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (self.kind is float and not math.isfinite(value)):
            what = {int: "an integer", float: "a number"}.get(self.kind, "a string")
            raise LassError(f"{name} must be {what}, not {value!r}")
        value = self.kind(value)
        if self.choices is not None and value not in self.choices:
            raise LassError(f"{name} must be one of {', '.join(self.choices)}, not {value!r}")
        low_bad = self.low is not None and (value <= self.low if self.above
                                            else value < self.low)
        if low_bad or (self.high is not None and value > self.high):
            raise LassError(f"{name} must be {self.bounds()}, not {value:g}")
        return value

    def bounds(self) -> str:
        """The allowed range in words: ``in [0, 1]``, ``positive``, ``at least 1``, ..."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.above else '['}{self.low:g}, {self.high:g}]"
        if self.above:
            return "positive" if self.low == 0 else f"above {self.low:g}"
        return f"at least {self.low:g}" if self.kind is int else f">= {self.low:g}"


#: The sampler's own values, by the field names of the sampler classes.
SAMPLER_SCHEMA = (
    Setting("kind", "--sampler", str, "how token sequences are chosen", choices=SAMPLERS),
    Setting("num_beams", "--beams", int, "beams of the beam sampler, per shifted copy of the "
            "input", low=1),
    Setting("k", "--top-k", int, "candidates of the topk sampler", low=1),
    Setting("p", "--top-p", float, "probability mass of the topp sampler", low=0, high=1,
            above=True),
    Setting("temperature", "--temperature", float, "of the sampling samplers", low=0,
            above=True),
    Setting("resample", "--resample", float, "ancestral: resample the samples as particles "
            "whenever their effective number falls below this fraction of them (0: "
            "independent samples)", low=0, high=1, metavar="FRACTION"),
)
SAMPLER_KEYS = tuple(s.key for s in SAMPLER_SCHEMA[1:])
#: Which sampler class has which of the values, and the class of each kind.
SAMPLER_CLASSES: dict[str, type[Sampler]] = {"beam": BeamSearch, "greedy": Greedy,
                                              "ancestral": Ancestral, "topk": TopK,
                                              "topp": TopP}
#: Every other setting, by its :class:`SeparationSettings` field.
SETTINGS_SCHEMA = (
    Setting("lam", "--lam", float, "likelihood weight", low=0),
    Setting("candidates", "--candidates", int, "samples per input copy for the sampling "
            "samplers", low=1),
    Setting("combine", "--combine", str, "several candidates: keep the best-scoring, the one "
            "that mixes back best, or average their decodings or masks", choices=COMBINES),
    Setting("rerank_top", "--rerank-top", int, "best-scoring candidates decoded and "
            "re-ranked by how well they mix back (combine rerank)", low=1, metavar="N"),
    Setting("output", "--output", str, "decode: the decoded tokens; mask: the input under "
            "Wiener masks", choices=OUTPUTS),
    Setting("mask_fft", "--mask-fft", int, "STFT size of the mask output, at the bundle's "
            "sample rate (even, at least 16)", metavar="N"),
    Setting("mask_iterations", "--mask-iterations", int, "EM updates of the stems' powers "
            "before masking", low=0, metavar="N"),
    Setting("refine_steps", "--refine", int, "latent refinement steps (0: off)", low=0,
            metavar="STEPS"),
    Setting("refine_lr", "--refine-lr", float, "learning rate of the latent refinement",
            low=0, above=True),
    Setting("refine_penalty", "--refine-penalty", float, "weight of the refinement's drift "
            "penalty", low=0),
    Setting("seed", "--seed", int, "seed of the samplers", low=0),
    Setting("context_overlap", "--context-overlap", int, "tokens carried into the next "
            "window of a prior (default: half its context)", low=0, nullable=True,
            metavar="TOKENS"),
    Setting("prior_top", "--prior-top", int, "also score tuples of the priors' N likeliest "
            "tokens that counting never saw (0: off)", low=0, metavar="N"),
    Setting("shifts", "--shifts", int, "separate N copies of the input delayed by fractions "
            "of a token's hop and pool their candidates (1: the input alone)", low=1,
            metavar="N"),
    Setting("evidence_weight", "--evidence-weight", float, "weight of the bundle's token "
            "evidence model (0: the counts alone)", low=0, metavar="MU"),
)
SCHEMA = SAMPLER_SCHEMA + SETTINGS_SCHEMA
_BY_KEY = {s.key: s for s in SCHEMA}
_BY_DEST = {s.flag[2:].replace("-", "_"): s for s in SCHEMA}


def _check_fields() -> None:
    names = {f.name for f in fields(SeparationSettings)} - {"sampler"}
    keys = {s.key for s in SETTINGS_SCHEMA}
    if names != keys:  # pragma: no cover - a development error
        raise AssertionError(f"schema and SeparationSettings differ: {sorted(names ^ keys)}")


_check_fields()


def sampler_kind(sampler: Sampler) -> str:
    """The name of a sampler's kind (``beam``, ``greedy``, ``ancestral``, ``topk``, ``topp``)."""
    return next(k for k, c in SAMPLER_CLASSES.items() if type(sampler) is c)


def make_sampler(kind: str, *, beams: int = 10, top_k: int = 16, top_p: float = 0.9,
                 temperature: float = 1.0, resample: float = 0.0) -> Sampler:
    """A sampler from its name: ``beam``, ``greedy``, ``ancestral``, ``topk`` or ``topp``
    (``resample``: the ancestral samples' resampling threshold, see :class:`Ancestral`)."""
    if kind not in SAMPLER_CLASSES:
        raise LassError(f"unknown sampler {kind!r}; expected beam, greedy, ancestral, topk or "
                        "topp")
    if not 0 <= resample <= 1:
        raise LassError(f"resample must be in [0, 1], not {resample:g}")
    values: dict[str, Any] = {"num_beams": beams, "k": top_k, "p": top_p,
                              "temperature": temperature, "resample": resample}
    cls = SAMPLER_CLASSES[kind]
    own = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in own})


def settings_to_bundle(s: SeparationSettings) -> dict[str, Any]:
    """A bundle's ``sampler`` entry: ``kind``, the sampler's own values and every other
    setting (:func:`settings_from_bundle` reads it back to the same settings)."""
    out: dict[str, Any] = {"kind": sampler_kind(s.sampler)}
    out.update({f.name: getattr(s.sampler, f.name)
                for f in fields(s.sampler)})
    out.update({k.key: getattr(s, k.key) for k in SETTINGS_SCHEMA})
    return out


def settings_from_bundle(sampler: Any) -> SeparationSettings:
    """The bundle's default settings (``bundle.json``'s ``sampler`` entry; a key it lacks
    takes the :class:`SeparationSettings` default); an entry that is not an object, an
    unknown key, a value of the wrong type or out of range is a :class:`LassError` naming
    it."""
    if not isinstance(sampler, dict):
        raise LassError(f"the bundle's sampler must be an object, not {sampler!r}")
    unknown = sorted(set(sampler) - set(_BY_KEY))
    if unknown:
        raise LassError(f"unknown key(s) in the bundle's sampler: {', '.join(unknown)}")
    where = "the bundle's sampler "
    values = {k: _BY_KEY[k].check(v, where) for k, v in sampler.items()}
    kind = values.pop("kind", "beam")
    own = {f.name for f in fields(SAMPLER_CLASSES[kind])}
    made = SAMPLER_CLASSES[kind](**{k: values[k] for k in SAMPLER_KEYS
                                   if k in values and k in own})
    return SeparationSettings(sampler=made, **{k.key: values[k.key] for k in SETTINGS_SCHEMA
                                               if k.key in values})


def add_setting_options(parser: argparse.ArgumentParser | Any,
                        keys: tuple[str, ...] | None = None,
                        help_suffix: str = "") -> None:
    """Add the command-line options of the settings ``keys`` (default: all of
    :data:`SCHEMA`) to ``parser`` (or an argument group); each defaults to ``None`` (not
    given). Read them back with :func:`apply_options`."""
    for s in SCHEMA:
        if keys is not None and s.key not in keys:
            continue
        kwargs: dict[str, Any] = {"default": None, "help": s.help + help_suffix}
        if s.choices is not None:
            kwargs["choices"] = list(s.choices)
        else:
            kwargs["type"] = s.kind
        if s.metavar:
            kwargs["metavar"] = s.metavar
        parser.add_argument(s.flag, **kwargs)


def given_options(args: argparse.Namespace, keys: tuple[str, ...] | None = None
                  ) -> dict[str, Any]:
    """The settings options given on the command line (of ``keys``, default all): schema
    key -> value, each checked (a :class:`LassError` names the flag)."""
    out: dict[str, Any] = {}
    for dest, s in _BY_DEST.items():
        if keys is not None and s.key not in keys:
            continue
        value = getattr(args, dest, None)
        if value is not None:
            out[s.key] = s.check(value, "--")
    return out


def apply_options(base: SeparationSettings, given: dict[str, Any],
                  where: str = "this bundle's sampler") -> SeparationSettings:
    """``base`` with the settings ``given`` (schema key -> value, as :func:`given_options`
    returns them). A sampler value without ``kind`` changes ``base``'s own sampler (an
    error where it has no such value); a ``kind`` (or ``num_beams``, which means beam
    search) makes a new sampler that keeps ``base``'s values where it is of the same kind."""
    given = dict(given)
    sampler_values = {k: given.pop(k) for k in SAMPLER_KEYS if k in given}
    kind = given.pop("kind", None)
    s = base
    if kind is not None or "num_beams" in sampler_values:
        kind = kind or "beam"
        cls = SAMPLER_CLASSES[kind]
        own = {f.name for f in fields(cls)}
        extra = sorted(set(sampler_values) - own)
        if extra:
            raise LassError(f"{_BY_KEY[extra[0]].flag} does not apply to --sampler {kind}")
        kept = ({f: getattr(base.sampler, f) for f in own} if type(base.sampler) is cls
                else {})
        s = replace(s, sampler=cls(**{**kept, **sampler_values}))
    elif sampler_values:
        own = {f.name for f in fields(s.sampler)}
        for key in sampler_values:
            if key not in own:
                raise LassError(f"{_BY_KEY[key].flag} does not apply to {where} "
                                f"({type(s.sampler).__name__}); give --sampler too")
        s = replace(s, sampler=replace(s.sampler, **sampler_values))
    return replace(s, **given)

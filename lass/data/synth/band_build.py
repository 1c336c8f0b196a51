"""Build the three-stem band data set (drums, bass, other) from many soundfonts.

The data set is a pure function of its :class:`BandConfig`. Song ``i`` is composed by
:func:`~lass.data.synth.band.compose_band_song` from the generator seeded with
``(BAND_VERSION, seed, i)``; songs are drawn until their total length reaches ``hours`` and a
seeded permutation assigns them to train/valid/test (about 80/10/10).

Timbres: for each song and stem a soundfont is drawn from the configured ones (drum-capable
ones for drums, melodic ones for bass and other), then the drum kit within it, and each stem
gets a drawn effect chain (:mod:`~lass.data.synth.effects`), a slight detune and a level.
The soundfonts named in ``held_out`` are never used for train, valid or test: the
``heldout`` split holds the test songs' compositions rendered with them (and their own
effect draws), so every figure can be measured twice, on timbres seen in training and on
timbres never heard.

Layout: ``<out>/<split>/<name>/{drums,bass,other}.wav`` and ``track.json`` per song,
``<out>/dataset.json`` for the whole set. An interrupted run resumes where it stopped and
gives the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import soxr

from lass.data.audio import rms_db, write_wav
from lass.data.synth.band import BandSong, compose_band_song
from lass.data.synth.build import (
    SILENCE_DB,
    SongPlan,
    _level,
    assign_splits,
    prepare_output,
    render_all,
    track_dir,
    track_done,
)
from lass.data.synth.compose import Bend, Part
from lass.data.synth.effects import apply_chain, draw_chain
from lass.data.synth.render import find_fluidsynth, render_part
from lass.data.synth.soundfonts import SOUNDFONTS, Soundfont, soundfonts
from lass.errors import DataError
from vqvae.files import write_text_atomic

#: Bumped whenever composition, rendering or effects change what a seed produces.
BAND_VERSION = 1
STEMS = ("drums", "bass", "other")
SPLIT_NAMES = ("train", "valid", "test", "heldout")
#: Kit families: GM drum-kit program ranges of each kit name.
KIT_FAMILIES: dict[str, tuple[int, int]] = {"standard": (0, 7), "room": (8, 15),
                                            "power": (16, 23), "electronic": (24, 24),
                                            "tr808": (25, 25), "jazz": (32, 39),
                                            "brush": (40, 47)}


@dataclass(frozen=True)
class BandConfig:
    """Everything that determines the band data set.

    Attributes:
        hours: total length of the train, valid and test songs.
        seed: the data set is a function of the seed.
        sample_rate: rate of the written stems.
        song_seconds: range of the songs' approximate lengths.
        valid_fraction, test_fraction: shares of songs in the valid and test splits.
        soundfonts: names (see :data:`~lass.data.synth.soundfonts.SOUNDFONTS`) to draw from.
        held_out: soundfonts kept out of train/valid/test and used only for ``heldout``;
            empty: no ``heldout`` split.
        drums_db, bass_db, other_db: ranges of the stems' RMS loudness in dBFS.
        effects_probability: chance that a stem gets an effect chain.
        detune_cents: largest detune (either way) of a stem; half the stems are detuned.
    """

    hours: float
    seed: int = 0
    sample_rate: int = 22050
    song_seconds: tuple[float, float] = (20.0, 45.0)
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    soundfonts: tuple[str, ...] = tuple(SOUNDFONTS)
    held_out: tuple[str, ...] = ("csound", "avl-red-zeppelin")
    drums_db: tuple[float, float] = (-26.0, -14.0)
    bass_db: tuple[float, float] = (-28.0, -14.0)
    other_db: tuple[float, float] = (-28.0, -14.0)
    effects_probability: float = 0.8
    detune_cents: float = 15.0

    def validate(self) -> None:
        """Raise :class:`DataError` for settings that cannot make a data set."""
        if not self.hours > 0:
            raise DataError(f"--hours must be positive, got {self.hours}")
        if self.sample_rate < 8000:
            raise DataError(f"sample rate must be at least 8000 Hz, got {self.sample_rate}")
        lo, hi = self.song_seconds
        if not 4.0 <= lo <= hi:
            raise DataError(f"song length range must satisfy 4 <= low <= high, got {lo}, {hi}")
        if not (0 < self.valid_fraction < 1 and 0 < self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise DataError("valid and test fractions must be in (0, 1) and sum below 1")
        soundfonts(self.soundfonts)
        extra = [n for n in self.held_out if n not in self.soundfonts]
        if extra:
            raise DataError(f"held-out soundfont {extra[0]!r} is not among the soundfonts")
        for group, names in (("training", self.training_soundfonts()),
                             ("held-out", self.held_out)):
            if group == "held-out" and not names:
                continue
            fonts = soundfonts(names)
            if not any(f.drums for f in fonts) or not any(f.melodic for f in fonts):
                raise DataError(f"the {group} soundfonts ({', '.join(names) or 'none'}) need "
                                "one that plays drums and one with melodic programs")

    def training_soundfonts(self) -> tuple[str, ...]:
        """The soundfonts of train, valid and test (all but the held-out ones)."""
        return tuple(n for n in self.soundfonts if n not in self.held_out)


def _song_rng(config: BandConfig, index: int) -> np.random.Generator:
    return np.random.default_rng([BAND_VERSION, config.seed, index])


def compose(config: BandConfig, index: int) -> BandSong:
    """Song ``index`` of the data set (deterministic)."""
    rng = _song_rng(config, index)
    return compose_band_song(rng, rng.uniform(*config.song_seconds))


def plan_band(config: BandConfig) -> list[SongPlan]:
    """Draw songs until their length reaches ``config.hours``; assign splits; add ``heldout``."""
    config.validate()
    lengths: list[float] = []
    while sum(lengths) < config.hours * 3600.0 or len(lengths) < 3:
        lengths.append(compose(config, len(lengths)).seconds)
    splits = assign_splits(len(lengths), config.valid_fraction, config.test_fraction,
                           [BAND_VERSION, config.seed, 2**32 - 1])
    plans = [SongPlan(i, f"band{i:05d}", splits[i], lengths[i]) for i in range(len(lengths))]
    if config.held_out:
        plans += [replace(p, name=f"{p.name}-heldout", split="heldout")
                  for p in plans if p.split == "test"]
    return plans


def _config_json(config: BandConfig) -> dict[str, object]:
    d: dict[str, object] = {k: list(v) if isinstance(v, tuple) else v
                            for k, v in asdict(config).items()}
    d["band_version"] = BAND_VERSION
    return d


def _kit(rng: np.random.Generator, font: Soundfont, kit: str) -> int:
    """A kit program of ``font`` in the family of ``kit`` (its standard kit if none)."""
    lo, hi = KIT_FAMILIES[kit]
    family = [k for k in font.kits if lo <= k <= hi]
    pool = family or ([0] if 0 in font.kits else list(font.kits[:1]))
    return int(pool[int(rng.integers(len(pool)))])


def _detuned(part: Part, cents: float) -> Part:
    """``part`` with every pitch bend offset by ``cents`` (a bend at time 0 added)."""
    bends = part.bends or (Bend(0.0, 0.0),)
    return Part(part.program, part.notes, tuple(Bend(b.time, b.semitones + cents / 100.0)
                                                for b in bends))


def _resample_pitch(audio: np.ndarray, sr: int, cents: float) -> np.ndarray:
    """Raise the pitch of ``audio`` by ``cents`` by resampling (length kept: cut or padded)."""
    ratio = 2 ** (cents / 1200.0)
    y = soxr.resample(audio, sr, sr / ratio, quality="HQ").astype(np.float32)
    out = np.zeros_like(audio)
    out[: min(len(y), len(out))] = y[: len(out)]
    return out


def render_band_song(config: BandConfig, plan: SongPlan, out: str) -> dict[str, object]:
    """Render song ``plan.index`` for ``plan.split``; write its stems and ``track.json``."""
    song = compose(config, plan.index)
    rng = np.random.default_rng([BAND_VERSION, config.seed, plan.index,
                                 2 if plan.split == "heldout" else 1])
    names = config.held_out if plan.split == "heldout" else config.training_soundfonts()
    fonts = soundfonts(names)
    drum_fonts = [f for f in fonts if f.drums]
    melodic_fonts = [f for f in fonts if f.melodic]
    sr = config.sample_rate
    stems: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, object]] = {}
    for stem in STEMS:
        pool = drum_fonts if stem == "drums" else melodic_fonts
        font = pool[int(rng.integers(len(pool)))]
        cents = (float(rng.uniform(-config.detune_cents, config.detune_cents))
                 if rng.random() < 0.5 else 0.0)
        meta: dict[str, object] = {"soundfont": font.name, "detune_cents": round(cents, 2)}
        if stem == "drums":
            kit = 0 if font.kit_as_preset else _kit(rng, font, song.kit)
            meta["kit_program"] = kit
            audio = render_part(Part(kit, song.drums.notes), song.tempo, song.seconds, sr,
                                drums=True, soundfont=font.path(),
                                kit_as_preset=font.kit_as_preset)
            if cents:
                audio = _resample_pitch(audio, sr, cents)
        else:
            parts = [song.bass] if stem == "bass" else list(song.other)
            audio = np.zeros(round(song.seconds * sr), dtype=np.float32)
            for part in parts:
                one = render_part(_detuned(part, cents) if cents else part, song.tempo,
                                  song.seconds, sr, drums=False, soundfont=font.path())
                if rms_db(one) > SILENCE_DB:  # each part at its own level
                    one = one * 10 ** ((float(rng.uniform(-8.0, 0.0)) - rms_db(one)) / 20.0)
                audio += one.astype(np.float32)
        if rng.random() < config.effects_probability:
            chain = draw_chain(rng, drums=stem == "drums")
            audio = apply_chain(audio, sr, chain)
            meta["effects"] = chain.describe()
        db_range = {"drums": config.drums_db, "bass": config.bass_db,
                    "other": config.other_db}[stem]
        target = float(rng.uniform(*db_range))
        if stem == "other" and (not song.other or rms_db(audio) < SILENCE_DB):
            stems[stem] = np.zeros_like(audio)
            meta.update({"rms_db": None, "gain_db": None, "silent": True})
        else:
            try:
                stems[stem], gain_db = _level(audio, target)
            except DataError:
                raise DataError(f"song {plan.name}: the {stem} stem rendered silent "
                                f"with {font.name}") from None
            meta.update({"rms_db": round(rms_db(stems[stem]), 2), "gain_db": round(gain_db, 2)})
        info[stem] = meta
    d = track_dir(Path(out), plan)
    for stem, audio in stems.items():
        write_wav(d / f"{stem}.wav", audio, sr)
    track: dict[str, object] = {"name": plan.name, "index": plan.index, "split": plan.split,
                                "config": _config_json(config), "song": song.describe(),
                                "stems": info, "samples": int(stems["drums"].shape[0])}
    write_text_atomic(d / "track.json", json.dumps(track, indent=1) + "\n")
    return track


def _render_task(args: tuple[BandConfig, SongPlan, str]) -> dict[str, object]:
    return render_band_song(*args)


def make_band_dataset(config: BandConfig, out: str | os.PathLike[str], *, jobs: int = 0,
                      progress: Callable[[int, int, float], None] | None = None
                      ) -> dict[str, object]:
    """Render the band data set described by ``config`` into ``out`` (stem-folder layout).

    Args:
        config: what to render.
        out: output folder; created if needed, resumed if it holds the same data set.
        jobs: worker processes (0: one per CPU core).
        progress: called as ``progress(done, total, seconds_of_song_audio)`` after each song.

    Returns:
        The ``dataset.json`` summary (songs and hours per split, styles, soundfonts used).
    """
    config.validate()
    for font in soundfonts(config.soundfonts):
        font.path()
    find_fluidsynth()
    root = Path(out)
    prepare_output(root, _config_json(config), "data set")
    plans = plan_band(config)
    summary: dict[str, object] = {"kind": "synth-band", "config": _config_json(config),
                                  "complete": False, "stems": list(STEMS), "layout": "folder",
                                  "mix": "mean"}
    manifest = root / "dataset.json"
    write_text_atomic(manifest, json.dumps(summary, indent=1) + "\n")
    todo = [p for p in plans if not track_done(root, p, STEMS, _config_json(config))]
    done_seconds, wall, n_jobs = render_all(
        _render_task, [(config, p, str(root)) for p in todo], jobs, len(plans) - len(todo),
        len(plans), progress)
    metas = [json.loads((track_dir(root, p) / "track.json").read_text(encoding="utf-8"))
             for p in plans]
    songs = Counter(p.split for p in plans)
    seconds = Counter[str]()
    fonts: dict[str, Counter[str]] = {s: Counter() for s in STEMS}
    for p, m in zip(plans, metas, strict=True):
        seconds[p.split] += m["song"]["seconds"]
        for s in STEMS:
            fonts[s][f"{p.split}:{m['stems'][s]['soundfont']}"] += 1
    summary.update({
        "complete": True,
        "splits": [s for s in SPLIT_NAMES if songs[s]],
        "songs": {s: songs[s] for s in SPLIT_NAMES if songs[s]},
        "hours": {s: round(seconds[s] / 3600.0, 4) for s in SPLIT_NAMES if songs[s]},
        "styles": dict(sorted(Counter(m["song"]["style"] for m in metas).items())),
        "other_silent": sum(1 for m in metas if m["stems"]["other"].get("silent")),
        "soundfonts": {s: dict(sorted(c.items())) for s, c in fonts.items()},
        "last_run": {"songs_rendered": len(todo), "song_seconds": round(done_seconds, 2),
                     "wall_seconds": round(wall, 2), "jobs": n_jobs,
                     "stem_seconds_per_wall_second":
                         round(len(STEMS) * done_seconds / wall, 1) if wall > 0 and todo else None},
    })
    write_text_atomic(manifest, json.dumps(summary, indent=1) + "\n")
    return summary

"""Build the synthetic drums+bass data set: plan songs, render them in parallel, write splits.

The data set is a pure function of its :class:`SynthConfig`: song ``i`` is composed from the
generator seeded with ``(GENERATOR_VERSION, seed, i)``, songs are drawn until their total
length reaches ``hours``, and a seeded permutation assigns them to train/valid/test (about
80/10/10, at least one song in each). Each song is written as
``<out>/<split>/<name>/{drums,bass}.wav`` and ``track.json``; ``<out>/dataset.json`` describes
the whole set. A run that is interrupted resumes where it stopped: finished tracks (those
with a ``track.json`` of the same configuration) are kept, the rest are rendered again, and
the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from lass.data.audio import rms_db, write_wav
from lass.data.synth.compose import Song, compose_song
from lass.data.synth.render import find_fluidsynth, find_soundfont, render_part
from lass.errors import DataError
from vqvae.files import write_text_atomic

T = TypeVar("T")

#: Bumped whenever the composition or rendering changes what a seed produces.
GENERATOR_VERSION = 1
STEMS = ("drums", "bass")
SILENCE_DB = -60.0


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the synthetic data set.

    Attributes:
        hours: total length of the songs (each song has a drums and a bass stem).
        seed: the data set is a function of the seed.
        sample_rate: rate of the written stems.
        song_seconds: range of the songs' approximate lengths.
        valid_fraction, test_fraction: shares of songs in the valid and test splits.
        drums_db, bass_db: ranges of the stems' RMS loudness in dBFS (drawn per song and stem).
        reverb_probability: chance that a stem gets FluidSynth's reverb.
    """

    hours: float
    seed: int = 0
    sample_rate: int = 22050
    song_seconds: tuple[float, float] = (20.0, 45.0)
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    drums_db: tuple[float, float] = (-26.0, -14.0)
    bass_db: tuple[float, float] = (-28.0, -14.0)
    reverb_probability: float = 0.5

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


@dataclass(frozen=True)
class SongPlan:
    """Where song ``index`` goes and how long it is."""

    index: int
    name: str
    split: str
    seconds: float


def song_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that composes song ``index`` of the data set with ``seed``."""
    return np.random.default_rng([GENERATOR_VERSION, seed, index])


def compose(config: SynthConfig, index: int) -> Song:
    """Song ``index`` of the data set (deterministic)."""
    rng = song_rng(config.seed, index)
    target = rng.uniform(*config.song_seconds)
    return compose_song(rng, target)


def assign_splits(n: int, valid_fraction: float, test_fraction: float,
                  key: Sequence[int]) -> list[str]:
    """The split of each of ``n`` songs: a permutation seeded by ``key`` puts about
    ``test_fraction`` of them in test and ``valid_fraction`` in valid (at least one each),
    the rest in train."""
    n_test = max(1, round(test_fraction * n))
    n_valid = max(1, round(valid_fraction * n))
    order = np.random.default_rng(list(key)).permutation(n)
    split_of = [""] * n
    for rank, idx in enumerate(order):
        split_of[int(idx)] = ("test" if rank < n_test else
                              "valid" if rank < n_test + n_valid else "train")
    return split_of


def plan_songs(config: SynthConfig) -> list[SongPlan]:
    """Draw songs until their total length reaches ``config.hours``; assign the splits."""
    config.validate()
    lengths: list[float] = []
    while sum(lengths) < config.hours * 3600.0 or len(lengths) < 3:
        lengths.append(compose(config, len(lengths)).seconds)
    splits = assign_splits(len(lengths), config.valid_fraction, config.test_fraction,
                           [GENERATOR_VERSION, config.seed, 2**32 - 1])
    return [SongPlan(i, f"synth{i:05d}", splits[i], lengths[i]) for i in range(len(lengths))]


def track_dir(out: Path, plan: SongPlan) -> Path:
    """Where song ``plan`` is written."""
    return out / plan.split / plan.name


def track_done(out: Path, plan: SongPlan, stems: Sequence[str],
               config_json: dict[str, object]) -> bool:
    """Whether song ``plan`` is written whole by the data set whose configuration is
    ``config_json`` (its stems and a ``track.json`` that records that configuration)."""
    d = track_dir(out, plan)
    meta = d / "track.json"
    if not meta.is_file() or not all((d / f"{s}.wav").is_file() for s in stems):
        return False
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(info.get("config") == config_json)


def prepare_output(root: Path, config_json: dict[str, object], what: str) -> None:
    """Refuse an output folder that holds another data set (``what`` names this one) or
    other files; create it."""
    manifest = root / "dataset.json"
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("config") != config_json:
            raise DataError(f"{root} holds a different {what} (other --hours, --seed or "
                            "settings); choose another --out or delete it")
    elif root.is_dir() and any(root.iterdir()):
        raise DataError(f"output folder is not empty and holds no dataset.json: {root}")
    root.mkdir(parents=True, exist_ok=True)


def render_all(render: Callable[[T], dict[str, object]], tasks: Sequence[T], jobs: int,
               done_before: int, total: int,
               progress: Callable[[int, int, float], None] | None) -> tuple[float, float, int]:
    """Run ``render`` (a module-level function) on every task, in ``jobs`` worker processes
    (0: one per core), reporting ``progress(done, total, song_seconds)`` after each song.
    Returns the seconds of songs rendered, the wall seconds and the worker count."""
    n_jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
    start = time.perf_counter()
    done_seconds = 0.0
    if progress is not None:
        progress(done_before, total, 0.0)
    pool = ProcessPoolExecutor(max_workers=n_jobs) if n_jobs > 1 else None
    results = pool.map(render, tasks) if pool is not None else map(render, tasks)
    try:
        for i, meta in enumerate(results):
            done_seconds += float(meta["song"]["seconds"])  # type: ignore[index]
            if progress is not None:
                progress(done_before + i + 1, total, done_seconds)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return done_seconds, time.perf_counter() - start, n_jobs


def _config_json(config: SynthConfig) -> dict[str, object]:
    d: dict[str, object] = {k: list(v) if isinstance(v, tuple) else v
                            for k, v in asdict(config).items()}
    d["generator_version"] = GENERATOR_VERSION
    return d


def _level(audio: np.ndarray, target_db: float) -> tuple[np.ndarray, float]:
    """Scale to ``target_db`` RMS, then down if needed so the peak stays below 0.98."""
    level = rms_db(audio)
    if level < SILENCE_DB:
        raise DataError("a rendered stem is silent")
    gain = 10 ** ((target_db - level) / 20.0)
    peak = float(np.max(np.abs(audio))) * gain
    if peak > 0.98:
        gain *= 0.98 / peak
    return (audio * gain).astype(np.float32), 20.0 * float(np.log10(gain))


def render_song(config: SynthConfig, plan: SongPlan, out: str, soundfont: str) -> dict[str, object]:
    """Render song ``plan.index`` and write its stems and ``track.json``; return its metadata."""
    song = compose(config, plan.index)
    rng = np.random.default_rng([GENERATOR_VERSION, config.seed, plan.index, 1])
    sf2 = Path(soundfont)
    stems: dict[str, np.ndarray] = {}
    levels: dict[str, dict[str, float]] = {}
    for stem, part, db_range in (("drums", song.drums, config.drums_db),
                                 ("bass", song.bass, config.bass_db)):
        reverb = rng.uniform(0.1, 0.5) if rng.random() < config.reverb_probability else 0.0
        room = rng.uniform(0.1, 0.6)
        audio = render_part(part, song.tempo, song.seconds, config.sample_rate,
                            drums=stem == "drums", soundfont=sf2, reverb=reverb, room=room)
        target = rng.uniform(*db_range)
        try:
            stems[stem], gain_db = _level(audio, target)
        except DataError:
            raise DataError(f"song {plan.name}: the {stem} stem rendered silent") from None
        levels[stem] = {"rms_db": round(rms_db(stems[stem]), 2), "gain_db": round(gain_db, 2),
                        "reverb": round(reverb, 3)}
    d = track_dir(Path(out), plan)
    for stem, audio in stems.items():
        write_wav(d / f"{stem}.wav", audio, config.sample_rate)
    meta: dict[str, object] = {"name": plan.name, "index": plan.index, "split": plan.split,
                               "config": _config_json(config), "song": song.describe(),
                               "stems": levels, "samples": int(stems["drums"].shape[0])}
    write_text_atomic(d / "track.json", json.dumps(meta, indent=1) + "\n")
    return meta


def _render_task(args: tuple[SynthConfig, SongPlan, str, str]) -> dict[str, object]:
    return render_song(*args)


def make_synth_dataset(config: SynthConfig, out: str | os.PathLike[str], *, jobs: int = 0,
                       progress: Callable[[int, int, float], None] | None = None,
                       soundfont: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """Render the data set described by ``config`` into ``out`` (stem-folder layout).

    Args:
        config: what to render.
        out: output folder; created if needed, resumed if it holds the same data set.
        jobs: worker processes (0: one per CPU core).
        progress: called as ``progress(done, total, seconds_of_song_audio)`` after each song.
        soundfont: General MIDI soundfont (default: Debian's FluidR3_GM).

    Returns:
        The ``dataset.json`` summary (songs per split, hours, styles, render speed).
    """
    config.validate()
    sf2 = find_soundfont(soundfont)
    find_fluidsynth()
    root = Path(out)
    prepare_output(root, _config_json(config), "synthetic data set")
    plans = plan_songs(config)
    summary: dict[str, object] = {"kind": "synth-drums-bass", "config": _config_json(config),
                                  "complete": False, "stems": list(STEMS),
                                  "layout": "folder", "mix": "mean"}
    manifest = root / "dataset.json"
    write_text_atomic(manifest, json.dumps(summary, indent=1) + "\n")
    todo = [p for p in plans if not track_done(root, p, STEMS, _config_json(config))]
    done_seconds, wall, n_jobs = render_all(
        _render_task, [(config, p, str(root), str(sf2)) for p in todo], jobs,
        len(plans) - len(todo), len(plans), progress)
    metas = [json.loads((track_dir(root, p) / "track.json").read_text(encoding="utf-8"))
             for p in plans]
    per_split = Counter(p.split for p in plans)
    seconds_split = Counter[str]()
    for p, m in zip(plans, metas, strict=True):
        seconds_split[p.split] += m["song"]["seconds"]
    summary.update({
        "complete": True,
        "songs": {s: per_split[s] for s in ("train", "valid", "test")},
        "hours": {s: round(seconds_split[s] / 3600.0, 4) for s in ("train", "valid", "test")},
        "styles": dict(sorted(Counter(m["song"]["style"] for m in metas).items())),
        "kits": dict(sorted(Counter(m["song"]["kit"] for m in metas).items())),
        "bass_programs": dict(sorted(Counter(m["song"]["bass_program"] for m in metas).items())),
        "last_run": {"songs_rendered": len(todo), "song_seconds": round(done_seconds, 2),
                     "wall_seconds": round(wall, 2), "jobs": n_jobs,
                     "stem_seconds_per_wall_second":
                         round(len(STEMS) * done_seconds / wall, 1) if wall > 0 and todo else None},
    })
    write_text_atomic(manifest, json.dumps(summary, indent=1) + "\n")
    return summary

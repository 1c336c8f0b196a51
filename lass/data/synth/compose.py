"""Procedural drum grooves and bass lines for the synthetic drums+bass data set.

A song is a pure function of its random generator: a style (rock, funk, shuffle, half-time,
disco, breakbeat, jazz ride, electronic, reggae one-drop, bossa nova, punk, hip-hop), a tempo,
a GM drum kit, a GM bass program (33-40), a key, a mode and a chord progression. The song is
cut into sections (4 or 8 bars); each section picks a groove that repeats with small
variations, ends with a fill (usually) and starts with a crash. Velocities and timing are
humanised; the bass follows the chords with octave jumps, rests, slides (pitch bend, range
set to 12 semitones by RPN), dead notes and approach notes.

Times are in seconds from the start of the song; both stems share the tempo and bar grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# General MIDI percussion keys.
KICK, SIDE_STICK, SNARE, CLAP = 36, 37, 38, 39
CLOSED_HAT, PEDAL_HAT, OPEN_HAT = 42, 44, 46
TOMS = (50, 48, 47, 45, 43, 41)  # high to low
CRASH, CRASH2, RIDE, RIDE_BELL = 49, 57, 51, 53
TAMBOURINE, COWBELL, SHAKER = 54, 56, 70

#: GM drum kits of FluidR3_GM (bank 128 presets).
DRUM_KITS: dict[str, int] = {"standard": 0, "room": 8, "power": 16, "electronic": 24,
                             "tr808": 25, "jazz": 32, "brush": 40}
#: GM bass programs 33-40 (zero-based MIDI program numbers 32-39).
BASS_PROGRAMS: dict[str, int] = {"acoustic": 32, "fingered": 33, "picked": 34, "fretless": 35,
                                 "slap1": 36, "slap2": 37, "synth1": 38, "synth2": 39}

SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
#: Chord progressions as scale degrees (0 = tonic), one chord per harmonic step.
PROGRESSIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (0, 3, 0, 4), (5, 3, 0, 4),
              (0, 2, 3, 4), (1, 4, 0, 0), (0, 5, 1, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 0, 3, 4),
              (0, 5, 3, 4)),
    "dorian": ((0, 3, 0, 3), (0, 0, 3, 3), (0, 6, 3, 0), (0, 1, 0, 6)),
    "mixolydian": ((0, 6, 3, 0), (0, 0, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4), (0, 6, 0, 6),
                   (0, 3, 6, 3)),
}

# Drum pattern strings: one character per grid step. x hit, X accent, g ghost, o open hat.
_VEL = {"x": 96, "X": 116, "g": 38, "o": 92}


@dataclass(frozen=True)
class Note:
    """A MIDI note: ``time`` and ``duration`` in seconds, ``pitch`` and ``velocity`` 0-127."""

    time: float
    duration: float
    pitch: int
    velocity: int


@dataclass(frozen=True)
class Bend:
    """A pitch-bend event at ``time`` seconds, ``value`` in semitones (range +-12)."""

    time: float
    semitones: float


@dataclass(frozen=True)
class Part:
    """One instrument of a song: its GM program, notes and pitch bends."""

    program: int
    notes: tuple[Note, ...]
    bends: tuple[Bend, ...] = ()


@dataclass(frozen=True)
class Song:
    """A composed song: both parts share ``tempo`` and the bar grid (4/4)."""

    style: str
    tempo: float
    bars: int
    kit: str
    bass_program: str
    key: int
    mode: str
    progression: tuple[int, ...]
    sections: tuple[str, ...]
    drums: Part
    bass: Part

    def describe(self) -> dict[str, object]:
        """The song's musical settings as plain JSON-ready values."""
        return {"style": self.style, "tempo": self.tempo, "bars": self.bars, "kit": self.kit,
                "bass_program": self.bass_program, "key": self.key, "mode": self.mode,
                "progression": list(self.progression), "sections": list(self.sections),
                "drum_notes": len(self.drums.notes), "bass_notes": len(self.bass.notes),
                "seconds": self.seconds}

    @property
    def bar_seconds(self) -> float:
        """Length of one 4/4 bar in seconds."""
        return 240.0 / self.tempo

    @property
    def seconds(self) -> float:
        """Length of the song in seconds (a whole number of bars)."""
        return self.bars * self.bar_seconds


@dataclass(frozen=True)
class DrumStyle:
    """A drum style: tempo range, grid, kits, feel and its groove generator."""

    name: str
    tempo: tuple[int, int]
    steps_per_beat: int  # 4: sixteenths; 3: triplets (shuffle and swing feels)
    kits: tuple[str, ...]
    swing: tuple[float, float]  # delay of off-beat sixteenths, fraction of a step
    timing_ms: float  # humanisation: std of timing jitter
    bass_feels: tuple[str, ...]
    bass_programs: tuple[str, ...]
    modes: tuple[str, ...]
    groove: Callable[[np.random.Generator, bool], dict[int, str]]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _hats(rng: np.random.Generator, loud: bool, sixteenths: bool = True) -> dict[int, str]:
    if loud and rng.random() < 0.5:
        return {RIDE: "x.x.x.x.x.x.x.x."}
    if sixteenths and rng.random() < 0.4:
        return {CLOSED_HAT: "XxxxXxxxXxxxXxxx"}
    pattern = _pick(rng, ["X.x.X.x.X.x.X.x.", "X.x.X.x.X.x.X.o.", "X.x.X.o.X.x.X.o."])
    closed = pattern.replace("o", ".")
    opened = "".join("o" if c == "o" else "." for c in pattern)
    return {CLOSED_HAT: closed, OPEN_HAT: opened}


def _rock(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x.......x.......", "x.......x.x.....", "x......xx.......",
                       "x.x.....x.x.....", "x.......x.....x.", "x..x....x.x....."])
    snare = _pick(rng, ["....X.......X...", "....X.......X..g", "....X..g....X..."])
    return {KICK: kick, SNARE: snare, **_hats(rng, loud, sixteenths=False)}


def _funk(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x.....x...x..x..", "x..x......x.....", "x.x....x..x..x..",
                       "x......x.x...x..", "x..x..x...x....."])
    snare = _pick(rng, ["....X..g.g..X..g", "....X.g..g..X...", ".g..X..g.g.gX..g",
                        "....X..g.g..X.g."])
    hats = _pick(rng, ["XxxxXxxxXxxxXxxx", "XxxoXxxxXxxoXxxx", "X.x.X.xoX.x.X.x."])
    return {KICK: kick, SNARE: snare, CLOSED_HAT: hats.replace("o", "."),
            OPEN_HAT: "".join("o" if c == "o" else "." for c in hats)}


def _shuffle(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x.....x.....", "x.....x..x..", "x....xx.....", "x.....x....x"])
    snare = _pick(rng, ["...X.....X..", "...X.g...X.g", "..gX.....X.."])
    ride = RIDE if loud else CLOSED_HAT
    return {KICK: kick, SNARE: snare, ride: "X.xx.xX.xx.x"}


def _halftime(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x.........x.....", "x......x..x.....", "x.x.......x...x.",
                       "x.........xx...."])
    snare = _pick(rng, ["........X.......", "........X......g", "...g....X......."])
    return {KICK: kick, SNARE: snare, **_hats(rng, loud)}


def _disco(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    snare = _pick(rng, ["....X.......X...", "....X.......X..g"])
    hats = {CLOSED_HAT: "x.x.x.x.x.x.x.x.", OPEN_HAT: "..o...o...o...o."}
    if rng.random() < 0.5:
        hats = {CLOSED_HAT: "xx.xxx.xxx.xxx.x", OPEN_HAT: "..o...o...o...o."}
    extra = {TAMBOURINE: "....x.......x..."} if rng.random() < 0.3 else {}
    return {KICK: "x...x...x...x...", SNARE: snare, **hats, **extra}


def _breakbeat(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x.x.......xx....", "x.........x.....", "x.x.......x..x..",
                       "x......x..x....."])
    snare = _pick(rng, ["....X..g.g..X..g", "....X.......X...", "....X..X.x..X..x",
                        ".g..X..g.g.gX.g."])
    return {KICK: kick, SNARE: snare, **_hats(rng, loud, sixteenths=False)}


def _jazz(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    ride = _pick(rng, ["X..x.xX..x.x", "X..x.xX..x.x", "X..X..X..X.."])
    comp = "".join("g" if rng.random() < 0.18 else "." for _ in range(12))
    kick = _pick(rng, ["g..g..g..g..", "............", "x.......x...", "......x....."])
    return {RIDE: ride, PEDAL_HAT: "...x.....x..", SNARE: comp, KICK: kick}


def _electronic(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    clap = CLAP if rng.random() < 0.6 else SNARE
    hats = _pick(rng, ["..o...o...o...o.", "xxoxxxoxxxoxxxox", "x.o.x.o.x.o.x.o."])
    extra = {SHAKER: "xxxxxxxxxxxxxxxx"} if rng.random() < 0.3 else {}
    return {KICK: "X...X...X...X...", clap: "....X.......X...",
            CLOSED_HAT: hats.replace("o", "."),
            OPEN_HAT: "".join("o" if c == "o" else "." for c in hats), **extra}


def _reggae(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    rim = SIDE_STICK if rng.random() < 0.6 else SNARE
    return {KICK: "......X.....", rim: "......X.....", CLOSED_HAT: "x.xx.xx.xx.x"}


def _bossa(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    clave = _pick(rng, ["x..x..x...x.x...", "..x.x...x..x..x."])
    cymbal = RIDE if loud else CLOSED_HAT
    return {KICK: "x..xx..xx..xx..x", SIDE_STICK: clave, cymbal: "x.x.x.x.x.x.x.x."}


def _punk(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    if rng.random() < 0.5:  # polka beat
        return {KICK: "x...x...x...x...", SNARE: "..X...X...X...X.",
                CRASH if loud else CLOSED_HAT: "x.x.x.x.x.x.x.x."}
    kick = _pick(rng, ["x.x...x.x.x...x.", "x...x.x.x...x.x."])
    return {KICK: kick, SNARE: "....X.......X...", CLOSED_HAT: "x.x.x.x.x.x.x.x."}


def _hiphop(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x......x..x.....", "x.......x.x....x", "x..x......x..x..",
                       "x.x.......x....."])
    snare = _pick(rng, ["....X.......X...", "....X.......X..g", "....X..g....X..."])
    hats = _pick(rng, ["x.x.x.x.x.x.x.x.", "xxx.x.x.xxx.x.x.", "x.x.x.xxx.x.x.x."])
    return {KICK: kick, SNARE: snare, CLOSED_HAT: hats}


_POP = ("fingered", "picked", "fretless", "synth1")
DRUM_STYLES: dict[str, DrumStyle] = {s.name: s for s in [
    DrumStyle("rock", (90, 150), 4, ("standard", "room", "power"), (0.0, 0.0), 6.0,
              ("root8", "rock"), ("picked", "fingered"), ("major", "minor", "mixolydian"),
              _rock),
    DrumStyle("funk", (85, 115), 4, ("standard", "room"), (0.0, 0.12), 5.0, ("funk",),
              ("slap1", "slap2", "fingered"), ("dorian", "minor", "mixolydian"), _funk),
    DrumStyle("shuffle", (90, 150), 3, ("standard", "room", "jazz"), (0.0, 0.0), 7.0,
              ("walking", "shuffle"), ("fingered", "acoustic", "picked"),
              ("mixolydian", "major"), _shuffle),
    DrumStyle("halftime", (70, 100), 4, ("standard", "room", "power"), (0.0, 0.06), 7.0,
              ("halftime", "rock"), ("fingered", "picked", "synth2"), ("minor", "major"),
              _halftime),
    DrumStyle("disco", (110, 130), 4, ("standard", "electronic", "room"), (0.0, 0.0), 4.0,
              ("disco", "offbeat"), ("fingered", "synth1", "slap2"), ("minor", "dorian"),
              _disco),
    DrumStyle("breakbeat", (90, 140), 4, ("standard", "room", "power"), (0.0, 0.15), 6.0,
              ("funk", "rock", "hiphop"), _POP, ("minor", "dorian"), _breakbeat),
    DrumStyle("jazz", (100, 180), 3, ("jazz", "brush"), (0.0, 0.0), 9.0, ("walking",),
              ("acoustic", "fretless"), ("major", "dorian"), _jazz),
    DrumStyle("electronic", (118, 135), 4, ("electronic", "tr808"), (0.0, 0.0), 0.0,
              ("offbeat", "808", "disco"), ("synth1", "synth2"), ("minor", "dorian"),
              _electronic),
    DrumStyle("reggae", (70, 90), 3, ("standard", "room"), (0.0, 0.0), 8.0, ("reggae",),
              ("fingered", "fretless"), ("minor", "major"), _reggae),
    DrumStyle("bossa", (110, 150), 4, ("jazz", "brush", "standard"), (0.0, 0.0), 8.0,
              ("bossa",), ("acoustic", "fretless", "fingered"), ("major", "dorian"), _bossa),
    DrumStyle("punk", (150, 180), 4, ("power", "standard", "room"), (0.0, 0.0), 5.0,
              ("root8",), ("picked", "fingered"), ("major", "minor"), _punk),
    DrumStyle("hiphop", (80, 100), 4, ("standard", "tr808", "room", "electronic"),
              (0.08, 0.2), 5.0, ("hiphop", "808", "halftime"), ("synth1", "synth2", "fingered"),
              ("minor", "dorian"), _hiphop),
]}

# Bass rhythm pools (sixteenth grid unless noted); x note, g dead note, L long note.
_BASS_RHYTHMS: dict[str, tuple[str, ...]] = {
    "root8": ("x.x.x.x.x.x.x.x.", "x.x.x.x.x.x.x.x.", "x.x.x.x.x.x.xxx."),
    "rock": ("x.....x.x.......", "x.......x...x.x.", "x..x..x.x.......", "x.x...x.x.x...x.",
             "x.....x.x...x..."),
    "funk": ("x..x..x...x.xx..", "x.....xx..x..x.x", "x..xg...x.x..x..", "x.x...x..xg..gx.",
             "x..g.xx.x..g.x.."),
    "halftime": ("L.........x.....", "L.......L.......", "L.........x..x..", "L.....x.L......."),
    "disco": ("x.x.x.x.x.x.x.x.",),
    "offbeat": ("..x...x...x...x.", "..xx..x...xx..x.", "x.x...x.x.x...x."),
    "808": ("L.........L.....", "L......L..L.....", "L.........x..x.."),
    "reggae": ("..x.x...x..x.x..", "......x.x.x.x...", "x..x..x...x.x...", "....x.x.L......."),
    "bossa": ("x.....x.x.....x.", "x..x....x..x...."),
    "hiphop": ("x......x..x.....", "x.......x.x....x", "L.........x..x..", "x..x......x....."),
    # Triplet grids (12 steps per bar).
    "walking": ("x..x..x..x..",),
    "shuffle": ("x..x.xx..x.x", "x..x..x..x.x", "x.xx..x.xx.."),
}


def _humanise_time(rng: np.random.Generator, t: float, ms: float) -> float:
    return max(t + (rng.normal(0.0, ms / 1000.0) if ms > 0 else 0.0), 0.0)


def _vel(rng: np.random.Generator, base: float, scale: float, spread: float = 7.0) -> int:
    return int(np.clip(round(base * scale + rng.normal(0.0, spread)), 1, 127))


def _sections(rng: np.random.Generator, total_bars: int) -> list[tuple[str, int]]:
    """Split ``total_bars`` into named sections of 4 or 8 bars."""
    out: list[tuple[str, int]] = []
    left = total_bars
    names = ["verse", "chorus", "verse", "bridge", "chorus"]
    if rng.random() < 0.5 and left >= 12:
        out.append(("intro", 4))
        left -= 4
    i = 0
    while left > 0:
        n = 8 if left >= 8 and rng.random() < 0.6 else min(4, left)
        out.append((names[i % len(names)], n))
        left -= n
        i += 1
    return out


def _fill(rng: np.random.Generator, steps_per_beat: int, beats: int) -> list[tuple[int, int, str]]:
    """A fill over the last ``beats`` beats of a bar: (step, drum, char) with crescendo."""
    bar_steps = 4 * steps_per_beat
    first = bar_steps - beats * steps_per_beat
    density = 1 if rng.random() < 0.5 or steps_per_beat == 3 else 2
    positions = list(range(first, bar_steps, density))
    kind = rng.integers(3)  # 0: snare roll, 1: descending toms, 2: snare and toms mixed
    toms = list(TOMS[int(rng.integers(0, 2)):][:4])
    hits: list[tuple[int, int, str]] = []
    for k, step in enumerate(positions):
        if rng.random() < 0.12 and k > 0:
            continue
        frac = k / max(len(positions) - 1, 1)
        if kind == 0:
            drum = SNARE
        elif kind == 1:
            drum = toms[min(int(frac * len(toms)), len(toms) - 1)]
        else:
            drum = SNARE if rng.random() < 0.4 else toms[min(int(frac * len(toms)), len(toms) - 1)]
        hits.append((step, drum, "X" if frac > 0.6 else "x"))
        if step % steps_per_beat == 0 and rng.random() < 0.5:
            hits.append((step, KICK, "x"))
    return hits


def _compose_drums(rng: np.random.Generator, style: DrumStyle, tempo: float,
                   sections: list[tuple[str, int]], dynamics: dict[str, float]) -> list[Note]:
    spb = style.steps_per_beat
    bar_steps = 4 * spb
    step_s = 60.0 / tempo / spb
    swing = rng.uniform(*style.swing) if spb == 4 else 0.0
    timing_ms = style.timing_ms * rng.uniform(0.5, 1.3)
    notes: list[Note] = []
    bar = 0
    for s_idx, (name, n_bars) in enumerate(sections):
        loud = name in ("chorus", "bridge")
        groove = style.groove(rng, loud)
        alt = style.groove(rng, loud) if rng.random() < 0.35 else groove
        dyn = dynamics[name]
        fill_beats = int(rng.choice([1, 2, 2, 4])) if rng.random() < 0.8 else 0
        for b in range(n_bars):
            pattern = alt if (b % 4 == 3 and alt is not groove) else groove
            hits: list[tuple[int, int, str]] = []
            for drum, line in pattern.items():
                if len(line) != bar_steps:
                    raise ValueError(f"{style.name}: pattern of {len(line)} steps, "
                                     f"expected {bar_steps}")
                for step, ch in enumerate(line):
                    if ch != "." and not (ch == "g" and rng.random() < 0.25):
                        hits.append((step, drum, ch))
            last = b == n_bars - 1
            if last and fill_beats and s_idx < len(sections) - 1:
                cut = bar_steps - fill_beats * spb
                hits = [h for h in hits if h[0] < cut or (h[1] in (KICK, PEDAL_HAT)
                                                          and h[0] == cut)]
                hits += _fill(rng, spb, fill_beats)
            elif rng.random() < 0.1:  # a small variation: an extra kick or ghost note
                hits.append((int(rng.integers(bar_steps)), KICK if rng.random() < 0.5
                             else SNARE, "g"))
            if b == 0 and (s_idx == 0 or name in ("chorus", "bridge") or rng.random() < 0.5):
                hits.append((0, CRASH if rng.random() < 0.7 else CRASH2, "X"))
                hits = [h for h in hits if not (h[0] == 0 and h[1] in (CLOSED_HAT, RIDE))]
            for step, drum, ch in hits:
                t = (bar * bar_steps + step) * step_s
                if spb == 4 and step % 2 == 1:
                    t += swing * step_s
                accent = 1.0 if step % spb == 0 else 0.9
                vel = _vel(rng, _VEL[ch] * accent, dyn)
                notes.append(Note(_humanise_time(rng, t, timing_ms), 0.12, drum, vel))
            bar += 1
    return notes


def _chord_tones(scale: tuple[int, ...], degree: int) -> tuple[int, int, int, int]:
    """Semitone offsets from the key root of a diatonic seventh chord on ``degree``."""
    def tone(k: int) -> int:
        return scale[k % 7] + 12 * (k // 7)
    return tone(degree), tone(degree + 2), tone(degree + 4), tone(degree + 6)


def _fold(pitch: int, low: int = 28, high: int = 55) -> int:
    while pitch < low:
        pitch += 12
    while pitch > high:
        pitch -= 12
    return pitch


def _compose_bass(rng: np.random.Generator, style: DrumStyle, tempo: float, key_root: int,
                  mode: str, progression: tuple[int, ...], sections: list[tuple[str, int]],
                  dynamics: dict[str, float], chord_bars: int | None = None,
                  ) -> tuple[list[Note], list[Bend]]:
    # chord_bars: bars per chord; None draws it from the feel (the drums+bass set's rule).
    scale = SCALES[mode]
    feel = _pick(rng, style.bass_feels)
    pool = _BASS_RHYTHMS[feel]
    bar_steps = len(pool[0])
    step_s = 240.0 / tempo / bar_steps
    if chord_bars is None:
        chord_bars = 2 if feel in ("halftime", "reggae", "808") and rng.random() < 0.5 else 1
    legato = rng.uniform(0.55, 0.95)
    p_rest = rng.uniform(0.0, 0.15)
    p_octave = rng.uniform(0.05, 0.3)
    p_slide = rng.uniform(0.02, 0.15)
    base_vel = rng.uniform(75, 110)
    timing_ms = style.timing_ms * rng.uniform(0.5, 1.2)
    swing = rng.uniform(*style.swing) if bar_steps == 16 else 0.0
    # (onset step, pitch, velocity, is_long, is_dead) before timing.
    events: list[tuple[int, int, int, bool, bool]] = []
    bar = 0
    for name, n_bars in sections:
        rhythm = _pick(rng, pool)
        alt = _pick(rng, pool)
        rests_out = name == "intro" and rng.random() < 0.5
        for b in range(n_bars):
            if rests_out:
                bar += 1
                continue
            line = alt if b % 2 == 1 and rng.random() < 0.4 else rhythm
            chord_idx = (bar // chord_bars) % len(progression)
            degree = progression[chord_idx]
            next_degree = progression[((bar + 1) // chord_bars) % len(progression)]
            root, third, fifth, seventh = _chord_tones(scale, degree)
            next_root = _chord_tones(scale, next_degree)[0]
            onsets = [k for k, c in enumerate(line) if c != "."]
            for n, step in enumerate(onsets):
                ch = line[step]
                if n > 0 and rng.random() < p_rest:
                    continue
                if feel == "walking":
                    if n == 0:
                        off = root
                    elif n == len(onsets) - 1:  # approach the next chord's root
                        off = next_root + int(rng.choice([-1, 1, -2, 2]))
                    else:
                        off = int(rng.choice([third, fifth, seventh, root + 12,
                                              scale[(degree + 1) % 7]]))
                elif feel == "disco":
                    off = root + (12 if n % 2 == 1 else 0)
                elif n == 0:
                    off = root
                else:
                    r = rng.random()
                    if r < 0.45:
                        off = root
                    elif r < 0.65:
                        off = fifth
                    elif r < 0.75:
                        off = third
                    elif r < 0.85:
                        off = seventh if feel in ("funk", "reggae", "walking") else fifth
                    else:
                        off = scale[int(rng.integers(7))]
                    if n == len(onsets) - 1 and rng.random() < 0.3:
                        off = next_root + int(rng.choice([-1, 1, -2, 2]))
                if rng.random() < p_octave:
                    off += 12 if rng.random() < 0.7 else -12
                pitch = _fold(key_root + off)
                accent = 1.0 if step % (bar_steps // 4) == 0 else 0.88
                vel = _vel(rng, base_vel * accent, dynamics[name], 6.0)
                dead = ch == "g"
                if dead:
                    vel = max(vel // 3, 10)
                events.append((bar * bar_steps + step, pitch, vel, ch == "L", dead))
            bar += 1
    total_steps = bar * bar_steps
    times = [_humanise_time(rng, step * step_s + (swing * step_s if bar_steps == 16
                                                   and step % 2 == 1 else 0.0), timing_ms)
             for step, *_ in events]
    notes: list[Note] = []
    bends: list[Bend] = [Bend(0.0, 0.0)]
    for i, (step, pitch, vel, long, dead) in enumerate(events):
        t = times[i]
        gap = (events[i + 1][0] if i + 1 < len(events) else total_steps) - step
        length = gap * step_s * (0.98 if long else legato)
        if dead:
            length = min(length, 0.06)
        length = max(length, 0.04)
        if not dead and rng.random() < p_slide:
            if (i + 1 < len(events) and gap * step_s > 0.15
                    and abs(events[i + 1][1] - pitch) <= 7 and rng.random() < 0.5):
                # Slide into the next note over the last 40 % of this one; the bend is
                # reset exactly at the next onset (bends sort before note-ons there).
                length = max(times[i + 1] - t, 0.04)
                target = events[i + 1][1] - pitch
                for k in range(1, 7):
                    bends.append(Bend(t + length * (0.6 + 0.4 * k / 7), target * k / 6))
                notes.append(Note(t, length, pitch, vel))
                bends.append(Bend(t + length, 0.0))
                continue
            # Slide in from below.
            depth = float(rng.integers(1, 6))
            dur = rng.uniform(0.04, 0.12)
            for k in range(6):
                bends.append(Bend(max(t + dur * k / 5 - (1e-4 if k == 0 else 0.0), 0.0),
                                  -depth * (1 - k / 5)))
        notes.append(Note(t, length, pitch, vel))
    return notes, bends


def compose_song(rng: np.random.Generator, target_seconds: float = 30.0,
                 style: str | None = None) -> Song:
    """Compose a drums+bass song of about ``target_seconds`` (a whole number of bars >= 8).

    Args:
        rng: the song is a pure function of this generator's state.
        target_seconds: approximate length.
        style: a key of :data:`DRUM_STYLES`; ``None`` draws one.
    """
    name = style if style is not None else _pick(rng, sorted(DRUM_STYLES))
    st = DRUM_STYLES[name]
    tempo = float(rng.integers(st.tempo[0], st.tempo[1] + 1))
    bars = max(8, round(target_seconds / (240.0 / tempo) / 4.0) * 4)
    kit = _pick(rng, st.kits) if rng.random() < 0.85 else _pick(rng, sorted(DRUM_KITS))
    bass_program = (_pick(rng, st.bass_programs) if rng.random() < 0.7
                    else _pick(rng, sorted(BASS_PROGRAMS)))
    mode = _pick(rng, st.modes)
    progression = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    key_pc = int(rng.integers(12))
    key_root = 28 + (key_pc - 4) % 12  # E1 .. D#2
    sections = _sections(rng, bars)
    dynamics = {n: rng.uniform(0.75, 0.95) for n in ("intro", "verse", "bridge")}
    dynamics["chorus"] = rng.uniform(0.95, 1.1)
    drums = _compose_drums(rng, st, tempo, sections, dynamics)
    bass_notes, bends = _compose_bass(rng, st, tempo, key_root, mode, progression, sections,
                                      dynamics)
    return Song(style=name, tempo=tempo, bars=bars, kit=kit, bass_program=bass_program,
                key=key_pc, mode=mode, progression=progression,
                sections=tuple(n for n, _ in sections),
                drums=Part(DRUM_KITS[kit], tuple(sorted(drums, key=lambda x: x.time))),
                bass=Part(BASS_PROGRAMS[bass_program],
                          tuple(sorted(bass_notes, key=lambda x: x.time)),
                          tuple(sorted(bends, key=lambda x: x.time))))

"""Three-part songs (drums, bass, other) for the band data set.

A band song takes the drums+bass composer's grooves and bass lines (with four more styles:
ballad, metal, drum and bass, and a 12/8 afro groove) and adds an ``other`` stem: up to three
parts that follow the song's harmony, form and tempo, each in one role:

* ``pad``: sustained chord voicings (strings, synth pads, organ, choir, brass section),
* ``comp``: rhythmic chords (piano, electric piano, clavinet, organ, guitars, brass stabs),
* ``arp``: broken chords in eighths or sixteenths (harp, piano, mallets, synth leads),
* ``lead``: a melody in phrases that land on chord tones (reeds, brass, flute, violin, leads,
  guitars),
* ``counter``: a slower, lower counter-melody on guide tones (cello, trombone, horn, bassoon,
  tenor and baritone sax).

Each part plays in some sections only, at its own level; about one song in ten has no other
part at all (its ``other`` stem is silent). Times are in seconds; a song is a pure function
of its random generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lass.data.synth.compose import (
    BASS_PROGRAMS,
    CLOSED_HAT,
    COWBELL,
    CRASH,
    DRUM_KITS,
    DRUM_STYLES,
    KICK,
    OPEN_HAT,
    PROGRESSIONS,
    RIDE,
    SCALES,
    SIDE_STICK,
    SNARE,
    DrumStyle,
    Note,
    Part,
    _chord_tones,
    _compose_bass,
    _compose_drums,
    _humanise_time,
    _pick,
    _sections,
    _vel,
)

#: GM programs (zero-based) each role of the other stem draws from.
ROLE_PROGRAMS: dict[str, tuple[int, ...]] = {
    "pad": (48, 49, 50, 51, 52, 61, 88, 89, 90, 91, 94, 95, 16, 19, 20, 21),
    "comp": (0, 1, 2, 4, 5, 7, 16, 17, 18, 24, 25, 26, 27, 28, 29, 30, 61, 62),
    "arp": (0, 4, 6, 8, 11, 12, 13, 24, 25, 46, 80, 81, 98, 108),
    "lead": (11, 22, 26, 29, 30, 40, 56, 59, 64, 65, 66, 68, 71, 72, 73, 80, 81, 82, 84, 85),
    "counter": (41, 42, 57, 60, 66, 67, 69, 70, 71),
}
ROLES: tuple[str, ...] = tuple(ROLE_PROGRAMS)
#: Pitch range (MIDI keys) of each role.
ROLE_RANGE: dict[str, tuple[int, int]] = {"pad": (50, 79), "comp": (48, 76), "arp": (55, 88),
                                         "lead": (62, 88), "counter": (45, 67)}
#: Chance that a role plays in a given section (the intro: a quarter of it).
ROLE_ACTIVITY: dict[str, float] = {"pad": 0.8, "comp": 0.85, "arp": 0.6, "lead": 0.65,
                                   "counter": 0.6}
#: How many other parts a song has: 0, 1, 2 or 3, with these chances.
PART_COUNT_P: tuple[float, ...] = (0.1, 0.4, 0.38, 0.12)

_COMP_RHYTHMS_16 = ("x...x...x...x...", "x.x.x.x.x.x.x.x.", "..x...x...x...x.", "x..x..x...x..x..",
                    "x.....x.x.....x.", "x...............", "x.......x.......", "x..x..x.x..x..x.",
                    "....x.......x...")
_COMP_RHYTHMS_12 = ("x..x..x..x..", "x.....x.....", "..x..x..x..x", "x.xx.xx.xx.x",
                    "x...........")


def _ballad(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x.......x.......", "x.......x.x.....", "x......x..x....."])
    snare = SNARE if loud or rng.random() < 0.5 else SIDE_STICK
    hats = RIDE if loud and rng.random() < 0.5 else CLOSED_HAT
    return {KICK: kick, snare: "....X.......X...", hats: "x.x.x.x.x.x.x.x."}


def _metal(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["xxxxxxxxxxxxxxxx", "x.x.x.x.x.x.x.x.", "xx.xxx.xxx.xxx.x",
                       "x..xx..xx..xx..x"])
    cymbal = CRASH if loud and rng.random() < 0.4 else RIDE if rng.random() < 0.5 else CLOSED_HAT
    return {KICK: kick, SNARE: "....X.......X...", cymbal: "x.x.x.x.x.x.x.x."}


def _dnb(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x.........x.....", "x.x.......x.....", "x.........xx...."])
    snare = _pick(rng, ["....X.......X...", "....X..g....X..g", "....X.......X.g."])
    hats = _pick(rng, ["x.x.x.x.x.x.x.x.", "xxxxxxxxxxxxxxxx", "..x...x...x...x."])
    return {KICK: kick, SNARE: snare, CLOSED_HAT: hats}


def _afro(rng: np.random.Generator, loud: bool) -> dict[int, str]:
    kick = _pick(rng, ["x.....x.....", "x.....x..x..", "x..x..x....."])
    bell = _pick(rng, ["x.x.xx.x.x.x", "x.x.x.xx.x.x"])
    return {KICK: kick, SIDE_STICK: "...x.....x..", CLOSED_HAT: "x.xx.xx.xx.x", COWBELL: bell,
            OPEN_HAT: "............" if not loud else ".....x.....x"}


EXTRA_STYLES: dict[str, DrumStyle] = {s.name: s for s in [
    DrumStyle("ballad", (58, 84), 4, ("standard", "room", "brush"), (0.0, 0.1), 8.0,
              ("halftime", "rock"), ("fingered", "fretless", "acoustic"),
              ("major", "minor"), _ballad),
    DrumStyle("metal", (140, 200), 4, ("power", "standard", "room"), (0.0, 0.0), 4.0,
              ("root8",), ("picked", "fingered"), ("minor",), _metal),
    DrumStyle("dnb", (160, 178), 4, ("electronic", "standard", "tr808"), (0.0, 0.05), 3.0,
              ("halftime", "808", "offbeat"), ("synth1", "synth2", "fingered"),
              ("minor", "dorian"), _dnb),
    DrumStyle("afro", (90, 130), 3, ("standard", "room", "jazz"), (0.0, 0.0), 8.0,
              ("shuffle", "walking"), ("fingered", "fretless", "picked"),
              ("mixolydian", "dorian", "major"), _afro),
]}
#: Every style of the band set: the drums+bass styles and the four above.
BAND_STYLES: dict[str, DrumStyle] = {**DRUM_STYLES, **EXTRA_STYLES}


@dataclass(frozen=True)
class BandSong:
    """A three-part song; all parts share ``tempo`` and the bar grid (4/4)."""

    style: str
    tempo: float
    bars: int
    kit: str
    bass_program: str
    key: int
    mode: str
    progression: tuple[int, ...]
    chord_bars: int
    sections: tuple[str, ...]
    drums: Part
    bass: Part
    other: tuple[Part, ...]
    other_roles: tuple[str, ...]

    @property
    def bar_seconds(self) -> float:
        """Length of one 4/4 bar in seconds."""
        return 240.0 / self.tempo

    @property
    def seconds(self) -> float:
        """Length of the song in seconds (a whole number of bars)."""
        return self.bars * self.bar_seconds

    def describe(self) -> dict[str, object]:
        """The song's musical settings as plain JSON-ready values."""
        return {"style": self.style, "tempo": self.tempo, "bars": self.bars, "kit": self.kit,
                "bass_program": self.bass_program, "key": self.key, "mode": self.mode,
                "progression": list(self.progression), "chord_bars": self.chord_bars,
                "sections": list(self.sections), "drum_notes": len(self.drums.notes),
                "bass_notes": len(self.bass.notes),
                "other": [{"role": r, "program": p.program, "notes": len(p.notes)}
                          for r, p in zip(self.other_roles, self.other, strict=True)],
                "seconds": self.seconds}


@dataclass(frozen=True)
class _Harmony:
    """What the other parts follow: key, scale, chords per bar, grid and form."""

    key_root: int  # MIDI key of the tonic in the bass octave
    scale: tuple[int, ...]
    progression: tuple[int, ...]
    chord_bars: int
    sections: tuple[tuple[str, int], ...]
    dynamics: dict[str, float]
    bar_steps: int
    tempo: float
    timing_ms: float
    swing: float

    def chord(self, bar: int) -> tuple[int, int, int, int]:
        """Semitone offsets from the key root of the seventh chord of ``bar``."""
        degree = self.progression[(bar // self.chord_bars) % len(self.progression)]
        return _chord_tones(self.scale, degree)

    @property
    def step_s(self) -> float:
        return 240.0 / self.tempo / self.bar_steps

    def time(self, rng: np.random.Generator, bar: int, step: float) -> float:
        swung = self.swing if self.bar_steps == 16 and int(step) % 2 == 1 else 0.0
        return _humanise_time(rng, (bar * self.bar_steps + step + swung) * self.step_s,
                              self.timing_ms)


def _place(pitch_class: int, low: int, high: int) -> int:
    """The lowest key of ``pitch_class`` at or above ``low`` (folded below ``high``)."""
    p = low + (pitch_class - low) % 12
    return p if p <= high else p - 12


def _voicing(h: _Harmony, bar: int, low: int, high: int, sevenths: bool,
             rng: np.random.Generator) -> list[int]:
    root, third, fifth, seventh = h.chord(bar)
    tones = [root, third, fifth] + ([seventh] if sevenths else [])
    base = low + int(rng.integers(0, 5))
    keys = sorted({_place((h.key_root + t) % 12, base, high) for t in tones})
    if len(keys) < 4 and rng.random() < 0.5:  # double the lowest tone an octave up
        keys.append(min(keys[0] + 12, high))
    return sorted(set(keys))


def _bars_playing(rng: np.random.Generator, h: _Harmony, role: str) -> list[bool]:
    """For each bar, whether the part plays; every part plays in one section at least."""
    chance = ROLE_ACTIVITY[role]
    on = [rng.random() < (chance / 4 if name == "intro" else chance) for name, _ in h.sections]
    if not any(on):
        on[int(rng.integers(len(on)))] = True
    return [flag for flag, (_, n) in zip(on, h.sections, strict=True) for _ in range(n)]


def _section_of_bar(h: _Harmony) -> list[str]:
    return [name for name, n in h.sections for _ in range(n)]


def _chords(rng: np.random.Generator, h: _Harmony, role: str) -> list[Note]:
    low, high = ROLE_RANGE[role]
    playing = _bars_playing(rng, h, role)
    names = _section_of_bar(h)
    sevenths = rng.random() < 0.5
    base_vel = rng.uniform(55, 95)
    pool: tuple[str, ...]
    if role == "pad":
        pool = ("x" + "." * (h.bar_steps - 1),)
        legato = rng.uniform(0.9, 1.0)
    else:
        pool = _COMP_RHYTHMS_16 if h.bar_steps == 16 else _COMP_RHYTHMS_12
        legato = rng.uniform(0.3, 0.9)
    rhythm = _pick(rng, pool)
    notes: list[Note] = []
    for bar, on in enumerate(playing):
        if not on:
            continue
        two_bars = role == "pad" and h.chord_bars == 2
        if two_bars and bar % 2 == 1 and playing[bar - 1]:
            continue  # the chord struck in the bar before still sounds
        keys = _voicing(h, bar, low, high, sevenths, rng)
        onsets = [k for k, c in enumerate(rhythm) if c != "."]
        for n, step in enumerate(onsets):
            nxt = onsets[n + 1] if n + 1 < len(onsets) else h.bar_steps
            held = 2 if (two_bars and bar % 2 == 0 and bar + 1 < len(playing)
                         and playing[bar + 1]) else 1
            length = (nxt - step if nxt != h.bar_steps else h.bar_steps * held - step)
            dur = max(length * h.step_s * legato, 0.05)
            t = h.time(rng, bar, step)
            vel = base_vel * h.dynamics[names[bar]] * (1.0 if step % (h.bar_steps // 4) == 0
                                                       else 0.9)
            for k in keys:
                notes.append(Note(t + float(rng.uniform(0, 0.012)), dur, k,
                                  _vel(rng, vel, 1.0, 5.0)))
    return notes


def _arp(rng: np.random.Generator, h: _Harmony) -> list[Note]:
    low, high = ROLE_RANGE["arp"]
    playing = _bars_playing(rng, h, "arp")
    names = _section_of_bar(h)
    rate = 1 if h.bar_steps == 12 or rng.random() < 0.4 else 2  # grid steps per note
    shape = _pick(rng, ["up", "down", "updown", "random"])
    octaves = 1 + int(rng.random() < 0.5)
    legato = rng.uniform(0.4, 1.0)
    base_vel = rng.uniform(55, 95)
    start = low + int(rng.integers(0, 8))
    notes: list[Note] = []
    for bar, on in enumerate(playing):
        if not on:
            continue
        root, third, fifth, _seventh = h.chord(bar)
        pcs = [(h.key_root + t) % 12 for t in (root, third, fifth)]
        tones = sorted(_place(pc, start, high) for pc in pcs)
        tones = sorted({t + 12 * o for t in tones for o in range(octaves) if t + 12 * o <= high})
        seq = tones if shape == "up" else tones[::-1] if shape == "down" else (
            tones + tones[-2:0:-1] if shape == "updown" else tones)
        for i, step in enumerate(range(0, h.bar_steps, rate)):
            key = (seq[i % len(seq)] if shape != "random"
                   else tones[int(rng.integers(len(tones)))])
            vel = base_vel * h.dynamics[names[bar]] * (1.0 if step % (h.bar_steps // 4) == 0
                                                       else 0.85)
            notes.append(Note(h.time(rng, bar, step), max(rate * h.step_s * legato, 0.04), key,
                              _vel(rng, vel, 1.0, 6.0)))
    return notes


def _melody(rng: np.random.Generator, h: _Harmony, role: str) -> list[Note]:
    """A melody in two-bar phrases whose strong beats land on chord tones."""
    low, high = ROLE_RANGE[role]
    playing = _bars_playing(rng, h, role)
    names = _section_of_bar(h)
    scale = [(h.key_root + s) % 12 for s in h.scale]
    keys = [k for k in range(low, high + 1) if k % 12 in scale]
    density = rng.uniform(0.2, 0.45) if role == "lead" else rng.uniform(0.1, 0.2)
    sub = 1 if h.bar_steps == 12 or role == "lead" else 2  # counter-melodies move in eighths+
    legato = rng.uniform(0.6, 0.98)
    base_vel = rng.uniform(65, 105)
    span = 2 * h.bar_steps

    def phrase_rhythm() -> list[int]:
        steps = [s for s in range(0, span - h.bar_steps // 2, sub)
                 if s == 0 or rng.random() < density]
        return steps

    rhythm = phrase_rhythm()
    alt = phrase_rhythm()
    idx = int(rng.integers(len(keys) // 3, 2 * len(keys) // 3 + 1))
    notes: list[Note] = []
    for first in range(0, len(playing), 2):
        if not playing[first]:
            continue
        line = alt if (first // 2) % 4 == 3 else rhythm
        for n, step in enumerate(line):
            bar = first + step // h.bar_steps
            if bar >= len(playing) or not playing[bar]:
                break
            r = rng.random()
            move = (int(rng.choice([-1, 1])) if r < 0.55 else int(rng.choice([-2, 2])) if r < 0.8
                    else int(rng.choice([-4, -3, 3, 4])) if r < 0.92 else 0)
            idx = int(np.clip(idx + move, 0, len(keys) - 1))
            if step % (h.bar_steps // 2) == 0:  # strong beat: the nearest chord tone
                chord = {(h.key_root + t) % 12 for t in h.chord(bar)[: 3 if role == "lead"
                                                                      else 4]}
                near = [i for i, k in enumerate(keys) if k % 12 in chord]
                if near:
                    idx = min(near, key=lambda i: abs(i - idx))
            nxt = line[n + 1] if n + 1 < len(line) else span
            dur = (nxt - step) * h.step_s * (legato if n + 1 < len(line) else 0.9)
            vel = base_vel * h.dynamics[names[bar]]
            notes.append(Note(h.time(rng, bar, step % h.bar_steps), max(dur, 0.05), keys[idx],
                              _vel(rng, vel, 1.0, 6.0)))
    return notes


def compose_other(rng: np.random.Generator, h: _Harmony) -> tuple[list[Part], list[str]]:
    """The other stem's parts and their roles (possibly none)."""
    count = int(rng.choice(len(PART_COUNT_P), p=PART_COUNT_P))
    roles = list(rng.choice(ROLES, size=count, replace=False))
    parts: list[Part] = []
    for role in roles:
        program = int(rng.choice(ROLE_PROGRAMS[role]))
        if role in ("pad", "comp"):
            notes = _chords(rng, h, role)
        elif role == "arp":
            notes = _arp(rng, h)
        else:
            notes = _melody(rng, h, role)
        parts.append(Part(program, tuple(sorted(notes, key=lambda x: (x.time, x.pitch)))))
    return parts, [str(r) for r in roles]


def compose_band_song(rng: np.random.Generator, target_seconds: float = 30.0,
                      style: str | None = None, styles: Sequence[str] | None = None) -> BandSong:
    """Compose a drums, bass and other song of about ``target_seconds`` (>= 8 bars).

    Args:
        rng: the song is a pure function of this generator's state.
        target_seconds: approximate length.
        style: a key of :data:`BAND_STYLES`; ``None`` draws one from ``styles`` (default all).
    """
    name = style if style is not None else _pick(rng, sorted(styles or BAND_STYLES))
    st = BAND_STYLES[name]
    tempo = float(rng.integers(st.tempo[0], st.tempo[1] + 1))
    bars = max(8, round(target_seconds / (240.0 / tempo) / 4.0) * 4)
    kit = _pick(rng, st.kits) if rng.random() < 0.85 else _pick(rng, sorted(DRUM_KITS))
    bass_program = (_pick(rng, st.bass_programs) if rng.random() < 0.7
                    else _pick(rng, sorted(BASS_PROGRAMS)))
    mode = _pick(rng, st.modes)
    progression = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    chord_bars = 2 if rng.random() < (0.5 if tempo > 110 else 0.25) else 1
    key_pc = int(rng.integers(12))
    key_root = 28 + (key_pc - 4) % 12  # E1 .. D#2
    sections = _sections(rng, bars)
    dynamics = {n: rng.uniform(0.75, 0.95) for n in ("intro", "verse", "bridge")}
    dynamics["chorus"] = rng.uniform(0.95, 1.1)
    drums = _compose_drums(rng, st, tempo, sections, dynamics)
    bass_notes, bends = _compose_bass(rng, st, tempo, key_root, mode, progression, sections,
                                      dynamics, chord_bars=chord_bars)
    harmony = _Harmony(key_root=key_root, scale=SCALES[mode], progression=progression,
                       chord_bars=chord_bars, sections=tuple(sections), dynamics=dynamics,
                       bar_steps=4 * st.steps_per_beat, tempo=tempo,
                       timing_ms=st.timing_ms * rng.uniform(0.4, 1.0),
                       swing=rng.uniform(*st.swing))
    other, roles = compose_other(rng, harmony)
    return BandSong(style=name, tempo=tempo, bars=bars, kit=kit, bass_program=bass_program,
                    key=key_pc, mode=mode, progression=progression, chord_bars=chord_bars,
                    sections=tuple(n for n, _ in sections),
                    drums=Part(DRUM_KITS[kit], tuple(sorted(drums, key=lambda x: x.time))),
                    bass=Part(BASS_PROGRAMS[bass_program],
                              tuple(sorted(bass_notes, key=lambda x: x.time)),
                              tuple(sorted(bends, key=lambda x: x.time))),
                    other=tuple(other), other_roles=tuple(roles))

"""MIDI files for one part and their rendering with the FluidSynth command-line synthesiser.

FluidSynth renders to a stereo float WAV (no dither, so renders are bit-exact repeatable)
with a release tail; :func:`render_part` averages it to mono and cuts it to the song's
length.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

from lass.data.synth.compose import Part
from lass.data.synth.soundfonts import check_not_reserved
from lass.errors import LassError

TICKS_PER_BEAT = 960
BEND_RANGE = 12  # semitones, set by RPN 0 at the start of a bass part
DRUM_CHANNEL = 9
#: Where Debian's fluid-soundfont-gm puts the General MIDI soundfont.
SOUNDFONT_CANDIDATES = ("/usr/share/sounds/sf2/FluidR3_GM.sf2",
                        "/usr/share/soundfonts/FluidR3_GM.sf2",
                        "/usr/share/sounds/sf2/default-GM.sf2")


class RenderError(LassError):
    """FluidSynth or the soundfont is missing, or a render failed."""


def find_soundfont(path: str | os.PathLike[str] | None = None) -> Path:
    """The General MIDI soundfont: ``path``, ``$LASS_SOUNDFONT``, or Debian's FluidR3_GM."""
    candidates = [path] if path is not None else (
        [os.environ["LASS_SOUNDFONT"]] if os.environ.get("LASS_SOUNDFONT")
        else list(SOUNDFONT_CANDIDATES))
    for c in candidates:
        if c is not None and Path(c).is_file():
            check_not_reserved(c)
            return Path(c)
    looked = ", ".join(map(str, candidates))
    raise RenderError(f"General MIDI soundfont not found (looked for {looked}); "
                      "install Debian's fluid-soundfont-gm or set LASS_SOUNDFONT")


def find_fluidsynth() -> str:
    """Path of the ``fluidsynth`` executable."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RenderError("fluidsynth not found on PATH; install Debian's fluidsynth package")
    return exe


def part_to_midi(part: Part, tempo: float, drums: bool, *,
                 kit_as_preset: bool = False) -> mido.MidiFile:
    """One part as a type-0 MIDI file at ``tempo`` bpm.

    Drums play on channel 10 with ``part.program`` as the kit, unless ``kit_as_preset``: then
    they play on channel 1 with program 0 (a soundfont that is one drum kit as a preset).
    Melodic parts set a pitch-bend range of :data:`BEND_RANGE` semitones.
    """
    channel = DRUM_CHANNEL if drums and not kit_as_preset else 0
    program = 0 if drums and kit_as_preset else part.program
    us_per_beat = round(60_000_000 / tempo)
    ticks_per_s = TICKS_PER_BEAT * 1_000_000 / us_per_beat
    # (tick, order, message): at equal ticks, bends and note-offs come before note-ons.
    events: list[tuple[int, int, mido.Message]] = []
    for n in part.notes:
        on = round(n.time * ticks_per_s)
        off = max(round((n.time + n.duration) * ticks_per_s), on + 1)
        events.append((on, 2, mido.Message("note_on", channel=channel, note=n.pitch,
                                           velocity=n.velocity)))
        events.append((off, 0, mido.Message("note_off", channel=channel, note=n.pitch,
                                            velocity=0)))
    for b in part.bends:
        value = int(np.clip(round(b.semitones / BEND_RANGE * 8192), -8192, 8191))
        events.append((round(b.time * ticks_per_s), 1,
                       mido.Message("pitchwheel", channel=channel, pitch=value)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=us_per_beat, time=0))
    track.append(mido.Message("program_change", channel=channel, program=program, time=0))
    if not drums:
        for control, value in ((101, 0), (100, 0), (6, BEND_RANGE), (38, 0)):
            track.append(mido.Message("control_change", channel=channel, control=control,
                                      value=value, time=0))
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)
    return midi


def render_midi(midi: mido.MidiFile, seconds: float, sample_rate: int, *,
                soundfont: Path, reverb: float = 0.0, room: float = 0.2) -> np.ndarray:
    """Render ``midi`` with FluidSynth; return ``(samples,)`` float32 mono, cut to ``seconds``."""
    exe = find_fluidsynth()
    length = round(seconds * sample_rate)
    with tempfile.TemporaryDirectory(prefix="lass-render-") as tmp:
        mid_path, wav_path = Path(tmp) / "part.mid", Path(tmp) / "part.wav"
        midi.save(str(mid_path))
        cmd = [exe, "-n", "-i", "-q", "-F", str(wav_path), "-T", "wav", "-O", "float",
               "-r", str(sample_rate), "-g", "0.5", "-C", "0",
               "-R", "1" if reverb > 0 else "0",
               "-o", f"synth.reverb.level={reverb:.3f}", "-o", f"synth.reverb.room-size={room:.3f}",
               "-o", "synth.dynamic-sample-loading=1", "-o", "synth.cpu-cores=1",
               str(soundfont), str(mid_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not wav_path.is_file():
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise RenderError(f"fluidsynth failed ({proc.returncode}): "
                              f"{msg[-1] if msg else 'no output'}")
        audio, sr = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise RenderError(f"fluidsynth wrote {sr} Hz instead of {sample_rate} Hz")
    mono = audio.mean(axis=1)
    out = np.zeros(length, dtype=np.float32)
    out[: min(length, mono.shape[0])] = mono[:length]
    return out


def render_part(part: Part, tempo: float, seconds: float, sample_rate: int, *, drums: bool,
                soundfont: Path, reverb: float = 0.0, room: float = 0.2,
                kit_as_preset: bool = False) -> np.ndarray:
    """Render one part of a song to ``(round(seconds * sample_rate),)`` float32 mono."""
    return render_midi(part_to_midi(part, tempo, drums, kit_as_preset=kit_as_preset), seconds,
                       sample_rate, soundfont=soundfont, reverb=reverb, room=room)

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lass.data import folder_tracks
from lass.data.audio import rms_db
from lass.data.synth.build import SynthConfig, plan_songs
from lass.data.synth.compose import (
    BASS_PROGRAMS,
    CRASH,
    DRUM_KITS,
    DRUM_STYLES,
    KICK,
    TOMS,
    compose_song,
)
from lass.data.synth.render import BEND_RANGE, find_soundfont, part_to_midi, render_part


def songs(n: int, seed: int = 0):
    return [compose_song(np.random.default_rng([seed, i])) for i in range(n)]


def test_composition_is_a_function_of_the_generator():
    a = compose_song(np.random.default_rng(7))
    b = compose_song(np.random.default_rng(7))
    c = compose_song(np.random.default_rng(8))
    assert a == b
    assert a != c


@pytest.mark.parametrize("style", sorted(DRUM_STYLES))
def test_every_style_makes_a_valid_song(style):
    song = compose_song(np.random.default_rng(0), 30.0, style=style)
    lo, hi = DRUM_STYLES[style].tempo
    assert lo <= song.tempo <= hi
    assert 70 <= song.tempo <= 180
    assert song.bars % 4 == 0
    assert song.bars >= 8
    assert 15.0 < song.seconds < 50.0
    assert len(song.drums.notes) > 4 * song.bars
    assert len(song.bass.notes) > song.bars
    for part in (song.drums, song.bass):
        assert all(0 <= n.time < song.seconds + 0.1 for n in part.notes)
        assert all(1 <= n.velocity <= 127 and 0 <= n.pitch <= 127 for n in part.notes)
    assert all(28 <= n.pitch <= 55 for n in song.bass.notes)
    assert song.drums.program in DRUM_KITS.values()
    assert song.bass.program in BASS_PROGRAMS.values()
    # The drums keep the bar grid: some grid step holds a kick in most bars.
    steps = 4 * DRUM_STYLES[style].steps_per_beat
    kick_steps = [(int(n.time // song.bar_seconds),
                   round((n.time % song.bar_seconds) / song.bar_seconds * steps) % steps)
                  for n in song.drums.notes if n.pitch == KICK]
    if style != "jazz":  # jazz feathers the kick, or leaves it out
        common = Counter(st for _, st in set(kick_steps)).most_common(1)[0][1]
        assert common > 0.7 * song.bars


def test_the_set_is_musically_varied():
    many = songs(240)
    styles = Counter(s.style for s in many)
    assert set(styles) == set(DRUM_STYLES)
    assert len(styles) >= 8
    assert len({s.kit for s in many}) >= 6
    assert {s.bass.program for s in many} == set(range(32, 40))  # GM programs 33-40
    tempi = [s.tempo for s in many]
    assert min(tempi) < 85
    assert max(tempi) > 165
    assert len({s.key for s in many}) == 12
    assert len({s.mode for s in many}) == 4
    velocities = np.array([n.velocity for s in many[:20] for n in s.drums.notes])
    assert velocities.std() > 10  # humanised and accented, not constant
    with_fills = sum(any(n.pitch in TOMS for n in s.drums.notes) for s in many)
    with_crash = sum(any(n.pitch == CRASH for n in s.drums.notes) for s in many)
    with_slides = sum(len(s.bass.bends) > 1 for s in many)
    with_octaves = sum(any(abs(a.pitch - b.pitch) == 12 for a, b in
                           zip(s.bass.notes, s.bass.notes[1:], strict=False)) for s in many)
    assert with_fills > 100
    assert with_crash > 150
    assert with_slides > 100
    assert with_octaves > 100
    # Bass lines follow chords: more than one pitch class per song and rests between notes.
    assert all(len({n.pitch % 12 for n in s.bass.notes}) >= 2 for s in many)
    gaps = [b.time - (a.time + a.duration) for s in many[:30]
            for a, b in zip(s.bass.notes, s.bass.notes[1:], strict=False)]
    assert np.mean(np.array(gaps) > 0.05) > 0.1
    # Timing is humanised except in the electronic style.
    song = next(s for s in many if s.style == "rock")
    step = song.bar_seconds / 16
    offsets = [(n.time / step) % 1 for n in song.drums.notes]
    assert np.std([min(o, 1 - o) for o in offsets]) > 0.005


def test_midi_of_a_part_round_trips():
    song = next(s for s in songs(40) if len(s.bass.bends) > 1)
    midi = part_to_midi(song.bass, song.tempo, drums=False)
    ticks_per_s = midi.ticks_per_beat * song.tempo / 60.0
    now, ons, bends, controls, programs = 0, [], [], [], []
    for msg in midi.tracks[0]:
        now += msg.time
        if msg.type == "note_on":
            ons.append((now, msg.note, msg.velocity))
        elif msg.type == "pitchwheel":
            bends.append(msg.pitch)
        elif msg.type == "control_change":
            controls.append((msg.control, msg.value))
        elif msg.type == "program_change":
            programs.append(msg.program)
    assert programs == [song.bass.program]
    assert controls == [(101, 0), (100, 0), (6, BEND_RANGE), (38, 0)]
    assert len(ons) == len(song.bass.notes)
    assert len(bends) == len(song.bass.bends)
    for (tick, pitch, vel), n in zip(ons, song.bass.notes, strict=True):
        assert abs(tick / ticks_per_s - n.time) < 1.0 / ticks_per_s
        assert (pitch, vel) == (n.pitch, n.velocity)
    drums = part_to_midi(song.drums, song.tempo, drums=True)
    assert {m.channel for m in drums.tracks[0] if hasattr(m, "channel")} == {9}


def test_render_gives_mono_audio_of_the_song_length():
    song = compose_song(np.random.default_rng(3), 8.0)
    sf2 = find_soundfont()
    drums = render_part(song.drums, song.tempo, song.seconds, 22050, drums=True, soundfont=sf2)
    bass = render_part(song.bass, song.tempo, song.seconds, 22050, drums=False, soundfont=sf2)
    n = round(song.seconds * 22050)
    assert drums.shape == bass.shape == (n,)
    assert drums.dtype == np.float32
    assert rms_db(drums) > -45
    assert rms_db(bass) > -45
    # Repeatable to the bit.
    again = render_part(song.drums, song.tempo, song.seconds, 22050, drums=True, soundfont=sf2)
    np.testing.assert_array_equal(drums, again)


def test_plan_covers_the_hours_and_every_split():
    plans = plan_songs(SynthConfig(hours=0.05, seed=1))
    assert sum(p.seconds for p in plans) >= 180.0
    assert {p.split for p in plans} == {"train", "valid", "test"}
    assert plans == plan_songs(SynthConfig(hours=0.05, seed=1))
    assert [p.split for p in plans] != [p.split for p in plan_songs(SynthConfig(0.05, seed=2))] \
        or [p.seconds for p in plans] != [p.seconds for p in plan_songs(SynthConfig(0.05, 2))]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lass.cli.make_dataset", *args],
                          capture_output=True, text=True, check=False)


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    proc = run_cli("synth-drums-bass", "--hours", "0.05", "--seed", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "x real time" in proc.stdout
    return out


def test_small_set_is_aligned_non_silent_and_split(small_set):
    summary = json.loads((small_set / "dataset.json").read_text())
    assert summary["complete"] is True
    assert sum(summary["hours"].values()) >= 0.05
    names = {}
    for split in ("train", "valid", "test"):
        tracks = folder_tracks(small_set, split, ["drums", "bass"])
        names[split] = {t.name for t in tracks}
        for t in tracks:
            drums, sr_d = sf.read(t.stems["drums"][0], dtype="float32")
            bass, sr_b = sf.read(t.stems["bass"][0], dtype="float32")
            assert sr_d == sr_b == 22050
            assert drums.ndim == bass.ndim == 1
            assert drums.shape == bass.shape
            assert rms_db(drums) > -40
            assert rms_db(bass) > -45
            assert np.max(np.abs(drums)) < 0.99
            assert np.max(np.abs(bass)) < 0.99
            meta = json.loads((t.stems["drums"][0].parent / "track.json").read_text())
            assert meta["samples"] == drums.shape[0]
            assert abs(meta["song"]["seconds"] * 22050 - drums.shape[0]) <= 1
    assert not (names["train"] & names["valid"])
    assert not (names["train"] & names["test"])
    assert not (names["valid"] & names["test"])


@pytest.mark.slow  # over 10 s on 2 cores
def test_same_seed_gives_identical_files_and_resume_completes(small_set, tmp_path):
    again = tmp_path / "again"
    proc = run_cli("synth-drums-bass", "--hours", "0.05", "--seed", "1", "--out", str(again),
                   "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    reference = read_tree(small_set)
    assert read_tree(again) == reference
    # Simulate a run killed half-way through one song: its metadata and one stem are gone.
    victim = next((again / "train").iterdir())
    (victim / "track.json").unlink()
    (victim / "bass.wav").unlink()
    proc = run_cli("synth-drums-bass", "--hours", "0.05", "--seed", "1", "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    assert "rendered 1 songs" in proc.stdout
    assert read_tree(again) == reference


@pytest.mark.slow  # over 10 s on 2 cores
def test_cli_errors_are_one_line(tmp_path, small_set):
    proc = run_cli("synth-drums-bass", "--hours", "-1", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "lass-make-dataset: error: --hours must be positive, got -1.0"
    proc = run_cli("synth-drums-bass", "--hours", "0.05", "--seed", "2", "--out", str(small_set))
    assert proc.returncode == 1
    assert "holds a different synthetic data set" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    proc = run_cli("synth-drums-bass", "--hours", "0.05", "--out", str(busy))
    assert proc.returncode == 1
    assert "not empty" in proc.stderr
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    proc = run_cli("synth-drums-bass", "--hours", "0.05", "--out", str(tmp_path / "y"),
                   "--soundfont", str(tmp_path / "missing.sf2"))
    assert proc.returncode == 1
    assert "soundfont not found" in proc.stderr


def test_toy_command_writes_a_loadable_set(tmp_path):
    proc = run_cli("toy", "--sources", "sine", "square", "--items", "12", "--seconds", "0.25",
                   "--seed", "3", "--out", str(tmp_path / "toy"))
    assert proc.returncode == 0, proc.stderr
    counts = {s: len(folder_tracks(tmp_path / "toy", s, ["sine", "square"]))
              for s in ("train", "valid", "test")}
    assert counts == {"train": 10, "valid": 1, "test": 1}

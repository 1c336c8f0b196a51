import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lass.data import folder_tracks
from lass.data.audio import rms_db
from lass.data.synth.band import (
    BAND_STYLES,
    ROLE_PROGRAMS,
    ROLE_RANGE,
    SCALES,
    _chord_tones,
    compose_band_song,
)
from lass.data.synth.band_build import BandConfig, make_band_dataset, plan_band
from lass.data.synth.effects import Chain, Peak, apply_chain, draw_chain, room_response
from lass.data.synth.render import find_soundfont, part_to_midi
from lass.data.synth.soundfonts import SOUNDFONTS, check_not_reserved, soundfonts
from lass.errors import DataError


def test_band_song_is_a_function_of_the_generator():
    a = compose_band_song(np.random.default_rng(5))
    b = compose_band_song(np.random.default_rng(5))
    assert a == b
    assert a != compose_band_song(np.random.default_rng(6))


@pytest.mark.parametrize("style", sorted(BAND_STYLES))
def test_every_band_style_makes_three_aligned_parts(style):
    for seed in range(3):
        song = compose_band_song(np.random.default_rng(seed), 20.0, style=style)
        assert song.style == style
        assert song.bars >= 8
        for part in (song.drums, song.bass, *song.other):
            times = [n.time for n in part.notes]
            assert times == sorted(times)
            assert all(0 <= t < song.seconds + 0.1 for t in times)
        for role, part in zip(song.other_roles, song.other, strict=True):
            assert part.program in ROLE_PROGRAMS[role]
            lo, hi = ROLE_RANGE[role]
            assert part.notes, role
            assert all(lo - 12 <= n.pitch <= hi and 1 <= n.velocity <= 127 for n in part.notes)


def test_other_parts_follow_the_harmony():
    """Pads play the bar's chord tones; melodies land on chord tones on strong beats."""
    checked = {"pad": 0, "lead": 0}
    for seed in range(200):
        song = compose_band_song(np.random.default_rng(seed), 24.0)
        scale = SCALES[song.mode]
        key_root = 28 + (song.key - 4) % 12
        bar_s = song.bar_seconds
        for role, part in zip(song.other_roles, song.other, strict=True):
            if role not in checked:
                continue
            for n in part.notes:
                bar = int(round(n.time / bar_s * 16) // 16)  # onsets jitter by a few ms
                beat_pos = (n.time / bar_s * 4) % 2.0
                degree = song.progression[(bar // song.chord_bars) % len(song.progression)]
                chord = {(key_root + t) % 12 for t in _chord_tones(scale, degree)}
                if role == "pad":
                    assert n.pitch % 12 in chord
                    checked["pad"] += 1
                elif min(beat_pos, 2.0 - beat_pos) < 0.02 and bar < song.bars:
                    assert n.pitch % 12 in chord
                    checked["lead"] += 1
    assert checked["pad"] > 100
    assert checked["lead"] > 20


def test_other_stem_is_sometimes_absent_and_uses_every_role():
    roles = [compose_band_song(np.random.default_rng(s), 16.0).other_roles for s in range(300)]
    assert 10 <= sum(not r for r in roles) <= 60
    assert {r for rs in roles for r in rs} == set(ROLE_PROGRAMS)


def test_effect_chain_keeps_length_and_an_empty_chain_is_identity():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(22050) * 0.1).astype(np.float32)
    assert np.array_equal(apply_chain(x, 22050, Chain()), x)
    # A 0 dB tilt and a 0 dB peak change nothing either.
    flat = apply_chain(x, 22050, Chain(tilt_db=0.0, peaks=(Peak(1000.0, 0.0, 1.0),)))
    np.testing.assert_allclose(flat, x, atol=1e-6)
    for i in range(20):
        chain = draw_chain(np.random.default_rng(i), drums=i % 2 == 0)
        y = apply_chain(x, 22050, chain)
        assert y.shape == x.shape
        assert y.dtype == np.float32
        assert np.isfinite(y).all()
    silence = np.zeros(100, np.float32)
    assert np.array_equal(apply_chain(silence, 22050, draw_chain(rng, drums=True)), silence)


def test_peak_filter_boosts_its_band_and_compression_lowers_the_crest():
    sr = 22050
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 1000 * t)
    boosted = apply_chain(tone.astype(np.float32), sr, Chain(peaks=(Peak(1000.0, 6.0, 1.0),)))
    gain = rms_db(boosted[sr // 2:]) - rms_db(tone[sr // 2:].astype(np.float32))
    assert abs(gain - 6.0) < 0.2
    far = apply_chain(tone.astype(np.float32), sr, Chain(peaks=(Peak(80.0, 6.0, 2.0),)))
    assert abs(rms_db(far[sr // 2:]) - rms_db(tone[sr // 2:].astype(np.float32))) < 0.3
    loud = (t * 4) % 1 < 0.2
    bursts = (tone * np.where(loud, 1.0, 0.1)).astype(np.float32)
    squashed = apply_chain(bursts, sr, Chain(compress=(0.0, 6.0, 5.0)))
    body = loud & ((t * 4) % 1 > 0.1)  # the second half of each burst, past the attack
    quiet = ~loud & ((t * 4) % 1 > 0.5)

    def spread(a):  # level of the bursts' bodies above the quiet parts, dB
        return rms_db(a[body]) - rms_db(a[quiet])

    assert spread(bursts) == pytest.approx(20.0, abs=0.1)
    # Threshold at the signal's RMS, 6:1 above it: the bodies lose 5/6 of their excess.
    excess = rms_db(bursts[body]) - rms_db(bursts)
    assert spread(squashed) == pytest.approx(20.0 - excess * 5 / 6, abs=0.5)


def test_room_response_decays_at_its_rt60():
    sr = 22050
    ir = room_response(sr, 1.0, 0.0, np.random.default_rng(0))
    energy = np.cumsum(ir[::-1] ** 2)[::-1]  # Schroeder integral
    db = 10 * np.log10(energy / energy[0])
    t5, t25 = np.argmax(db < -5) / sr, np.argmax(db < -25) / sr
    assert 0.8 < 3 * (t25 - t5) < 1.2  # T20 estimate of the RT60


def test_reserved_soundfonts_are_refused(tmp_path):
    for name in ("MuseScore_General.sf3", "musescore-general-lossless.sf2", "TimGM6mb.sf2"):
        f = tmp_path / name
        f.write_bytes(b"x")
        with pytest.raises(DataError, match="reserved"):
            check_not_reserved(f)
        with pytest.raises(DataError, match="reserved"):
            find_soundfont(f)
    # A link with an innocent name that points at a reserved file is refused too.
    link = tmp_path / "default-GM.sf2"
    os.symlink(tmp_path / "TimGM6mb.sf2", link)
    with pytest.raises(DataError, match="reserved"):
        check_not_reserved(link)
    with pytest.raises(DataError, match="unknown soundfont"):
        soundfonts(["fluidr3", "nope"])


def test_every_listed_soundfont_is_installed_and_not_reserved():
    for font in SOUNDFONTS.values():
        assert font.path().is_file(), font.name


def test_a_kit_played_as_a_preset_uses_channel_one_program_zero():
    song = compose_band_song(np.random.default_rng(0), 10.0)
    midi = part_to_midi(song.drums, song.tempo, drums=True, kit_as_preset=True)
    msgs = [m for m in midi.tracks[0] if not m.is_meta]
    assert {m.channel for m in msgs} == {0}
    assert [m.program for m in msgs if m.type == "program_change"] == [0]
    kit = part_to_midi(song.drums, song.tempo, drums=True)
    assert {m.channel for m in kit.tracks[0] if not m.is_meta} == {9}


def test_config_is_checked():
    with pytest.raises(DataError, match="not among"):
        BandConfig(hours=1, held_out=("opl3", "nope")).validate()
    with pytest.raises(DataError, match="plays drums"):
        BandConfig(hours=1, soundfonts=("fluidr3", "avl-black-pearl"),
                   held_out=("fluidr3",)).validate()  # nothing melodic left to train on
    with pytest.raises(DataError, match="plays drums"):
        BandConfig(hours=1, soundfonts=("fluidr3", "avl-black-pearl"),
                   held_out=("avl-black-pearl",)).validate()  # nothing melodic held out
    BandConfig(hours=1, soundfonts=("fluidr3", "csound"), held_out=("csound",)).validate()


def test_plan_adds_a_heldout_copy_of_each_test_song():
    config = BandConfig(hours=0.2, seed=1, song_seconds=(10.0, 12.0))
    plans = plan_band(config)
    test = [p for p in plans if p.split == "test"]
    held = [p for p in plans if p.split == "heldout"]
    assert test
    assert [p.index for p in test] == [p.index for p in held]
    assert all(h.name == f"{t.name}-heldout" for t, h in zip(test, held, strict=True))
    assert not [p for p in plan_band(BandConfig(hours=0.2, seed=1, song_seconds=(10.0, 12.0),
                                                held_out=())) if p.split == "heldout"]


@pytest.fixture(scope="module")
def band_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("band") / "set"
    config = BandConfig(hours=0.04, seed=2, song_seconds=(6.0, 8.0))
    summary = make_band_dataset(config, out, jobs=2)
    return config, out, summary


def test_band_set_splits_stems_and_held_out_timbres(band_set):
    config, out, summary = band_set
    assert summary["splits"] == ["train", "valid", "test", "heldout"]
    stems = ("drums", "bass", "other")
    seen: dict[str, set[str]] = {"heldout": set(), "rest": set()}
    for split in summary["splits"]:
        for track in folder_tracks(out, split, stems):
            meta = json.loads((out / split / track.name / "track.json").read_text())
            lengths = {sf.info(str(track.stems[s][0])).frames for s in stems}
            assert lengths == {meta["samples"]}
            for s in stems:
                font = meta["stems"][s]["soundfont"]
                seen["heldout" if split == "heldout" else "rest"].add(font)
                audio = sf.read(str(track.stems[s][0]), dtype="float32")[0]
                assert np.isfinite(audio).all()
                assert np.abs(audio).max() <= 0.98 + 1e-4
                if meta["stems"][s].get("silent"):
                    assert s == "other"
                    assert not audio.any()
                else:
                    _lo, hi = {"drums": config.drums_db, "bass": config.bass_db,
                              "other": config.other_db}[s]
                    assert rms_db(audio) <= hi + 0.01
    assert seen["heldout"] <= set(config.held_out)
    assert not seen["rest"] & set(config.held_out)


@pytest.mark.slow  # over 10 s on 2 cores
def test_band_set_resumes_to_identical_files(band_set, tmp_path):
    config, out, _ = band_set
    again = tmp_path / "again"
    make_band_dataset(config, again, jobs=1)
    track = next((again / "train").iterdir())
    (track / "bass.wav").unlink()  # an interrupted song is rendered again
    summary = make_band_dataset(config, again, jobs=1)
    last_run = summary["last_run"]
    assert isinstance(last_run, dict)
    assert last_run["songs_rendered"] == 1
    for f in sorted(out.glob("*/*/*.wav")):
        g = again / f.relative_to(out)
        assert np.array_equal(sf.read(str(f))[0], sf.read(str(g))[0]), f
    with pytest.raises(DataError, match="different data set"):
        make_band_dataset(BandConfig(hours=0.04, seed=3, song_seconds=(6.0, 8.0)), again)


def test_band_cli_refuses_an_unknown_held_out_soundfont_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lass.cli.make_dataset", "synth-band",
                           "--hours", "0.01", "--out", str(tmp_path / "x"),
                           "--hold-out", "nope"], capture_output=True, text=True)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "nope" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_heldout_is_a_folder_split_only(band_set, tmp_path):
    from lass.data import musdb_tracks

    _, out, _ = band_set
    assert folder_tracks(Path(out), "heldout", ["drums", "bass", "other"])
    with pytest.raises(DataError, match="unknown split"):
        musdb_tracks(tmp_path, "heldout")

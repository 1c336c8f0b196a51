import numpy as np
import pytest
import soundfile as sf
import soxr

from lass.data import audio_info, read_audio, write_wav
from lass.errors import DataError
from tests.helpers import tone, write_audio


def test_segment_equals_slice_of_whole_file(tmp_path):
    x = tone(1.0, 22050, 220.0)
    path = write_audio(tmp_path / "a.wav", x, 22050)
    np.testing.assert_array_equal(read_audio(path), x)
    np.testing.assert_array_equal(read_audio(path, 22050, 1000, 500), x[1000:1500])


def test_stereo_is_averaged_to_mono(tmp_path):
    x = tone(0.5, 16000, 100.0, channels=2)
    path = write_audio(tmp_path / "s.flac", x, 16000)
    info = audio_info(path)
    assert (info.channels, info.sample_rate, info.frames) == (2, 16000, 8000)
    np.testing.assert_allclose(read_audio(path), x.mean(axis=1), atol=1e-5)  # 24-bit FLAC


def test_resampled_segment_matches_whole_file_resampled(tmp_path):
    x = tone(2.0, 44100, 330.0, seed=3)
    path = write_audio(tmp_path / "hi.wav", x, 44100)
    whole = soxr.resample(x, 44100, 22050, quality="HQ")
    assert read_audio(path, 22050).shape == (22050 * 2,)
    seg = read_audio(path, 22050, start=5000, frames=4000)
    np.testing.assert_allclose(seg, whole[5000:9000], atol=2e-4)
    # 48 kHz -> 22.05 kHz: rates without a simple ratio.
    y = tone(1.0, 48000, 440.0, seed=4)
    p48 = write_audio(tmp_path / "48.wav", y, 48000)
    whole48 = soxr.resample(y, 48000, 22050, quality="HQ")
    np.testing.assert_allclose(read_audio(p48, 22050, 3001, 7000), whole48[3001:10001],
                               atol=2e-4)


def test_reading_past_the_end_pads_with_zeros(tmp_path):
    x = tone(0.1, 8000, 50.0)
    path = write_audio(tmp_path / "short.wav", x, 8000)
    seg = read_audio(path, 8000, start=700, frames=300)
    np.testing.assert_array_equal(seg[:100], x[700:])
    assert np.all(seg[100:] == 0)
    assert np.all(read_audio(path, 16000, start=1500, frames=200)[100:] == 0)


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"audio file not found: .*nope\.wav"):
        audio_info(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(DataError, match=r"cannot read audio file .*bad\.wav"):
        read_audio(bad)


def test_atomic_write_leaves_only_the_file(tmp_path):
    x = tone(0.2, 8000, 100.0)
    write_wav(tmp_path / "out" / "x.wav", x, 8000)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.wav"]
    y, sr = sf.read(tmp_path / "out" / "x.wav", dtype="float32")
    assert sr == 8000
    np.testing.assert_allclose(y, x, atol=1 / 32768)
    with pytest.raises(DataError, match="non-finite"):
        write_wav(tmp_path / "out" / "nan.wav", np.array([0.0, np.nan]), 8000)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.wav"]

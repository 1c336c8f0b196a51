import numpy as np
import pytest
import torch

from lass.data import TOY_SOURCES, ToyData
from lass.data.toy import PIANO_KEYS_HZ
from lass.errors import DataError


def test_items_are_deterministic_and_shaped():
    a = ToyData(length=4096, size=10, seed=5)
    b = ToyData(length=4096, size=10, seed=5)
    c = ToyData(length=4096, size=10, seed=6)
    assert a[3].audio.shape == (4, 4096)
    assert a[3].names == TOY_SOURCES
    torch.testing.assert_close(a[3].audio, b[3].audio)
    assert not torch.equal(a[3].audio, c[3].audio)
    assert not torch.equal(a[3].audio, a[4].audio)


def test_frequency_is_a_piano_key_and_amplitude_in_range():
    data = ToyData(["sine", "square"], length=22050, sample_rate=22050, size=40, seed=0,
                   amplitude=(0.3, 0.9))
    for i in range(len(data)):
        sine, square = data[i].audio.numpy()
        spectrum = np.abs(np.fft.rfft(sine))
        peak_hz = np.argmax(spectrum) * 22050 / sine.size  # 1 Hz bins
        assert np.min(np.abs(PIANO_KEYS_HZ - peak_hz)) < 1.0
        amp = np.max(np.abs(square))
        assert 0.3 <= amp <= 0.9
        np.testing.assert_allclose(np.unique(np.abs(square)), [amp], rtol=1e-6)


def test_waveform_shapes():
    data = ToyData(["sawtooth", "triangle"], length=8000, sample_rate=8000, size=5, seed=1)
    saw, tri = data[0].audio.numpy().astype(np.float64)
    amp_saw, amp_tri = np.max(np.abs(saw)), np.max(np.abs(tri))
    # Sawtooth: values spread uniformly over [-a, a]; triangle: continuous, small steps.
    assert abs(np.mean(np.abs(saw)) - amp_saw / 2) < 0.05 * amp_saw
    assert abs(np.mean(np.abs(tri)) - amp_tri / 2) < 0.05 * amp_tri
    assert np.max(np.abs(np.diff(tri))) < 4 * amp_tri * 4200 / 8000 + 1e-6
    assert np.sum(np.abs(np.diff(saw)) > amp_saw) > 0  # the sawtooth's resets


def test_keys_above_nyquist_are_left_out():
    data = ToyData(["sine"], length=100, sample_rate=4000, size=2)
    assert data.keys_hz.max() < 2000
    assert len(data.keys_hz) < 88


def test_bad_sources():
    with pytest.raises(DataError, match="unknown toy source 'noise'"):
        ToyData(["noise"])
    with pytest.raises(DataError, match="distinct"):
        ToyData(["sine", "sine"])
    with pytest.raises(IndexError):
        ToyData(size=2)[2]

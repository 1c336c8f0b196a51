from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
from torch.utils.data import DataLoader

from lass.data import StemDataset, Track, chunk_samples, collate_chunks, folder_tracks, mix
from lass.errors import DataError
from tests.helpers import tone, write_audio

SR = 8000


def make_tracks(root: Path, n: int = 3, seconds: float = 1.0, silent_bass_from: float = 0.5,
                sr: int = SR) -> list[Track]:
    """Tracks whose bass is silent after ``silent_bass_from`` seconds."""
    for i in range(n):
        d = root / "train" / f"t{i}"
        write_audio(d / "drums.wav", tone(seconds, sr, 100.0 + i, seed=i), sr)
        bass = tone(seconds, sr, 50.0 + i, seed=10 + i)
        bass[int(silent_bass_from * sr):] = 0.0
        write_audio(d / "bass.wav", bass, sr)
    return folder_tracks(root, "train", ["drums", "bass"])


def test_chunks_are_aligned_slices_of_the_files(tmp_path):
    tracks = make_tracks(tmp_path)
    ds = StemDataset(tracks, sample_rate=SR, chunk=1000, shuffle=False, require=())
    assert len(ds) == 3 * 8  # 8000 samples per track, chunks of 1000
    c = ds.chunk_at(9)  # track 1, second chunk
    assert (c.track, c.start, c.names, c.audio.shape) == ("t1", 1000, ("drums", "bass"),
                                                         (2, 1000))
    import soundfile as sf
    drums = sf.read(tracks[1].stems["drums"][0], dtype="float32")[0]
    np.testing.assert_array_equal(c.stem("drums").numpy(), drums[1000:2000])
    torch.testing.assert_close(c.mixture(), mix(c.audio, "mean", dim=0))
    torch.testing.assert_close(c.mixture("sum"), c.audio.sum(0))


def test_silent_chunks_are_skipped(tmp_path):
    tracks = make_tracks(tmp_path)
    ds = StemDataset(tracks, sample_rate=SR, chunk=1000, shuffle=False)
    starts = [c.start for c in ds]
    assert len(starts) == 3 * 4  # bass silent from 0.5 s: 4 of 8 chunks per track are kept
    assert set(starts) == {0, 1000, 2000, 3000}
    only_drums = StemDataset(tracks, sample_rate=SR, chunk=1000, shuffle=False,
                             require=["drums"])
    assert len(list(only_drums)) == 24


def test_seeded_shuffle_is_deterministic(tmp_path):
    tracks = make_tracks(tmp_path, silent_bass_from=1.0)
    a = [(c.track, c.start) for c in StemDataset(tracks, sample_rate=SR, chunk=500, seed=3)]
    b = [(c.track, c.start) for c in StemDataset(tracks, sample_rate=SR, chunk=500, seed=3)]
    other = [(c.track, c.start) for c in StemDataset(tracks, sample_rate=SR, chunk=500, seed=4)]
    assert a == b
    assert a != other
    assert sorted(a) == sorted(other)
    ds = StemDataset(tracks, sample_rate=SR, chunk=500, seed=3)
    ds.set_epoch(1)
    assert [(c.track, c.start) for c in ds] != a


def test_dataloader_workers_split_the_chunks(tmp_path):
    tracks = make_tracks(tmp_path, silent_bass_from=1.0)
    ds = StemDataset(tracks, sample_rate=SR, chunk=1000, hop=500, seed=0)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_chunks)
    seen = []
    for batch in loader:
        assert batch.audio.shape[1:] == (2, 1000)
        assert batch.mixture().shape == (batch.audio.shape[0], 1000)
        seen += list(zip(batch.tracks, batch.starts.tolist(), strict=True))
    assert sorted(seen) == sorted((c.track, c.start) for c in ds)
    assert len(seen) == len(ds) == 3 * 15


def test_files_at_another_rate_are_resampled(tmp_path):
    tracks = make_tracks(tmp_path, n=1, seconds=1.0, sr=16000, silent_bass_from=1.0)
    ds = StemDataset(tracks, sample_rate=SR, chunk=2000, shuffle=False)
    assert len(ds) == 4
    import soundfile as sf
    drums16 = sf.read(tracks[0].stems["drums"][0], dtype="float32")[0]
    expected = soxr.resample(drums16, 16000, SR, quality="HQ")
    np.testing.assert_allclose(ds.chunk_at(1).stem("drums").numpy(), expected[2000:4000],
                               atol=2e-4)


def test_bad_arguments(tmp_path):
    tracks = make_tracks(tmp_path)
    with pytest.raises(DataError, match="no stem 'vocals'"):
        StemDataset(tracks, sample_rate=SR, chunk=100, stems=["vocals"])
    with pytest.raises(DataError, match="shorter than one chunk"):
        StemDataset(tracks, sample_rate=SR, chunk=SR * 2)
    with pytest.raises(DataError, match="at least one track"):
        StemDataset([], sample_rate=SR, chunk=100)
    with pytest.raises(DataError, match="required stem 'x'"):
        StemDataset(tracks, sample_rate=SR, chunk=100, require=["x"])
    assert chunk_samples(3.0, 22050) == 66150

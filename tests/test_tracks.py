from pathlib import Path

import pytest
import yaml

from lass.data import detect_layout, find_tracks, folder_tracks, musdb_tracks, slakh_tracks
from lass.data.tracks import MUSDB_VALID_TRACKS
from lass.errors import DataError
from tests.helpers import tone, write_audio

SR = 8000


def make_slakh(root: Path) -> Path:
    """Slakh-style tree: Track00001 (2 drum stems, 1 bass, 1 piano), Track00002 (no bass),
    Track00003 (bass stem not rendered, other bass rendered), Track00004 in validation."""
    layout = {
        ("train", "Track00001"): {"S00": ("Drums", True), "S01": ("Bass", True),
                                  "S02": ("Piano", True), "S03": ("Drums", True)},
        ("train", "Track00002"): {"S00": ("Drums", True), "S01": ("Guitar", True)},
        ("train", "Track00003"): {"S00": ("Drums", True), "S01": ("Bass", False),
                                  "S02": ("Bass", True)},
        ("validation", "Track00004"): {"S00": ("Drums", True), "S01": ("Bass", True)},
    }
    for (split, name), stems in layout.items():
        d = root / split / name
        (d / "stems").mkdir(parents=True)
        meta = {"audio_dir": "stems", "stems": {
            sid: {"inst_class": cls, "audio_rendered": rendered, "program_num": 0}
            for sid, (cls, rendered) in stems.items()}}
        (d / "metadata.yaml").write_text(yaml.safe_dump(meta))
        for k, (sid, (_, rendered)) in enumerate(stems.items()):
            if rendered:
                write_audio(d / "stems" / f"{sid}.flac", tone(0.5, SR, 100.0 * (k + 1)), SR)
    return root


def make_musdb(root: Path, names: list[str]) -> Path:
    for split, track in [("train", n) for n in names] + [("test", "Zeta - Test Song")]:
        for k, stem in enumerate(["mixture", "drums", "bass", "other", "vocals"]):
            write_audio(root / split / track / f"{stem}.wav", tone(0.25, SR, 50.0 * (k + 1)), SR)
    return root


def make_folder(root: Path, splits=("train", "valid", "test"), n=2, stems=("drums", "bass")):
    for split in splits:
        for i in range(n):
            for k, stem in enumerate(stems):
                write_audio(root / split / f"{split}{i}" / f"{stem}.wav",
                            tone(0.5, SR, 60.0 * (k + 1), seed=i), SR)
    return root


def test_slakh_sums_stems_of_a_class_and_skips_tracks_without_it(tmp_path):
    root = make_slakh(tmp_path / "slakh")
    tracks = slakh_tracks(root, "train")
    assert [t.name for t in tracks] == ["Track00001", "Track00003"]
    t1 = tracks[0]
    assert [p.name for p in t1.stems["drums"]] == ["S00.flac", "S03.flac"]
    assert [p.name for p in t1.stems["bass"]] == ["S01.flac"]
    assert [p.name for p in tracks[1].stems["bass"]] == ["S02.flac"]  # S01 not rendered
    assert [t.name for t in slakh_tracks(root, "valid")] == ["Track00004"]
    assert detect_layout(root) == "slakh"
    keys = find_tracks(root, "train", ["drums", "bass"])
    assert [t.name for t in keys] == ["Track00001", "Track00003"]
    custom = slakh_tracks(root, "train", {"keys": ["piano"], "drums": ["drums"]})
    assert [t.name for t in custom] == ["Track00001"]


def test_slakh_missing_listed_stem_names_the_file(tmp_path):
    root = make_slakh(tmp_path / "slakh")
    (root / "train" / "Track00001" / "stems" / "S01.flac").unlink()
    with pytest.raises(DataError, match=r"missing: .*Track00001.stems.S01\.flac"):
        slakh_tracks(root, "train")


def test_slakh_without_split_or_metadata(tmp_path):
    root = make_slakh(tmp_path / "slakh")
    with pytest.raises(DataError, match=r"Slakh split folder not found: .*test"):
        slakh_tracks(root, "test")
    (root / "train" / "Track00002" / "metadata.yaml").unlink()
    with pytest.raises(DataError, match=r"no metadata.yaml: .*Track00002"):
        slakh_tracks(root, "train")


def test_musdb_valid_split_is_the_official_list(tmp_path):
    valid_name = sorted(MUSDB_VALID_TRACKS)[0]
    root = make_musdb(tmp_path / "musdb", ["Alpha - One", valid_name, "Beta - Two"])
    assert detect_layout(root) == "musdb"
    train = musdb_tracks(root, "train", ["drums", "bass"])
    valid = musdb_tracks(root, "valid", ["drums", "bass"])
    test = musdb_tracks(root, "test")
    assert [t.name for t in train] == ["Alpha - One", "Beta - Two"]
    assert [t.name for t in valid] == [valid_name]
    assert [t.name for t in test] == ["Zeta - Test Song"]
    assert test[0].stem_names == ("drums", "bass", "other", "vocals")
    assert {t.name for t in train}.isdisjoint({t.name for t in valid} | {t.name for t in test})
    with pytest.raises(DataError, match="MUSDB18 has no stem 'piano'"):
        musdb_tracks(root, "train", ["piano"])


def test_musdb_track_missing_a_stem(tmp_path):
    root = make_musdb(tmp_path / "musdb", ["Alpha - One"])
    (root / "train" / "Alpha - One" / "bass.wav").unlink()
    with pytest.raises(DataError, match=r"missing stem 'bass'.*Alpha - One"):
        musdb_tracks(root, "train")


def test_folder_layout(tmp_path):
    root = make_folder(tmp_path / "f")
    assert detect_layout(root) == "folder"
    for split in ("train", "valid", "test"):
        tracks = folder_tracks(root, split, ["drums", "bass"])
        assert [t.name for t in tracks] == [f"{split}0", f"{split}1"]
        assert tracks[0].stems["bass"][0].name == "bass.wav"
        assert all(t.split == split for t in tracks)


@pytest.mark.parametrize("loader", ["folder", "musdb", "slakh"])
def test_missing_root_is_a_clear_error(tmp_path, loader):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DataError, match=r"data set root not found: .*does-not-exist"):
        find_tracks(missing, "train", ["drums", "bass"], layout=loader)


def test_empty_folder_and_missing_stem(tmp_path):
    root = tmp_path / "f"
    (root / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no tracks found in .*f.train"):
        folder_tracks(root, "train", ["drums"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"cannot tell the layout of .*empty"):
        find_tracks(empty, "train", ["drums"])
    root2 = make_folder(tmp_path / "g")
    (root2 / "valid" / "valid1" / "bass.wav").unlink()
    with pytest.raises(DataError, match=r"missing stem 'bass'.*valid1"):
        folder_tracks(root2, "valid", ["drums", "bass"])


def test_a_track_in_two_splits_is_refused(tmp_path):
    root = make_folder(tmp_path / "f")
    for stem in ("drums", "bass"):
        write_audio(root / "test" / "train0" / f"{stem}.wav", tone(0.5, SR, 80.0), SR)
    with pytest.raises(DataError, match="'train0' appears in both"):
        folder_tracks(root, "train", ["drums", "bass"])


def test_unknown_split_and_layout(tmp_path):
    root = make_folder(tmp_path / "f")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        folder_tracks(root, "dev", ["drums"])
    with pytest.raises(DataError, match="unknown layout 'stems'"):
        find_tracks(root, "train", ["drums"], layout="stems")
    assert [t.name for t in find_tracks(root, "train", ["drums"])] == ["train0", "train1"]

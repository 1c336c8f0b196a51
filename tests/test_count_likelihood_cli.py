import numpy as np
import pytest
import torch

from lass.cli import count_likelihood as cl
from lass.cli.merge_counts import main as merge_main
from lass.counting import MixturePlan
from lass.data import StemDataset, folder_tracks, mix
from likelihood import load_counts
from tests.test_train_prior_cli import make_codec
from tests.test_train_vqvae_cli import make_set

SR = 8000


@pytest.fixture
def setup(tmp_path):
    data = make_set(tmp_path / "data")
    codec = make_codec(tmp_path / "codec")
    return data, codec, tmp_path


def count(data, tmp_path, out, *extra):
    return cl.main(["--codec", str(tmp_path / "codec"), "--data", str(data), "--out", str(out),
                    "--hours", "0.001", "--chunk-seconds", "0.25", "--batch", "3",
                    "--threads", "1", *extra])


def test_counts_equal_brute_force_over_the_same_mixtures(setup):
    data, codec, tmp_path = setup
    assert count(data, tmp_path, tmp_path / "c.npz", "--seed", "5") == 0
    counts = load_counts(tmp_path / "c.npz")
    assert counts.meta["mixtures"] == 15  # 3.6 s of 0.25 s mixtures
    tracks = folder_tracks(data, "train", ["drums", "bass"])
    pools = [StemDataset(tracks, sample_rate=SR, chunk=2000, stems=[s], shuffle=False)
             for s in ("drums", "bass")]
    plan = MixturePlan(pools, False, (-6.0, 0.0), "mean", 5)
    cube = np.zeros((32, 32, 32), dtype=np.int64)
    for n in range(15):
        src = plan.sources(n)
        codes = codec.encode(torch.cat([mix(src, "mean", dim=0)[None], src])).numpy()
        np.add.at(cube, (codes[0], codes[1], codes[2]), 1)
    np.testing.assert_array_equal(counts.matrix.toarray().reshape(32, 32, 32), cube)
    assert counts.meta["triples"] == cube.sum() == 15 * 125
    assert counts.meta["codec_identity"] == codec.identity()


def test_shards_merge_and_symmetry(setup, capsys):
    data, _, tmp_path = setup
    assert count(data, tmp_path, tmp_path / "all.npz") == 0
    for i in range(2):
        assert count(data, tmp_path, tmp_path / f"s{i}.npz", "--shard", f"{i}/2") == 0
    assert merge_main([str(tmp_path / "s0.npz"), str(tmp_path / "s1.npz"), "--out",
                       str(tmp_path / "merged.npz")]) == 0
    whole, merged = load_counts(tmp_path / "all.npz"), load_counts(tmp_path / "merged.npz")
    np.testing.assert_array_equal(whole.matrix.toarray(), merged.matrix.toarray())
    assert merged.meta["shards"] == ["0/2", "1/2"]
    assert count(data, tmp_path, tmp_path / "sym.npz", "--symmetric") == 0
    sym = load_counts(tmp_path / "sym.npz").matrix.toarray().reshape(32, 32, 32)
    np.testing.assert_array_equal(sym, sym.transpose(0, 2, 1))
    capsys.readouterr()
    assert cl.main(["--stats", str(tmp_path / "all.npz")]) == 0
    out = capsys.readouterr().out
    assert "K 32, 2 sources, nonzeros" in out
    assert "dense int64 262,144" in out


def test_interrupted_run_resumes_to_the_same_table(setup, monkeypatch):
    data, _, tmp_path = setup
    assert count(data, tmp_path, tmp_path / "straight.npz") == 0
    calls = {"n": 0}
    original = MixturePlan.sources

    def flaky(self, n):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, n)

    monkeypatch.setattr(MixturePlan, "sources", flaky)
    out = tmp_path / "resumed.npz"
    assert count(data, tmp_path, out, "--checkpoint-seconds", "0") == 130
    assert not out.exists()
    assert (tmp_path / "resumed.npz.partial.npz").is_file()
    monkeypatch.setattr(MixturePlan, "sources", original)
    assert count(data, tmp_path, out) == 0
    assert not (tmp_path / "resumed.npz.partial.npz").exists()
    a, b = load_counts(tmp_path / "straight.npz"), load_counts(out)
    np.testing.assert_array_equal(a.matrix.toarray(), b.matrix.toarray())
    assert a.meta == b.meta


def test_bad_arguments_are_one_line(setup, capsys):
    data, _, tmp_path = setup
    assert count(data, tmp_path, tmp_path / "x.npz", "--shard", "2/2") == 1
    assert "need 0 <= i < n" in capsys.readouterr().err
    assert cl.main(["--stats", str(tmp_path / "missing.npz")]) == 1
    assert "counts file not found" in capsys.readouterr().err


def test_three_sources_count_shard_and_merge_like_two(setup, capsys):
    """Tuples of three sources drawn from the stems' pool: the counts equal a dense
    reference over the same mixtures, and shards merge to the whole."""
    data, codec, tmp_path = setup
    opts = ["--symmetric", "--n-sources", "3", "--seed", "3", "--sources", "drums", "bass"]
    assert count(data, tmp_path, tmp_path / "t.npz", *opts) == 0
    counts = load_counts(tmp_path / "t.npz")
    assert counts.n_sources == 3
    assert counts.matrix.shape == (32, 32 ** 3)
    tracks = folder_tracks(data, "train", ["drums", "bass"])
    pools = [StemDataset(tracks, sample_rate=SR, chunk=2000, stems=[s], shuffle=False)
             for s in ("drums", "bass")]
    plan = MixturePlan(pools, True, (-6.0, 0.0), "mean", 3, n_sources=3)
    cube = np.zeros((32,) * 4, dtype=np.int64)
    for n in range(15):
        src = plan.sources(n)
        codes = codec.encode(torch.cat([mix(src, "mean", dim=0)[None], src])).numpy()
        for perm in ((1, 2, 3), (1, 3, 2), (2, 1, 3), (2, 3, 1), (3, 1, 2), (3, 2, 1)):
            np.add.at(cube, (codes[0], *(codes[p] for p in perm)), 1)
    np.testing.assert_array_equal(counts.matrix.toarray().reshape(cube.shape), cube)
    for i in range(2):
        assert count(data, tmp_path, tmp_path / f"t{i}.npz", *opts, "--shard", f"{i}/2") == 0
    assert merge_main([str(tmp_path / "t0.npz"), str(tmp_path / "t1.npz"), "--out",
                       str(tmp_path / "tm.npz")]) == 0
    np.testing.assert_array_equal(load_counts(tmp_path / "tm.npz").matrix.toarray(),
                                  counts.matrix.toarray())
    capsys.readouterr()
    assert cl.main(["--stats", str(tmp_path / "t.npz")]) == 0
    assert "K 32, 3 sources" in capsys.readouterr().out


def test_the_same_shard_twice_and_a_file_that_is_not_counts_are_refused(setup, capsys, tmp_path):
    data, _, root = setup
    assert count(data, root, root / "s0.npz", "--shard", "0/2") == 0
    (root / "copy.npz").write_bytes((root / "s0.npz").read_bytes())
    capsys.readouterr()
    out = root / "merged.npz"
    assert merge_main([str(root / "s0.npz"), str(root / "s0.npz"), "--out", str(out)]) == 1
    assert "given twice" in capsys.readouterr().err
    assert merge_main([str(root / "s0.npz"), str(root / "copy.npz"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "are the same counting" in err
    assert "Traceback" not in err
    assert not out.exists()
    # one shard of a run split in two: the missing one is named; --partial merges anyway
    assert merge_main([str(root / "s0.npz"), "--out", str(out)]) == 1
    assert "shard(s) 1/2 of this counting are missing" in capsys.readouterr().err
    assert not out.exists()
    assert merge_main([str(root / "s0.npz"), "--out", str(out), "--partial"]) == 0
    assert load_counts(out).meta["shards"] == ["0/2"]
    (root / "notes.txt").write_text("not counts")
    assert cl.main(["--stats", str(root / "notes.txt")]) == 1
    err = capsys.readouterr().err
    assert "is not a counts file" in err
    assert "pickle" not in err

import os
import stat

import pytest
import torch

from vqvae.files import (
    append_jsonl,
    public_mode,
    save_torch_atomic,
    write_bytes_atomic,
    write_dir_atomically,
    write_file_atomic,
    write_json_atomic,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_are_written_whole_with_the_umask_mode_or_not_at_all(tmp_path):
    out = write_bytes_atomic(tmp_path / "a" / "x.bin", b"abc")
    assert out.read_bytes() == b"abc"
    assert mode(out) == public_mode()  # not mkstemp's 0600
    write_bytes_atomic(out, b"new")
    assert out.read_bytes() == b"new"

    def fails(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file_atomic(out, fails)
    assert out.read_bytes() == b"new"  # the old file stays, no temporary is left
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.bin"]
    write_json_atomic(tmp_path / "r.json", {"a": [1, 2]})
    assert (tmp_path / "r.json").read_text() == '{\n "a": [\n  1,\n  2\n ]\n}\n'
    save_torch_atomic(tmp_path / "t.pt", {"w": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.arange(3))
    append_jsonl(tmp_path / "log.jsonl", {"step": 1})
    append_jsonl(tmp_path / "log.jsonl", {"step": 2})
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_folders_replace_the_old_one_whole_or_leave_it(tmp_path):
    def fill(text):
        def write(tmp):
            (tmp / "sub").mkdir()
            (tmp / "sub" / "f.txt").write_text(text)
        return write

    out = write_dir_atomically(tmp_path / "model", fill("one"))
    assert (out / "sub" / "f.txt").read_text() == "one"
    assert mode(out) == public_mode(directory=True)  # not mkdtemp's 0700
    write_dir_atomically(out, fill("two"))
    assert (out / "sub" / "f.txt").read_text() == "two"

    def fails(tmp):
        (tmp / "partial").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dir_atomically(out, fails)
    assert (out / "sub" / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(FileExistsError):
        write_dir_atomically(out, fill("three"), replace=False)
    assert (out / "sub" / "f.txt").read_text() == "two"


def test_a_trainer_state_is_read_or_refused_in_one_line(tmp_path):
    from vqvae.files import read_trainer_state

    class RefusedError(Exception):
        pass

    with pytest.raises(RefusedError, match="nothing to resume"):
        read_trainer_state(tmp_path, RefusedError)
    save_torch_atomic(tmp_path / "trainer.pt", {"optimizer": {"lr": 1.0}, "step": 7})
    assert read_trainer_state(tmp_path, RefusedError)["step"] == 7
    data = (tmp_path / "trainer.pt").read_bytes()
    (tmp_path / "trainer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RefusedError, match="corrupt or truncated"):
        read_trainer_state(tmp_path, RefusedError)
    save_torch_atomic(tmp_path / "trainer.pt", [1, 2])
    with pytest.raises(RefusedError, match="not a trainer's state"):
        read_trainer_state(tmp_path, RefusedError)

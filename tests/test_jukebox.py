import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vqvae import CodecError, JukeboxVQVAE, load_codec
from vqvae.jukebox import CodebookBlock


def _fixtures() -> Path:
    """The golden fixtures: ``$LASS_FIXTURES``, else ``shared/fixtures`` beside or inside the
    checkout or one of its parents, else the project's shared folder (``/work/shared``),
    where a clean clone elsewhere (as CI makes) still finds it."""
    if "LASS_FIXTURES" in os.environ:
        return Path(os.environ["LASS_FIXTURES"])
    root = Path(__file__).resolve().parents[1]
    candidates = [d / "shared" / "fixtures" for d in (root, *root.parents)]
    candidates.append(Path("/work/shared/fixtures"))
    return next((c for c in candidates if (c / "jukebox_vqvae").is_dir()), candidates[1])


FIXTURES = _fixtures()
JUKEBOX = FIXTURES / "jukebox_vqvae"
if not (JUKEBOX / "vqvae.pth.tar").is_file():
    if os.environ.get("CI"):
        raise RuntimeError(f"Jukebox fixture missing in CI: {JUKEBOX}")
    pytest.skip(f"Jukebox fixture not found at {JUKEBOX}", allow_module_level=True)
CHECKPOINT = JUKEBOX / "vqvae.pth.tar"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(JUKEBOX / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("level", [0, 1, 2])
def test_matches_the_original_implementation(reference, level, device):
    model = JukeboxVQVAE.from_checkpoint(CHECKPOINT, level=level, device=device)
    assert model.hop_length == (8, 32, 128)[level]
    x = torch.from_numpy(reference["x"])[None]
    with torch.no_grad():
        latent = model.latents(x)[0].T.cpu().numpy()
        codes = model.encode(x).cpu().numpy()
        decoded = model.decode(torch.from_numpy(reference[f"codes_{level}"]))[0].cpu().numpy()
    np.testing.assert_array_equal(codes, reference[f"codes_{level}"])
    assert np.max(np.abs(latent - reference[f"latent_{level}"])) <= 1e-5
    ref = reference[f"decoded_{level}"]
    assert np.max(np.abs(decoded - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_embed_then_decode_latents_equals_decode(reference):
    model = JukeboxVQVAE.from_checkpoint(CHECKPOINT, level=2)
    codes = torch.from_numpy(reference["codes_2"])
    with torch.no_grad():
        latents = model.embed(codes)
        assert latents.shape == (1, 64, 512)
        torch.testing.assert_close(model.decode_latents(latents), model.decode(codes))
        # codes -> vectors -> codes: every codebook row is its own nearest code.
        block = model.bottleneck.level_blocks[2]
        assert isinstance(block, CodebookBlock)
        np.testing.assert_array_equal(block.quantise(latents).numpy(), codes.numpy())


def test_other_sample_rate_is_resampled(reference):
    model = JukeboxVQVAE.from_checkpoint(CHECKPOINT, level=2, sample_rate=22050)
    assert (model.sample_rate, model.hop_length) == (22050, 64)
    x44 = torch.from_numpy(reference["x"])[None]
    x22 = torch.nn.functional.avg_pool1d(x44[None], 2)[0]  # a 22.05 kHz version
    with torch.no_grad():
        codes = model.encode(x22[:, :10000])
        assert codes.shape == (1, 157)  # ceil(10000 / 64)
        wave = model.decode(codes)
    assert wave.shape == (1, 157 * 64)
    assert torch.isfinite(wave).all()
    model44 = JukeboxVQVAE.from_checkpoint(CHECKPOINT, level=2)
    with torch.no_grad():
        # Decoding at 22.05 kHz is the 44.1 kHz decoding resampled: same low band.
        up = model44.decode(codes)[0].numpy()
        down = wave[0].numpy()
    spec_up = np.abs(np.fft.rfft(up))[: down.size // 2 - 200]
    spec_down = np.abs(np.fft.rfft(down))[: down.size // 2 - 200] * 2
    assert np.corrcoef(spec_up, spec_down)[0, 1] > 0.99


def test_save_and_load_codec_round_trip(tmp_path, reference):
    model = JukeboxVQVAE.from_checkpoint(CHECKPOINT, level=1, sample_rate=22050)
    model.save(tmp_path / "jb")
    again = load_codec(tmp_path / "jb")
    assert isinstance(again, JukeboxVQVAE)
    assert (again.level, again.sample_rate) == (1, 22050)
    assert again.identity() == model.identity()
    x = torch.from_numpy(reference["x"][:8000])[None]
    torch.testing.assert_close(again.encode(x), model.encode(x), rtol=0, atol=0)


def test_module_prefix_is_stripped(tmp_path):
    ckpt = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    prefixed = {"model": {f"module.{k}": v for k, v in ckpt["model"].items()}}
    torch.save(prefixed, tmp_path / "ddp.pth.tar")
    model = JukeboxVQVAE.from_checkpoint(tmp_path / "ddp.pth.tar")
    ref = JukeboxVQVAE.from_checkpoint(CHECKPOINT)
    assert model.identity() == ref.identity()


def test_truncated_corrupt_and_wrong_files(tmp_path):
    data = CHECKPOINT.read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(CodecError, match=r"cannot read Jukebox checkpoint .*cut\.pth\.tar"):
        JukeboxVQVAE.from_checkpoint(tmp_path / "cut.pth.tar")
    (tmp_path / "text.pth.tar").write_text("not a checkpoint")
    with pytest.raises(CodecError, match="corrupt, truncated or not a PyTorch file"):
        JukeboxVQVAE.from_checkpoint(tmp_path / "text.pth.tar")
    with pytest.raises(CodecError, match="not found"):
        JukeboxVQVAE.from_checkpoint(tmp_path / "missing.pth.tar")
    torch.save({"weights": {}}, tmp_path / "other.pth.tar")
    with pytest.raises(CodecError, match="state dict under 'model'"):
        JukeboxVQVAE.from_checkpoint(tmp_path / "other.pth.tar")


def test_missing_keys_and_shape_mismatches_are_named(tmp_path):
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    fewer = dict(state)
    del fewer["decoders.2.out.weight"]
    torch.save({"model": fewer}, tmp_path / "fewer.pth.tar")
    with pytest.raises(CodecError, match=r"1 missing keys \(first: decoders\.2\.out\.weight\)"):
        JukeboxVQVAE.from_checkpoint(tmp_path / "fewer.pth.tar")
    wrong = dict(state)
    wrong["bottleneck.level_blocks.2.k"] = torch.zeros(1024, 64)
    torch.save({"model": wrong}, tmp_path / "wrong.pth.tar")
    with pytest.raises(CodecError, match=r"bottleneck\.level_blocks\.2\.k: file \(1024, 64\) vs "
                                         r"model \(2048, 64\)"):
        JukeboxVQVAE.from_checkpoint(tmp_path / "wrong.pth.tar")


def test_bad_codes_and_waves_are_refused():
    model = JukeboxVQVAE.from_checkpoint(CHECKPOINT, level=2)
    with pytest.raises(CodecError, match=r"codes must lie in \[0, 2048\)"):
        model.decode(torch.tensor([[0, 2048]]))
    with pytest.raises(CodecError, match="NaN"):
        model.encode(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(CodecError, match=r"\(batch, time\)"):
        model.encode(torch.zeros(3))
    with pytest.raises(CodecError, match=r"level must be in 0\.\.2"):
        JukeboxVQVAE.from_checkpoint(CHECKPOINT, level=3)

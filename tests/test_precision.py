"""bf16 autocast in training (``--precision bf16``; on CUDA it is the default) keeps the
losses and what training reaches within stated tolerances of float32. Run here on the CPU,
whose autocast is the same code path (tests/test_cuda.py repeats the codec check on a GPU)."""

import torch

from likelihood.evidence import EvidenceTrainer, TokenEvidence, evidence_bits
from priors import TransformerPrior, TransformerPriorConfig
from priors.train import PriorTrainConfig, PriorTrainer
from tests.test_evidence import planted
from vqvae import ConvVQVAE, ConvVQVAEConfig
from vqvae.train import CodecTrainer, TrainConfig


def test_codec_training_in_bf16_stays_near_float32():
    torch.manual_seed(0)
    wave = 0.3 * torch.sin(torch.linspace(0, 400, 4 * 1024)).view(4, 1024) \
        + 0.05 * torch.randn(4, 1024)
    runs = {}
    for bf16 in (False, True):
        torch.manual_seed(1)
        model = ConvVQVAE(ConvVQVAEConfig(sample_rate=8000, hop_length=16, codebook_size=32,
                                          dim=8, channels=8))
        trainer = CodecTrainer(model, TrainConfig(steps=20, lr=3e-3, warmup=1, bf16=bf16))
        runs[bf16] = [trainer.train_step(wave) for _ in range(20)]
    # The first step (the same weights): the losses within 2%.
    first32, first16 = runs[False][0].loss, runs[True][0].loss
    assert abs(first16 - first32) < 0.02 * first32
    # After 20 steps bf16 reconstructs no worse than float32 less 1.5 dB (the codebook's
    # restarts make the two runs drift apart; bf16 may end ahead).
    assert runs[True][-1].sdr > runs[True][0].sdr + 1.0
    assert runs[True][-1].sdr > runs[False][-1].sdr - 1.5


def test_prior_and_evidence_training_in_bf16_stay_near_float32():
    codes = torch.randint(0, 16, (8, 32), generator=torch.Generator().manual_seed(0))
    codes[:, 1::2] = (codes[:, ::2] + 1) % 16  # every other token predictable
    bits = {}
    for bf16 in (False, True):
        torch.manual_seed(2)
        prior = TransformerPrior(TransformerPriorConfig(vocab_size=16, context_length=32,
                                                        width=32, layers=1, heads=2))
        trainer = PriorTrainer(prior, PriorTrainConfig(steps=30, lr=3e-3, warmup=1, bf16=bf16))
        bits[bf16] = [trainer.train_step(codes) for _ in range(30)]
    assert abs(bits[True][0] - bits[False][0]) < 0.02 * bits[False][0]
    assert bits[True][-1] < bits[True][0] - 0.5
    assert abs(bits[True][-1] - bits[False][-1]) < 0.1 * bits[False][-1]

    first, second, latents = planted(64, 20, seed=0)
    held = planted(16, 20, seed=1)
    result = {}
    for bf16 in (False, True):
        torch.manual_seed(3)
        ev = EvidenceTrainer(TokenEvidence(8, 16, width=16, dilations=(1,)), [first, second],
                             latents, epochs=4, batch=8, lr=1e-2, seed=2, bf16=bf16)
        for _ in range(4):
            ev.run_epoch()
        result[bf16] = evidence_bits(ev.model, [held[0], held[1]], held[2])["bits"]
    assert max(abs(a - b) for a, b in zip(result[True], result[False], strict=True)) < 0.15

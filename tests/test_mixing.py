import numpy as np
import pytest
import torch

from lass.data import mix, mix_gain
from lass.errors import DataError


def test_mean_and_sum_numpy_and_torch(rng):
    stems = rng.standard_normal((3, 2, 100)).astype(np.float32)  # (batch, sources, time)
    np.testing.assert_allclose(mix(stems), (stems[:, 0] + stems[:, 1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(mix(stems, "sum"), stems[:, 0] + stems[:, 1], rtol=1e-6)
    t = torch.from_numpy(stems)
    torch.testing.assert_close(mix(t), (t[:, 0] + t[:, 1]) / 2)
    torch.testing.assert_close(mix(t, "sum"), t[:, 0] + t[:, 1])
    assert mix(stems).dtype == np.float32
    assert mix(stems).shape == (3, 100)


def test_sources_axis_can_be_chosen(rng):
    stems = rng.standard_normal((2, 50))
    np.testing.assert_allclose(mix(stems, "mean", dim=0), stems.mean(axis=0))


def test_gain_matches_rule():
    assert mix_gain(2) == 0.5
    assert mix_gain(4, "sum") == 1.0
    stems = np.ones((4, 10))
    np.testing.assert_allclose(mix(stems), mix_gain(4) * stems.sum(axis=0))


def test_unknown_rule_is_a_clear_error():
    with pytest.raises(DataError, match="unknown mixing rule 'max'"):
        mix(np.zeros((2, 4)), "max")

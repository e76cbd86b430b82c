import pytest
import torch
import torch.nn.functional as F

from fairseq_smlp.modules.spatial_gating import SpatialGatingUnit
from fairseq_smlp.modules.spatial_projection import CausalSpatialProjection


def naive_sgu(sgu: SpatialGatingUnit, x: torch.Tensor) -> torch.Tensor:
    """z1[t] * (sum over s <= t of W[t, s] * LN(z2)[s] + b[t]), one position at a time."""
    half = x.size(-1) // 2
    z1, z2 = x[..., :half], x[..., half:]
    z2 = F.layer_norm(z2, (half,), sgu.norm.weight, sgu.norm.bias, sgu.norm.eps)
    weight, bias = sgu.mixer.weight[0], sgu.mixer.bias[0]
    out = torch.empty_like(z1)
    for t in range(x.size(1)):
        mixed = torch.zeros_like(z2[:, 0])
        for s in range(t + 1):
            mixed += weight[t, s] * z2[:, s]
        out[:, t] = z1[:, t] * (mixed + bias[t])
    return out


@pytest.mark.parametrize("length", [10, 7])  # the full context and a shorter input
def test_sgu_matches_a_naive_loop(length):
    torch.manual_seed(0)
    sgu = SpatialGatingUnit(12, CausalSpatialProjection(1, max_positions=10))
    with torch.no_grad():
        sgu.mixer.weight.normal_()  # upper triangle too: the causal mask must drop it
        sgu.mixer.bias.normal_()
        sgu.norm.weight.normal_()
    x = torch.randn(3, length, 12)
    torch.testing.assert_close(sgu(x), naive_sgu(sgu, x), rtol=1e-5, atol=1e-5)


def test_fresh_sgu_is_close_to_passing_z1_through():
    """Near-identity init: W ~ 0 and b = 1, so SGU(z) ~ z1."""
    torch.manual_seed(0)
    sgu = SpatialGatingUnit(8, CausalSpatialProjection(1, max_positions=32))
    x = torch.randn(2, 32, 8)
    torch.testing.assert_close(sgu(x), x[..., :4], rtol=0, atol=1e-3)
    assert sgu.mixer.bias.eq(1).all()


def test_each_chunk_of_channels_uses_its_own_map():
    torch.manual_seed(0)
    proj = CausalSpatialProjection(num_maps=3, max_positions=5)
    with torch.no_grad():
        proj.weight.normal_()
    x = torch.randn(2, 5, 12)  # (B, L, H): three chunks of 4 channels
    y = proj(x)
    for group in range(3):
        single = CausalSpatialProjection(num_maps=1, max_positions=5)
        with torch.no_grad():
            single.weight.copy_(proj.weight[group : group + 1])
            single.bias.copy_(proj.bias[group : group + 1])
        chunk = slice(4 * group, 4 * group + 4)
        torch.testing.assert_close(y[..., chunk], single(x[..., chunk]))


def test_odd_width_is_rejected():
    with pytest.raises(ValueError, match="must be even; got 7"):
        SpatialGatingUnit(7, CausalSpatialProjection(1, max_positions=4))

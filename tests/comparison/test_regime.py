"""The regime check's arithmetic on a hand-made table of trailing perplexities."""

import pytest

from fairseq_smlp.comparison import regime
from fairseq_smlp.comparison.regime import SeedRange, check


def table(**seeds):
    return {label: SeedRange.of(values) for label, values in seeds.items()}


# Two seeds each. Switch gains 5% with its seed ranges apart; sMLP gains 2%; hash, whose
# one-expert twin is the transformer, gains 4% but its seeds overlap the transformer's.
HAND = table(transformer=[100.0, 104.0], gmlp=[96.0, 98.0],
             smlp_deterministic_e1=[92.0, 93.0], smlp_deterministic_e8=[90.0, 91.4],
             switch_e1=[101.0, 103.0], switch_e8=[96.0, 97.6], hash_e8=[98.0, 101.0])


def test_ratios_seed_ranges_and_which_family_gains():
    gains = {g.family: g for g in regime.expert_gains(HAND)}
    assert set(gains) == {"smlp_deterministic", "switch", "hash"}
    assert gains["switch"].ratio == pytest.approx(102.0 / 96.8)  # 1.0537
    assert gains["switch"].apart and gains["switch"].gains
    assert gains["smlp_deterministic"].ratio == pytest.approx(92.5 / 90.7)  # 1.0198
    assert gains["smlp_deterministic"].apart and not gains["smlp_deterministic"].gains
    assert gains["hash"].one_expert == "transformer"
    assert gains["hash"].ratio == pytest.approx(102.0 / 99.5)  # 1.025, and 101 > 100
    assert not gains["hash"].apart and not gains["hash"].gains


def test_informative_where_a_witness_gains_and_the_claims_with_their_numbers():
    result = check(HAND, {"transformer": 300.0, "smlp_deterministic_e8": 200.0})
    assert result.informative
    experts, quality, speed = result.claims
    assert experts.holds is False  # 1.020 < 1.054
    assert "R = 1.020 for sMLP (8 experts), 1.054 for Switch (8 experts)" in experts.evidence
    assert quality.holds is True  # 91.4 < 96 (gmlp), 96 (switch_e8), 98 (hash_e8)
    assert "below every seed of 3 of 3" in quality.evidence
    assert speed.holds is True and "in 200 s" in speed.evidence


def test_inconclusive_where_no_witness_gains():
    flat = dict(HAND, switch_e8=SeedRange.of([100.5, 102.5]))
    result = check(flat, {})
    assert not result.informative
    assert result.claims[2].holds is None
    assert any(line.startswith("Inconclusive at this size") for line in regime.markdown(result))


def test_no_check_without_a_one_expert_twin():
    assert check(table(transformer=[100.0], smlp_deterministic=[90.0]), {}) is None


def test_one_seed_decides_nothing():
    """R from one seed a run is shown, but neither called apart nor a gain, and no claim is
    settled: the message says more seeds decide."""
    single = {label: SeedRange.of([seeds.mean]) for label, seeds in HAND.items()}
    result = check(single, {"transformer": 300.0, "smlp_deterministic_e8": 200.0})
    switch = next(g for g in result.gains if g.family == "switch")
    assert switch.ratio == pytest.approx(102.0 / 96.8)
    assert switch.apart is None and not switch.gains and switch.undecided
    assert not result.informative
    assert all(claim.holds is None for claim in result.claims)
    assert "not yet a finding" in result.claims[0].evidence
    lines = regime.markdown(result)
    assert any(line.startswith("Undecided: switch (R = 1.054)") for line in lines)
    assert any("| switch | 8 | switch_e1 | 1.054 | under 2 seeds | no |" in line for line in lines)

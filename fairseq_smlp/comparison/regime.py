"""Whether a comparison sits in a regime where experts can pay, and what it then says of the
paper's claims.

Experts add capacity, not compute; a model limited by its updates rather than its capacity has
nothing to gain from them, and a comparison of sparse models there says nothing of sparsity.
The check: for each family that has a run with one expert (``<system>_e1``) beside a run with
more (``<system>_e<K>``), the ratio R = ppl(1 expert) / ppl(K experts) of their trailing
perplexities (the ranked column). A Transformer MoE with one expert is the dense Transformer
(same FLOPs, same FFN), so ``transformer`` stands in as the one-expert twin of a Transformer MoE
family that has no ``_e1`` run. The comparison is informative for the paper's question only
where a learned-routing baseline known to gain from experts (Switch) or Hash gains here:
R >= GAIN_RATIO with the two runs' seed ranges apart. Otherwise it is inconclusive at this size
and the report says so rather than rank.
"""

import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .systems import label_parts

# A gain smaller than this is within what seeds and a corpus this small move.
GAIN_RATIO = 1.03
# The families whose gain says the regime is one where experts pay.
WITNESSES = ("switch", "hash")
SPARSE_MLP = "smlp_deterministic"
DENSE_TRANSFORMER = "transformer"
TRANSFORMER_MOES = ("gshard", "switch", "base", "hash")


# Seeds a run needs before its range can be apart from another's or decide a claim.
MIN_SEEDS = 2


@dataclass(frozen=True)
class SeedRange:
    mean: float
    low: float
    high: float
    seeds: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "SeedRange":
        return cls(statistics.fmean(values), min(values), max(values), len(values))

    def below(self, other: "SeedRange") -> bool:
        """Every seed of this one under every seed of ``other``."""
        return self.high < other.low


@dataclass(frozen=True)
class ExpertGain:
    family: str
    experts: int
    one_expert: str  # the run label of the one-expert twin
    many_experts: str
    ratio: float  # mean ppl(1 expert) / mean ppl(K experts)
    # The K-expert seeds all below the one-expert seeds; None: too few seeds to say.
    apart: Optional[bool]

    @property
    def gains(self) -> bool:
        return self.ratio >= GAIN_RATIO and bool(self.apart)

    @property
    def undecided(self) -> bool:
        """R says it gains, but too few seeds to tell that from seed noise."""
        return self.ratio >= GAIN_RATIO and self.apart is None


@dataclass(frozen=True)
class Claim:
    text: str  # the paper's claim
    holds: Optional[bool]  # None: these runs cannot say
    evidence: str


@dataclass(frozen=True)
class RegimeCheck:
    gains: List[ExpertGain]
    informative: bool
    claims: List[Claim]


def has_experts(label: str) -> bool:
    """Whether the run has more than one expert a layer: its label's count, or its system's own
    (more than one at every scale)."""
    count = label_parts(label)[1]
    return count is None or count > 1


def expert_gains(trailing: Dict[str, SeedRange]) -> List[ExpertGain]:
    """Every (family, K > 1) that has a one-expert twin among the runs."""
    gains = []
    for label, many in sorted(trailing.items()):
        system, count = label_parts(label)
        if count is None or count == 1:
            continue
        twin = f"{system}_e1"
        if twin not in trailing and system in TRANSFORMER_MOES and DENSE_TRANSFORMER in trailing:
            twin = DENSE_TRANSFORMER
        if twin not in trailing:
            continue
        one = trailing[twin]
        apart = many.below(one) if min(one.seeds, many.seeds) >= MIN_SEEDS else None
        gains.append(ExpertGain(system, count, twin, label, one.mean / many.mean, apart))
    return gains


def check(trailing: Dict[str, SeedRange], seconds_to_target: Dict[str, Optional[float]],
          clock: str = "each at the tokens/s of its own runs") -> Optional[RegimeCheck]:
    """The regime check and the paper's claims from each run label's trailing perplexities and
    its mean wall-clock to the dense Transformer's final perplexity (None: not every seed
    reached it; ``clock`` says what timed them); None when no family has a one-expert twin."""
    gains = expert_gains(trailing)
    if not gains:
        return None
    informative = any(gain.gains for gain in gains if gain.family in WITNESSES)
    claims = [experts_claim(gains), quality_claim(trailing),
              speed_claim(trailing, seconds_to_target, clock)]
    if min(seeds.seeds for seeds in trailing.values()) < MIN_SEEDS:
        claims = [claim if claim.holds is None else
                  Claim(claim.text, None, f"{claim.evidence}; fewer than {MIN_SEEDS} seeds of "
                                          f"some run: not yet a finding")
                  for claim in claims]
    return RegimeCheck(gains, informative, claims)


def experts_claim(gains: Sequence[ExpertGain]) -> Claim:
    text = "sMLP gains from its experts at least as much as Switch does"
    smlp = max((g for g in gains if g.family == SPARSE_MLP), key=lambda g: g.experts, default=None)
    switch = max((g for g in gains if g.family == "switch"), key=lambda g: g.experts,
                 default=None)
    if smlp is None or switch is None:
        return Claim(text, None, "needs smlp_deterministic and switch with 1 and K experts")
    evidence = (f"R = {smlp.ratio:.3f} for sMLP ({smlp.experts} experts), {switch.ratio:.3f} for "
                f"Switch ({switch.experts} experts)")
    return Claim(text, smlp.ratio >= switch.ratio, evidence)


def quality_claim(trailing: Dict[str, SeedRange]) -> Claim:
    text = ("sMLP with experts beats gMLP and every Transformer MoE at equal FLOPs (trailing "
            "perplexity, every seed)")
    smlp = sparse_mlp_with_experts(trailing)
    rivals = [label for label in trailing if label_parts(label)[0] == "gmlp"
              or (label_parts(label)[0] in TRANSFORMER_MOES and has_experts(label))]
    if smlp is None or not rivals:
        return Claim(text, None, "needs smlp_deterministic with experts and gMLP or a "
                                 "Transformer MoE")
    mine = trailing[smlp]
    beaten = [label for label in rivals if mine.below(trailing[label])]
    evidence = "; ".join(f"{label} {trailing[label].mean:.2f} ({trailing[label].low:.2f}-"
                         f"{trailing[label].high:.2f})" for label in sorted(rivals))
    evidence = (f"{smlp} {mine.mean:.2f} ({mine.low:.2f}-{mine.high:.2f}) against {evidence}; "
                f"below every seed of {len(beaten)} of {len(rivals)}")
    return Claim(text, len(beaten) == len(rivals), evidence)


def speed_claim(trailing: Dict[str, SeedRange], seconds_to_target: Dict[str, Optional[float]],
                clock: str) -> Claim:
    text = "sMLP reaches the dense Transformer's final perplexity sooner in wall-clock"
    smlp = sparse_mlp_with_experts(trailing)
    if smlp is None or DENSE_TRANSFORMER not in seconds_to_target:
        return Claim(text, None, "needs smlp_deterministic with experts and transformer")
    mine, dense = seconds_to_target.get(smlp), seconds_to_target[DENSE_TRANSFORMER]
    if dense is None:
        return Claim(text, None, "the Transformer's seeds did not all reach their target")
    if mine is None:
        return Claim(text, False, f"{smlp} did not reach it in every seed")
    return Claim(text, mine < dense, f"{smlp} in {mine:.0f} s, transformer in {dense:.0f} s, "
                                     f"{clock}")


def sparse_mlp_with_experts(trailing: Dict[str, SeedRange]) -> Optional[str]:
    """The label of the sMLP run with the most experts, if more than one."""
    labels = [label for label in trailing
              if label_parts(label)[0] == SPARSE_MLP and has_experts(label)]
    return max(labels, key=lambda label: label_parts(label)[1] or 0, default=None)


def markdown(regime: RegimeCheck) -> List[str]:
    lines = ["", "Regime check: R = trailing ppl with 1 expert / with K experts (a Transformer "
             f"MoE's 1-expert twin is the dense Transformer); a family gains where R >= "
             f"{GAIN_RATIO} and the seed ranges are apart.", "",
             "| family | K | 1-expert run | R | seeds apart | gains |", "|---|---|---|---|---|---|"]
    for gain in regime.gains:
        apart = {True: "yes", False: "no", None: f"under {MIN_SEEDS} seeds"}[gain.apart]
        lines.append(f"| {gain.family} | {gain.experts} | {gain.one_expert} | {gain.ratio:.3f} | "
                     f"{apart} | {'yes' if gain.gains else 'no'} |")
    undecided = [gain for gain in regime.gains if gain.family in WITNESSES and gain.undecided]
    if regime.informative:
        lines += ["", "Informative for the paper's question: a witness family (Switch or Hash) "
                  "gains from its experts here."]
    elif undecided:
        lines += ["", "Undecided: " + ", ".join(f"{gain.family} (R = {gain.ratio:.3f})"
                                                for gain in undecided)
                  + f" would gain from its experts, on fewer than {MIN_SEEDS} seeds; more seeds "
                  "decide whether this size is informative."]
    else:
        lines += ["", "Inconclusive at this size: neither Switch nor Hash gains from its experts "
                  "here, so the order of the table above says nothing of what sparsity buys."]
    lines += ["", "The paper's claims, tested on these runs:", ""]
    for claim in regime.claims:
        verdict = {True: "holds", False: "does not hold", None: "not tested"}[claim.holds]
        lines.append(f"- {claim.text}: {verdict} ({claim.evidence}).")
    return lines

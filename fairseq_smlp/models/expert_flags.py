"""The expert-count flags of the models, checked once here, in their own names.

A flag's count becomes a placement over the running job's ranks (distributed/expert_placement.py,
which knows nothing of flags); each MoE then places its experts with ``placement.place``.
"""

from dataclasses import field

from ..distributed.expert_placement import ExpertPlacement, PlacementError, expert_placement


def compile_routing_field():
    """--compile-routing, one flag for every model with routing."""
    return field(default=False, metadata={
        "help": "run the gate, routing and experts of every MoE layer (and the router and "
        "experts of the partial sMoE) under torch.compile, region by region: on a GPU a few "
        "fused kernels in place of many small ones; each region compiles on its first batch "
        "(and again on a batch of a new shape)"})


def placement_for(flag: str, num_experts: int) -> ExpertPlacement:
    """The placement of the ``num_experts`` experts that ``flag`` sets, or a ValueError that
    names the flag."""
    try:
        return expert_placement(num_experts)
    except PlacementError as error:
        raise ValueError(f"{flag} {error}") from None


def check_smoe_width(width: int, num_experts: int) -> None:
    """Every sMoE expert takes the same number of the ``width`` feature columns."""
    if num_experts < 1 or width % num_experts != 0:
        raise ValueError(
            f"--smoe-expert-count {num_experts} must be at least 1 and divide the sMoE width "
            f"{width} (half of --decoder-ffn-embed-dim) so that every expert gets the same "
            f"number of feature columns"
        )

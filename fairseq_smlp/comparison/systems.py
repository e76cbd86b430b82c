"""The systems of the paper's comparison, each at three scales, sized to equal FLOPs per token.

Every system is a fairseq-train arch with its task and criterion and the size flags that give it
the training FLOPs per token of the others at the same scale (see docs/flops.md for the formulas;
tests/comparison/test_systems.py holds them within 1% of each other):

- ``cpu``: the bundled corpus on a laptop, T = 128, d_model 128. The reference is
  smlp_deterministic_tiny (4 blocks, 2 of them sparse, 4 experts per sMoE and tMoE); the others
  keep 4 layers where they have layers to keep, and their FFN width (or gMLP's depth) is chosen
  to match it.
- ``gpu``: the paper's widths (d_model 1024, d_ffn 4096, T = 1024, 16 experts per MoE layer) at
  a depth that one GPU trains in seconds, for throughput on the bundled corpus. The reference is
  smlp_deterministic with 4 blocks, 2 of them sparse; the Transformers keep 4 layers with FFNs
  3072 wide (GShard's experts half that), gMLP takes 6 blocks.
- ``paper``: the paper's main comparison (d_model 1024, d_ffn 4096, T = 1024, 16 experts per MoE
  layer). The reference is fairseq's ``transformer_lm_gpt3_medium``, the dense shape of the MoE
  baselines; the all-MLP models match it by depth, GShard (two experts per token) by FFN width.

GShard's second expert follows the gate's default policy, ``sampling`` (fairseq's), at every
scale.

    python -m fairseq_smlp.comparison.systems list
    python -m fairseq_smlp.comparison.systems flags smlp_deterministic --scale cpu
"""

import argparse
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

SCALES = ("cpu", "gpu", "paper")
TOKENS_PER_SAMPLE = {"cpu": 128, "gpu": 1024, "paper": 1024}
# Flags the Transformer systems share at the gpu scale.
GPU_TRANSFORMER = ("--decoder-layers", "4", "--decoder-ffn-embed-dim", "3072")

LM, PARTIAL_LM = "language_modeling", "partial_prediction_lm"
SMLP_EXPERTS = ("--smoe-expert-count", "--moe-expert-count")
MOE_EXPERTS = ("--moe-expert-count",)


@dataclass(frozen=True)
class System:
    name: str  # the run directory and the row of the report
    title: str
    task: str
    criterion: str
    model_flags: Dict[str, Tuple[str, ...]]  # scale -> --arch and size flags
    expert_flags: Tuple[str, ...] = ()  # the flags that set its expert counts; () if dense

    def flags(self, scale: str, experts: Optional[int] = None) -> List[str]:
        """fairseq-train flags that pick this system at ``scale``: task, criterion, arch, size
        and context, with ``experts`` experts in every MoE layer when given. Training
        hyperparameters are the caller's."""
        if scale not in SCALES:
            raise ValueError(f"--scale must be one of {', '.join(SCALES)}; got '{scale}'")
        counts: List[str] = []
        if experts is not None:
            if not self.expert_flags:
                raise ValueError(f"--experts {experts}: {self.name} has no experts")
            if experts < 1:
                raise ValueError(f"--experts must be at least 1; got {experts}")
            for flag in self.expert_flags:
                counts += [flag, str(experts)]
        return [
            "--task", self.task, "--criterion", self.criterion, *self.model_flags[scale],
            *counts, "--tokens-per-sample", str(TOKENS_PER_SAMPLE[scale]),
        ]


SYSTEMS: Tuple[System, ...] = (
    System(
        "transformer", "Transformer (dense)", LM, "cross_entropy",
        {
            # The shape of the _tiny MoE archs (base_lm_architecture's pre-norm layers, input
            # and output at the model width), which --arch transformer_lm does not fill in.
            "cpu": ("--arch", "transformer_lm", "--decoder-embed-dim", "128",
                    "--decoder-input-dim", "128", "--decoder-output-dim", "128",
                    "--decoder-normalize-before", "--decoder-ffn-embed-dim", "384",
                    "--decoder-layers", "4", "--decoder-attention-heads", "4",
                    "--share-decoder-input-output-embed"),
            "gpu": ("--arch", "transformer_lm_gpt3_medium", *GPU_TRANSFORMER),
            "paper": ("--arch", "transformer_lm_gpt3_medium"),
        },
    ),
    System(
        "gmlp", "gMLP (dense all-MLP)", LM, "cross_entropy",
        {
            "cpu": ("--arch", "gmlp_lm_tiny", "--decoder-layers", "6"),
            "gpu": ("--arch", "gmlp_lm", "--decoder-layers", "6"),
            "paper": ("--arch", "gmlp_lm", "--decoder-layers", "42"),
        },
    ),
    System(
        "smlp_deterministic", "sMLP, deterministic routing", LM, "moe_cross_entropy",
        {
            "cpu": ("--arch", "smlp_deterministic_tiny"),
            "gpu": ("--arch", "smlp_deterministic", "--decoder-layers", "4",
                    "--sparse-layers", "2"),
            "paper": ("--arch", "smlp_deterministic", "--decoder-layers", "28",
                      "--sparse-layers", "14"),
        },
        SMLP_EXPERTS,
    ),
    System(
        "smlp_partial", "sMLP, partial prediction", PARTIAL_LM, "partial_prediction_cross_entropy",
        {
            "cpu": ("--arch", "smlp_partial_tiny"),
            "gpu": ("--arch", "smlp_partial", "--decoder-layers", "4", "--sparse-layers", "2"),
            "paper": ("--arch", "smlp_partial", "--decoder-layers", "28", "--sparse-layers", "14"),
        },
        SMLP_EXPERTS,
    ),
    System(
        "gshard", "GShard (top-2)", LM, "moe_cross_entropy",
        {
            "cpu": ("--arch", "transformer_lm_gshard_tiny", "--decoder-ffn-embed-dim", "384",
                    "--moe-expert-ffn-dim", "192"),
            "gpu": ("--arch", "transformer_lm_gshard", *GPU_TRANSFORMER, "--moe-expert-ffn-dim",
                    "1536"),
            "paper": ("--arch", "transformer_lm_gshard", "--moe-expert-ffn-dim", "2048"),
        },
        MOE_EXPERTS,
    ),
    System(
        "switch", "Switch (top-1)", LM, "moe_cross_entropy",
        {
            "cpu": ("--arch", "transformer_lm_switch_tiny", "--decoder-ffn-embed-dim", "384"),
            "gpu": ("--arch", "transformer_lm_switch", *GPU_TRANSFORMER),
            "paper": ("--arch", "transformer_lm_switch"),
        },
        MOE_EXPERTS,
    ),
    System(
        "base", "BASE layers", LM, "moe_cross_entropy",
        {
            "cpu": ("--arch", "transformer_lm_base_tiny", "--decoder-ffn-embed-dim", "384"),
            "gpu": ("--arch", "transformer_lm_base", *GPU_TRANSFORMER),
            "paper": ("--arch", "transformer_lm_base"),
        },
        MOE_EXPERTS,
    ),
    System(
        "hash", "Hash layers", LM, "moe_cross_entropy",
        {
            "cpu": ("--arch", "transformer_lm_hash_tiny", "--decoder-ffn-embed-dim", "384"),
            "gpu": ("--arch", "transformer_lm_hash", *GPU_TRANSFORMER),
            "paper": ("--arch", "transformer_lm_hash"),
        },
        MOE_EXPERTS,
    ),
)

REFERENCE = {"cpu": "smlp_deterministic", "gpu": "smlp_deterministic", "paper": "transformer"}


# A run label: a system, or a system with its expert count (`switch_e8`).
EXPERT_LABEL = re.compile(r"^(?P<system>.+)_e(?P<count>[1-9][0-9]*)$")


def label_parts(label: str) -> Tuple[str, Optional[int]]:
    """(system, expert count or None) of a run label such as 'switch_e8'."""
    match = EXPERT_LABEL.match(label)
    return (match["system"], int(match["count"])) if match else (label, None)


def label_flags(label: str, scale: str) -> List[str]:
    """System.flags of a run label, its expert count included."""
    name, experts = label_parts(label)
    return system(name).flags(scale, experts)


def system(name: str) -> System:
    for candidate in SYSTEMS:
        if candidate.name == name:
            return candidate
    raise ValueError(
        f"unknown system '{name}'; valid: {', '.join(s.name for s in SYSTEMS)}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="The compared systems and their fairseq-train flags."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print the systems' names, one a line")
    flags = commands.add_parser(
        "flags", help="print a system's task, criterion, arch and size flags, one a line"
    )
    flags.add_argument("name", help="a system name from 'list'")
    flags.add_argument("--scale", choices=SCALES, default="cpu", help="which size (default: cpu)")
    flags.add_argument("--experts", type=int, default=None,
                       help="experts in every MoE layer (default: the scale's own)")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(s.name for s in SYSTEMS))
        return
    try:
        print("\n".join(system(args.name).flags(args.scale, args.experts)))
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()

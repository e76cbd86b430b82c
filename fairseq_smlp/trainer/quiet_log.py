"""Third-party warnings that a user of fairseq's commands cannot act on, filtered once, at the
plugin's edge, each by its category, the module that issues it and the start of its message:
hydra's notices about fairseq's use of its deprecated API, torch's about the pin_memory that
fairseq's loader asks for without an accelerator and about the masks fairseq's attention mixes,
and the deprecations of torch.cuda.amp that fairseq and fairscale call. The project's own warnings
and fairseq's real messages stay.

fairscale's two warnings come at fairseq's own import, before any plugin loads;
examples/quickstart_cpu.sh silences those for its commands (PYTHONWARNINGS).
"""

import warnings

# (category, module, message): the regular expressions of warnings.filterwarnings, the message
# matched from its start.
UNACTIONABLE = [
    (UserWarning, r"hydra\.", r"hydra\.experimental\.\w+\(\) is no longer experimental"),
    (UserWarning, r"hydra\.", r"In '\w+': Usage of deprecated keyword in package header"),
    (UserWarning, r"hydra\.", r"\s*The strict flag in the compose API is deprecated"),
    (UserWarning, r"hydra\.", r"\s*The version_base parameter is not specified"),
    # Attributed to no module ("sys:1"), from hydra's schema matching of fairseq's config.
    (UserWarning, r"", r"\s*'config' is validated against ConfigStore schema with the same name"),
    # fairseq's attention hands torch a boolean padding mask beside a float causal mask.
    (UserWarning, r"torch\.nn\.functional",
     r"Support for mismatched key_padding_mask and attn_mask is deprecated"),
    (UserWarning, r"torch\.utils\.data\.dataloader",
     r"'pin_memory' argument is set as true but no accelerator is found"),
    (FutureWarning, r"(fairseq|fairscale)\.",
     r"`torch\.cuda\.amp\.\w+\(args\.\.\.\)` is deprecated"),
]


def install_quiet_log() -> None:
    for category, module, message in UNACTIONABLE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)

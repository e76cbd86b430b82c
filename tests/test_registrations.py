"""The README's tables of archs, criteria and tasks are what fairseq's registries hold: every name
listed is registered, by this package where the table says so and by fairseq where it says
"fairseq's own", and every name this package registers is listed."""

import re
from pathlib import Path

import pytest
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY

import fairseq_smlp  # noqa: F401  (registers the plugin)

README = Path(__file__).resolve().parent.parent / "README.md"
REGISTRIES = {"--arch": ARCH_MODEL_REGISTRY, "--criterion": CRITERION_REGISTRY,
              "--task": TASK_REGISTRY}


def readme_table(flag: str):
    """(name, owner) for each name in the first column of the README table headed by ``flag``,
    owner "fairseq" or "plugin" from the status column."""
    lines = README.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"| `{flag}` |")))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        first, *_, status = [cell.strip() for cell in line.strip("|").split("|")]
        owner = "fairseq" if status == "fairseq's own" else "plugin"
        rows += [(name, owner) for name in re.findall(r"`([a-z0-9_]+)`", first)]
    return rows


def defining_package(registered) -> str:
    return registered.__module__.split(".")[0]


@pytest.mark.parametrize("flag", list(REGISTRIES))
def test_every_listed_name_is_registered_by_its_owner(flag):
    rows = readme_table(flag)
    assert rows
    for name, owner in rows:
        assert name in REGISTRIES[flag], f"{flag} {name}"
        package = defining_package(REGISTRIES[flag][name])
        assert package == ("fairseq" if owner == "fairseq" else "fairseq_smlp"), f"{flag} {name}"


@pytest.mark.parametrize("flag", list(REGISTRIES))
def test_every_name_the_plugin_registers_is_listed(flag):
    listed = {name for name, _ in readme_table(flag)}
    ours = {name for name, registered in REGISTRIES[flag].items()
            if defining_package(registered) == "fairseq_smlp"}
    # fairseq also registers each model's own name as an arch of its defaults (gmlp_lm is both).
    assert ours - set(MODEL_REGISTRY) <= listed

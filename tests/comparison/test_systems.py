"""The compared systems: their flags parse with fairseq's own parser, every scale holds them at
equal training FLOPs per token, and the paper-scale scripts hand fairseq-train what systems.py
says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import build_model

from fairseq_smlp.comparison.flops import model_costs, parse_training_args
from fairseq_smlp.comparison.systems import (REFERENCE, SCALES, SYSTEMS, label_flags,
                                             label_parts, system)

REPO = Path(__file__).resolve().parents[2]
# Vocabulary sizes of the corpora each scale is meant for: the bundled corpus's sentencepiece
# model, GPT-2's byte-level BPE as fairseq's dictionary holds it.
VOCAB = {"cpu": 4096, "gpu": 4096, "paper": 50264}


def parse(argv):
    """fairseq-train's parser with the arch's defaults filled in, as fairseq-train runs it."""
    return parse_training_args(["unused-data-dir", *argv])


@pytest.mark.parametrize("scale", SCALES)
def test_every_system_parses_as_its_arch_task_and_criterion(scale):
    for candidate in SYSTEMS:
        args = parse(candidate.flags(scale))
        arch = candidate.model_flags[scale][candidate.model_flags[scale].index("--arch") + 1]
        assert (args.arch, args.task, args.criterion) == (arch, candidate.task,
                                                         candidate.criterion)


@pytest.mark.parametrize("scale", SCALES)
def test_systems_of_a_scale_cost_the_same_flops_per_token(scale):
    flops = {s.name: model_costs(parse(s.flags(scale)), VOCAB[scale]).train_flops_per_token
             for s in SYSTEMS}
    reference = flops[REFERENCE[scale]]
    off = {name: f"{value / reference - 1:+.2%}" for name, value in flops.items()
           if abs(value / reference - 1) > 0.01}
    assert not off, f"more than 1% from {REFERENCE[scale]}'s FLOPs per token: {off}"


@pytest.mark.parametrize("name", ["smlp_deterministic", "switch"])
def test_an_expert_count_sets_every_moe_layer_and_keeps_the_flops(name):
    """The expert-count sweep: 1, 4 and 16 experts in every MoE layer of the model the flags
    build, at the cpu scale's FLOPs per token (a token still runs one expert; only the gate
    grows)."""
    reference = model_costs(parse(system(REFERENCE["cpu"]).flags("cpu")), VOCAB["cpu"])
    for experts in (1, 4, 16):
        args = parse(system(name).flags("cpu", experts))
        costs = model_costs(args, VOCAB["cpu"])
        assert abs(costs.train_flops_per_token / reference.train_flops_per_token - 1) < 0.01
        counts = {key: value for key, value in vars(args).items() if key.endswith("expert_count")}
        model = build_model(args.arch, tokens_per_sample=128, **counts)
        assert {module.num_experts for module in model.modules()
                if hasattr(module, "num_experts")} == {experts}
    with pytest.raises(ValueError, match="--experts 4: gmlp has no experts"):
        system("gmlp").flags("cpu", 4)
    with pytest.raises(ValueError, match="--experts must be at least 1; got 0"):
        system(name).flags("cpu", 0)


def test_unknown_system_and_scale_name_what_is_valid():
    with pytest.raises(ValueError, match="unknown system 'gpt'; valid: transformer, gmlp"):
        system("gpt")
    with pytest.raises(ValueError, match="--scale must be one of cpu, gpu, paper; got 'tpu'"):
        SYSTEMS[0].flags("tpu")


def run_paper_script(tmp_path, name, *extra, gpus="32"):
    """examples/paper/NAME.sh with fairseq-train replaced by a script that prints its argv."""
    printer = tmp_path / "print_argv.py"
    printer.write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    env = dict(os.environ, GPUS=gpus, FAIRSEQ_TRAIN=f"{sys.executable} {printer}",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", f"examples/paper/{name}.sh", "data-bin", *extra], cwd=REPO,
                          env=env, capture_output=True, text=True)


def test_paper_scripts_train_their_system_with_the_recipe(tmp_path):
    for candidate in SYSTEMS:
        result = run_paper_script(tmp_path, candidate.name, "--max-update", "10", gpus="8")
        assert result.returncode == 0, result.stderr[-2000:]
        argv = json.loads(result.stdout.strip().splitlines()[-1])
        assert argv[0] == "data-bin"
        args = parse_training_args(argv)
        expected = parse(candidate.flags("paper"))
        assert (args.arch, args.task, args.criterion) == (
            expected.arch, expected.task, expected.criterion)
        # The same FLOPs and parameter counts: the model systems.py describes.
        assert model_costs(args, VOCAB["paper"]) == model_costs(expected, VOCAB["paper"])
        # 8 GPUs x 8 sequences x update-freq 8 = 512 sequences of 1024 tokens per update.
        assert args.batch_size * args.update_freq[0] * 8 == 512
        assert args.max_update == 10  # flags after DATA_BIN override the recipe
        assert args.bf16 and args.fp16_no_flatten_grads


def test_paper_script_refuses_a_gpu_count_that_does_not_split_the_batch(tmp_path):
    result = run_paper_script(tmp_path, "switch", gpus="12")
    assert result.returncode == 2
    assert "GPUS must divide 64" in result.stderr and "got '12'" in result.stderr


def test_a_run_label_names_its_system_and_expert_count():
    assert label_parts("switch_e8") == ("switch", 8)
    assert label_parts("smlp_deterministic") == ("smlp_deterministic", None)
    assert label_flags("switch_e8", "cpu") == system("switch").flags("cpu", 8)
    assert label_flags("gmlp", "cpu") == system("gmlp").flags("cpu")

"""The whole user path in subprocesses: prepare a slice of the bundled corpus, fairseq-train each
tiny arch for a few updates in bf16, fairseq-eval-lm its checkpoint."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq.models import ARCH_MODEL_REGISTRY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fairseq_smlp

REPO = Path(__file__).resolve().parent.parent
USER_DIR = str(Path(fairseq_smlp.__file__).parent)
TOKENS_PER_SAMPLE = 64
PARTIAL_CONTEXT = 13  # 64 - floor(0.8 * 64)
PROMPT = "The state of the union is"
GENERATED = 20  # pieces of a generated text, the prompt's included

# arch -> (task, criterion) it trains with
RUNS = {
    "gmlp_lm_tiny": ("language_modeling", "cross_entropy"),
    "smlp_deterministic_tiny": ("language_modeling", "moe_cross_entropy"),
    "smlp_partial_tiny": ("partial_prediction_lm", "partial_prediction_cross_entropy"),
    "transformer_lm_gshard_tiny": ("language_modeling", "moe_cross_entropy"),
    "transformer_lm_switch_tiny": ("language_modeling", "moe_cross_entropy"),
    "transformer_lm_base_tiny": ("language_modeling", "moe_cross_entropy"),
    "transformer_lm_hash_tiny": ("language_modeling", "moe_cross_entropy"),
}


def run(*command, check=True, stdin=None):
    # As examples/quickstart_cpu.sh runs them: fairscale's warnings at fairseq's import are
    # silenced there, the rest by the plugin.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHONWARNINGS="ignore::FutureWarning:fairscale.experimental.nn.offload")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def train(data_dir, save_dir, arch):
    task, criterion = RUNS[arch]
    result = run(
        sys.executable, "-m", "fairseq_cli.train", str(data_dir), "--user-dir", USER_DIR,
        "--task", task, "--criterion", criterion, "--arch", arch, "--decoder-layers", "2",
        "--tokens-per-sample", str(TOKENS_PER_SAMPLE), "--sample-break-mode", "none",
        "--batch-size", "8", "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "fixed",
        "--max-update", "80", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
        "--cpu", "--num-workers", "0", "--seed", "1", "--log-format", "simple",
        "--log-interval", "20", "--tensorboard-logdir", str(save_dir / "tensorboard"),
        "--bf16",  # fairseq's own flag, which alone would look for a TPU
    )
    return save_dir / "checkpoint_last.pt", result.stdout + result.stderr


def eval_lm(data_dir, checkpoint, *extra, check=True):
    return run(
        sys.executable, "-m", "fairseq_cli.eval_lm", str(data_dir), "--user-dir", USER_DIR,
        "--path", str(checkpoint), "--gen-subset", "test", "--batch-size", "8", "--cpu",
        "--num-workers", "0", *extra, check=check,
    )


def evaluated_tokens_and_perplexity(result):
    output = result.stdout + result.stderr
    evaluated = int(re.search(r"Evaluated ([\d,]+) tokens", output).group(1).replace(",", ""))
    return evaluated, float(re.search(r"Perplexity: ([\d.]+)", output).group(1))


@pytest.fixture(scope="module")
def checkpoints(data_dir, tmp_path_factory):
    """Trains each arch once per module: arch -> (checkpoint, training log)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = train(data_dir, tmp_path_factory.mktemp(arch), arch)
        return cache[arch]

    return get


@pytest.fixture(scope="module", params=list(RUNS))
def trained(request, checkpoints):
    return (request.param, *checkpoints(request.param))


@pytest.fixture(scope="module")
def gmlp_checkpoint(checkpoints):
    return checkpoints("gmlp_lm_tiny")[0]


def test_training_loss_goes_down(trained):
    arch, _, log = trained
    losses = [float(x) for x in re.findall(r"train_inner .* loss=([\d.]+)", log)]
    assert len(losses) == 4, log[-2000:]
    assert losses[-1] < losses[0] - 0.5, (arch, losses)
    assert "--bf16: the model and its batches in bf16 on the CPU" in log
    assert "Warning" not in log  # no third-party warning a user cannot act on
    if arch.startswith("smlp"):
        assert "layer1.tmoe.load_cv=" in log and "layer1.tmoe.greedy_load_cv=" in log
    if arch.startswith("transformer"):
        assert "layer1.moe.load_cv=" in log and "layer1.moe.dropped=" in log


def test_trained_model_beats_the_uniform_distribution(data_dir, trained):
    arch, checkpoint, _ = trained
    result = eval_lm(data_dir, checkpoint, "--task", RUNS[arch][0],
                     "--tokens-per-sample", str(TOKENS_PER_SAMPLE))
    evaluated, perplexity = evaluated_tokens_and_perplexity(result)
    assert "Warning" not in result.stdout + result.stderr
    vocabulary = len((data_dir / "dict.txt").read_text().splitlines()) + 4  # + fairseq specials
    assert evaluated > 1000
    assert math.isfinite(perplexity)
    assert perplexity < vocabulary / 2, (arch, perplexity, vocabulary)


def test_partial_prediction_eval_scores_the_trailing_positions_only(data_dir, gmlp_checkpoint):
    """One checkpoint under both tasks: partial_prediction_lm counts exactly the positions from
    PARTIAL_CONTEXT on in every block, and says so in the log."""
    full = eval_lm(data_dir, gmlp_checkpoint, "--tokens-per-sample", str(TOKENS_PER_SAMPLE))
    partial = eval_lm(data_dir, gmlp_checkpoint, "--task", "partial_prediction_lm",
                      "--tokens-per-sample", str(TOKENS_PER_SAMPLE))
    total, _ = evaluated_tokens_and_perplexity(full)
    scored, _ = evaluated_tokens_and_perplexity(partial)
    blocks, rest = divmod(total, TOKENS_PER_SAMPLE)
    assert scored == blocks * (TOKENS_PER_SAMPLE - PARTIAL_CONTEXT) + max(0, rest - PARTIAL_CONTEXT)
    assert "perplexities cover those positions only" in partial.stdout + partial.stderr


def test_partial_model_refuses_full_sequence_scoring(data_dir, checkpoints):
    checkpoint, _ = checkpoints("smlp_partial_tiny")
    result = eval_lm(data_dir, checkpoint, "--tokens-per-sample", str(TOKENS_PER_SAMPLE),
                     check=False)
    assert result.returncode != 0
    assert "train and evaluate it with --task partial_prediction_lm" in result.stderr


def test_eval_with_samples_longer_than_the_context_is_an_error(data_dir, gmlp_checkpoint):
    result = eval_lm(data_dir, gmlp_checkpoint, "--tokens-per-sample", "128", check=False)
    assert result.returncode != 0
    assert ("--tokens-per-sample 128 gives 128-token inputs but this model's context is 64 "
            "tokens") in result.stderr


def test_missing_data_directory_is_named(tmp_path):
    result = run(
        sys.executable, "-m", "fairseq_cli.train", str(tmp_path / "nowhere"), "--user-dir",
        USER_DIR, "--task", "language_modeling", "--arch", "gmlp_lm_tiny", "--batch-size", "2",
        "--cpu", check=False,
    )
    assert result.returncode != 0
    assert f"No such file or directory: '{tmp_path / 'nowhere'}/dict.txt'" in result.stderr


def test_prepare_rejects_a_missing_text_dir(tmp_path):
    result = run("bash", "examples/prepare_data.sh", "--dest", str(tmp_path), "--text-dir",
                 str(tmp_path / "absent"), check=False)
    assert result.returncode != 0
    assert f"--text-dir {tmp_path / 'absent'}: no such directory" in result.stderr


def test_tensorboard_receives_the_losses_and_the_routing_figures(checkpoints):
    checkpoint, _ = checkpoints("smlp_deterministic_tiny")
    events = EventAccumulator(str(checkpoint.parent / "tensorboard" / "train_inner"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "layer1.tmoe.load_cv", "layer1.tmoe.greedy_load_cv"} <= set(scalars)
    assert [event.step for event in events.Scalars("loss")] == [20, 40, 60, 80]


def generation_flags(data_dir):
    """Top-10 sampling of GENERATED pieces, no fewer, with a fixed seed."""
    return ["--bpe", "sentencepiece", "--sentencepiece-model", str(data_dir.parent / "spm.model"),
            "--sampling", "--sampling-topk", "10", "--beam", "1", "--max-len-a", "0",
            "--max-len-b", str(GENERATED), "--min-len", str(GENERATED), "--seed", "1"]


def test_interactive_writes_text_of_the_requested_length(data_dir, trained):
    arch, checkpoint, _ = trained
    result = run(
        sys.executable, "-m", "fairseq_cli.interactive", str(data_dir), "--user-dir", USER_DIR,
        "--task", RUNS[arch][0], "--tokens-per-sample", str(TOKENS_PER_SAMPLE),
        "--path", str(checkpoint), *generation_flags(data_dir), "--cpu", "--num-workers", "0",
        stdin=PROMPT + "\n",
    )
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)
    pieces = lines["H-0"].split("\t")[1].split()
    scores = lines["P-0"].split()
    text = lines["D-0"].split("\t")[1]
    assert len(pieces) == GENERATED and len(scores) == GENERATED + 1  # + end of sentence
    assert all(math.isfinite(float(score)) for score in scores)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT) + 10, text


@pytest.mark.parametrize("arch", ["smlp_deterministic_tiny", "smlp_partial_tiny"])
def test_generate_continues_the_prompts_of_a_binarized_file(data_dir, checkpoints, arch):
    """fairseq-generate on the test split: ``prefix`` pieces of each block are its prompt, and
    every output holds GENERATED pieces that begin with them. The two tasks (the others share
    the first's path; fairseq-interactive and the hub run every arch)."""
    checkpoint, _ = checkpoints(arch)
    prefix = 4
    result = run(
        sys.executable, "-m", "fairseq_cli.generate", str(data_dir), "--user-dir", USER_DIR,
        "--task", RUNS[arch][0], "--tokens-per-sample", str(TOKENS_PER_SAMPLE),
        "--gen-subset", "test", "--prefix-size", str(prefix), "--path", str(checkpoint),
        *generation_flags(data_dir), "--batch-size", "8", "--cpu", "--num-workers", "0",
    )
    fields = [line.split("\t") for line in result.stdout.splitlines()]
    sources = {f[0][2:]: f[1] for f in fields if f[0].startswith("S-")}  # text
    outputs = {f[0][2:]: f[2].split() for f in fields if f[0].startswith("H-")}  # pieces
    assert len(outputs) >= 5 and outputs.keys() == sources.keys(), result.stdout[-2000:]
    for i, pieces in outputs.items():
        prompt = "".join(pieces[:prefix]).replace("\u2581", "")  # the word-start marker
        assert len(pieces) == GENERATED and prompt in sources[i].replace(" ", "")


def test_hub_interface_samples_and_scores(data_dir, trained):
    """from_pretrained, then sample: the requested length, decoded to text; score: the model's
    own log-probabilities of the text, as a forward pass gives them."""
    arch, checkpoint, _ = trained
    lm = ARCH_MODEL_REGISTRY[arch].from_pretrained(
        str(checkpoint.parent), checkpoint.name, str(data_dir), bpe="sentencepiece",
        sentencepiece_model=str(data_dir.parent / "spm.model"),
    ).eval()
    torch.manual_seed(1)
    hypo = lm.generate(lm.encode(PROMPT), beam=1, sampling=True, sampling_topk=10, max_len_a=0,
                       max_len_b=GENERATED, min_len=GENERATED)[0]
    assert len(hypo["tokens"]) == GENERATED + 1  # + end of sentence
    text = lm.decode(hypo["tokens"])
    assert text.startswith(PROMPT) and len(text) > len(PROMPT) + 10, text
    assert lm.sample(PROMPT, sampling=True, sampling_topk=10).startswith(PROMPT)

    # A partial-prediction model's score covers the positions from its context on only: the
    # earlier ones were routed on later tokens.
    start = PARTIAL_CONTEXT if RUNS[arch][0] == "partial_prediction_lm" else 0
    scored = lm.score(text)
    model, dictionary = lm.models[0], lm.task.target_dictionary
    tokens = lm.encode(text)[:-1]  # (L,): the end of sentence is not scored
    inputs = torch.cat([tokens.new_tensor([dictionary.eos()]), tokens[:-1]])[None]  # (1, L)
    with torch.no_grad():
        log_probs = model.get_normalized_probs(model(inputs), log_probs=True)[0]  # (L, V)
    assert torch.equal(scored["tokens"], tokens[start:])
    torch.testing.assert_close(scored["positional_scores"],
                               log_probs.gather(1, tokens[:, None]).squeeze(1)[start:])
    # No scored position reads a later token: change the last one.
    other = dictionary.nspecial + (int(tokens[-1]) + 1 - dictionary.nspecial) % (
        len(dictionary) - dictionary.nspecial)
    changed = torch.cat([tokens[:-1], tokens.new_tensor([other, dictionary.eos()])])
    rescored = lm.generate([changed], score_reference=True)[0][0]["positional_scores"]
    assert len(rescored) == len(scored["positional_scores"])
    torch.testing.assert_close(rescored[:-1], scored["positional_scores"][:-1])


def test_routing_map_draws_where_the_tokens_and_columns_go(data_dir, checkpoints, tmp_path):
    checkpoint, _ = checkpoints("smlp_partial_tiny")
    out = tmp_path / "routing.png"
    result = run(sys.executable, "-m", "fairseq_smlp.routing_map", str(checkpoint), str(data_dir),
                 "--out", str(out), "--batch-size", "4")
    lines = result.stdout.splitlines()
    # Both blocks sparse (--decoder-layers 2), 4 experts each, routed as in training: every sMoE
    # expert takes a quarter of each sequence's 256 columns; the tMoE's balanced assignment
    # gives each expert a quarter of the 4 x 64 tokens, less any padding among them.
    for index in (0, 1):
        assert (f"layer{index}.smoe: feature columns per expert [256, 256, 256, 256], 0.0% of "
                f"the choices dropped") in lines
        tmoe = next(line for line in lines if line.startswith(f"layer{index}.tmoe: "))
        kept = [int(n) for n in re.search(r"\[(.*)\]", tmoe).group(1).split(", ")]
        assert len(kept) == 4 and max(kept) == 64, tmoe
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Warning" not in result.stdout + result.stderr

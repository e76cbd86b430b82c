"""The whole user path in subprocesses: prepare a slice of the bundled corpus, fairseq-train a
small gmlp_lm, fairseq-eval-lm its checkpoint."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fairseq_smlp

REPO = Path(__file__).resolve().parent.parent
USER_DIR = str(Path(fairseq_smlp.__file__).parent)
TOKENS_PER_SAMPLE = 64


def run(*command, check=True):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    dest = tmp_path_factory.mktemp("sotu")
    run("bash", "examples/prepare_data.sh", "--dest", str(dest), "--vocab-size", "300",
        "--max-documents", "12")
    return dest / "bin"


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("checkpoints")
    run(
        sys.executable, "-m", "fairseq_cli.train", str(data_dir), "--user-dir", USER_DIR,
        "--task", "language_modeling", "--arch", "gmlp_lm_tiny", "--decoder-layers", "2",
        "--tokens-per-sample", str(TOKENS_PER_SAMPLE), "--sample-break-mode", "none",
        "--batch-size", "8", "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "fixed",
        "--max-update", "80", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
        "--cpu", "--num-workers", "0", "--seed", "1", "--log-format", "simple",
    )
    return save_dir / "checkpoint_last.pt"


def eval_lm(data_dir, checkpoint, *extra, check=True):
    return run(
        sys.executable, "-m", "fairseq_cli.eval_lm", str(data_dir), "--user-dir", USER_DIR,
        "--path", str(checkpoint), "--gen-subset", "test", "--batch-size", "8", "--cpu",
        "--num-workers", "0", *extra, check=check,
    )


def test_trained_model_beats_the_uniform_distribution(data_dir, checkpoint):
    result = eval_lm(data_dir, checkpoint, "--tokens-per-sample", str(TOKENS_PER_SAMPLE))
    output = result.stdout + result.stderr
    evaluated = int(re.search(r"Evaluated ([\d,]+) tokens", output).group(1).replace(",", ""))
    perplexity = float(re.search(r"Perplexity: ([\d.]+)", output).group(1))
    vocabulary = len((data_dir / "dict.txt").read_text().splitlines()) + 4  # + fairseq specials
    assert evaluated > 1000
    assert math.isfinite(perplexity)
    assert perplexity < vocabulary / 2, (perplexity, vocabulary)


def test_eval_with_samples_longer_than_the_context_is_an_error(data_dir, checkpoint):
    result = eval_lm(data_dir, checkpoint, "--tokens-per-sample", "128", check=False)
    assert result.returncode != 0
    assert "--tokens-per-sample is 128 tokens but this model's context is 64 tokens" in (
        result.stderr
    )


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

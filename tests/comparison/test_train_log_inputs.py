"""What the report's readers make of unusual files: a diverged or overflowing fairseq-eval-lm
result, a JSON file that is not text, directories where files belong."""

import math

import pytest

from fairseq_smlp.comparison.train_log import (
    ReportError, read_eval_lm_ppl, read_json_object, read_train_log,
)

EVAL_LM_END = ("2026-11-24 07:40:01 | INFO | fairseq_cli.eval_lm | Evaluated 3,712 tokens in 1.2s "
               "(3093.33 tokens/s)\n"
               "2026-11-24 07:40:01 | INFO | fairseq_cli.eval_lm | Loss (base 2): {loss}, "
               "Perplexity: {ppl}\n")


@pytest.mark.parametrize("loss,ppl,expected", [
    ("6.6439", "100.00", 2 ** 6.6439),
    ("nan", "nan", math.nan),
    ("inf", "inf", math.inf),
    ("1500.0000", "inf", math.inf),  # 2 ** 1500 is past the largest float
])
def test_eval_lm_scores_diverged_and_huge_losses(tmp_path, loss, ppl, expected):
    log = tmp_path / "valid_trailing.log"
    log.write_text(EVAL_LM_END.format(loss=loss, ppl=ppl))
    score = read_eval_lm_ppl(log)
    if math.isnan(expected):
        assert math.isnan(score)
    else:
        assert score == pytest.approx(expected)


def test_an_eval_lm_log_that_is_a_directory_is_named(tmp_path):
    (tmp_path / "valid_trailing.log").mkdir()
    with pytest.raises(ReportError, match="valid_trailing.log: a directory; it must be "
                       "fairseq-eval-lm's output, or absent for a run not scored"):
        read_eval_lm_ppl(tmp_path / "valid_trailing.log")
    assert read_eval_lm_ppl(tmp_path / "absent.log") is None


def test_a_train_log_that_is_a_directory_is_named(tmp_path):
    (tmp_path / "train.log").mkdir()
    with pytest.raises(ReportError, match="train.log: a directory; it must be fairseq-train's "
                       "output"):
        read_train_log(tmp_path / "train.log")


def test_json_that_is_not_text_or_not_a_file_is_named(tmp_path):
    binary = tmp_path / "system.json"
    binary.write_bytes(b"PK\x03\x04\x80\x81 not text")
    with pytest.raises(ReportError, match=r"system.json: not JSON \('utf-8' codec .*\); write "
                       "it so"):
        read_json_object(binary, "write it so")
    folder = tmp_path / "copa.json"
    folder.mkdir()
    with pytest.raises(ReportError, match=r"copa.json: cannot be read \(Is a directory\); "
                       "write it so"):
        read_json_object(folder, "write it so")

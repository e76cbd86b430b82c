"""Checkpoints written before a change of the code load after it.

tests/fixtures/checkpoint_0c33807/ holds the rank files of a 2-rank expert-parallel fairseq-train
run of smlp_deterministic_tiny (2 updates, embedding 16, FFN 32, 2 layers, a 104-entry
dictionary), written by the code of commit 0c33807, with the dictionary and the logits that the
merge of those files gave at that commit for a fixed batch (``expected.pt``). Rewriting the
fixture with today's code would hide what this test guards: the files on disk of an older run.
"""

import shutil
from pathlib import Path

import torch
from fairseq import checkpoint_utils

import fairseq_smlp  # noqa: F401  (registers the models)
from fairseq_smlp.checkpoint.merge import consolidate

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_0c33807"


def test_rank_files_of_an_older_run_merge_and_give_the_same_logits(tmp_path, caplog):
    for rank_file in FIXTURE.glob("checkpoint_best-rank-*.pt"):
        shutil.copy(rank_file, tmp_path)
    merged = tmp_path / "checkpoint_best.pt"
    assert consolidate(merged, merged) == 2
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(merged)], arg_overrides={"data": str(FIXTURE)})
    # Written before checkpoints carried their dictionary's fingerprint: loaded, with a warning.
    assert "was written without a fingerprint of its dictionary" in caplog.text
    expected = torch.load(FIXTURE / "expected.pt")
    with torch.no_grad():
        logits = models[0].eval()(expected["tokens"])[0].float()
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)

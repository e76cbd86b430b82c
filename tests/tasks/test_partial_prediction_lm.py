from types import SimpleNamespace

import pytest

from fairseq_smlp.tasks.partial_prediction_lm import PartialPredictionLMTask


def test_partial_task_refuses_a_context_window():
    task = SimpleNamespace(context=13)
    with pytest.raises(ValueError, match="--context-window 5 cannot be combined with --task "
                                         "partial_prediction_lm"):
        PartialPredictionLMTask.eval_lm_dataloader(task, None, context_window=5)


def test_partial_task_refuses_a_leading_bos_token():
    with pytest.raises(ValueError, match="--add-bos-token cannot be combined with --task "
                                         "partial_prediction_lm"):
        PartialPredictionLMTask(SimpleNamespace(add_bos_token=True), None)

"""Zero-shot in-context evaluation (priming, as in GPT-3) of the project's language models.

``python -m fairseq_smlp.zero_shot --task copa --path CHECKPOINT`` scores every candidate
continuation of every example with the model's log-likelihood and prints the accuracy; see
docs/zero_shot.md for the tasks, their data and the scoring rule.
"""

"""Parity with the authors' code: ``python -m recbole_llm.parity`` (docs/parity.md).

The official LLM-ESR, LLMEmb (RAT stage) and LEARN (public Amazon finetune stage) run on the data and feature
tables our models read, written in their input formats into a scratch copy of the user's checkout; our model runs
on the same split, features, hyperparameters, negatives and tail thresholds; one table compares both.

- :mod:`recbole_llm.parity.export`: our split and tables (through quick_start's artifact path) -> the official
  ``data/<name>/handled/`` files (LLM-ESR, LLMEmb) or LEARN's JSON, id map, embedding store.
- :mod:`recbole_llm.parity.protocol`: the official evaluation protocol re-expressed from its documented behaviour
  (ranks among sampled candidates, popularity with the test item counted, the first row left out of the group
  numerators), for the cross-check tests and the quirk's measured effect.
- :mod:`recbole_llm.parity.shim`: the process that runs an official script with the harness's patches (CPU for
  LEARN's ``.cuda()``, a dataset name outside their ``choices``, per-epoch timing); their files are not edited.
- :mod:`recbole_llm.parity.runner`: the command; records and tables through :mod:`recbole_llm.suite`.
"""

"""Serving a trained checkpoint: top-K recommendations (``python -m recbole_llm.recommend``, docs/serving.md).

One job per module:

- :mod:`recbole_llm.serve.scoring`: the checkpoint's model, its users' histories, the scores it ranks by
  (``full_sort_predict``) and their factors (user vectors, item vectors, per-item bias), checked against each other.
- :mod:`recbole_llm.serve.inputs`: users, histories and the files that hold them (plain text, never unpickled).
- :mod:`recbole_llm.serve.new_items`: items added from their text: embedded with the checkpoint's LLM, prompt and
  feature pipeline, mapped through the model's own item path.
- :mod:`recbole_llm.serve.index`: the FAISS index of the item vectors (flat, IVF or HNSW), keyed by the checkpoint.
- :mod:`recbole_llm.serve.output`: titles, the result rows, CSV / JSONL written atomically.
"""

from recbole_llm.errors import UserError


class ServeError(UserError, ValueError):
    """Bad input to the recommender (a user, an item, a file, an option): one line naming it and the fix."""

"""Items added from their text, without retraining: ``--new_items=FILE.item``.

Two steps, each the one training used:

1. **Text to feature rows** (:func:`new_item_features`): the new items' prompts are built from the ``.item`` file by
   :mod:`recbole_llm.llm.prompts` with the checkpoint's prompt keys, embedded by :mod:`recbole_llm.llm.embed` with
   the LLM, pooling, ``llm_max_length`` and ``llm_normalize`` recorded in the model's feature file, then taken
   through the same companions as the model's features (the PCA reduction, the whitening), each fitted again on its
   source file exactly as :mod:`recbole_llm.llm.extract` fits it (and checked to reproduce that companion's stored
   rows), and rounded to the stored and attached dtypes (``feature_dtype``) on the way.
2. **Feature rows to item vectors** (:func:`item_path`): the model's own item path: the LLMEmb adapter, LEARN's item
   tower, UniSRec's MoE adaptor (``inductive_ft``), and the ``cold_id`` generator for the ID rows of LLM-ESR and
   LLM2X (its norm rule as at evaluation; with ``mean``, the factor of the model's own untrained rows, so no known
   item's score moves). A per-item bias (BERT4Rec's ``output_bias``) is 0 for a new item: the value of every item
   training never saw. Models that score items by trained ID rows only (SASRec, GRU4Rec, BERT4Rec, ...; LLM-ESR and
   LLM2X without ``cold_id``; UniSRec ``transductive_ft``) are refused in one line.

On the cold-start protocol an item held out of training and added this way scores what the protocol's evaluation
gives it (tests/test_recommend.py).
"""

import os

import numpy as np
import torch
import torch.nn.functional as F

from recbole_llm.serve import ServeError

REBUILD = "rebuild the model's features (python -m recbole_llm.features --force) and retrain, or serve without --new_items"


class NewItemsError(ServeError):
    """A new-items file, or a model or feature file that cannot take new items."""


# ---- the new items' text ---------------------------------------------------------------------------------------------
def read_new_items(path, config, known_tokens):
    """(tokens, {token: prompt in the model's prompt style}, ItemText) of ``path``, an atomic ``.item`` file with
    the dataset's text columns; tokens already in the catalogue, or none at all, are refused."""
    from recbole_llm.llm.prompts import build_prompts, prompt_config, read_item_text

    if not path.endswith(".item"):
        raise NewItemsError(f"--new_items '{path}' is not a .item file: write the new items in the atomic .item format "
                            "(a header like item_id:token<TAB>title:token, one item a line) in a file named <name>.item")
    if not os.path.isfile(path):
        raise NewItemsError(f"--new_items '{path}' does not exist: pass the .item file of the new items")
    cfg = prompt_config(config)
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)[: -len(".item")]
    try:
        text = read_item_text(folder, name, cfg["text_fields"], cfg["field_names"], cfg["list_fields"], cfg["item_field"])
    except ServeError:
        raise
    except (ValueError, KeyError) as err:
        raise NewItemsError(f"--new_items '{path}': {str(err).splitlines()[0]} (it needs the columns of the dataset's .item "
                            f"file: {cfg['item_field']} and {cfg['text_fields'] or 'its text columns'})") from None
    tokens = [str(t) for t in text.tokens]
    if not tokens:
        raise NewItemsError(f"--new_items '{path}' holds no item: write one item a line under its header")
    known = [t for t in tokens if t in known_tokens]
    if known:
        raise NewItemsError(f"--new_items '{path}': {len(known)} item(s) are already in the catalogue of {config['dataset']} "
                            f"({', '.join(map(repr, known[:5]))}): give new items new ids")
    style = feature_chain(config)[0]["prompt_style"]
    prompts = build_prompts(text, style, cfg["instruction"], cfg["max_value_len"], tokens)
    return tokens, prompts, text


# ---- the feature pipeline of the checkpoint ----------------------------------------------------------------------------
def _meta(config, name):
    from recbole_llm.llm.features import find_feature_file, load_meta

    base = find_feature_file(config, name)
    if base is None:
        raise NewItemsError(f"the model's feature file '{config['dataset']}.{name}' is not there any more: {REBUILD}")
    return base, load_meta(base)


def feature_chain(config):
    """(extraction settings, [companion steps from the extracted file to the model's], model's feature meta).

    A step is ``{"kind": "pca" | "whitening", "source": base path, "base": its own base path, "meta": its meta}``."""
    name = config["llm_feature"]
    if not name:
        raise NewItemsError(f"{config['model']} reads no LLM feature file: new items need a model that embeds item text")
    base, meta = _meta(config, name)
    final_meta = meta
    steps = []
    for kind, of in (("whitening", "whitening_of"), ("pca", "pca_of")):  # whitening is applied last (prepare_llm_features)
        if of in meta:
            source_base, source_meta = _meta(config, meta[of])
            steps.append({"kind": kind, "base": base, "meta": meta, "source": source_base})
            base, meta = source_base, source_meta
    if "pca_of" in meta or "whitening_of" in meta:
        raise NewItemsError(f"feature file '{base}' is a companion of a companion this pipeline never builds: {REBUILD}")
    if "scft" in meta:
        raise NewItemsError(f"the model reads SCFT-tuned features ('{os.path.basename(base)}'): embedding new items needs the "
                            "tuned LLM, which recommend does not load yet; serve a model trained without scft, or without --new_items")
    needed = ("llm_path", "pooling", "prompt_style", "max_length", "normalize")
    if any(key not in meta for key in needed):
        raise NewItemsError(f"feature file '{base}.json' was not built by the LLM pipeline (no {', '.join(k for k in needed if k not in meta)}): "
                            "new items cannot be embedded the way its rows were; build the features with python -m recbole_llm.features")
    return meta, steps[::-1], final_meta


def _round(matrix, stored):
    """float32 rows as a file stored in ``stored`` holds them."""
    from recbole_llm.llm.features import to_stored, to_tensor

    return to_tensor(to_stored(np.asarray(matrix, dtype=np.float32), stored), stored, "float32").numpy()


def _align_signs(fitted, stored):
    """Flip fitted columns whose sign differs from the stored companion's (an SVD or eigenvector is defined up to sign)."""
    signs = np.sign((fitted * stored).sum(0))
    signs[signs == 0] = 1.0
    return signs


def fit_companion(step):
    """``transform(rows (m, d)) -> (m, d')``: the step's PCA or whitening fitted on its source as extract.py fits it,
    checked to give the companion's own stored rows back."""
    from recbole_llm.llm.features import load_features

    _, source, _ = load_features(step["source"], mmap=False, float32=True)
    stored_tokens, stored, _ = load_features(step["base"], mmap=False, float32=True)
    x = torch.from_numpy(np.asarray(source, dtype=np.float64))
    mean = x.mean(0, keepdim=True)
    centred = x - mean
    meta = step["meta"]
    if step["kind"] == "pca":
        dim = int(meta["pca_dim"])
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        matrix = vh[:dim].T
    else:
        mode, eps = meta["whitening"], float(meta.get("whitening_eps", 1e-5))
        cov = centred.T @ centred / max(centred.size(0), 1)
        s, u = torch.linalg.eigh(cov)
        s, u = s.flip(0).clamp(min=0.0), u.flip(1)
        matrix = u / torch.sqrt(s + eps)
        if mode == "zca":
            matrix = matrix @ u.T
    fitted = (centred @ matrix).numpy().astype(np.float32)
    if fitted.shape != stored.shape:
        raise NewItemsError(f"feature file '{step['base']}' ({stored.shape}) is no {step['kind']} of '{step['source']}' "
                            f"({source.shape}) any more: {REBUILD}")
    if not (step["kind"] == "whitening" and meta["whitening"] == "zca"):
        signs = torch.from_numpy(_align_signs(fitted, stored)).double()
        matrix = matrix * signs
        fitted = fitted * signs.numpy().astype(np.float32)
    scale = float(np.abs(stored).max()) + 1e-12
    if float(np.abs(_round(fitted, meta.get("dtype", "float32")) - stored).max()) > 1e-3 * scale:
        raise NewItemsError(f"the {step['kind']} of '{step['source']}' fitted again does not reproduce '{step['base']}': {REBUILD}")

    def transform(rows):
        return ((torch.from_numpy(np.asarray(rows, dtype=np.float64)) - mean) @ matrix).numpy().astype(np.float32)

    return transform


def new_item_features(config, prompts, tokens, show_progress=False):
    """(len(tokens), d) float32 feature rows of the new items, as the model's feature table would hold them."""
    from recbole_llm.llm.embed import embed_texts, load_llm
    from recbole_llm.llm.prompts import prompt_hash
    from recbole_llm.schema import setting

    extract, steps, final_meta = feature_chain(config)
    style = extract["prompt_style"]
    if extract.get("prompt_hash") and prompt_hash(config, style) != extract["prompt_hash"]:
        raise NewItemsError(
            f"the checkpoint's prompt keys (text_fields, prompt_instruction, ...) are not those its features were built with "
            f"(prompt hash {prompt_hash(config, style)} against {extract['prompt_hash']}): the dataset's YAML changed since; {REBUILD}"
        )
    transforms = [fit_companion(step) for step in steps]  # before the LLM loads: a stale companion fails fast
    device = setting(config, "device", "cpu")
    model, tokenizer = load_llm(extract["llm_path"], device=device)
    rows = embed_texts([prompts[t] for t in tokens], model, tokenizer, pooling=extract["pooling"],
                       batch_size=int(setting(config, "llm_batch_size")), max_length=int(extract["max_length"]),
                       device=device, normalize=bool(extract["normalize"]), show_progress=show_progress)
    del model
    rows = _round(rows, extract.get("dtype", "float32"))
    for step, transform in zip(steps, transforms):
        rows = _round(transform(rows), step["meta"].get("dtype", "float32"))
    from recbole_llm.llm.features import to_tensor

    attached = setting(config, "feature_dtype") or "float32"
    return to_tensor(rows, "float32", attached).float()


# ---- the model's item path -----------------------------------------------------------------------------------------------
def generated_id_rows(table, content):
    """The ``cold_id`` generator's rows for ``content``, rescaled by the table's norm rule as at evaluation
    (:meth:`recbole_llm.model.cold_id.ColdIdTable.generated_rows`); ``mean`` takes the factor of the model's own
    untrained items when it has any (their rows, and so every known score, stay as they are), else of these rows."""
    rows = table.generator(content)
    if table.norm == "none":
        return rows
    target = table.table.weight[table.warm].detach().norm(dim=1).mean()
    if table.norm == "row":
        scale = rows.norm(dim=1, keepdim=True)
    else:
        own = table.cold.nonzero().view(-1)
        scale = (table.generate(own) if len(own) else rows).norm(dim=1, keepdim=True).mean()
    return rows / scale.clamp(min=1e-12) * target


def _scoring_rows(model, rows):
    return model.output_table(rows) if callable(getattr(model, "output_table", None)) else rows


def item_path(model):
    """``vectors(features (m, d)) -> (m, D)`` in the space the model scores items in, or a NewItemsError naming why
    this model cannot score an item it never trained on."""
    from recbole_llm.model.adapters import AdaptedEmbedding, LLMEmbMixin
    from recbole_llm.model.llm2x import LLM2XMixin
    from recbole_llm.model.llmesr import LLMESRMixin
    from recbole_llm.model.sequential_recommender.learn import LEARN
    from recbole_llm.model.sequential_recommender.unisrec import UniSRec

    name = type(model).__name__
    cold_table = getattr(model, "cold_table", None)
    if isinstance(model, LEARN):
        def vectors(x):
            content = F.normalize(x.to(model.content.device), dim=-1)
            own = model.content
            try:  # the item tower reads the content table by id: the new rows get ids after the catalogue's
                model.content = torch.cat([own, content.to(own.dtype)])
                return model.single_item_embeddings(torch.arange(own.size(0), own.size(0) + len(x), device=own.device))
            finally:
                model.content = own
        return vectors
    if isinstance(model, UniSRec):
        if model.train_stage != "inductive_ft":
            raise NewItemsError(f"this UniSRec was trained with train_stage {model.train_stage}: its scores add a trained ID row "
                                "per item, which a new item lacks; serve a UniSRec trained with train_stage: inductive_ft")
        return lambda x: model.output_table(model.moe_adaptor(x.to(model.plm_embedding.device)))
    if isinstance(model, LLMESRMixin):
        if cold_table is None:
            raise NewItemsError(f"{name} was trained with cold_id: none: the ID half of a new item would be an untrained row; "
                                "train it with --cold_id=generate (or dropout) to add items from text (docs/cold_start.md)")
        view = model.item_embedding

        def vectors(x):
            x = x.to(view.llm_embedding.adapter[0].weight.device)
            semantic = view.llm_embedding.adapt(x)
            return _scoring_rows(model, torch.cat([generated_id_rows(cold_table, torch.cat([x, semantic], 1)), semantic], 1))
        return vectors
    if isinstance(model, LLM2XMixin):
        if cold_table is None:
            raise NewItemsError(f"{name} was trained with cold_id: none: a new item would get an untrained ID row; train it with "
                                "--cold_id=generate (or dropout) to add items from text (docs/cold_start.md)")
        return lambda x: _scoring_rows(model, generated_id_rows(cold_table, x.to(cold_table.warm.device)))
    if isinstance(model, LLMEmbMixin) and isinstance(model.item_embedding, AdaptedEmbedding):
        table = model.item_embedding
        return lambda x: _scoring_rows(model, table.adapt(x.to(table.adapter[0].weight.device)))
    raise NewItemsError(
        f"{name} scores items by trained ID rows only, so an item it never trained on has no score: --new_items needs a model "
        "that reads item text (LLMEmb*, LEARN, UniSRec; LLMESR* / LLM2X* with cold_id)"
    )


@torch.no_grad()
def new_item_vectors(model, features, has_bias):
    """(vectors (m, D), bias (m,) or None) of new items' feature rows through the model's item path."""
    vectors = item_path(model)(features).float().cpu()
    return vectors, (torch.zeros(len(features)) if has_bias else None)

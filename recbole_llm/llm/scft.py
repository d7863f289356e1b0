"""SCFT: supervised contrastive LoRA fine-tuning of the LLM on item attributes (LLMEmb stage 1).

Two views of every item in a batch: its attributes shuffled and ``floor(drop_ratio * N)`` of them dropped,
drawn afresh at every step (the official code draws them once per run); an item with a single attribute
drops words of that value instead, so its views still differ. Each view is embedded by masked mean
pooling of the last layer; the LLMEmb soft-target contrastive loss (learnable temperature, init 3) or
plain InfoNCE pulls the two views of an item together against the other items of the batch. Only LoRA
weights (and the temperature) are trained. The loss is computed in fp32 and any non-finite value stops
the run with an error instead of exporting NaN embeddings (the official fp16 run's failure).

After training, every item's full prompt (nothing dropped) is embedded and written as a feature file
that LLMFeatureDataset attaches; a view-retrieval check (view 1 -> view 2, top-1 accuracy and MRR among
the evaluated items) is printed before and after training.
"""

import logging
import math
import os
import random
import time
from types import SimpleNamespace

import numpy as np
import torch

from recbole_llm.errors import DataFileError, UserError
from recbole_llm.artifacts import artifact_key
from recbole_llm.fileio import atomic_torch_save, file_fingerprint, load_plain, plain
from recbole_llm.llm import features as feature_io
from recbole_llm.llm.embed import embed_texts, last_hidden, llm_short_name, load_llm, pool, resolve_llm_path
from recbole_llm.llm.extract import ensure_pca_companion
from recbole_llm.llm.prompts import dataset_prompts, llmemb_prompt, prompt_config, prompt_hash
from recbole_llm.llm.contrastive import info_nce_loss, soft_contrastive_loss
from recbole_llm.schema import setting

logger = logging.getLogger(__name__)

DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ENCODER_TARGETS = ("query", "key", "value", "dense")


# each setting: its config key (its default is that key's in properties/overall.yaml, recbole_llm/schema.py) and type
SETTING_KEYS = {
    "llm_path": ("llm_path", str), "steps": ("scft_steps", int), "batch_size": ("scft_batch_size", int),
    "lr": ("scft_lr", float), "lora_r": ("scft_lora_r", int), "lora_alpha": ("scft_lora_alpha", int),
    "lora_dropout": ("scft_lora_dropout", float), "target_modules": ("scft_target_modules", list),
    "drop_ratio": ("scft_drop_ratio", float), "loss": ("scft_loss", str), "grad_accum": ("scft_grad_accum", int),
    "grad_checkpointing": ("scft_grad_checkpointing", bool), "max_length": ("llm_max_length", int),
    "pooling": ("llm_pooling", str), "seed": ("scft_seed", int), "checkpoint_every": ("scft_checkpoint_every", int),
    "eval_items": ("scft_eval_items", int), "pca_dim": ("pca_dim", int),
}
TAU_INIT = 3.0  # the learnable temperature's start (LLMEmb's code)


def _setting(name, value):
    """A setting's value in its type; None (a null key) becomes the type's empty value (no target list, no PCA)."""
    kind = SETTING_KEYS[name][1]
    return kind(value) if value is not None else kind()


class SCFTSettings(SimpleNamespace):
    """The training parameters of :func:`train_scft` (the SCFT artifact's settings dict holds them: :class:`SCFTFeatures`):
    every setting of ``SETTING_KEYS`` (a setting not given takes its key's YAML default) and ``tau_init``."""

    def __init__(self, tau_init=TAU_INIT, **given):
        import recbole_llm.schema as schema

        unknown = sorted(set(given) - set(SETTING_KEYS))
        if unknown:
            raise TypeError(f"SCFTSettings got unknown settings {unknown}; known: {sorted(SETTING_KEYS)}")
        values = {name: _setting(name, given[name] if given.get(name) is not None else schema.default(key))
                  for name, (key, _) in SETTING_KEYS.items()}
        super().__init__(tau_init=float(tau_init), **values)

    def as_dict(self):
        return dict(vars(self))


# ---- augmentation ------------------------------------------------------------------------------------------
def make_view(attributes, drop_ratio, rng):
    """One augmented view: attributes shuffled and floor(drop_ratio * N) dropped; with one attribute,
    floor(drop_ratio * words) words of its value are dropped (at least one when it has several words)."""
    attributes = list(attributes)
    if len(attributes) > 1:
        rng.shuffle(attributes)
        keep = len(attributes) - int(math.floor(drop_ratio * len(attributes)))
        return attributes[: max(keep, 1)]
    if not attributes:
        return attributes
    name, value = attributes[0]
    words = value.split()
    if len(words) < 2:
        return attributes
    n_drop = max(1, int(math.floor(drop_ratio * len(words))))
    n_drop = min(n_drop, len(words) - 1)
    dropped = set(rng.sample(range(len(words)), n_drop))
    return [(name, " ".join(w for i, w in enumerate(words) if i not in dropped))]


def lora_targets(model, requested=None):
    """LoRA target module names: the requested ones, else LLaMA-like or BERT-like projections found."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    if requested:
        missing = [t for t in requested if t not in names]
        if missing:
            raise ValueError(f"LoRA target modules {missing} not found in the model (linear layers: {sorted(names)})")
        return list(requested)
    for family in (DECODER_TARGETS, ENCODER_TARGETS):
        found = [t for t in family if t in names]
        if found:
            return found
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in PEFT_TARGETS:  # other architectures (GPT-2's fused c_attn, Falcon's query_key_value): peft's choice
        return list(PEFT_TARGETS[model_type])
    raise ValueError(f"cannot choose LoRA targets automatically (linear layers: {sorted(names)}): pass --target_modules")


# ---- model pieces ------------------------------------------------------------------------------------------
def embed_batch(model, tokenizer, texts, max_length, pooling, device):
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    autocast = torch.device(device).type == "cuda"
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
        hidden = last_hidden(model, batch)
    return pool(hidden.float(), batch["attention_mask"], pooling)


@torch.no_grad()
def view_retrieval(model, tokenizer, items, attributes, instruction, settings, device, seed=0):
    """(top-1 accuracy, MRR) of finding view 2 of each item from its view 1 among ``items`` (cosine)."""
    rng = random.Random(seed)
    view1 = [llmemb_prompt(make_view(attributes[t], settings.drop_ratio, rng), instruction) for t in items]
    view2 = [llmemb_prompt(make_view(attributes[t], settings.drop_ratio, rng), instruction) for t in items]
    model.eval()
    a = embed_texts(view1, model, tokenizer, settings.pooling, 64, settings.max_length, device, normalize=True, show_progress=False)
    b = embed_texts(view2, model, tokenizer, settings.pooling, 64, settings.max_length, device, normalize=True, show_progress=False)
    sims = torch.from_numpy(a) @ torch.from_numpy(b).t()
    ranks = (sims > sims.diag().unsqueeze(1)).sum(1) + 1
    return float((ranks == 1).float().mean()), float((1.0 / ranks.float()).mean())


class NonFiniteLossError(UserError, FloatingPointError):
    pass


def train_scft(item_text, instruction, settings, output_dir, device="cpu", resume=False, show_progress=True):
    """Fine-tune LoRA weights; returns (peft model, tokenizer, report dict). Checkpoints in ``output_dir``."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if settings.loss not in ("soft", "infonce"):
        raise ValueError(f"scft loss must be 'soft' or 'infonce', got '{settings.loss}'")
    os.makedirs(output_dir, exist_ok=True)
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    attributes = {t: a for t, a in item_text.attributes.items() if a}
    items = sorted(attributes)
    if len(items) < 2:
        raise ValueError(f"SCFT needs at least 2 items with text in '{item_text.path}', found {len(items)}")
    eval_items = random.Random(settings.seed + 1).sample(items, min(settings.eval_items, len(items)))

    model, tokenizer = load_llm(settings.llm_path, device=device, dtype=torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16)
    before = view_retrieval(model, tokenizer, eval_items, attributes, instruction, settings, device)
    model, targets = with_lora(model, settings)
    tau = torch.nn.Parameter(torch.tensor(float(settings.tau_init), device=device))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + [tau], lr=settings.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, settings.steps)
    state_path = os.path.join(output_dir, "scft-state.pt")
    run = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "tau": tau, "rng": rng, "step": 0, "losses": []}
    if resume and os.path.isfile(state_path):
        load_scft_state(state_path, run, device)

    model.train()
    progress = tqdm(total=settings.steps, initial=run["step"], desc="SCFT", disable=not show_progress)
    while run["step"] < settings.steps:
        step_loss = scft_step(run, tokenizer, items, attributes, instruction, settings, device)
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}", tau=f"{tau.item():.2f}")
        if settings.checkpoint_every and (run["step"] % settings.checkpoint_every == 0 or run["step"] == settings.steps):
            save_scft_state(state_path, run, settings)
    progress.close()
    model.eval()
    after = view_retrieval(model, tokenizer, eval_items, attributes, instruction, settings, device)
    losses = run["losses"]
    report = {
        "steps": run["step"],
        "first_loss": losses[0] if losses else None,
        "last_loss": float(np.mean(losses[-10:])) if losses else None,
        "tau": float(tau.item()),
        "retrieval_before": {"top1": before[0], "mrr": before[1]},
        "retrieval_after": {"top1": after[0], "mrr": after[1]},
        "eval_items": len(eval_items),
        "lora_targets": targets,
    }
    print(
        f"SCFT view retrieval on {len(eval_items)} items: top-1 {before[0]:.3f} -> {after[0]:.3f}, "
        f"MRR {before[1]:.3f} -> {after[1]:.3f}"
    )
    return model, tokenizer, report


def with_lora(model, settings):
    """(peft model, LoRA target module names) of ``model`` with LoRA adapters; gradient checkpointing if asked."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, settings.target_modules)
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, target_modules=targets)
    model = get_peft_model(model, lora)
    if settings.grad_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable()
    return model, targets


def scft_step(run, tokenizer, items, attributes, instruction, settings, device):
    """One optimizer step (``grad_accum`` batches of two attribute-dropped views per item); returns its loss."""
    model, optimizer, tau, rng = run["model"], run["optimizer"], run["tau"], run["rng"]
    loss_fn = soft_contrastive_loss if settings.loss == "soft" else info_nce_loss
    batch_size = min(settings.batch_size, len(items))
    optimizer.zero_grad()
    step_loss = 0.0
    for _ in range(settings.grad_accum):
        batch = rng.sample(items, batch_size)
        view1 = [llmemb_prompt(make_view(attributes[t], settings.drop_ratio, rng), instruction) for t in batch]
        view2 = [llmemb_prompt(make_view(attributes[t], settings.drop_ratio, rng), instruction) for t in batch]
        x = embed_batch(model, tokenizer, view1, settings.max_length, settings.pooling, device)
        y = embed_batch(model, tokenizer, view2, settings.max_length, settings.pooling, device)
        loss = loss_fn(x, y, tau.clamp(min=1e-2)) / settings.grad_accum
        if not torch.isfinite(loss) or not torch.isfinite(x).all() or not torch.isfinite(y).all():
            raise NonFiniteLossError(
                f"SCFT step {run['step']}: non-finite loss or embeddings (loss {loss.item()}); lower --lr, use fp32/bf16, "
                "or resume from the last checkpoint"
            )
        loss.backward()
        step_loss += loss.item()
    optimizer.step()
    run["scheduler"].step()
    run["step"] += 1
    run["losses"].append(step_loss)
    return step_loss


SCFT_STATE_KEYS = ("lora", "optimizer", "scheduler", "tau", "step", "losses", "rng", "torch_rng")


def save_scft_state(state_path, run, settings):
    """Everything a resumed run needs (LoRA, optimizer, scheduler, tau, step, losses, random states), atomically."""
    from peft import get_peft_model_state_dict

    atomic_torch_save(
        {
            "lora": get_peft_model_state_dict(run["model"]),
            "optimizer": run["optimizer"].state_dict(),
            "scheduler": run["scheduler"].state_dict(),
            "tau": run["tau"].detach().cpu(),
            "step": run["step"],
            "losses": run["losses"],
            "rng": run["rng"].getstate(),
            "torch_rng": torch.get_rng_state(),
            "settings": plain(settings.as_dict()),
        },
        state_path,
    )


def load_scft_state(state_path, run, device):
    from peft import set_peft_model_state_dict

    state = load_plain(  # weights_only: a state file found in a shared feature folder cannot run code
        state_path, "SCFT state", "delete it (SCFT starts again from step 0)"
    )
    missing = [key for key in SCFT_STATE_KEYS if key not in state]
    if missing:
        raise DataFileError(f"SCFT state '{state_path}' lacks {missing}: delete it (SCFT starts again from step 0)")
    set_peft_model_state_dict(run["model"], state["lora"])
    run["optimizer"].load_state_dict(state["optimizer"])
    run["scheduler"].load_state_dict(state["scheduler"])
    with torch.no_grad():
        run["tau"].copy_(state["tau"])
    run["step"], run["losses"] = state["step"], state["losses"]
    run["rng"].setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    print(f"SCFT: resumed from step {run['step']} ({state_path})")


def scft_feature_name(settings, prompt_style="llmemb", dtype="float32"):
    """The readable prefix of an SCFT feature file's name, ``<llm>-scft-<pooling>-<prompt>[-fp16][-pca<d>]``: the file is
    named ``<prefix>-<key>``, its key holding every training setting (:class:`SCFTFeatures`); the prefix alone was its
    name before 2026-12 (found once more as its former copy)."""
    name = f"{llm_short_name(settings.llm_path)}-scft-{settings.pooling}-{prompt_style}{feature_io.dtype_suffix(dtype)}"
    return name + (f"-pca{settings.pca_dim}" if settings.pca_dim else "")


def settings_from_config(config):
    """The SCFT settings of a Config or a plain dict (a key it lacks, or null, takes its YAML default)."""
    return SCFTSettings(**{name: setting(config, key) for name, (key, _) in SETTING_KEYS.items()})


class SCFTFeatures(feature_io.FeatureFileArtifact):
    """The feature file of the SCFT-tuned LLM (``training``: its :class:`SCFTSettings`). Settings: the training
    parameters that shape the result (the resolved model path; not checkpointing, the check's size or PCA), the
    dataset, the LLMEmb prompt template, the .item file's content and the stored dtype (``feature_dtype``)."""

    what = "SCFT features"
    reuse_line = "SCFT: reusing up-to-date features {path}.npy (cache key {key})"
    # where it runs and what it reports, not what it writes: checkpoints, the view-retrieval check's size, the PCA
    # width (its own companion file), the export's batch
    unkeyed = feature_io.FeatureFileArtifact.unkeyed + ("device", "llm_batch_size", "scft_checkpoint_every", "scft_eval_items", "pca_dim")

    def __init__(self, training, name=None, resume=True, show_progress=True, dtype="float32"):
        prefix = None if name else scft_feature_name(SCFTSettings(**{**training.as_dict(), "pca_dim": 0}), dtype=dtype)
        super().__init__(name=name, prefix=prefix)
        self.training, self.resume, self.show_progress = training, resume, show_progress

    def settings(self, config):
        training = {k: v for k, v in self.training.as_dict().items() if k not in ("checkpoint_every", "eval_items", "pca_dim")}
        training["llm_path"] = resolve_llm_path(self.training.llm_path)
        item_path = os.path.join(config["data_path"], f"{config['dataset']}.item")
        return {"scft": training, "dataset": config["dataset"], "prompt": prompt_hash(config, "llmemb"),
                "item_file": file_fingerprint(item_path), "dtype": feature_io.check_dtype(setting(config, "feature_dtype"))}

    def build(self, config, settings, key, path):
        _train_and_export(config, self.training, settings, key, path, self.resume, self.show_progress)


def ensure_scft_features(config, settings=None, resume=True, show_progress=True):
    """Name of an up-to-date SCFT feature file for ``config``'s dataset (stored in ``feature_dtype``); trains and
    exports if needed, then its PCA companion when ``settings.pca_dim``."""
    settings = settings or settings_from_config(config)
    dtype = feature_io.check_dtype(setting(config, "feature_dtype"))
    full_name = SCFTFeatures(settings, resume=resume, show_progress=show_progress, dtype=dtype).ensure_name(config)
    if not settings.pca_dim:
        return full_name
    return ensure_pca_companion(config, full_name, settings.pca_dim)


def _train_and_export(config, training, settings, key, path, resume, show_progress):
    """Train SCFT on ``config``'s dataset, embed every item with the tuned LLM and write the feature file ``path``."""
    item_text, tokens, prompts = dataset_prompts(config, "llmemb")
    device = setting(config, "device", "cpu")
    # the run's folder (checkpoints, adapter) is keyed without the dtype: another feature_dtype re-exports, resuming
    output_dir = os.path.join(os.path.dirname(path), f"scft-{artifact_key({k: v for k, v in settings.items() if k != 'dtype'})}")
    start = time.perf_counter()
    model, tokenizer, report = train_scft(item_text, prompt_config(config)["instruction"], training, output_dir, device, resume, show_progress)
    train_seconds = time.perf_counter() - start
    model.save_pretrained(os.path.join(output_dir, "adapter"))
    batch = int(setting(config, "llm_batch_size"))
    matrix = embed_texts(
        [prompts[t] for t in tokens], model, tokenizer, training.pooling, batch, training.max_length, device, show_progress=show_progress
    )
    meta = {
        "model": resolve_llm_path(training.llm_path),
        "pooling": training.pooling,
        "prompt_style": "llmemb",
        "scft": training.as_dict(),
        "scft_report": report,
        "scft_adapter": os.path.join(output_dir, "adapter"),
        "train_seconds": round(train_seconds, 1),
        "cache_key": key,
    }
    feature_io.save_features(path, tokens, matrix, meta, dtype=settings["dtype"])
    print(f"SCFT: wrote {matrix.shape[0]} x {matrix.shape[1]} tuned features to {path}.npy ({train_seconds:.0f} s training)")

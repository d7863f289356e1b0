"""Local models held as GGUF files (llama.cpp, Ollama): converted once into a Hugging Face directory.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=name)``, with the ``gguf`` package) and
dequantises it to float32, which takes from tens of seconds (SmolLM2-135M) to many minutes (7B). :func:`hf_dir_of_gguf`
does it once: the copy is written to a temp folder and renamed into ``<cache>/gguf/<stem>-<content hash>/`` under a
build lock (two runs that miss it together convert once), and every later run loads that folder as any local model
directory. The key is the file's content (size and SHA-1), not its path or modification time: the same file copied
elsewhere reuses the copy, a changed file converts again. ``<cache>`` is ``recbole_llm.paths.user_cache_dir()``.

The copy is a :class:`recbole_llm.artifacts.Artifact` (:class:`ConvertedGGUF`): the folder's name holds its key (the
content's SHA-1 prefix, the 16 hex digits of every key) and is reused only when its ``gguf-source.json`` records that
content; a leftover without one, or with another, is converted again with a line saying so.
"""

import json
import os
import re
import shutil
import tempfile
import time

from recbole_llm.artifacts import Artifact, BrokenArtifact
from recbole_llm.errors import UserError
from recbole_llm.fileio import atomic_write_text, file_fingerprint
from recbole_llm.paths import user_cache_dir

SOURCE_FILE = "gguf-source.json"


class GGUFError(UserError, ValueError):
    """A GGUF file transformers cannot read (architecture not supported, ``gguf`` package missing, broken file)."""


def is_gguf(path):
    return str(path).lower().endswith(".gguf")


class ConvertedGGUF(Artifact):
    """The Hugging Face copy of one GGUF file: ``<cache>/gguf/<stem>-<key>/``, its settings the file's content and its
    key that content's SHA-1 prefix (the name conversions always had, so the copies made before are reused)."""

    what = "the GGUF conversion"
    reuse_line = None  # logged only: every model load resolves it

    def __init__(self, gguf_path, cache_root=None):
        self.gguf_path, self.cache_root = gguf_path, cache_root

    def settings(self, config):
        return {"gguf": file_fingerprint(self.gguf_path)}

    def key(self, settings):
        return settings["gguf"][1]

    def path(self, config, settings, key):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(self.gguf_path))[0])
        return os.path.join(self.cache_root or user_cache_dir("gguf"), f"{stem}-{key}")

    def validate(self, path):
        try:
            with open(os.path.join(path, SOURCE_FILE), encoding="utf-8") as handle:
                source = json.load(handle)
            recorded = source["fingerprint"][1]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            raise BrokenArtifact(f"it has no readable {SOURCE_FILE}") from None
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise BrokenArtifact("it has no config.json")
        return recorded

    def build(self, config, settings, key, path):
        convert_gguf(self.gguf_path, path)


def converted_dir(gguf_path, cache_root=None):
    """Where the Hugging Face copy of ``gguf_path`` lives (built or not)."""
    artifact = ConvertedGGUF(gguf_path, cache_root)
    settings = artifact.settings({})
    return artifact.path({}, settings, artifact.key(settings))


def is_converted(folder):
    """A finished copy: the folder exists (it is renamed into place complete) and records its source."""
    return os.path.isfile(os.path.join(folder, SOURCE_FILE)) and os.path.isfile(os.path.join(folder, "config.json"))


def hf_dir_of_gguf(gguf_path, cache_root=None):
    """Path of the Hugging Face directory converted from ``gguf_path``; converts it when it is not cached."""
    gguf_path = os.path.abspath(os.path.expanduser(str(gguf_path)))
    if not os.path.isfile(gguf_path):
        raise GGUFError(f"llm_path '{gguf_path}' is not a file: point llm_path at an existing .gguf file")
    return ConvertedGGUF(gguf_path, cache_root).ensure({}).path


def _read_gguf(gguf_path):
    """(causal LM in float32, tokenizer) read from a GGUF file by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001 - whatever a foreign or unsupported file makes transformers raise, one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise GGUFError(
            f"transformers cannot read the GGUF file '{gguf_path}' ({first}): it needs the gguf package "
            "(pip install gguf) and an architecture transformers supports in GGUF form"
        ) from None
    return model, tokenizer


def convert_gguf(gguf_path, target):
    """Dequantise ``gguf_path`` and write it as a float32 Hugging Face directory ``target`` (temp folder + rename)."""
    start = time.perf_counter()
    print(f"converting {gguf_path} to a Hugging Face directory (once; it is cached in {target})", flush=True)
    model, tokenizer = _read_gguf(gguf_path)
    # save_pretrained refuses a model that still carries its GGUF quantizer; the weights are plain float32 now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        seconds = time.perf_counter() - start
        source = {"gguf_file": gguf_path, "fingerprint": file_fingerprint(gguf_path), "seconds": round(seconds, 1),
                  "parameters": sum(p.numel() for p in model.parameters()), "created_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(os.path.join(tmp, SOURCE_FILE), json.dumps(source, indent=1))
        for name in os.listdir(tmp):  # mkdtemp and safetensors create owner-only files; the copy is shared
            os.chmod(os.path.join(tmp, name), 0o644)
        os.chmod(tmp, 0o755)
        if os.path.isdir(target):  # a leftover without its source record (never renamed there complete)
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"converted {os.path.basename(gguf_path)} in {seconds:.0f} s -> {target}", flush=True)
    return target

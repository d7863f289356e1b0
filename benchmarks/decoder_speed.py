"""Extraction items/s of a decoder (SmolLM2-135M) against MiniLM, as a share of the core's GEMM rate, and SCFT steps/s
with the view-retrieval check before and after, on one dataset's full item prompts.

    python benchmarks/decoder_speed.py --data_path=../shared/datasets --dataset=scientific --n_items=256 \
        --scft_steps=10 --scft_batch_size=8 --eval_items=200 --json=docs/benchmarks/decoder/speed.json

GEMM rate: the best of several float32 1024 x 1024 matrix products on the threads torch uses. Extraction FLOPs:
2 x (parameters outside the token embedding) per token of every padded batch, plus the attention products
(4 x layers x L^2 x hidden per sequence of padded length L); the share is those FLOPs per second over the GEMM rate.
"""

import argparse
import json
import os
import platform
import random
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gemm_rate(n=1024, repeats=8):
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def extraction_flops(model, tokenizer, texts, batch_size, max_length):
    """FLOPs embed_texts spends on ``texts`` (length-sorted batches, each padded to its longest text)."""
    embedding = model.get_input_embeddings().weight.numel()
    dense = sum(p.numel() for p in model.parameters()) - embedding
    lengths = sorted(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    total = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        padded = max(batch)
        total += len(batch) * (2 * dense * padded + 4 * layers * padded**2 * hidden)
    return total, sum(lengths) / len(lengths)


def time_extraction(name, texts, batch_size, max_length, gemm):
    from recbole_llm.llm.embed import embed_texts, load_llm

    model, tokenizer = load_llm(name)
    embed_texts(texts[:batch_size], model, tokenizer, batch_size=batch_size, max_length=max_length, show_progress=False)  # warm-up
    start = time.perf_counter()
    embed_texts(texts, model, tokenizer, batch_size=batch_size, max_length=max_length, show_progress=False)
    seconds = time.perf_counter() - start
    flops, mean_tokens = extraction_flops(model, tokenizer, texts, batch_size, max_length)
    achieved = flops / seconds / 1e9
    return {"llm": name, "items": len(texts), "seconds": round(seconds, 2), "items_per_s": round(len(texts) / seconds, 2),
            "mean_tokens": round(mean_tokens, 1), "gflop_per_item": round(flops / len(texts) / 1e9, 2),
            "achieved_gflops": round(achieved, 1), "share_of_gemm": round(achieved / gemm, 3),
            "parameters": sum(p.numel() for p in model.parameters()), "hidden": model.config.hidden_size}


def time_scft(name, item_text, instruction, args):
    """Steps/s of SCFT (the library's step, LoRA on the automatic targets) and view retrieval before / after."""
    from recbole_llm.llm import scft
    from recbole_llm.llm.embed import load_llm

    settings = scft.SCFTSettings(llm_path=name, steps=args.scft_steps, batch_size=args.scft_batch_size, lr=args.scft_lr,
                                 eval_items=args.eval_items, checkpoint_every=0)
    attributes = {t: a for t, a in item_text.attributes.items() if a}
    items = sorted(attributes)
    evaluated = random.Random(settings.seed + 1).sample(items, min(settings.eval_items, len(items)))
    torch.manual_seed(settings.seed)
    model, tokenizer = load_llm(name)
    before = scft.view_retrieval(model, tokenizer, evaluated, attributes, instruction, settings, "cpu")
    model, targets = scft.with_lora(model, settings)
    tau = torch.nn.Parameter(torch.tensor(settings.tau_init))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + [tau], lr=settings.lr)
    from transformers import get_linear_schedule_with_warmup

    run = {"model": model, "optimizer": optimizer, "scheduler": get_linear_schedule_with_warmup(optimizer, 0, settings.steps),
           "tau": tau, "rng": random.Random(settings.seed), "step": 0, "losses": []}
    model.train()
    start = time.perf_counter()
    while run["step"] < settings.steps:
        scft.scft_step(run, tokenizer, items, attributes, instruction, settings, "cpu")
    seconds = time.perf_counter() - start
    model.eval()
    after = scft.view_retrieval(model, tokenizer, evaluated, attributes, instruction, settings, "cpu")
    return {"llm": name, "steps": settings.steps, "batch_size": settings.batch_size, "lr": settings.lr, "lora_targets": targets,
            "train_seconds": round(seconds, 1), "steps_per_s": round(settings.steps / seconds, 4),
            "first_loss": run["losses"][0], "last_loss": run["losses"][-1], "eval_items": len(evaluated),
            "retrieval_before": {"top1": before[0], "mrr": before[1]}, "retrieval_after": {"top1": after[0], "mrr": after[1]}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(ROOT, "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="scientific")
    parser.add_argument("--llms", default="minilm,smollm2")
    parser.add_argument("--n_items", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--scft_steps", type=int, default=10, help="0 = no SCFT timing")
    parser.add_argument("--scft_batch_size", type=int, default=8)
    parser.add_argument("--scft_lr", type=float, default=2e-4)
    parser.add_argument("--eval_items", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from recbole_llm.config import Config
    from recbole_llm.llm.prompts import build_prompts, prompt_config, read_item_text

    config = Config(model="LLMEmbSASRec", dataset=args.dataset, config_dict={"data_path": args.data_path})
    prompts = prompt_config(config)
    item_text = read_item_text(config["data_path"], args.dataset, prompts["text_fields"], prompts["field_names"],
                               prompts["list_fields"], prompts["item_field"])
    tokens = random.Random(0).sample(item_text.tokens, min(args.n_items, len(item_text.tokens)))
    texts = [build_prompts(item_text, "llmemb", prompts["instruction"], prompts["max_value_len"], tokens)[t] for t in tokens]
    gemm = gemm_rate()
    result = {"dataset": args.dataset, "threads": torch.get_num_threads(), "gemm_gflops": round(gemm, 1),
              "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "extraction": [], "scft": []}
    for name in args.llms.split(","):
        result["extraction"].append(time_extraction(name, texts, args.batch_size, args.max_length, gemm))
        print(json.dumps(result["extraction"][-1]), flush=True)
        if args.scft_steps:
            result["scft"].append(time_scft(name, item_text, prompts["instruction"], args))
            print(json.dumps(result["scft"][-1]), flush=True)
    result["gemm_gflops_after"] = round(gemm_rate(), 1)
    print(json.dumps(result, indent=1))
    if args.json:
        from recbole_llm.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

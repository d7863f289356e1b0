"""Items/s of the feature extractor against a naive one-item-per-forward loop, in the same run.

    python benchmarks/extract_speed.py --data_path=../shared/datasets --dataset=beauty --n_items=2000

Both embed the same item prompts (LLMEmb form, titles) with the same model (default MiniLM) and pooling; the
naive loop is what LEARN's official extractor does (one tokenizer + forward call per item, no batching).
Reports items/s, the speed-up, and the max abs difference between the two embeddings.
"""

import argparse
import os
import platform
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@torch.inference_mode()
def naive_loop(texts, model, tokenizer, max_length):
    from recbole_llm.llm.embed import pool

    out = []
    for text in texts:
        batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        out.append(pool(hidden, batch["attention_mask"], "mean")[0].numpy())
    return np.stack(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(ROOT, "..", "shared", "datasets"))
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--llm_path", default="minilm")
    parser.add_argument("--n_items", type=int, default=2000, help="items to embed (0 = all)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from recbole_llm.llm.embed import embed_texts, load_llm
    from recbole_llm.llm.prompts import build_prompts, read_item_text

    folder = os.path.join(args.data_path, args.dataset)
    text = read_item_text(folder, args.dataset, ["title"])
    tokens = text.tokens[: args.n_items] if args.n_items else text.tokens
    prompts = build_prompts(text, "llmemb", "The beauty item has the following attributes:", tokens=tokens)
    texts = [prompts[t] for t in tokens]
    model, tokenizer = load_llm(args.llm_path)

    start = time.perf_counter()
    fast = embed_texts(texts, model, tokenizer, batch_size=args.batch_size, max_length=args.max_length, show_progress=False)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = naive_loop(texts, model, tokenizer, args.max_length)
    slow_s = time.perf_counter() - start

    n = len(texts)
    lines = [
        f"Command: `python benchmarks/extract_speed.py --dataset={args.dataset} --n_items={args.n_items} "
        f"--batch_size={args.batch_size}` ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"threads, no GPU, {time.strftime('%Y-%m-%d')})",
        "",
        "| extractor | items | seconds | items/s |",
        "|---|---|---|---|",
        f"| naive loop (one item per forward) | {n} | {slow_s:.1f} | {n / slow_s:.1f} |",
        f"| embed_texts (length-sorted batches of {args.batch_size}) | {n} | {fast_s:.1f} | {n / fast_s:.1f} |",
        "",
        f"Speed-up: {slow_s / fast_s:.1f}x; max abs difference between the two embeddings: {np.abs(fast - slow).max():.2e}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Recall@10 against exact search and queries per second of the serving index (recbole_llm/serve/index.py).

    # a checkpoint: its item vectors (as recommend indexes them) and its users' vectors as queries
    python benchmarks/ann_speed.py --model_file=saved/LLMEmbSASRec-....pth --types=flat,hnsw,ivf --json=ann.json
    # the 1M-item synthetic catalogue of benchmarks/scale.py: random N(0, 1) item and query vectors
    python benchmarks/ann_speed.py --synthetic=1000000 --dims=64 --types=hnsw --json=ann-1m.json
    # a checkpoint's item vectors grown to 1M items (each a trained item plus Gaussian noise), its users as queries
    python benchmarks/ann_speed.py --model_file=saved/LLMESRSASRec-....pth --grow_to=1000000 --noise=0.3 --types=hnsw,ivf

Each index type is built by the serving code (``build_index``), calibrated as ``recommend --index=faiss`` calibrates it
(the smallest depth with recall@10 >= 0.97 on ``--calibration`` queries), then measured on the *other* queries: at the
calibrated depth and at the depths of ``--sweep``. Exact search: the same queries as one matrix product per batch of
256 (numpy, the best exact baseline here) and FAISS's flat index. Queries per second are one thread's (run it pinned:
``OMP_NUM_THREADS=1 taskset -c 1``), the queries searched in batches of ``--batch``.
"""

import argparse
import json
import os
import platform
import time

import numpy as np



def checkpoint_vectors(model_file):
    """(item rows, user queries) of a checkpoint, as recommend --index=faiss builds them."""
    from recbole_llm.recommend import Recommender
    from recbole_llm.serve.index import query_rows, with_bias

    rec = Recommender.from_checkpoint(model_file, log=lambda _: None)
    scorer = rec.scorer
    items, bias = scorer.item_factors()
    rows = with_bias(items[1:].numpy(), None if bias is None else bias[1:].numpy())
    users = []
    for start in range(0, len(scorer.user_seq), 1024):
        users.append(scorer.user_factors(scorer.user_seq[start : start + 1024], scorer.user_seq_len[start : start + 1024]).numpy())
    queries = query_rows(np.concatenate(users), bias is not None)
    meta = {"model": scorer.config["model"], "dataset": scorer.config["dataset"], "model_file": os.path.abspath(model_file)}
    return rows, queries, meta


def timed_search(search, queries, k, batch):
    start = time.perf_counter()
    found = [search(queries[i : i + batch], k) for i in range(0, len(queries), batch)]
    seconds = time.perf_counter() - start
    return np.concatenate(found), len(queries) / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_file")
    parser.add_argument("--synthetic", type=int, help="items of a random catalogue (instead of --model_file)")
    parser.add_argument("--grow_to", type=int, help="with --model_file: grow its catalogue to this many items, each a "
                        "trained item's vector plus N(0, (noise x its norm)^2 / dims) per coordinate")
    parser.add_argument("--noise", type=float, default=0.3, help="relative noise of --grow_to's copies (default 0.3)")
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000, help="synthetic: measured queries (plus --calibration)")
    parser.add_argument("--calibration", type=int, default=1000)
    parser.add_argument("--types", default="flat,hnsw,ivf")
    parser.add_argument("--sweep", default="", help="extra depths to measure, e.g. 64,128,256")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="append the results (one JSON object per line)")
    args = parser.parse_args(argv)
    import faiss

    from recbole_llm.serve.index import CALIBRATION_TARGET, ItemIndex, build_index, calibrate, exact_topk, recall_at, set_depth

    rng = np.random.default_rng(args.seed)
    if args.synthetic:
        vectors = rng.standard_normal((args.synthetic, args.dims), dtype=np.float32)
        queries = rng.standard_normal((args.queries + args.calibration, args.dims), dtype=np.float32)
        meta = {"synthetic": args.synthetic, "dims": args.dims, "vectors": "N(0, 1), items and queries"}
    else:
        vectors, queries, meta = checkpoint_vectors(args.model_file)
        queries = queries[rng.permutation(len(queries))]
        if args.grow_to and args.grow_to > len(vectors):
            source = rng.integers(0, len(vectors), args.grow_to - len(vectors))
            scale = args.noise * np.linalg.norm(vectors[source], axis=1, keepdims=True) / np.sqrt(vectors.shape[1])
            grown = vectors[source] + rng.standard_normal((len(source), vectors.shape[1]), dtype=np.float32) * scale
            vectors = np.ascontiguousarray(np.vstack([vectors, grown.astype(np.float32)]))
            meta = dict(meta, grown_to=args.grow_to, noise=args.noise)
    calibration, measured = queries[: args.calibration], queries[args.calibration :]
    k = 10
    truth, exact_qps = timed_search(lambda q, k: exact_topk(vectors, q, k)[1], measured, k, args.batch)
    common = dict(meta, items=len(vectors), dims=vectors.shape[1], measured_queries=len(measured), calibration_queries=len(calibration),
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, faiss threads {faiss.omp_get_max_threads()}",
                  date=time.strftime("%Y-%m-%d"), faiss=faiss.__version__, exact_numpy_qps=round(exact_qps, 1))
    print(f"{len(vectors)} items x {vectors.shape[1]} dims, {len(measured)} measured queries: exact (numpy) {exact_qps:.0f} queries/s",
          flush=True)
    results = []
    for kind in args.types.split(","):
        start = time.perf_counter()
        built = ItemIndex(build_index(vectors, kind, seed=args.seed), {"type": kind}, vectors)
        build_seconds = time.perf_counter() - start
        depth, calibrated_recall = calibrate(built, calibration) if kind != "flat" else (None, 1.0)
        depths = [depth] + [int(d) for d in args.sweep.split(",") if d and kind != "flat" and int(d) != depth]
        for d in depths:
            if d is not None:
                set_depth(built.index, kind, d)
            found, qps = timed_search(lambda q, k: built.search(q, k)[1], measured, k, args.batch)
            row = dict(common, type=kind, depth=d, calibrated=d == depth, build_seconds=round(build_seconds, 1),
                       calibration_recall=round(calibrated_recall, 4), recall_at_10=round(recall_at(found, truth), 4), qps=round(qps, 1),
                       speedup_vs_exact=round(qps / exact_qps, 2), target=CALIBRATION_TARGET)
            results.append(row)
            print(f"{kind:5s} depth {str(d):>5s}{' (calibrated)' if d == depth and kind != 'flat' else '':13s} recall@10 "
                  f"{row['recall_at_10']:.4f}  {qps:8.0f} queries/s  ({row['speedup_vs_exact']:.2f}x exact), build {build_seconds:.1f} s",
                  flush=True)
            if args.json:
                with open(args.json, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
    return results


if __name__ == "__main__":
    main()

"""The benchmark engine (a package split by job: :mod:`.spec` the suite file and a run's spec and inputs, :mod:`.store`
the records and their lock, :mod:`.execute` running, :mod:`.report` the tables and plots): every
``python -m recbole_llm.benchmark`` run is a suite (docs/benchmarks.md, benchmarks/suites/).

A suite file declares what to compare (``--dataset --models ...`` builds the same dict from its arguments,
recbole_llm/benchmark.py); this package runs it, resumably, and writes the tables and plots::

    datasets: [scientific]              # each dataset gets every row and seed
    data_path: ../shared/datasets       # relative to the current folder (null: dataset_atomic/)
    seeds: [2020, 2021, 2022]
    eval_modes: [full, uni100]          # test metrics of the best checkpoint in each mode (training validates in the first)
    budget: {epochs: 50, stopping_step: 10}
    config: {hidden_size: 64}           # keys of every row
    config_files: [my.yaml]             # YAML files every run reads (as --config_files), relative to the current folder
    rows:                               # a variant: a model plus its own keys; its own row in the tables
      SASRec: {model: SASRec, train_mode: all_positions, train_batch_size: 128}
      LLMEmbSASRec: {model: LLMEmbSASRec, train_mode: all_positions, train_batch_size: 128}
    models: [GRU4Rec]                   # shorthand: a row named after the model, no keys of its own
    pairs: [[SASRec, LLMEmbSASRec]]     # relative change of the second against the first, paired by seed, 95% interval
    metrics: [ndcg@10, ndcg_head@10, ndcg_tail@10, hit@10]
    workers: 1                          # parallel runs (each a process with cores // workers threads)
    rerun_failed: true                  # a rerun retries failed runs (false: keeps them, as --dataset --models does)
    popularity_buckets: true            # NDCG@10 per target-popularity bucket of every run (one more test pass per mode)
    out: benchmarks/out/my_suite

One result store: ``<out>/runs/<dataset>/<row>/<seed>.json``, each record with the hash of what it ran with
(:func:`.spec.run_spec`) and what it was made from (``inputs``: the fingerprint of every config file and atomic
dataset file, the artifact keys it trained on; ``package_version``, ``git_commit``): a rerun skips a record with the
same hash and inputs that finished (or failed, without ``rerun_failed``) and runs the others again, so changed keys,
modes, config files or file contents rerun; a corrupt record gets one line and only its run reruns. The tables (here
and on the results page) leave out a record whose inputs no longer match, naming it. One driver per out folder
(``<out>/.suite.lock``). ``<out>/results.md`` (per-row table, cold
columns under the cold-start protocol, paired changes), ``results.csv`` (mean, std and 95% interval of every metric),
``results.json`` (the records) and per dataset and mode the plots ``ndcg_head_tail_<dataset>_<mode>.png``,
``ndcg_by_popularity_<dataset>_<mode>.png`` and (cold-start protocol) ``ndcg_warm_cold_<dataset>_<mode>.png``. An
``--out`` folder of the former ``--dataset --models`` layout (``runs/<Model>-<seed>.json``) is refused in one line
(recbole_llm.results still reads it). ``--from_json=a.json,b.json`` builds the tables from raw results of the former
benchmarks/llmemb_vs_sasrec.py instead of running (docs/benchmarks.md's older tables).
"""


"""Side-by-side benchmark: models × datasets × seeds, each cell trained and tested by ``recbole_mmm4rec.run``.

    python -m recbole_mmm4rec.benchmark benchmarks/<name>.yaml [--force] [--report-only] [--out DIR] [--jobs N]

The benchmark file::

    description: one paragraph for the results' README            # optional
    models: [Pop, SASRec, MMM4Rec, MMM4Rec-time-off]              # ours or RecBole's (case-sensitive), or variants
    seeds: [2020, 2021, 2022]
    datasets:                                                     # dataset -> its budget, the same for all models
      scientific_mm: {epochs: 20, stopping_step: 5}               #   (plus any RecBole key, e.g. data_path)
    config: {eval_batch_size: 4096}                               # optional: every cell
    model_config:                                                 # optional: per model
      MMM4Rec: {config_files: [properties/quick_cpu.yaml], config: {hidden_size: 64}}
    variants:                                                     # optional: more rows of one model
      MMM4Rec-time-off: {model: MMM4Rec, config_files: [properties/quick_cpu.yaml], config: {time_aware: False}}
    pretrain:                                                     # optional: encoders for transfer rows
      MMM4Rec: {model: MMM4Rec, corpus: {scientific_mm: [office]}, config: {epochs: 10}}
    # ... and then variants may fine-tune from them: {model: MMM4Rec, pretrained: MMM4Rec, compare_to: MMM4Rec}
    # (a variant's config may also set epochs: 0, evaluated without training); the transfer study command
    # (python -m recbole_mmm4rec.transfer_report, benchmark/transfer.py) pre-trains them first
    reference:                                                    # optional: published figures, "(paper)" rows
      scientific_mm:
        source: MMM4Rec paper, Table II (its Scientific is the full domain, not this subset)
        models: {MMM4Rec: {recall@10: 0.1348, ndcg@10: 0.0724}}

Every cell gets our defaults (``properties/overall.yaml``: split, full ranking, metrics; then the model's
and the dataset's yaml), then the model's ``config_files``, then ``config`` < the dataset's budget < the
model's ``config`` < the seed. Cells run in a fresh process each and are recorded under
``<out>/cells/<dataset>/<model>/seed<seed>.json`` (default ``<out>``: ``results/<name>/`` next to the
benchmark file), ``--jobs`` of them at once. A rerun skips every cell already finished with the same
settings; ``--force`` redoes them. Then ``report.py`` writes ``<dataset>.md``, ``<dataset>.csv``, ``<dataset>_valid_ndcg.png`` and
``README.md`` into ``<out>``.
"""

from recbole_mmm4rec.benchmark.spec import Benchmark, SpecError, load

__all__ = ["Benchmark", "SpecError", "load"]

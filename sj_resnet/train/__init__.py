"""The training application behind ``sj-resnet train`` / ``sj-resnet eval`` (nothing in the library imports it).

One idea per module: ``config`` (options and their precedence), ``recipes`` (dataset defaults and literature
presets), ``data`` (datasets, samplers, loaders), ``modeling`` (model construction), ``schedule`` (optimizer
and warmup-cosine schedule), ``engine`` (one epoch, one evaluation), ``firing`` (per-layer firing rates),
``checkpoint`` (atomic save, validated load, RNG state), ``report`` (log line, CSV, TensorBoard, summary,
curves), ``distributed`` (torchrun), ``runner`` (the training run), ``evaluate`` (the eval command).
"""

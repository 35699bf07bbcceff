"""The training application behind ``sj-resnet train`` / ``sj-resnet eval`` (nothing in the library imports it).

One idea per module: ``config`` (options and their precedence), ``recipes`` (dataset defaults and literature
presets), ``data`` (datasets, samplers, loaders), ``runtime`` (device, process group, threads, loaders: the set-up
shared by both commands), ``modeling`` (model construction), ``schedule`` (optimizer, warmup-cosine schedule,
weight EMA), ``engine`` (the per-batch forward and loss, one evaluation pass), ``firing`` (per-layer firing
rates), ``checkpoint`` (the checkpoint schema, atomic save, validated load, RNG state), ``report`` (log line, CSV,
TensorBoard, summary, curves), ``distributed`` (torchrun), ``rundir`` (where a run may write), ``trainer`` (the
training run), ``eval_command`` (the eval command).
"""

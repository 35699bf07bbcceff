"""Benchmarks of sj_resnet against SpikingJelly 2.0 (scripts, not tests).

Entry points (run from the repository root):

- ``python -m benchmarks.neuron_cpu``: the foundation's CPU targets (torch backend vs SpikingJelly ``LIFNode(Rect)``).
- ``python -m benchmarks.neurons``: the neuron sweep (T, neurons, dtypes; CPU or CUDA).
- ``python -m benchmarks.resnet``: training/inference steps of whole spiking ResNets.
- ``python -m benchmarks.make_docs``: regenerate ``docs/benchmarks.md`` from ``benchmarks/results/*.json``.
"""

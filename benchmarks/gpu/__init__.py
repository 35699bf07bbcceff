"""GPU-only checks driven by ``benchmarks/gpu_check.sh`` (kernel roofline, issue targets, memcheck driver)."""

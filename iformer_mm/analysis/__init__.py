"""Analysis tools' logic (the command-line wrappers are in ``tools/analysis/``).

* :mod:`.flops` — parameters and FLOPs counted the papers' way and with attention;
* :mod:`.baselines` — the authors' released iFormer data flow, rebuilt as a benchmark baseline;
* :mod:`.opcount` — ATen ops per step, the CPU-side proxy for GPU kernel launches.
"""

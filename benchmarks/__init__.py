"""The everyday benchmarks: serving, training, backends, the heap, the gateway, soak. Each is a script that
prints a table and writes JSON (and a PNG) under benchmarks/results/; run them as `python benchmarks/<name>.py`."""

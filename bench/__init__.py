"""ray-pixi benchmarks: `bench/run` measures ray-pixi against its alternatives in one run,
on one machine, and writes `bench/results/`. Benchmarks never fail on timing."""

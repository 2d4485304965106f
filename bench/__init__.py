"""Latency and cost of the latent pipeline against pixel-space restoration+fusion pipelines
(MMAIF section 4.6.4, Table 5), measured side by side on one machine.

    bench.nafnet, bench.densefuse, bench.pixel_dit   the pixel-space competitor networks
    bench.pipelines, bench.competitors               one timed interface over every pipeline
    bench.flops                                      analytic FLOPs / memory, matmul peak, exponent fit
    bench.memory                                     peak memory of one call (CUDA allocator / RSS)
    bench.plan                                       what to run: settings, sizes, analytic pass, budgets
    bench.sweep                                      the interleaved sweep (builds and runs the plan)
    bench.analysis                                   statistics, fits, speed-ups, the result
    bench.report                                     JSON, markdown and PNG output
    bench.cli                                        ``latentfuse bench``

``pytest bench/ --benchmark-only`` runs the per-stage pytest-benchmark suite (bench/test_bench_*.py).
"""

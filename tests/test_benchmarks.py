"""The benchmark helpers `make bench` calls, run small: they must keep up with the training loop's
interfaces (the per-step breakdown once called Trainer.step with its old signature)."""

import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "benchmarks"


def test_overhead_breakdown_and_batched_steps_run_small():
    sys.path.insert(0, str(BENCH))
    try:
        import batched_bench
        import train_overhead
    finally:
        sys.path.remove(str(BENCH))
    b = train_overhead.breakdown("parity_fcn", 120, repeats=1, chunk=10)
    for key in ("bare_step_us", "lrtrain_step_us", "fused_norms_us"):
        assert b[key] > 0, (key, b)
    assert "µs/step" in train_overhead.format_breakdown(b)
    s = batched_bench.steps_only(batched_bench.configs_for(20, 2, data_options={"n_train": 300, "n_test": 100}),
                                 chunk=5, repeats=1)
    assert s["k_bare_steps_us"] > 0 and s["stacked_step_us"] > 0

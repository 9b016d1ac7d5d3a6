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


def test_api_overhead_runs_small():
    sys.path.insert(0, str(BENCH))
    try:
        import api_overhead
    finally:
        sys.path.remove(str(BENCH))
    r = api_overhead.run("parity_fcn", 40, repeats=1)
    assert r["api_steps_per_s"] > 0 and r["ratio_api_lrtrain"] > 0
    u = api_overhead.steps_only(chunk=5, repeats=1)
    assert u["api_step_us"] > 0 and u["lrtrain_step_us"] > 0
    n = api_overhead.example_lines()
    assert 20 < n["own_loop.py"] < 60 and 20 < n["lightning_callback.py"] < 60

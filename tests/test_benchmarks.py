"""The asv suite stays runnable: ``asv check`` imports every benchmark and checks its
signature; a quick run of two cheap suites executes setup, timing and tracking code
against the installed package (the full quick run is in benchmarks/RESULTS.md)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("asv")
BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def asv(command, *args, home):
    """``asv command args`` in benchmarks/ with its configuration, except that results,
    environments and HTML go under ``home`` (the tracked benchmarks/results/ stays as is)."""
    lines = (BENCH / "asv.conf.json").read_text().splitlines()
    config = json.loads("\n".join(line for line in lines if not line.lstrip().startswith("//")))
    config.update(repo=str(BENCH.parent), benchmark_dir=str(BENCH / "benchmarks"),
                  results_dir=str(home / "results"), env_dir=str(home / "env"),
                  html_dir=str(home / "html"))
    conf = home / "asv.conf.json"
    conf.write_text(json.dumps(config))
    env = {**os.environ, "HOME": str(home), "FASTPPO_ASV_SLOW": "0"}
    return subprocess.run([sys.executable, "-m", "asv", command, "--config", str(conf), *args],
                          cwd=BENCH, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_asv_check(tmp_path):
    out = asv("check", "--python=same", home=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_asv_quick_run(tmp_path):
    assert asv("machine", "--yes", "--machine", "ci", home=tmp_path).returncode == 0
    out = asv("run", "--python=same", "--quick", "--dry-run", "--machine", "ci", "--show-stderr",
              "-b", r"bench_sampled\.GAE|EvaluateProducts", home=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "bench_sampled.GAE.time_gae" in text and "EvaluateProducts.track_n_matvec" in text
    assert "failed" not in text.lower() and "OperationProducts" not in text
    assert (tmp_path / "results" / "benchmarks.json").exists()  # not the tracked results/


def test_kernel_suite_runs_each_kernel(monkeypatch):
    """bench_kernels.KernelSuite's setup and timed call for every kernel and backend at the
    smallest size, in this process (asv's quick run of all its parameters took ~45 s)."""
    monkeypatch.setenv("FASTPPO_ASV_SLOW", "0")
    monkeypatch.syspath_prepend(str(BENCH))
    from benchmarks import bench_kernels as B
    ran = 0
    for kernel in B.KERNELS:
        for backend in B.BACKENDS:
            for n_threads in B.THREADS:
                suite = B.KernelSuite()
                try:
                    suite.setup(kernel, backend, B.SIZES[0], B.FAMILIES[0], n_threads)
                except NotImplementedError:  # asv's skip: numpy with 2 threads
                    assert backend == "numpy" and n_threads > 1
                    continue
                suite.time_kernel(kernel, backend, B.SIZES[0], B.FAMILIES[0], n_threads)
                ran += 1
    assert ran == len(B.KERNELS) * (len(B.BACKENDS) * len(B.THREADS) - 1)


def test_sweep_suite_runs_each_family(monkeypatch):
    """bench_kernels.SweepSuite's setup and timed call (the SGS operator) at the smallest
    size for every family, backend and system (the operator's values are tested in
    tests/test_assembled.py)."""
    monkeypatch.setenv("FASTPPO_ASV_SLOW", "0")
    monkeypatch.syspath_prepend(str(BENCH))
    from benchmarks import bench_kernels as B
    ran = 0
    for family in B.FAMILIES:
        for backend in B.SweepSuite.params[0]:
            for transpose in (0, 1):
                suite = B.SweepSuite()
                suite.setup(backend, B.SIZES[0], family, transpose)
                suite.time_sgs_operator(backend, B.SIZES[0], family, transpose)
                ran += 1
    assert ran == len(B.FAMILIES) * 2 * 2

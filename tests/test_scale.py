"""Scale: exact evaluation and visitation on the 1,000,000-state garnet (A = 10,
b = 10: 10^7 pairs, 10^8 transitions) in a fresh process, whose peak resident memory
(VmHWM) must stay under 2 GiB for the build and under 4 GiB in all. Time is reported,
never asserted.

It runs with FASTPPO_SCALE=1 only (about a minute on two cores): CI leaves the largest
size to the benchmarks (``python benchmarks/issue12.py large`` reports the peak RSS of
PPO-Clip iterations at 10⁶ states, evaluation and visitation included).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

GIB = 2**30

SCRIPT = textwrap.dedent("""
    import json, time
    import numpy as np
    import fastppo

    def peak():
        # VmHWM, not ru_maxrss: that also holds the parent's peak when spawned by vfork
        with open("/proc/self/status") as f:
            return 1024 * int(next(l for l in f if l.startswith("VmHWM:")).split()[1])

    t0 = time.perf_counter()
    mdp = fastppo.garnet(1_000_000, 10, 10, gamma=0.99, seed=0)
    t1 = time.perf_counter()
    build_peak = peak()
    pi = mdp.uniform_policy()
    ev = fastppo.evaluate(mdp, pi, fastppo.ReverseKL(0.1))
    t2 = time.perf_counter()
    vis = fastppo.visitation(mdp, pi, full_output=True)
    t3 = time.perf_counter()
    d = vis.d
    adv_mean = np.add.reduceat(mdp.to_pairs(ev.adv) * pi, mdp.a_indptr[:-1])
    print(json.dumps(dict(
        n_states=mdp.n_states, n_pairs=mdp.n_pairs, nnz=int(mdp.p_data.size),
        index_dtype=str(mdp.p_indices.dtype), build_peak=build_peak, peak=peak(), eval_n_matvec=ev.n_matvec, eval_residual=ev.residual,
        vis_n_matvec=vis.n_matvec, vis_residual=vis.residual,
        v_finite=bool(np.isfinite(ev.v).all()), v_max=float(np.abs(ev.v).max()),
        r_max=float(np.abs(mdp.r).max()),
        adv_mean_max=float(np.abs(adv_mean).max()), q_max=float(np.abs(ev.q).max()),
        d_sum=float(d.sum()), d_floor=float((d - (1 - mdp.gamma) * mdp.rho).min()),
        seconds=dict(build=t1 - t0, evaluate=t2 - t1, visitation=t3 - t2),
    )))
""")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FASTPPO_SCALE") != "1", reason="10^6 states: FASTPPO_SCALE=1")
def test_million_state_garnet_memory():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=1800, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n1e6-state garnet: peak RSS {out['peak'] / GIB:.2f} GiB, seconds {out['seconds']}, "
          f"products {out['eval_n_matvec']} + {out['vis_n_matvec']}")
    assert (out["n_states"], out["n_pairs"], out["nnz"]) == (1_000_000, 10_000_000, 100_000_000)
    assert out["index_dtype"] == "int32"
    assert out["build_peak"] < 2 * GIB, f"peak RSS of the build {out['build_peak'] / GIB:.2f} GiB"
    assert out["peak"] < 4 * GIB, f"peak RSS {out['peak'] / GIB:.2f} GiB"
    # and the answers are the exact ones, not just cheap
    assert out["eval_residual"] <= 1e-12 and out["vis_residual"] <= 1e-12
    assert out["v_finite"] and out["v_max"] <= (out["r_max"] + 0.1 * 2.31) / (1 - 0.99)  # τ log A ≤ 0.231
    assert out["adv_mean_max"] <= 1e-12 * out["q_max"]
    assert abs(out["d_sum"] - 1.0) <= 1e-12
    assert out["d_floor"] >= -1e-15

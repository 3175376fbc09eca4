"""fastppo next to the MDP libraries a user could install instead, on the same instances.

    python benchmarks/peers.py [--sizes 10000 50000] [--families garnet local] [--repeat 5]

Run by ``python benchmarks/compare.py --peers`` too. Installs nothing: every peer that
is importable is timed (``pip install .[peers]``: quantecon, pymdptoolbox, mdpsolver).
BLAS is pinned to one thread. Contenders are interleaved (round-robin over repeats), and
the median is reported. Sections:

1. **bandwidth**: a STREAM-style copy with NumPy (16 bytes moved per element, as STREAM
   counts), the yardstick for the effective GB/s of the products below.
2. **product**: one product with P_π for a stochastic policy: fastppo's fused kernel
   (``bellman_matvec``) per backend and thread count, against ``scipy.sparse`` (CSR P @ x
   then the per-state policy average, what a SciPy user writes). Effective GB/s counts
   the bytes the kernel must read once (P's data and indices, π, the index arrays, x, out).
3. **solve** (τ = 0, the plain MDP, γ = 0.99): ``fastppo.solve`` against QuantEcon
   ``DiscreteDP`` in its sparse state-action-pair form (modified policy iteration, its
   default ε = 1e-3 and ε = 1e-8 (values within 1e-8), ``max_iter`` raised to 10⁵), mdpsolver (modified policy iteration, a fresh
   model per timed call: it warm-starts from its previous solution; model construction is
   untimed) and pymdptoolbox (``PolicyIterationModified`` on sparse matrices, ε = 0.01
   default). The error column is max |v − v*| against fastppo's solution, whose own
   bound is its Bellman residual / (1 − γ).
4. **evaluate**: the value of one deterministic policy (QuantEcon's and pymdptoolbox's
   evaluators take no stochastic policy): fastppo.evaluate against QuantEcon
   ``evaluate_policy`` (SuperLU on the sparse I − γP_σ) and pymdptoolbox's iterative
   evaluation (ε = 1e-4, its default tolerance idea; dense linear solves need (A, S, S)
   dense arrays: 8 GB at 10⁴ states, not run).
"""
import argparse
import os
import platform
import sys
import time

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

import fastppo
from benchmarks.common import build_mdp  # benchmarks/benchmarks/common.py
from fastppo._backend import get_kernel


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    p.add_argument("--families", nargs="+", default=["garnet", "local"], choices=["garnet", "local"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--slow-peer-max", type=int, default=5_000,
                   help="largest S for pymdptoolbox and QuantEcon's SuperLU evaluate_policy "
                        "(4 s and 0.8 s at S = 2,000 already)")
    p.add_argument("--sections", nargs="+", default=["bandwidth", "product", "solve", "evaluate"],
                   choices=["bandwidth", "product", "solve", "evaluate"])
    return p.parse_args(argv)


def peer(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def interleaved(contenders, repeat):
    """{name: (median seconds, last result)}: one warm-up each, then round-robin repeats."""
    out = {name: [None, []] for name in contenders}
    for name, (setup, run) in contenders.items():
        out[name][0] = run(setup())
    for _ in range(repeat):
        for name, (setup, run) in contenders.items():
            arg = setup()
            t = time.perf_counter()
            out[name][0] = run(arg)
            out[name][1].append(time.perf_counter() - t)
    return {name: (float(np.median(ts)), res) for name, (res, ts) in out.items()}


def stream_copy(n=40_000_000, repeat=5):
    a, b = np.zeros(n), np.ones(n)
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(a, b)
        best = min(best, time.perf_counter() - t)
    return 16 * n / best / 1e9


def build(family, n):
    return build_mdp(family, n)


def product_section(mdp, threads, repeat, bw):
    pi = fastppo.softmax(mdp, np.random.default_rng(1).normal(size=mdp.n_pairs))
    x = np.random.default_rng(2).random(mdp.n_states)
    out = np.empty(mdp.n_states)
    args = (mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data, pi, mdp.gamma, x, out)
    P = sp.csr_array((mdp.p_data.copy(), mdp.p_indices.copy(), mdp.p_indptr.copy()),
                     shape=(mdp.n_pairs, mdp.n_states))
    nobody = lambda: None  # noqa: E731
    contenders = {}
    for backend in ("numba", "cython"):
        k = get_kernel("bellman_matvec", backend)
        for nt in threads:
            contenders[f"fastppo {backend} {nt}t"] = (nobody, lambda _, k=k, nt=nt: k(*args, nt))
    contenders["scipy CSR P@x + policy average"] = (
        nobody, lambda _: x - mdp.gamma * np.add.reduceat(pi * (P @ x), mdp.a_indptr[:-1]))
    res = interleaved(contenders, 5 * repeat)
    nbytes = (mdp.p_data.nbytes + mdp.p_indices.nbytes + mdp.p_indptr.nbytes + pi.nbytes
              + mdp.a_indptr.nbytes + 3 * x.nbytes)
    print(f"  product with P_pi (nnz {mdp.p_data.size:,}; {nbytes / 1e6:.0f} MB to read once; "
          f"floor at {bw:.1f} GB/s: {nbytes / bw / 1e6:.2f} ms)")
    base = res["scipy CSR P@x + policy average"][0]
    for name, (t, _) in res.items():
        print(f"    {name:34s} {t * 1e3:8.2f} ms  {nbytes / t / 1e9:6.1f} GB/s  "
              f"x scipy {base / t:5.2f}  x floor {t / (nbytes / bw / 1e9):5.2f}")


def solve_section(mdp, repeat, slow_ok):
    qe, mdpsolver, mdptoolbox = peer("quantecon"), peer("mdpsolver"), peer("mdptoolbox")
    S, A = mdp.n_states, mdp.n_actions
    nobody = lambda: None  # noqa: E731
    contenders = {}
    for backend in ("numba", "cython"):
        contenders[f"fastppo.solve {backend}"] = (
            nobody, lambda _, b=backend: fastppo.solve(mdp, backend=b, n_threads=1))
    Q = sp.csr_matrix((mdp.p_data, mdp.p_indices, mdp.p_indptr), shape=(mdp.n_pairs, S))
    if qe is not None:
        ddp = qe.markov.DiscreteDP(np.asarray(mdp.r), Q, mdp.gamma, np.asarray(mdp.s_indices),
                                   np.asarray(mdp.a_indices))
        contenders[f"quantecon {qe.__version__} MPI (default eps)"] = (
            nobody, lambda _: ddp.solve(method="modified_policy_iteration", max_iter=100_000))
        contenders[f"quantecon {qe.__version__} MPI (eps 1e-8)"] = (
            nobody, lambda _: ddp.solve(method="modified_policy_iteration", epsilon=1e-8,
                                        max_iter=100_000))
    if mdpsolver is not None:
        probs = [[list(mdp.p_data[mdp.p_indptr[k]:mdp.p_indptr[k + 1]])
                  for k in range(s * A, s * A + A)] for s in range(S)]
        cols = [[list(map(int, mdp.p_indices[mdp.p_indptr[k]:mdp.p_indptr[k + 1]]))
                 for k in range(s * A, s * A + A)] for s in range(S)]
        rewards = mdp.r.reshape(S, A).tolist()

        def fresh():
            m = mdpsolver.model()
            m.mdp(discount=mdp.gamma, rewards=rewards, tranMatProbs=probs, tranMatColumns=cols)
            return m

        def run_mdpsolver(m):
            m.solve(algorithm="mpi", tolerance=1e-8, verbose=False)
            return np.asarray(m.getValueVector())

        contenders["mdpsolver MPI (tol 1e-8)"] = (fresh, run_mdpsolver)
    if mdptoolbox is not None and slow_ok:
        Ps = [sp.csr_matrix(Q[a::A]) for a in range(A)]
        R = mdp.r.reshape(S, A)

        def run_toolbox(_):
            m = mdptoolbox.mdp.PolicyIterationModified(Ps, R, mdp.gamma, max_iter=100_000)
            m.run()
            return np.asarray(m.V)

        contenders["pymdptoolbox PI-modified (eps 0.01)"] = (nobody, run_toolbox)
    res = interleaved(contenders, repeat)
    ref = fastppo.solve(mdp)
    bound = ref.bellman_residual / (1 - mdp.gamma)
    print(f"  solve, tau = 0 (reference: fastppo, Bellman residual {ref.bellman_residual:.1e}, "
          f"|v - v*| <= {bound:.1e})")
    base = res["fastppo.solve numba"][0]
    for name, (t, out) in res.items():
        v = out.v if hasattr(out, "v") else out
        err = np.max(np.abs(np.asarray(v) - ref.v))
        print(f"    {name:36s} {t * 1e3:9.1f} ms  error {err:8.1e}  x fastppo numba "
              f"{t / base:6.2f}")


def evaluate_section(mdp, repeat, slow_ok):
    qe, mdptoolbox = peer("quantecon"), peer("mdptoolbox")
    S, A = mdp.n_states, mdp.n_actions
    sigma = np.random.default_rng(3).integers(0, A, size=S)
    pi = np.zeros((S, A))
    pi[np.arange(S), sigma] = 1.0
    nobody = lambda: None  # noqa: E731
    contenders = {f"fastppo.evaluate {b}": (nobody, lambda _, b=b: fastppo.evaluate(
        mdp, pi, backend=b, n_threads=1).v) for b in ("numba", "cython")}
    Q = sp.csr_matrix((mdp.p_data, mdp.p_indices, mdp.p_indptr), shape=(mdp.n_pairs, S))
    if qe is not None and slow_ok:
        ddp = qe.markov.DiscreteDP(np.asarray(mdp.r), Q, mdp.gamma, np.asarray(mdp.s_indices),
                                   np.asarray(mdp.a_indices))
        contenders["quantecon evaluate_policy (SuperLU)"] = (nobody, lambda _: ddp.evaluate_policy(sigma))
    if mdptoolbox is not None and slow_ok:
        Ps = [sp.csr_matrix(Q[a::A]) for a in range(A)]

        def run_toolbox(_):
            m = mdptoolbox.mdp.PolicyIteration(Ps, mdp.r.reshape(S, A), mdp.gamma,
                                               policy0=sigma, eval_type=1)
            m._evalPolicyIterative(epsilon=1e-4, max_iter=100_000)
            return np.asarray(m.V)

        contenders["pymdptoolbox iterative (eps 1e-4)"] = (nobody, run_toolbox)
    res = interleaved(contenders, repeat)
    ref = fastppo.evaluate(mdp, pi, tol=1e-13, method="gmres").v
    print("  evaluate one deterministic policy (error: max |v - v_ref|, v_ref: GMRES to residual 1e-13)")
    base = res["fastppo.evaluate numba"][0]
    for name, (t, v) in res.items():
        print(f"    {name:36s} {t * 1e3:9.1f} ms  error {np.max(np.abs(np.asarray(v) - ref)):8.1e}  "
              f"x fastppo numba {t / base:7.1f}")


def main(argv=None):
    with threadpool_limits(limits=1, user_api="blas"):  # BLAS on one thread, as every peer
        _main(argv)


def _main(argv=None):
    a = parse_args(argv)
    print(f"command: python benchmarks/peers.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"host: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"fastppo {fastppo.__version__}, numpy {np.__version__}; BLAS threads 1")
    bw = stream_copy()
    print(f"bandwidth: STREAM-style copy {bw:.1f} GB/s (NumPy, one thread, best of 5)")
    for family in a.families:
        for n in a.sizes:
            mdp = build(family, n)
            fastppo.solve(build(family, 200))
            fastppo.evaluate(build(family, 200), build(family, 200).uniform_policy(), backend="cython")
            print(f"\n== {family}, S = {n:,} (A = 10, b = 10, gamma = 0.99"
                  f"{', successors within +-50' if family == 'local' else ''})"
                  f"{'' if n <= a.slow_peer_max else '; pymdptoolbox and SuperLU not run'}",
                  flush=True)
            if "product" in a.sections:
                product_section(mdp, a.threads, a.repeat, bw)
            if "solve" in a.sections:
                solve_section(mdp, a.repeat, n <= a.slow_peer_max)
            if "evaluate" in a.sections:
                evaluate_section(mdp, a.repeat, n <= a.slow_peer_max)


if __name__ == "__main__":
    main()

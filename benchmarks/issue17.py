"""Issue 17, side by side in one process: fastppo against plain SciPy and QuantEcon on the
slow-mixing and structured families.

Usage (from the repository root)::

    python benchmarks/issue17.py [--n-states 10000] [--families garnet local grid queue pendulum]
                                 [--repeat 5] [--solve] [--ppo 13] [--backend cython]

For each family (``benchmarks/benchmarks/common.py``; γ = 0.99, a stochastic policy
π = softmax(θ), θ ~ N(0, 1)), the library's default backend (``--backend``), one thread, BLAS
pinned to one thread:

- ``evaluate`` (unregularized) and ``visitation`` (μ = ρ) of fastppo at tol 1e-12;
- SciPy on the assembled I − γP_π (CSR with int32 indices, its faster form, ``narrow``;
  Aᵀ as CSR for the visitation system; also bicgstab on the int64 CSR that csr_array
  makes from these inputs, ratio in brackets): ``bicgstab``
  (rtol 1e-12, atol 0; restarted from its iterate after a breakdown) and ``spsolve``
  (SuperLU, default COLAMD order; only on ``--spsolve`` families: on garnets its fill is
  ~S²); their assembly is not timed, fastppo's (and its
  factorisation) is;
- with ``--solve``: ``fastppo.solve`` (τ = 0) and QuantEcon's modified policy iteration
  (``--qe-vi``: also its value iteration; each at the largest ε of ``--qe-eps`` whose max
  error is ≤ 1e-8, found by one untimed call per ε; ``--qe-pi``: also its policy
  iteration), max |v − v*| reported, v* the exact value of fastppo's optimal policy
  (evaluated at tol 1e-14);
- with ``--others-max S`` (and ``--solve``): also mdpsolver's modified policy iteration and
  pymdptoolbox's ``PolicyIterationModified`` (the ``peers`` extra) on MDPs of at most S
  states, each at the largest tolerance / ε of ``--qe-eps`` within 1e-8 of v* as for
  QuantEcon (pymdptoolbox only where every state has the same actions, and at most
  ``--toolbox-max`` states: 28 s at 2,000 for 1e-8); reported beside,
  not in the ratio (their set-up, Python lists or per-action matrices, is not timed);
- with ``--before-after`` (and ``--solve``): also ``fastppo.solve`` with the levers of
  ``LEVERS`` off (``_krylov.WARM_SGS_START``), in the same interleaved loop;
- with ``--ppo N`` (target 4): ``N`` outer iterations of ``PPOClip.step()`` (forward KL
  τ = 0.1, ε = 0.2, K = 10, from the uniform policy) and of the speed issue's
  straightforward scipy/NumPy baseline (``benchmarks/baseline_ppo.py``) in turn, medians of
  iterations 2..N (wall and CPU), and max |Δθ| between the two after N iterations.

Every entry is the median of ``--repeat`` interleaved calls after a warm-up (the solve
section also prints the median CPU time of this process and its ratios: on a shared
machine wall times wait for the CPU); every
solution's true relative residual ‖b − A x‖/‖b‖ is printed (certified ≤ 1e-12, or the
floor). Ratios > 1: fastppo faster.
"""
import argparse
import functools
import time
import types

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from threadpoolctl import threadpool_limits

import fastppo
from baseline_ppo import BaselinePPO
from benchmarks.common import build_mdp, describe_mdp

BACKEND = None  # set by --backend; None: the library's default


def interleaved(contenders, repeat, cpu=None):
    """{name: median seconds}; one warm-up each, then ``repeat`` rounds in turn. ``cpu``:
    a dict given is filled with the median CPU seconds (this process) of each."""
    out = {name: f() for name, f in contenders.items()}
    times = {name: [] for name in contenders}
    cpu_times = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, f in contenders.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            times[name].append(time.perf_counter() - t)
            cpu_times[name].append(time.process_time() - c)
    if cpu is not None:
        cpu.update({name: float(np.median(c)) for name, c in cpu_times.items()})
    return {name: float(np.median(t)) for name, t in times.items()}, out


def relres(A, x, b):
    return float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))


def bicgstab(A, b, tol=1e-12):
    x = None
    for _ in range(10):  # restarts after a breakdown, from the last iterate
        x, info = spla.bicgstab(A, b, x0=x, rtol=tol, atol=0.0, maxiter=20_000)
        if info == 0:
            break
    return x


def assemble(mdp, pi, wide=False):
    """I − γP_π and its transpose as CSR (int32 indices: :func:`narrow`; ``wide``: the
    int64 that csr_array keeps from these inputs), and r_π."""
    P = sp.csr_array((mdp.p_data, mdp.p_indices, mdp.p_indptr), shape=(mdp.n_pairs, mdp.n_states))
    Pi = sp.csr_array((pi, np.arange(mdp.n_pairs), mdp.a_indptr), shape=(mdp.n_states, mdp.n_pairs))
    A = (sp.eye_array(mdp.n_states, format="csr") - mdp.gamma * (Pi @ P)).tocsr()
    form = (lambda M: M) if wide else narrow
    return form(A), form(A.T.tocsr()), np.add.reduceat(pi * mdp.r, mdp.a_indptr[:-1])


def narrow(A):
    """A with int32 indices where they fit: SciPy's faster form of the same CSR (12 bytes an
    entry instead of 16). csr_array keeps the int64 of int64 inputs (fastppo's pointers,
    np.arange), csr_matrix makes int32; on the 10k garnet bicgstab took 15.9 ms on int32
    against 19.9 ms on int64 (benchmarks/RESULTS.md, issue 17)."""
    if max(A.nnz, A.shape[0]) >= 2**31:
        return A
    return sp.csr_array((A.data, A.indices.astype(np.int32), A.indptr.astype(np.int32)),
                        shape=A.shape)


def linear_section(mdp, repeat, with_spsolve):
    pi = fastppo.softmax(mdp, np.random.default_rng(1).standard_normal(mdp.n_pairs))
    A, At, c = assemble(mdp, pi)
    A64, At64, _ = assemble(mdp, pi, wide=True)
    mu = mdp.rho
    Acsc, Atcsc = A.tocsc(), At.tocsc()
    kw = dict(backend=BACKEND, n_threads=1)
    rows = {}
    for op, b, M, M64, Mc in (("evaluate", c, A, A64, Acsc), ("visitation", mu, At, At64, Atcsc)):
        if op == "evaluate":
            ours = lambda: fastppo.evaluate(mdp, pi, **kw)  # noqa: E731
        else:
            ours = lambda: fastppo.visitation(mdp, pi, mu, full_output=True, **kw)  # noqa: E731
        contenders = {"fastppo": ours, "bicgstab": lambda: bicgstab(M, b),
                      "bicgstab int64": lambda: bicgstab(M64, b)}
        if with_spsolve:
            contenders["spsolve"] = lambda: spla.spsolve(Mc, b)
        med, out = interleaved(contenders, repeat)
        med.setdefault("spsolve", np.nan)
        x = out["fastppo"].v if op == "evaluate" else out["fastppo"].d / (1 - mdp.gamma)
        res = {name: relres(M, x if name == "fastppo" else y, b) for name, y in out.items()}
        rows[op] = (med, res, out["fastppo"].method, out["fastppo"].get("fill"))
    return rows


QE_TOL = 1e-8  # QuantEcon's methods must be within this of v* (max abs error)


def tuned_epsilon(solve_qe, v_star, grid):
    """The largest ε of ``grid`` whose solution is within QE_TOL of ``v_star``, and that
    error (one untimed call each, largest ε first); (min(grid), its error) if none is."""
    err = np.inf
    for eps in sorted(grid, reverse=True):
        err = float(np.abs(solve_qe(eps).v - v_star).max())
        if err <= QE_TOL:
            return eps, err
    return eps, err


# what --before-after switches off: the warm SGS start (2026-12-01, late evening; that
# round's other levers gave the same bits and products and are retired)
LEVERS = (("fastppo._krylov", "WARM_SGS_START"),)


def levers_off(f):
    """``f`` run with the levers of ``solve`` in ``LEVERS`` switched off (the code before them)."""
    import importlib

    def run():
        modules = [importlib.import_module(m) for m, _ in LEVERS]
        saved = [getattr(m, name) for m, (_, name) in zip(modules, LEVERS)]
        for m, (_, name) in zip(modules, LEVERS):
            setattr(m, name, False)
        try:
            return f()
        finally:
            for m, (_, name), value in zip(modules, LEVERS, saved):
                setattr(m, name, value)
    return run


def other_peers(mdp, v_star, eps_grid, toolbox_max):
    """mdpsolver's MPI and pymdptoolbox's PolicyIterationModified, each at its tuned
    tolerance (:func:`tuned_epsilon`); set-up untimed. {name: callable returning v}."""
    out = {}
    S, a = mdp.n_states, mdp.a_indptr
    try:
        import mdpsolver
    except ImportError:
        mdpsolver = None
    if mdpsolver is not None:
        rows = [(mdp.p_indptr[k], mdp.p_indptr[k + 1]) for k in range(mdp.n_pairs)]
        probs = [[mdp.p_data[lo:hi].tolist() for lo, hi in rows[a[s]:a[s + 1]]] for s in range(S)]
        cols = [[mdp.p_indices[lo:hi].tolist() for lo, hi in rows[a[s]:a[s + 1]]] for s in range(S)]
        rewards = [mdp.r[a[s]:a[s + 1]].tolist() for s in range(S)]
        model = mdpsolver.model()
        model.mdp(discount=mdp.gamma, rewards=rewards, tranMatProbs=probs, tranMatColumns=cols)

        def run_mdpsolver(eps):
            model.solve(algorithm="mpi", tolerance=eps, verbose=False)
            return types.SimpleNamespace(v=np.asarray(model.getValueVector()))

        eps, _ = tuned_epsilon(run_mdpsolver, v_star, eps_grid)
        out[f"mdpsolver mpi tol{eps:.0e}"] = functools.partial(run_mdpsolver, eps)
    try:
        import mdptoolbox.mdp
    except ImportError:
        mdptoolbox = None
    counts = np.diff(a)
    if mdptoolbox is not None and (counts == counts[0]).all() and S <= toolbox_max:
        A = int(counts[0])
        Q = sp.csr_matrix((mdp.p_data, mdp.p_indices, mdp.p_indptr), shape=(mdp.n_pairs, S))
        Ps, R = [sp.csr_matrix(Q[k::A]) for k in range(A)], np.asarray(mdp.r).reshape(S, A)

        def run_toolbox(eps):
            m = mdptoolbox.mdp.PolicyIterationModified(Ps, R, mdp.gamma, epsilon=eps,
                                                       max_iter=100_000)
            m.run()
            return types.SimpleNamespace(v=np.asarray(m.V))

        eps, _ = tuned_epsilon(run_toolbox, v_star, eps_grid)
        out[f"pymdptoolbox pim eps{eps:.0e}"] = functools.partial(run_toolbox, eps)
    return out


def solve_section(mdp, repeat, qe_pi, qe_vi=False, eps_grid=(1e-8,), others=(False, 0),
                  before_after=False):
    import quantecon as qe

    Q = sp.csr_matrix((mdp.p_data, mdp.p_indices, mdp.p_indptr), shape=(mdp.n_pairs, mdp.n_states))
    ddp = qe.markov.DiscreteDP(np.asarray(mdp.r), Q, mdp.gamma, np.asarray(mdp.s_indices),
                               np.asarray(mdp.a_indices))
    ours = lambda: fastppo.solve(mdp, backend=BACKEND, n_threads=1)  # noqa: E731
    # v*: the exact value (certified residual) of the optimal policy fastppo returns
    v_star = fastppo.evaluate(mdp, ours().policy, tol=1e-14).v
    methods = {"mpi": "modified_policy_iteration"}
    if qe_vi:  # one product per sweep, ~2,500 sweeps at gamma = 0.99 for 1e-8
        methods["vi"] = "value_iteration"
    contenders = {"fastppo.solve": ours}
    if before_after:
        contenders["fastppo.solve (before)"] = levers_off(ours)
    for short, method in methods.items():  # ε tuned per method: the largest within QE_TOL
        def run(eps, method=method):
            return ddp.solve(method=method, epsilon=eps, max_iter=100_000)
        eps, _ = tuned_epsilon(run, v_star, eps_grid)
        contenders[f"qe {short} eps{eps:.0e}"] = functools.partial(run, eps)
    if qe_pi:  # SuperLU per iteration: minutes on the unstructured families
        contenders["qe pi"] = lambda: ddp.solve(method="policy_iteration", max_iter=100_000)
    if others[0]:
        contenders.update(other_peers(mdp, v_star, eps_grid, others[1]))
    cpu = {}
    med, out = interleaved(contenders, repeat, cpu)
    err = {k: np.abs(r.v - v_star).max() for k, r in out.items()}
    return med, err, cpu


def ppo_section(mdp, n_iter):
    """PPO-Clip against the straightforward baseline, iteration by iteration in turn."""
    reg = fastppo.ForwardKL(0.1)
    ppo = fastppo.PPOClip(mdp, reg, backend=BACKEND, n_threads=1)
    base = BaselinePPO(mdp.P, mdp.R, mdp.gamma, mdp.rho, "forward-kl", 0.1, lr=ppo.lr)
    times = {"fastppo": ([], []), "baseline": ([], [])}
    for _ in range(n_iter):
        for name, step in (("fastppo", ppo.step), ("baseline", base.step)):
            t, c = time.perf_counter(), time.process_time()
            step()
            times[name][0].append(time.perf_counter() - t)
            times[name][1].append(time.process_time() - c)
    diff = float(np.abs(base.theta.ravel() - ppo.logits).max())
    med = {name: (float(np.median(w[1:])), float(np.median(c[1:])))
           for name, (w, c) in times.items()}
    return med, diff


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-states", type=int, default=10_000)
    p.add_argument("--families", nargs="+", default=["garnet", "local", "grid", "queue", "pendulum"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--spsolve", nargs="*", default=["grid", "queue", "pendulum"],
                   help="families where scipy's spsolve is timed (its fill is ~S² on garnets)")
    p.add_argument("--solve", action="store_true")
    p.add_argument("--qe-pi", action="store_true", help="also QuantEcon's policy iteration")
    p.add_argument("--qe-vi", action="store_true", help="also QuantEcon's value iteration")
    p.add_argument("--qe-eps", nargs="+", type=float,
                   default=[1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
                   help="ε grid of QuantEcon's vi / mpi: each runs at the largest ε whose "
                        "max error is <= 1e-8 (default: %(default)s)")
    p.add_argument("--others-max", type=int, default=0, metavar="S",
                   help="with --solve: also mdpsolver and pymdptoolbox on MDPs of at most S "
                        "states (reported beside QuantEcon, not in the ratio)")
    p.add_argument("--toolbox-max", type=int, default=2000, metavar="S",
                   help="pymdptoolbox only up to S states (its PolicyIterationModified took "
                        "~28 s at 2,000 states for 1e-8)")
    p.add_argument("--before-after", action="store_true",
                   help="with --solve: also fastppo.solve with the levers of LEVERS off")
    p.add_argument("--ppo", type=int, default=0, metavar="N",
                   help="also N PPO-Clip iterations against the straightforward baseline")
    p.add_argument("--linear", action=argparse.BooleanOptionalAction, default=True,
                   help="the evaluate / visitation section (default on)")
    p.add_argument("--backend", help="default: the library's (FASTPPO_BACKEND, else cython)")
    a = p.parse_args(argv)
    global BACKEND
    BACKEND = a.backend
    with threadpool_limits(1):
        for family in a.families:
            mdp = build_mdp(family, a.n_states)
            print(f"\n== {family}: {describe_mdp(family, a.n_states)}  ({mdp.n_states} states, "
                  f"{mdp.p_indices.size} transitions)", flush=True)
            rows = linear_section(mdp, a.repeat, family in a.spsolve) if a.linear else {}
            for op, (med, res, method, fill) in rows.items():
                fill = "" if fill is None else f", LU fill {fill:.1f}x"
                print(f"  {op:10s} fastppo {1e3 * med['fastppo']:8.1f} ms ({method}{fill}; res "
                      f"{res['fastppo']:.1e}) | bicgstab {1e3 * med['bicgstab']:8.1f} ms (res "
                      f"{res['bicgstab']:.1e}; int64 {1e3 * med['bicgstab int64']:.1f} ms) | "
                      f"spsolve {1e3 * med['spsolve']:8.1f} ms | ratio "
                      f"vs bicgstab {med['bicgstab'] / med['fastppo']:.2f}x (int64 "
                      f"{med['bicgstab int64'] / med['fastppo']:.2f}x), vs spsolve "
                      f"{med['spsolve'] / med['fastppo']:.2f}x", flush=True)
            if a.solve:
                med, err, cpu = solve_section(mdp, a.repeat, a.qe_pi, a.qe_vi, a.qe_eps,
                                         (mdp.n_states <= a.others_max, a.toolbox_max),
                                         a.before_after)
                # QuantEcon's fastest among its methods within 1e-8 of v* (the target's rule)
                best = min((v for k, v in med.items() if k.startswith("qe") and err[k] <= QE_TOL),
                           default=np.nan)
                print("  solve      " + " | ".join(f"{k} {1e3 * v:.1f} ms (err {err[k]:.1e})"
                                                   for k, v in med.items())
                      + f" | ratio vs QuantEcon's fastest {best / med['fastppo.solve']:.2f}x"
                      + ("" if "fastppo.solve (before)" not in med else
                         f" (before: {best / med['fastppo.solve (before)']:.2f}x)"),
                      flush=True)
                # CPU time of this process (the machine may be shared): the same ratios
                best_cpu = min((cpu[k] for k in med if k.startswith("qe") and err[k] <= QE_TOL),
                               default=np.nan)
                print("  solve cpu  " + " | ".join(f"{k} {1e3 * v:.1f} ms" for k, v in cpu.items())
                      + f" | ratio {best_cpu / cpu['fastppo.solve']:.2f}x"
                      + ("" if "fastppo.solve (before)" not in cpu else
                         f" (before: {best_cpu / cpu['fastppo.solve (before)']:.2f}x)"),
                      flush=True)
            if a.ppo:
                med, diff = ppo_section(mdp, a.ppo)
                (fw, fc), (bw, bc) = med["fastppo"], med["baseline"]
                print(f"  PPO-Clip   iterations 2..{a.ppo}: fastppo {1e3 * fw:.1f} ms (CPU "
                      f"{1e3 * fc:.1f}) | baseline {1e3 * bw:.1f} ms (CPU {1e3 * bc:.1f}) | "
                      f"ratio {bw / fw:.2f}x (CPU {bc / fc:.2f}x); max |Δθ| {diff:.1e}",
                      flush=True)


if __name__ == "__main__":
    main()

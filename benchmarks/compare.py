"""Side-by-side timing of fastppo's backends against SciPy Krylov solvers, in one process.

Usage (from the repository root)::

    python benchmarks/compare.py [--n-states 50000] [--repeat 7] [--families garnet local grid]

For each MDP family it builds the fixed-seed MDP (default: the garnet S=50,000, A=10,
b=10, γ=0.99), a fixed non-uniform policy π = softmax(θ), θ ~ N(0, 1), and times

- ``fastppo.evaluate`` (0.1·KL(π‖uniform) regularized), ``fastppo.visitation`` (μ = ρ) and
  ``fastppo.gradient`` (both solves + tables) for every backend at each thread count;
- SciPy baselines for exactly the same linear systems, written here:
  ``scipy.sparse.linalg.bicgstab`` and ``scipy.sparse.linalg.gmres`` (restart 40, as
  fastppo) on an assembled CSR matrix I − γP_π (and its transpose, converted to CSR, for
  the visitation system), to the same relative tolerance (``rtol=1e-12``, ``atol=0``).
  The assembly (P_π = Π P as a sparse product, I − γP_π, transpose) is timed separately
  and reported in its own column; the baseline "median" excludes it.

Each entry is the median (and minimum) of ``--repeat`` calls after one untimed warm-up
call. The number of products with the system matrix is counted once per entry (fastppo:
``n_matvec``; SciPy: a counting LinearOperator in a separate, untimed run) together with
the true relative residual. Ratios are speed-ups relative to SciPy bicgstab on the same
operation (> 1: faster than bicgstab): once against bicgstab's solve time alone and once
against bicgstab's solve + assembly (what a user of SciPy actually pays per policy).

BLAS (OpenBLAS, used by fastppo's Gram-Schmidt and by SciPy's Krylov vector updates) is
pinned to ``--blas-threads`` threads (default 1) so that ``n_threads`` is the only
parallelism; the value is printed.
"""
import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-states", type=int, default=50_000)
    p.add_argument("--n-actions", type=int, default=10)
    p.add_argument("--branching", type=int, default=10)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--locality", type=int, default=50, help="window of the 'local' family")
    p.add_argument("--families", nargs="+", default=["garnet"], choices=["garnet", "local", "grid"],
                   help="'local': garnet with successors within ±locality (slow mixing); "
                        "'grid': gridworld with H*W = n_states")
    p.add_argument("--repeat", type=int, default=7, help="timed calls per entry (median reported)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--backends", nargs="+", default=["numba", "cython", "numpy"],
                   choices=["numba", "cython", "numpy"])
    p.add_argument("--ops", nargs="+", default=["evaluate", "visitation", "gradient"],
                   choices=["evaluate", "visitation", "gradient"])
    p.add_argument("--tol", type=float, default=1e-12, help="relative residual for every solver")
    p.add_argument("--tau", type=float, default=0.1, help="weight of the reverse-KL regularizer")
    p.add_argument("--blas-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


ARGS = parse_args()
# must precede the first import of numpy
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.blas_threads))
os.environ.setdefault("MKL_NUM_THREADS", str(ARGS.blas_threads))

import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

import fastppo  # noqa: E402

RESTART = 40


# ----------------------------------------------------------------------------- helpers
def timed(func, repeat):
    """(median, min) seconds of ``repeat`` calls after one untimed warm-up; last result."""
    out = func()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(min(times)), out


def build(family, a):
    if family == "garnet":
        return fastppo.garnet(a.n_states, a.n_actions, a.branching, gamma=a.gamma, seed=a.seed)
    if family == "local":
        return fastppo.garnet(a.n_states, a.n_actions, a.branching, gamma=a.gamma, seed=a.seed,
                              locality=a.locality)
    h = max(d for d in range(1, math.isqrt(a.n_states) + 1) if a.n_states % d == 0)
    return fastppo.gridworld(h, a.n_states // h, gamma=a.gamma)


def describe(family, a, mdp):
    if family == "garnet":
        return (f"fastppo.garnet({a.n_states}, {a.n_actions}, {a.branching}, gamma={a.gamma}, "
                f"seed={a.seed})")
    if family == "local":
        return (f"fastppo.garnet({a.n_states}, {a.n_actions}, {a.branching}, gamma={a.gamma}, "
                f"seed={a.seed}, locality={a.locality})")
    h = max(d for d in range(1, math.isqrt(a.n_states) + 1) if a.n_states % d == 0)
    return f"fastppo.gridworld({h}, {a.n_states // h}, gamma={a.gamma})"


def segment_sum(a_indptr, x):
    return np.add.reduceat(x, a_indptr[:-1])


class Counting(spla.LinearOperator):
    """A CSR matrix as a LinearOperator that counts its products (untimed runs only)."""

    def __init__(self, A):
        super().__init__(A.dtype, A.shape)
        self.A, self.n = A, 0

    def _matvec(self, x):
        self.n += 1
        return self.A @ x


class ScipyBaseline:
    """The fastppo operations written with scipy.sparse and an assembled I − γP_π."""

    def __init__(self, mdp, reg, tol):
        self.mdp, self.reg, self.tol = mdp, reg, tol
        self.s_of_pair = mdp.s_indices
        # copies: a CSR built from (data, indices, indptr) keeps views of the arrays
        self.P = sp.csr_array((mdp.p_data.copy(), mdp.p_indices.copy(), mdp.p_indptr.copy()),
                              shape=(mdp.n_pairs, mdp.n_states))
        self.eye = sp.eye_array(mdp.n_states, format="csr")
        self.ref = reg.reference_policy(mdp)

    # -- assembly (timed separately)
    def assemble(self, pi, transpose=False):
        """I − γP_π (CSR), and with ``transpose`` also (I − γP_π)ᵀ converted to CSR."""
        m = self.mdp
        Pi = sp.csr_array((pi, np.arange(m.n_pairs), m.a_indptr.copy()),
                          shape=(m.n_states, m.n_pairs))
        A = (self.eye - m.gamma * (Pi @ self.P)).tocsr()
        if transpose:
            return A, A.T.tocsr()
        return A, None

    def solve(self, method, A, b, counting=False):
        op = Counting(A) if counting else A
        if method == "bicgstab":
            x, info = spla.bicgstab(op, b, rtol=self.tol, atol=0.0, maxiter=5000)
        else:
            x, info = spla.gmres(op, b, rtol=self.tol, atol=0.0, restart=RESTART, maxiter=200)
        if info != 0:
            raise RuntimeError(f"scipy {method} did not converge (info={info})")
        return x, (op.n if counting else None)

    # -- the three operations, given the assembled matrices
    def evaluate(self, method, A, pi, counting=False):
        m, reg = self.mdp, self.reg
        c = segment_sum(m.a_indptr, pi * m.r) - reg.tau * segment_sum(m.a_indptr, reg.ref_f(pi, self.ref))
        v, n = self.solve(method, A, c, counting)
        q = m.r + m.gamma * (self.P @ v)
        adv = q - segment_sum(m.a_indptr, pi * q)[self.s_of_pair]
        return dict(v=v, q=q, adv=adv, n_matvec=n, residual=np.linalg.norm(c - A @ v) / np.linalg.norm(c))

    def visitation(self, method, At, mu=None, counting=False):
        m = self.mdp
        mu = m.rho if mu is None else mu
        scale = mu.max()  # solve with an order-1 right-hand side (bicgstab false breakdowns)
        y, n = self.solve(method, At, mu / scale, counting)
        d = (1.0 - m.gamma) * scale * y
        np.maximum(d, 0.0, out=d)
        d /= d.sum()
        return dict(d=d, n_matvec=n, residual=np.linalg.norm(mu / scale - At @ y) / np.linalg.norm(mu / scale))

    def softmax(self, logits):
        m = self.mdp
        z = logits - np.maximum.reduceat(logits, m.a_indptr[:-1])[self.s_of_pair]
        e = np.exp(z)
        return e / segment_sum(m.a_indptr, e)[self.s_of_pair]

    def gradient(self, method, A, At, logits, counting=False):
        m, reg = self.mdp, self.reg
        pi = self.softmax(logits)
        ev = self.evaluate(method, A, pi, counting)
        vis = self.visitation(method, At, None, counting)
        s = self.s_of_pair
        b = ev["adv"]
        g = pi * (b - segment_sum(m.a_indptr, pi * b)[s])
        pf = reg.p_fprime(pi, self.ref)
        g -= reg.tau * (pf - pi * segment_sum(m.a_indptr, pf)[s])
        g *= (vis["d"] / (1.0 - m.gamma))[s]
        n = None if not counting else ev["n_matvec"] + vis["n_matvec"]
        return dict(g=g, n_matvec=n, residual=max(ev["residual"], vis["residual"]))


def rel_diff(x, y):
    return float(np.max(np.abs(x - y)) / np.max(np.abs(y)))


# -------------------------------------------------------------------------------- main
def run_family(family, a):
    t = time.perf_counter()
    mdp = build(family, a)
    t_build = time.perf_counter() - t
    rng = np.random.default_rng(a.seed + 1)
    logits = rng.standard_normal(mdp.n_pairs)
    pi = fastppo.softmax(mdp, logits, backend="numpy")
    reg = fastppo.ReverseKL(a.tau)
    print(f"\n=== family {family!r}: {describe(family, a, mdp)}")
    print(f"    {mdp!r}; built in {t_build:.2f} s")
    print(f"    policy pi = softmax(theta), theta ~ N(0,1) (seed {a.seed + 1}); "
          f"regularizer {reg!r} for evaluate/gradient; mu = rho (uniform) for visitation")

    rows = []  # (op, method, threads, median, min, assembly, products, residual)
    results = {}
    for op in a.ops:
        for backend in a.backends:
            for nt in a.threads:
                opts = dict(backend=backend, n_threads=nt)
                if op == "evaluate":
                    f = lambda: fastppo.evaluate(mdp, pi, reg, **opts)  # noqa: E731
                elif op == "visitation":
                    f = lambda: fastppo.visitation(mdp, pi, full_output=True, **opts)  # noqa: E731
                else:
                    f = lambda: fastppo.gradient(mdp, logits, reg, **opts)  # noqa: E731
                med, mn, out = timed(f, a.repeat)
                if op == "gradient":
                    p = fastppo.softmax(mdp, logits, **opts)
                    ev = fastppo.evaluate(mdp, p, reg, **opts)
                    vis = fastppo.visitation(mdp, p, full_output=True, **opts)
                    n, res = ev.n_matvec + vis.n_matvec, max(ev.residual, vis.residual)
                    results[(op, backend, nt)] = out
                else:
                    n, res = out.n_matvec, out.residual
                    results[(op, backend, nt)] = out.v if op == "evaluate" else out.d
                label = f"fastppo[{backend}]" + (" (ignores n_threads)" if backend == "numpy" and nt > 1 else "")
                rows.append((op, label, nt, med, mn, 0.0, n, res))
                print(f"    {op:10s} {label:34s} threads={nt}  median {med:8.4f} s  products {n}", flush=True)

        base = ScipyBaseline(mdp, reg, a.tol)
        for method in ("bicgstab", "gmres"):
            if op == "evaluate":
                asm, _, (A, _) = timed(lambda: base.assemble(pi), a.repeat)
                med, mn, out = timed(lambda: base.evaluate(method, A, pi), a.repeat)
                cnt = base.evaluate(method, A, pi, counting=True)
                results[(op, method)] = out["v"]
            elif op == "visitation":
                asm, _, (_, At) = timed(lambda: base.assemble(pi, transpose=True), a.repeat)
                med, mn, out = timed(lambda: base.visitation(method, At), a.repeat)
                cnt = base.visitation(method, At, counting=True)
                results[(op, method)] = out["d"]
            else:
                p = base.softmax(logits)  # the op recomputes it (timed); assembly needs it
                asm, _, (A, At) = timed(lambda: base.assemble(p, transpose=True), a.repeat)
                med, mn, out = timed(lambda: base.gradient(method, A, At, logits), a.repeat)
                cnt = base.gradient(method, A, At, logits, counting=True)
                results[(op, method)] = out["g"]
            rows.append((op, f"scipy {method} (CSR)", 1, med, mn, asm, cnt["n_matvec"], cnt["residual"]))
            print(f"    {op:10s} {'scipy ' + method:34s} threads=1  median {med:8.4f} s  "
                  f"assembly {asm:.4f} s  products {cnt['n_matvec']}", flush=True)
        del base

    # agreement with bicgstab (same systems, same tolerance)
    print("\n    agreement (max |x - x_bicgstab| / max |x_bicgstab|):")
    for op in a.ops:
        ref = results[(op, "bicgstab")]
        diffs = [f"{k[1]}/{k[2]}: {rel_diff(np.asarray(x).reshape(-1), ref):.1e}"
                 for k, x in results.items() if k[0] == op and len(k) == 3]
        diffs.append(f"gmres: {rel_diff(results[(op, 'gmres')], ref):.1e}")
        print(f"      {op:10s} " + ", ".join(diffs))

    table(family, rows)


def table(family, rows):
    head = ("operation", "method", "thr", "median s", "min s", "assembly s", "products", "residual",
            "x bicg", "x bicg+asm")
    lines = []
    for op in dict.fromkeys(r[0] for r in rows):
        ops = [r for r in rows if r[0] == op]
        bicg = next(r for r in ops if r[1].startswith("scipy bicgstab"))
        for (o, method, nt, med, mn, asm, n, res) in ops:
            lines.append((o, method, str(nt), f"{med:.4f}", f"{mn:.4f}",
                          f"{asm:.4f}" if asm else "-", str(n), f"{res:.1e}",
                          f"{bicg[3] / med:.2f}", f"{(bicg[3] + bicg[5]) / (med + asm):.2f}"))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    print(f"\n    results for family {family!r} (median of {ARGS.repeat} after a warm-up; "
          "'x bicg' = scipy bicgstab solve time / this time, 'x bicg+asm' = "
          "(bicgstab solve + its assembly) / (this time + its assembly)):")
    print("    " + fmt(head))
    print("    " + "  ".join("-" * w for w in widths))
    prev = None
    for line in lines:
        if prev is not None and line[0] != prev:
            print()
        prev = line[0]
        print("    " + fmt(line))


def main():
    a = ARGS
    cmd = " ".join(["python", "benchmarks/compare.py", *sys.argv[1:]])
    print(f"command: {cmd}")
    print(f"sizes:   n_states={a.n_states}, n_actions={a.n_actions}, branching={a.branching}, "
          f"gamma={a.gamma}, locality={a.locality} (local family); families={a.families}")
    print(f"solvers: tol={a.tol:g} relative residual for all (scipy: rtol={a.tol:g}, atol=0; "
          f"gmres restart={RESTART}); repeat={a.repeat}; threads={a.threads}; "
          f"backends={a.backends}")
    print(f"host:    {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; python {platform.python_version()}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}, fastppo {fastppo.__version__}; "
          f"BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}")
    fastppo.show_backends()
    t0 = time.perf_counter()
    for family in a.families:
        run_family(family, a)
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

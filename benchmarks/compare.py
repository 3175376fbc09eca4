"""Side-by-side timing of fastppo's backends against SciPy Krylov solvers, in one process.

Usage (from the repository root)::

    python benchmarks/compare.py [--n-states 50000] [--repeat 7] [--families garnet local grid]
                                 [--peers]

``--peers`` then runs ``benchmarks/peers.py`` on the same sizes and families: STREAM-style
bandwidth and effective GB/s of the products, ``solve`` and ``evaluate`` next to
QuantEcon, mdpsolver and pymdptoolbox (those installed; ``pip install .[peers]``).

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

bicgstab breaks down on some of these systems (notably the visitation system of the
slow-mixing family) even with an order-1 right-hand side; it is then restarted from its
last iterate if that made progress (the note column says how often), and an entry whose
true residual misses 10·tol is flagged NOT CONVERGED. If bicgstab fails outright, the
ratios of that operation are taken against SciPy gmres instead (said in the note).

BLAS (OpenBLAS, used by fastppo's Gram-Schmidt and by SciPy's Krylov vector updates) is
pinned to ``--blas-threads`` threads (default 1, with threadpoolctl) so that ``n_threads``
is the only parallelism; the value is printed. The MDP families are built by
``benchmarks/benchmarks/common.py`` (the asv suite's own builder).
"""
import argparse
import math
import os
import platform
import sys
import time

import numpy as np
import scipy
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from threadpoolctl import threadpool_info, threadpool_limits

import fastppo
from benchmarks.common import build_mdp, describe_mdp  # benchmarks/benchmarks/common.py


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
    p.add_argument("--peers", action="store_true",
                   help="then run benchmarks/peers.py at --n-states (QuantEcon, mdpsolver, "
                        "pymdptoolbox, STREAM bandwidth; whichever is installed)")
    return p.parse_args(argv)


ARGS = parse_args()
RESTART = 40  # GMRES restart length, as fastppo
MAX_RESTARTS = 10  # bicgstab restarts after a breakdown


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


def _family_options(a):
    return dict(n_actions=a.n_actions, branching=a.branching, gamma=a.gamma, seed=a.seed,
                locality=a.locality)


def build(family, a):
    return build_mdp(family, a.n_states, **_family_options(a))


def describe(family, a, mdp):
    return describe_mdp(family, a.n_states, **_family_options(a))


def relres(A, x, b):
    """True relative residual ‖b − A x‖ / ‖b‖ (untimed runs only)."""
    return float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))


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
        # copies (a CSR built from (data, indices, indptr) keeps views of the arrays), with
        # int32 indices where they fit: SciPy's faster CSR (csr_array keeps int64 inputs;
        # 20 % slower products on the 10k garnet, benchmarks/RESULTS.md, issue 17)
        self.index = np.int32 if max(mdp.p_data.shape[0], mdp.n_pairs) < 2**31 else np.int64
        self.P = sp.csr_array((mdp.p_data.copy(), mdp.p_indices.astype(self.index),
                               mdp.p_indptr.astype(self.index)), shape=(mdp.n_pairs, mdp.n_states))
        self.eye = sp.eye_array(mdp.n_states, format="csr")
        self.ref = reg.reference_policy(mdp)
        self.restarts = 0

    # -- assembly (timed separately)
    def assemble(self, pi, transpose=False):
        """I − γP_π (CSR), and with ``transpose`` also (I − γP_π)ᵀ converted to CSR."""
        m = self.mdp
        Pi = sp.csr_array((pi, np.arange(m.n_pairs, dtype=self.index),
                           m.a_indptr.astype(self.index)), shape=(m.n_states, m.n_pairs))
        A = (self.eye - m.gamma * (Pi @ self.P)).tocsr()
        if transpose:
            return A, A.T.tocsr()
        return A, None

    def solve(self, method, A, b, counting=False):
        """x with ‖b − A x‖ ≤ tol ‖b‖, and the products used (if ``counting``).

        bicgstab can break down (info < 0: ρ or ω ≈ 0) on these systems even with an
        order-1 right-hand side. It is then restarted from its last iterate (a new
        shadow residual), as a user would, if that iterate has a smaller true residual
        than the start (at most MAX_RESTARTS times; ``self.restarts`` keeps the most
        seen); otherwise the solve fails.
        """
        op = Counting(A) if counting else A
        bnorm = np.linalg.norm(b)
        x, start_res, restarts = None, bnorm, 0
        while True:
            if method == "bicgstab":
                x_new, info = spla.bicgstab(op, b, x0=x, rtol=self.tol, atol=0.0, maxiter=5000)
            else:
                x_new, info = spla.gmres(op, b, x0=x, rtol=self.tol, atol=0.0, restart=RESTART,
                                         maxiter=200)
            if info == 0:
                break
            if info > 0:
                raise RuntimeError(f"{method}: no convergence within maxiter (info={info})")
            res = np.linalg.norm(b - A @ x_new)
            if not res < start_res or restarts == MAX_RESTARTS:
                raise RuntimeError(f"{method}: breakdown (info={info}) at true relative residual "
                                   f"{res / bnorm:.1e} after {restarts} restart(s)")
            x, start_res, restarts = x_new, res, restarts + 1
        self.restarts = max(self.restarts, restarts)
        return x_new, (op.n if counting else None)

    # -- the three operations, given the assembled matrices
    def evaluate(self, method, A, pi, counting=False):
        m, reg = self.mdp, self.reg
        c = segment_sum(m.a_indptr, pi * m.r - reg.tau * reg.ref_f(pi, self.ref))
        v, n = self.solve(method, A, c, counting)
        q = m.r + m.gamma * (self.P @ v)
        adv = q - segment_sum(m.a_indptr, pi * q)[self.s_of_pair]
        return dict(v=v, q=q, adv=adv, n_matvec=n, residual=relres(A, v, c) if counting else None)

    def visitation(self, method, At, mu=None, counting=False):
        m = self.mdp
        mu = m.rho if mu is None else mu
        b = mu / mu.max()  # an order-1 right-hand side (bicgstab false breakdowns)
        y, n = self.solve(method, At, b, counting)
        d = (1.0 - m.gamma) * mu.max() * y
        np.maximum(d, 0.0, out=d)
        d /= d.sum()
        return dict(d=d, n_matvec=n, residual=relres(At, y, b) if counting else None)

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
        if not counting:
            return dict(g=g, n_matvec=None, residual=None)
        return dict(g=g, n_matvec=ev["n_matvec"] + vis["n_matvec"],
                    residual=max(ev["residual"], vis["residual"]))


def rel_diff(x, y):
    return float(np.max(np.abs(x - y)) / np.max(np.abs(y)))


def fastppo_entry(mdp, op, backend, nt, pi, logits, reg, a):
    """(median, min, products, residual, result) of one fastppo entry."""
    opts = dict(backend=backend, n_threads=nt)
    if op == "evaluate":
        med, mn, out = timed(lambda: fastppo.evaluate(mdp, pi, reg, **opts), a.repeat)
        return med, mn, out.n_matvec, out.residual, out.v
    if op == "visitation":
        med, mn, out = timed(lambda: fastppo.visitation(mdp, pi, full_output=True, **opts),
                             a.repeat)
        return med, mn, out.n_matvec, out.residual, out.d
    med, mn, out = timed(lambda: fastppo.gradient(mdp, logits, reg, **opts), a.repeat)
    p = fastppo.softmax(mdp, logits, **opts)  # the two solves inside gradient, for counts
    ev = fastppo.evaluate(mdp, p, reg, **opts)
    vis = fastppo.visitation(mdp, p, full_output=True, **opts)
    return med, mn, ev.n_matvec + vis.n_matvec, max(ev.residual, vis.residual), out.reshape(-1)


def baseline_entry(base, op, method, pi, logits, a):
    """(median, min, assembly median, products, residual, result) of one SciPy entry."""
    if op == "evaluate":
        asm, _, (A, _) = timed(lambda: base.assemble(pi), a.repeat)
        med, mn, out = timed(lambda: base.evaluate(method, A, pi), a.repeat)
        cnt = base.evaluate(method, A, pi, counting=True)
        x = out["v"]
    elif op == "visitation":
        asm, _, (_, At) = timed(lambda: base.assemble(pi, transpose=True), a.repeat)
        med, mn, out = timed(lambda: base.visitation(method, At), a.repeat)
        cnt = base.visitation(method, At, counting=True)
        x = out["d"]
    else:
        p = base.softmax(logits)  # the op recomputes it (timed); the assembly needs it
        asm, _, (A, At) = timed(lambda: base.assemble(p, transpose=True), a.repeat)
        med, mn, out = timed(lambda: base.gradient(method, A, At, logits), a.repeat)
        cnt = base.gradient(method, A, At, logits, counting=True)
        x = out["g"]
    return med, mn, asm, cnt["n_matvec"], cnt["residual"], x


# -------------------------------------------------------------------------------- main
def run_family(family, a):
    t = time.perf_counter()
    mdp = build(family, a)
    t_build = time.perf_counter() - t
    logits = np.random.default_rng(a.seed + 1).standard_normal(mdp.n_pairs)
    pi = fastppo.softmax(mdp, logits, backend="numpy")
    reg = fastppo.ReverseKL(a.tau)
    print(f"\n=== family {family!r}: {describe(family, a, mdp)}")
    print(f"    {mdp!r}; built in {t_build:.2f} s")
    print(f"    policy pi = softmax(theta), theta ~ N(0,1) (seed {a.seed + 1}); regularizer "
          f"{reg!r} for evaluate/gradient; mu = rho for visitation")

    rows = []  # dicts: op, method, thr, med, min, asm, n, res, note
    results = {}
    for op in a.ops:
        for backend in a.backends:
            for nt in a.threads:
                med, mn, n, res, x = fastppo_entry(mdp, op, backend, nt, pi, logits, reg, a)
                results[(op, f"{backend}/{nt}")] = x
                note = "numpy backend ignores n_threads" if backend == "numpy" and nt > 1 else ""
                rows.append(dict(op=op, method=f"fastppo[{backend}]", thr=nt, med=med, min=mn,
                                 asm=0.0, n=n, res=res, note=note, ok=True))
                label = f"fastppo[{backend}]"
                print(f"    {op:10s} {label:22s} threads={nt}  median {med:8.4f} s  products {n}",
                      flush=True)
        base = ScipyBaseline(mdp, reg, a.tol)
        for method in ("bicgstab", "gmres"):
            base.restarts = 0
            label = f"scipy {method} (CSR)"
            try:
                med, mn, asm, n, res, x = baseline_entry(base, op, method, pi, logits, a)
            except RuntimeError as exc:  # report and keep going
                rows.append(dict(op=op, method=label, thr=1, med=math.nan, min=math.nan,
                                 asm=math.nan, n="-", res=math.nan, note=f"FAILED: {exc}",
                                 ok=False))
                print(f"    {op:10s} {label:22s} FAILED: {exc}", flush=True)
                continue
            notes = [f"{base.restarts} breakdown restart(s)"] if base.restarts else []
            ok = res <= 10 * a.tol
            if ok:
                results[(op, method)] = x
            else:  # recursive residual converged, true residual did not (residual gap)
                notes.append(f"NOT CONVERGED: true residual {res:.1e} > 10*tol")
            note = "; ".join(notes)
            rows.append(dict(op=op, method=label, thr=1, med=med, min=mn, asm=asm, n=n, res=res,
                             note=note, ok=ok))
            print(f"    {op:10s} {label:22s} threads=1  median {med:8.4f} s  assembly {asm:.4f} s  "
                  f"products {n}  {note}", flush=True)
        del base

    print("\n    agreement with the converged scipy solution (max |x - x_scipy| / max |x_scipy|; "
          "v for evaluate, d for visitation, the gradient for gradient):")
    for op in a.ops:
        method = next((m for m in ("bicgstab", "gmres") if (op, m) in results), None)
        if method is None:
            print(f"      {op:10s} no converged scipy solution")
            continue
        ref = results[(op, method)]
        diffs = [f"{k[1]}: {rel_diff(x, ref):.1e}" for k, x in results.items()
                 if k[0] == op and k[1] != method]
        print(f"      {op:10s} (vs scipy {method}) " + ", ".join(diffs))
    table(family, rows, a)


def table(family, rows, a):
    head = ("operation", "method", "thr", "median s", "min s", "assembly s", "products",
            "residual", "x bicg", "x bicg+asm", "note")
    lines = []
    for op in dict.fromkeys(r["op"] for r in rows):
        ops = [r for r in rows if r["op"] == op]
        # the reference is scipy bicgstab; where it failed, scipy gmres (said in the note)
        ref = next((r for m in ("bicgstab", "gmres") for r in ops
                    if r["method"] == f"scipy {m} (CSR)" and r["ok"]), None)
        fallback = ref is not None and "gmres" in ref["method"]
        for r in ops:
            ratios = ("n/a", "n/a")
            if r["ok"] and ref is not None:
                ratios = (f"{ref['med'] / r['med']:.2f}",
                          f"{(ref['med'] + ref['asm']) / (r['med'] + r['asm']):.2f}")
            note = r["note"] or ("ratios vs scipy gmres (bicgstab failed)" if fallback else "")
            lines.append((op, r["method"], str(r["thr"]), f"{r['med']:.4f}", f"{r['min']:.4f}",
                          f"{r['asm']:.4f}" if r["asm"] else "-", str(r["n"]), f"{r['res']:.1e}",
                          *ratios, note))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in (0, 1, 10) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(f"\n    results for family {family!r}: median and min of {a.repeat} calls after a "
          "warm-up;\n    x bicg = (scipy bicgstab solve time) / (this time), "
          "x bicg+asm = (bicgstab solve + its assembly) / (this time + its assembly);\n"
          "    > 1 means faster than scipy bicgstab. 'median s' of the scipy rows excludes "
          "the assembly of I - gamma P_pi (own column).")
    print("    " + fmt(head))
    print("    " + "  ".join("-" * w for w in widths))
    for i, line in enumerate(lines):
        if i and line[0] != lines[i - 1][0]:
            print()
        print("    " + fmt(line))


def main():
    a = ARGS
    print(f"command: {' '.join(['python', 'benchmarks/compare.py', *sys.argv[1:]])}")
    print(f"sizes:   n_states={a.n_states}, n_actions={a.n_actions}, branching={a.branching}, "
          f"gamma={a.gamma}, locality={a.locality} (local family); families={a.families}")
    print(f"solvers: relative residual tol={a.tol:g} for all (scipy: rtol={a.tol:g}, atol=0; "
          f"gmres restart={RESTART}); repeat={a.repeat}; threads={a.threads}; "
          f"backends={a.backends}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"host:    {platform.machine()}, {os.cpu_count()} CPUs, load average {load}; "
          f"python {platform.python_version()}, numpy {np.__version__}, scipy "
          f"{scipy.__version__}, fastppo {fastppo.__version__}; BLAS threads "
          f"{sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'})}")
    fastppo.show_backends()
    t0 = time.perf_counter()
    for family in a.families:
        run_family(family, a)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; load average at the end {load}")
    if a.peers:
        import peers  # benchmarks/peers.py, beside this script

        print()
        families = [f for f in a.families if f in ("garnet", "local")] or ["garnet"]
        peers.main(["--sizes", str(a.n_states), "--families", *families])


if __name__ == "__main__":
    with threadpool_limits(limits=ARGS.blas_threads, user_api="blas"):
        main()

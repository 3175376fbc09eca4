"""A lower bound on the products of a warm-started solve (issue 14 item 4), from the spectrum.

Any solver built from products with A = I − γP_π (Richardson, Krylov) leaves the residual
p_k(A) r_0, p_k of degree k with p_k(0) = 1. Beyond the eigenvalue 1 − γ of the constant
vector (which fastppo's sweeps remove by extrapolation), a garnet's P_π has its eigenvalues
in a disk |λ| ≤ |λ₂| (circular law), so A's lie in |z − 1| ≤ R = γ|λ₂|, on which the least
max |p_k| is R^k. A warm start from ``old.v`` (relative residual r_0 for the new system)
must reach the solve's 1e-13, so its final evaluation alone needs about
log(r_0 / 1e-13) / log(1 / R) products, whatever finds the new policy. Printed beside the
measured ``floor`` (that evaluation by fastppo from ``old.v``) and the cold solve's
products, for warm_start.py's 1 % changes on the 50k garnet, τ = 0.

    python benchmarks/warm_start_bound.py [--n-states 50000]
"""
import argparse
import os
import sys

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "benchmarks")]
from common import build_mdp  # noqa: E402
from warm_start import changed  # noqa: E402

import fastppo  # noqa: E402

CERTIFIED = 1e-13  # the relative residual of solve's last evaluation


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-states", type=int, default=50_000)
    mdp = build_mdp("garnet", ap.parse_args(argv).n_states)
    n = mdp.n_states
    p = sp.csr_matrix((mdp.p_data, mdp.p_indices, mdp.p_indptr), shape=(mdp.n_pairs, n))
    states = np.repeat(np.arange(n), np.diff(mdp.a_indptr))
    old = fastppo.solve(mdp)
    print("| change | γ·abs(λ₂) | r_0 of old.v | decades | bound (products) | floor | cold | bound / cold |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("additive", "multiplicative"):
        new = changed(mdp, kind)
        cold = fastppo.solve(new)
        pi = cold.policy.ravel()
        p_pi = sp.csr_matrix((pi, (states, np.arange(mdp.n_pairs))), shape=(n, mdp.n_pairs)) @ p
        a = sp.identity(n, format="csr") - mdp.gamma * p_pi
        b = a @ cold.v  # the new system's right-hand side, through its exact solution
        r0 = np.linalg.norm(b - a @ old.v) / np.linalg.norm(b)
        lam = np.sort(np.abs(sla.eigs(p_pi, k=3, which="LM", tol=1e-4, return_eigenvectors=False)))
        radius = mdp.gamma * lam[-2]
        decades = np.log10(r0 / CERTIFIED)
        bound = decades / -np.log10(radius)
        floor = fastppo.evaluate(new, cold.policy, v0=old.v, tol=CERTIFIED).n_matvec
        print(f"| {kind} | {radius:.3f} | {r0:.2e} | {decades:.1f} | {bound:.1f} | {floor} | "
              f"{cold.n_matvec} | {bound / cold.n_matvec:.2f} |", flush=True)


if __name__ == "__main__":
    main()

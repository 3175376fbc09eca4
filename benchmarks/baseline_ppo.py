"""The straightforward baseline: exact PPO-Clip written with plain scipy/NumPy.

What a competent user writes in ~30 lines instead of importing fastppo, and the yardstick
of every PPO-Clip speed ratio in ``RESULTS.md``. One outer iteration (SPEC §1):

- softmax of θ (table (S, A));
- P_π = Π P assembled as a scipy CSR by a sparse product (Π: S × SA, π on the diagonal blocks;
  int32 indices where they fit, SciPy's faster form: 7 % off an iteration at 50k);
- ``scipy.sparse.linalg.bicgstab`` from zero for (I − γP_π) v = r_π − τ D_f(π), rtol 1e-10;
- Q = r + γ P v and Ã = Q − Σ_a π Q by NumPy;
- ``bicgstab`` on (I − γP_π)ᵀ y = S·μ for d = y / Σy, rtol 1e-10 (S·μ: scipy's bicgstab
  reports a false breakdown on the tiny (1 − γ)μ), started at S·μ/(1 − γ), the solution's
  mass (from zero with a uniform μ the shadow residual 1 is an eigenvector of I − γP_π, and
  bicgstab breaks down);
- K vectorised NumPy inner steps of the clipped update θ ← θ + η g.

Rectangular MDPs; regularizer none, forward KL or reverse KL (τ ≥ 0, reference policy).

Run ``python benchmarks/baseline_ppo.py`` for the README problem (garnet S = 50,000, A = 10,
b = 10, γ = 0.99, forward KL τ = 0.1, ε = 0.2, K = 10): it times fastppo's
``PPOClip.step()`` and the baseline's ``step()`` interleaved in one process and prints the
medians and their ratio. ``tests/test_baseline.py`` checks that the baseline reproduces
fastppo's iterates.
"""
import argparse
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import bicgstab


def softmax(theta):
    e = np.exp(theta - theta.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class BaselinePPO:
    """PPO-Clip on P (CSR, SA × S, row s·A + a), r (S, A), with η given or scale-free."""

    def __init__(self, P, r, gamma, mu, kind="forward-kl", tau=0.0, ref=None, clip=0.2,
                 inner_steps=10, lr=None, step_scale=1.0):
        self.r, self.gamma, self.mu = np.asarray(r), gamma, mu
        S, A = self.r.shape
        # int32 indices where they fit: SciPy's faster CSR (csr_array keeps int64 inputs)
        P = sp.csr_array(P)
        index = np.int32 if max(P.nnz, S * A) < 2**31 else np.int64
        self.P = sp.csr_array((P.data, P.indices.astype(index), P.indptr.astype(index)),
                              shape=P.shape)
        self.ref = np.full((S, A), 1.0 / A) if ref is None else ref
        self.kind, self.tau, self.clip, self.K = kind, tau, clip, inner_steps
        self.theta = np.log(self.ref)
        self._cols = np.arange(S * A, dtype=index)
        self._rows = np.arange(0, S * A + 1, A, dtype=index)
        if lr is None:  # fastppo's scale-free default: largest first per-state step = step_scale
            d0 = self.evaluate(softmax(self.theta))[2]
            lr = step_scale * (1.0 - gamma) / d0.max()
        self.lr = lr

    def p_fprime(self, pi):
        """π f'(π/π_ref) per pair."""
        if self.kind == "forward-kl":
            return -self.ref
        return pi * (np.log(pi / self.ref) + 1.0)  # reverse KL

    def divergence(self, pi):
        if self.kind == "forward-kl":
            return (self.ref * np.log(self.ref / pi)).sum(axis=1)
        return (pi * np.log(pi / self.ref)).sum(axis=1)

    def evaluate(self, pi):
        """(v, Ã, d) of policy π: two bicgstab solves on the assembled I − γP_π."""
        S, A = pi.shape
        Pi = sp.csr_array((pi.ravel(), self._cols, self._rows), shape=(S, S * A))
        M = (sp.eye_array(S, format="csr") - self.gamma * (Pi @ self.P)).tocsr()
        c = (pi * self.r).sum(axis=1)
        if self.tau:
            c -= self.tau * self.divergence(pi)
        v, info = bicgstab(M, c, rtol=1e-10, atol=0.0)
        assert info == 0, f"bicgstab (values) failed: info={info}"
        q = self.r + self.gamma * (self.P @ v).reshape(S, A)
        adv = q - (pi * q).sum(axis=1, keepdims=True)
        y, info = bicgstab(M.T.tocsr(), S * self.mu, x0=S * self.mu / (1.0 - self.gamma),
                           rtol=1e-10, atol=0.0)
        assert info == 0, f"bicgstab (visitation) failed: info={info}"
        return v, adv, y / y.sum()

    def step(self):
        """One outer iteration; returns J = ρᵀv of the policy it started from."""
        old = softmax(self.theta)
        v, adv, d = self.evaluate(old)
        w = (d / (1.0 - self.gamma))[:, None]
        for _ in range(self.K):
            pi = softmax(self.theta)
            ratio = pi / old
            active = ((adv > 0) & (ratio < 1 + self.clip)) | ((adv < 0) & (ratio > 1 - self.clip))
            b = np.where(active, adv, 0.0)
            g = pi * (b - (pi * b).sum(axis=1, keepdims=True))
            if self.tau:
                pf = self.p_fprime(pi)
                g -= self.tau * (pf - pi * pf.sum(axis=1, keepdims=True))
            self.theta = self.theta + self.lr * w * g
        return float(self.mu @ v)


def main():
    import fastppo

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-states", type=int, default=50_000)
    p.add_argument("--iters", type=int, default=13, help="outer iterations of each (default 13)")
    p.add_argument("--backend", default="numba")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    mdp = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0)
    reg = fastppo.ForwardKL(0.1)
    fastppo.PPOClip(fastppo.garnet(200, 10, 10, seed=1), reg, backend=args.backend).run(2)
    ppo = fastppo.PPOClip(mdp, reg, backend=args.backend, n_threads=args.threads)
    base = BaselinePPO(mdp.P, mdp.R, mdp.gamma, mdp.rho, "forward-kl", 0.1, lr=ppo.lr)
    t_fast, t_base = [], []
    for _ in range(args.iters):  # interleaved: both see the same machine load
        t0 = time.perf_counter()
        ppo.step()
        t_fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        base.step()
        t_base.append(time.perf_counter() - t0)
    diff = np.abs(base.theta.ravel() - ppo.logits).max()
    f, b = np.median(t_fast[1:]) * 1e3, np.median(t_base[1:]) * 1e3
    print(f"{mdp}; ForwardKL(0.1), clip 0.2, K=10; iterations 2..{args.iters}, medians")
    print(f"fastppo {args.backend} {args.threads}t: {f:.0f} ms   baseline scipy/NumPy: {b:.0f} ms"
          f"   ratio {b / f:.2f}x   (max |Δθ| after {args.iters} iterations: {diff:.1e})")


if __name__ == "__main__":
    main()

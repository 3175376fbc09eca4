"""The straightforward scipy/NumPy baseline (benchmarks/baseline_ppo.py), the yardstick of
the PPO-Clip speed ratios, reproduces fastppo's iterates: same algorithm, written differently
(assembled P_π, scipy bicgstab, NumPy inner steps)."""
import pathlib
import sys

import numpy as np
import pytest

import fastppo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
from baseline_ppo import BaselinePPO  # noqa: E402


@pytest.mark.parametrize("kind, tau", [("forward-kl", 0.1), ("reverse-kl", 0.5), ("forward-kl", 0.0)])
@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
def test_baseline_reproduces_ppoclip_iterates(kind, tau, backend):
    mdp = fastppo.garnet(300, 5, 4, gamma=0.9, seed=3)
    reg = {"forward-kl": fastppo.ForwardKL, "reverse-kl": fastppo.ReverseKL}[kind](tau)
    ppo = fastppo.PPOClip(mdp, reg, clip=0.2, inner_steps=10, backend=backend)
    base = BaselinePPO(mdp.P, mdp.R, mdp.gamma, mdp.rho, kind, tau, clip=0.2, inner_steps=10)
    assert base.lr == pytest.approx(ppo.lr, rel=1e-9)  # the same scale-free step
    base.lr = ppo.lr
    for it in range(8):
        J = base.step()
        row = ppo.step()
        assert J == pytest.approx(row["J"], rel=1e-9, abs=1e-9)
        np.testing.assert_allclose(base.theta.ravel(), ppo.logits, rtol=0, atol=1e-8,
                                   err_msg=f"iteration {it + 1}")
    assert np.abs(base.theta.ravel() - np.log(base.ref).ravel()).max() > 0.1  # the policy moved

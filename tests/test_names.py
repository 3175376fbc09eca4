"""Renamed parameters (issue 11, item 5): the new names, and the old ones still accepted
with a DeprecationWarning until fastppo 0.3.0."""
import numpy as np
import pytest

import fastppo


@pytest.fixture(scope="module")
def mdp():
    return fastppo.garnet(30, 3, 3, seed=0)


@pytest.mark.parametrize("cls", [fastppo.PPOClip, fastppo.SoftmaxPG, fastppo.KLPenaltyPPO,
                                 fastppo.NPG])
def test_step_scale_and_lin_tol(mdp, cls):
    reg = fastppo.ForwardKL(0.2)
    new = cls(mdp, reg, step_scale=0.5, lin_tol=1e-10)
    with pytest.warns(DeprecationWarning, match=rf"{cls.__name__}: step= is deprecated and will "
                                                rf"be removed in fastppo 0.3.0; use step_scale="):
        old = cls(mdp, reg, step=0.5, lin_tol=1e-10)
    with pytest.warns(DeprecationWarning, match=rf"{cls.__name__}: tol= is deprecated .*use lin_tol="):
        old_tol = cls(mdp, reg, step_scale=0.5, tol=1e-10)
    assert new.lr == old.lr == old_tol.lr and new.lin_tol == old.lin_tol == old_tol.lin_tol == 1e-10
    assert np.array_equal(new.run(3).logits, old.run(3).logits)
    with pytest.raises(TypeError, match="give step_scale= only"):
        cls(mdp, reg, step=0.5, step_scale=0.5)


def test_gae_lambda(mdp):
    rng = np.random.default_rng(0)
    r, v, nv = (rng.normal(size=(3, 5)) for _ in range(3))
    term = np.zeros((3, 5), bool)
    trunc = np.zeros((3, 5), bool)
    trunc[:, -1] = True
    new = fastppo.gae(r, v, nv, term, trunc, 0.9, gae_lambda=0.8)
    with pytest.warns(DeprecationWarning, match="gae: lam= is deprecated .*use gae_lambda="):
        old = fastppo.gae(r, v, nv, term, trunc, 0.9, lam=0.8)
    assert np.array_equal(new, old)
    assert np.array_equal(new, fastppo.gae(r, v, nv, term, trunc, 0.9, 0.8))


def test_kl_coef_names_the_weight_of_kl_to_the_reference(mdp):
    """SampledPPO's kl_coef is the weight of KL(π ‖ π_ref); KLPenaltyPPO's beta (KL to π_old)."""
    ppo = fastppo.SampledPPO(mdp, fastppo.ReverseKL(0.3), n_envs=16, seed=0, reference=False)
    assert ppo.kl_coef == ppo.config.kl_coef == 0.3
    assert fastppo.KLPenaltyPPO(mdp, beta=2.0).beta == 2.0


def test_convergence_warning_is_exported():
    assert issubclass(fastppo.ConvergenceWarning, RuntimeWarning)
    assert "ConvergenceWarning" in fastppo.__all__


def test_version_in_one_place():
    from importlib.metadata import version

    assert version("fastppo") == fastppo.__version__

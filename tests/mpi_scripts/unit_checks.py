"""One-rank checks of fastppo.distributed, run by tests/test_distributed.py as
``mpiexec -n 1 python unit_checks.py MDP_FILE`` (so that the pytest process never
initialises MPI); prints "unit ok"."""
import re
import sys

import numpy as np

import fastppo
from fastppo import distributed as D

path = sys.argv[1]
mdp = fastppo.MDP.load(path)


def raises(exc, pattern, f, *args):
    try:
        f(*args)
    except exc as err:
        assert re.search(pattern, str(err)), f"{err!s} does not match {pattern!r}"
        return
    raise AssertionError(f"no {exc.__name__} matching {pattern!r}")


# partition: contiguous, balanced, at least one state per rank
assert D.partition(10, 3).tolist() == [0, 3, 6, 10]
raises(ValueError, "smaller than the number of ranks", D.partition, 2, 3)

# one rank equals fastppo itself: load, from_mdp, from_rows
M = D.DistributedMDP.load(path)
assert (M.n_states, M.n_pairs, M.nnz) == (mdp.n_states, mdp.n_pairs, mdp.p_data.size)
reg = fastppo.ForwardKL(0.1)
pi = mdp.uniform_policy()
np.testing.assert_allclose(D.evaluate(M, pi, reg).v, fastppo.evaluate(mdp, pi, reg).v,
                           rtol=0, atol=1e-12)
np.testing.assert_allclose(D.solve(M, reg).v, fastppo.solve(mdp, reg).v, rtol=0, atol=1e-12)
np.testing.assert_allclose(D.visitation(D.DistributedMDP.from_mdp(mdp), pi),
                           fastppo.visitation(mdp, pi), rtol=0, atol=1e-12)


def build(lo, hi):
    a = mdp.a_indptr[lo:hi + 1]
    p = mdp.p_indptr[a[0]:a[-1] + 1]
    return (a, mdp.a_indices[a[0]:a[-1]], p, mdp.p_indices[p[0]:p[-1]], mdp.p_data[p[0]:p[-1]],
            mdp.r[a[0]:a[-1]])


assert abs(D.solve(D.DistributedMDP.from_rows(mdp.n_states, build, mdp.gamma)).J
           - fastppo.solve(mdp).J) <= 1e-12

# bad blocks are rejected naming the state / entry
p_data = mdp.p_data.copy()
p_data[mdp.p_indptr[7]] += 0.5  # pair 7 is state 2's (3 actions)
raises(ValueError, "pair 7 of state 2 sums to", D.DistributedMDP, None, mdp.n_states,
       mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, p_data, mdp.r, mdp.gamma)
idx = mdp.p_indices.astype(np.int64)
idx[4] = mdp.n_states
raises(ValueError, rf"p_indices\[4\] = {mdp.n_states}", D.DistributedMDP, None, mdp.n_states,
       mdp.a_indptr, mdp.a_indices, mdp.p_indptr, idx, mdp.p_data, mdp.r, mdp.gamma)
raises(ValueError, "uniform reference policy only", D.evaluate, D.DistributedMDP.from_mdp(mdp),
       pi, fastppo.ReverseKL(0.1, ref=pi))
raises(ValueError, "gamma < 1", D.DistributedMDP, None, mdp.n_states, mdp.a_indptr,
       mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r, 1.0)
# float32 storage (MDP(..., dtype=np.float32)) is not supported here: named, not up-cast
mdp32 = fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r,
                    mdp.gamma, dtype=np.float32)
raises(ValueError, "fastppo.distributed does not support float32", D.DistributedMDP.from_mdp,
       mdp32)
print("unit ok")

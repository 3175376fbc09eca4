"""The assembled I − γP_π and the solver paths that use it (issue 17), the one stopping
rule near γ = 1, and RiverSwim (issue 13, item 2).

- ``fastppo._assembled``: the merged matrix against the dense I − γP_π of ``naive.py``,
  and its Gauss–Seidel kernels against dense triangular solves, on every backend;
- every ``method=`` path of ``evaluate`` / ``visitation`` against ``np.linalg.solve`` at
  γ = 0.99 and 0.9999, with the rigorous bounds ‖v − v*‖∞ ≤ ‖r‖∞ / (1 − γ) (and the
  same in ‖·‖₁ for the visitation system), r the residual of the returned solution;
- the RiverSwim chain with every method; default arguments at γ ∈ {0.999, 0.9999,
  0.99999}.
"""
import functools

import numpy as np
import pytest

import fastppo
import naive
from conftest import random_policy
from fastppo._assembled import NEAR_LOWER, NEAR_UPPER, AssembledMatrix, near_parts
from fastppo._evaluator import Evaluator, policy_rows

EPS = np.finfo(float).eps


def floor(gamma):
    return 10 * EPS * (1 + gamma) / (1 - gamma)


def small_mdps(gamma):
    import mdptoolbox.example

    P, R = mdptoolbox.example.forest()
    return {
        "garnet": fastppo.garnet(60, 3, 3, gamma=gamma, seed=1),
        "local": fastppo.garnet(80, 3, 3, gamma=gamma, seed=2, locality=3),
        "grid": fastppo.gridworld(8, 8, gamma=gamma),
        "chain": fastppo.chain(50, gamma=gamma),
        "queue": fastppo.queue2d(capacity=(7, 6), gamma=gamma),
        "pendulum": fastppo.pendulum(12, 10, 3, gamma=gamma),
        "forest": fastppo.MDP.from_mdptoolbox(P, R, gamma),
    }


def dense_A(mdp, pi):
    return np.eye(mdp.n_states) - mdp.gamma * naive.P_pi(mdp, pi)


# ------------------------------------------------------------------ the matrix
@pytest.mark.parametrize("sparse_policy", [False, True])
def test_assembled_matrix_is_the_dense_one(backend, sparse_policy):
    """Duplicates merged, each row's lower part first; equal to I − γP_π (naive loops)
    for a full-support policy (the MDP's cached pattern) and a deterministic one (the
    compact rows of the policy)."""
    mdp = fastppo.garnet(70, 4, 6, gamma=0.95, seed=3, locality=4)  # many duplicates
    pi = random_policy(mdp, 5)[0]
    if sparse_policy:
        pi = mdp.to_pairs(np.eye(mdp.n_actions)[np.arange(mdp.n_states) % mdp.n_actions])
    M = AssembledMatrix(mdp, policy_rows(mdp, pi), backend)
    np.testing.assert_allclose(M.csr().toarray(), dense_A(mdp, pi), rtol=0, atol=1e-15)
    for i in range(mdp.n_states):
        cols = M.indices[M.indptr[i]:M.indptr[i + 1]]
        assert len(set(cols.tolist())) == cols.size and i not in cols
        assert (cols[:M.mid[i] - M.indptr[i]] < i).all() and (cols[M.mid[i] - M.indptr[i]:] > i).all()
    assert M.nnz < mdp.p_indices.size  # merged: fewer entries than the transitions


def deterministic_policy(mdp, seed):
    """A deterministic policy, flat, and the pair of each state."""
    counts = np.diff(mdp.a_indptr)
    pairs = mdp.a_indptr[:-1] + np.random.default_rng(seed).integers(0, counts)
    pi = np.zeros(mdp.n_pairs)
    pi[pairs] = 1.0
    return pi, pairs.astype(np.int64)


@pytest.mark.parametrize("name", ["local", "pendulum", "float32"])
def test_deterministic_assembly_is_the_dense_one(backend, name):
    """``assemble_deterministic`` (straight from P) against the dense I − γP_π (naive
    loops), and bit for bit the matrix assembled from the policy's gathered rows: the
    same layout and sums. Self-loops on the diagonal; rows of different
    lengths per action (pendulum); float32 rows normalised by their sums."""
    mdp = {"local": fastppo.garnet(70, 4, 6, gamma=0.95, seed=3, locality=3),
           "pendulum": fastppo.pendulum(12, 10, 3, gamma=0.99),
           "float32": fastppo.garnet(50, 3, 5, gamma=0.9, seed=4, locality=3,
                                     dtype=np.float32)}[name]
    pi, pairs = deterministic_policy(mdp, 7)
    direct = AssembledMatrix(mdp, None, backend, pairs=(pairs, pi))
    gathered = AssembledMatrix(mdp, policy_rows(mdp, pi, backend=backend), backend)
    expected = np.eye(mdp.n_states)  # explicit loops over each state's row of P
    for s, k in enumerate(pairs):
        row = slice(mdp.p_indptr[k], mdp.p_indptr[k + 1])
        probs = mdp.p_data[row].astype(np.float64)
        for c, p in zip(mdp.p_indices[row], probs / probs.sum()):
            expected[s, c] -= mdp.gamma * p
    np.testing.assert_allclose(direct.csr().toarray(), expected, rtol=0, atol=1e-15)
    if name != "float32":
        np.testing.assert_allclose(expected, dense_A(mdp, pi), rtol=0, atol=1e-15)
    assert direct.nnz == gathered.nnz < mdp.p_indices.size
    for part in ("indptr", "mid", "indices", "diag", "dinv"):
        np.testing.assert_array_equal(getattr(direct, part), getattr(gathered, part))
    np.testing.assert_array_equal(direct.data[:direct.nnz], gathered.data[:gathered.nnz])


def test_deterministic_assembly_of_sorted_and_unsorted_rows(backend):
    """Rows whose columns increase (every row of a valid MDP) are copied as they are, the
    fast path of ``assemble_deterministic``; others are merged. The kernel on rows of
    both kinds (the pendulum's, every third reversed, every fifth with a duplicate
    successor; arrays no MDP accepts) against the NumPy reference (a gather, then
    ``merge_pattern`` and ``assemble_values``), bit for bit, and the dense I − γP_π."""
    from fastppo._backend import get_kernel

    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    indptr, indices, data = mdp.p_indptr, mdp.p_indices.copy(), mdp.p_data.copy()
    for k in range(mdp.n_pairs):
        lo, hi = indptr[k], indptr[k + 1]
        if k % 3 == 0:
            indices[lo:hi], data[lo:hi] = indices[lo:hi][::-1].copy(), data[lo:hi][::-1].copy()
        elif k % 5 == 0 and hi - lo >= 2:
            indices[hi - 1] = indices[lo]  # a duplicate successor
    pi, pairs = deterministic_policy(mdp, 11)
    n, size = mdp.n_states, indices.shape[0]
    out = {}
    for name in (backend, "numpy"):
        parts = (np.empty(n + 1, dtype=np.int64), np.empty(n, dtype=np.int64),
                 np.empty(size, dtype=np.int32), np.empty(size + n), np.empty(n))
        nnz = get_kernel("assemble_deterministic", name)(
            indptr, indices, data, pairs, pi, mdp.gamma, *parts, np.empty(n, dtype=np.int64), 1)
        out[name] = (nnz, *parts[:3], parts[3][:nnz], parts[4])
    def dense(nnz, ip, _, ix, values, diag):
        A = np.diag(diag)
        A[np.repeat(np.arange(n), np.diff(ip)), ix[:nnz]] = values
        return A

    for got, want in zip(out[backend][:3], out["numpy"][:3]):  # nnz, indptr, mid
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dense(*out[backend]), dense(*out["numpy"]))
    expected = np.eye(n)
    for s, k in enumerate(pairs):
        np.add.at(expected[s], indices[indptr[k]:indptr[k + 1]],
                  -mdp.gamma * data[indptr[k]:indptr[k + 1]])
    np.testing.assert_allclose(dense(*out[backend]), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["pendulum", "queue", "float32"])
def test_patched_deterministic_assembly_is_the_fresh_one(backend, name):
    """A deterministic policy's matrix patched from another's (``base``: the changed
    states' rows anew, the others copied; rows of other lengths move the layout) is bit
    for bit the matrix assembled afresh; too many changes assemble afresh."""
    import fastppo._assembled as assembled

    mdp = {"pendulum": fastppo.pendulum(12, 10, 3, gamma=0.99),
           "queue": fastppo.queue2d(capacity=(9, 8), gamma=0.99),
           "float32": fastppo.garnet(50, 3, 5, gamma=0.9, seed=4, locality=3,
                                     dtype=np.float32)}[name]
    pi, pairs = deterministic_policy(mdp, 3)
    old = AssembledMatrix(mdp, None, backend, pairs=(pairs, pi))
    rng = np.random.default_rng(5)
    for share in (0.0, 0.02, 0.2, 0.9):
        states = np.flatnonzero(rng.random(mdp.n_states) < share)
        if share > 0:
            states = np.union1d(states, [0, mdp.n_states - 1])  # the first and last rows
        new_pi, new_pairs = pi.copy(), pairs.copy()
        counts = np.diff(mdp.a_indptr)[states]
        new_pairs[states] = mdp.a_indptr[states] + (pairs[states] - mdp.a_indptr[states] + 1) % counts
        new_pi[pairs[states]] = 0.0
        new_pi[new_pairs[states]] = 1.0
        patched = AssembledMatrix(mdp, None, backend, pairs=(new_pairs, new_pi), base=old)
        fresh = AssembledMatrix(mdp, None, backend, pairs=(new_pairs, new_pi))
        assert patched.nnz == fresh.nnz
        for part in ("indptr", "mid", "indices", "diag", "dinv"):
            np.testing.assert_array_equal(getattr(patched, part), getattr(fresh, part))
        np.testing.assert_array_equal(patched.data[:patched.nnz], fresh.data[:fresh.nnz])
        np.testing.assert_allclose(patched.csr().toarray(), dense_A(mdp, new_pi), rtol=0,
                                   atol=1e-6 if name == "float32" else 1e-15)
    # a change of π alone on a state (not of its pair) is a changed row too
    scaled = pi.copy()
    scaled[pairs[1]] = 0.5
    patched = AssembledMatrix(mdp, None, backend, pairs=(pairs, scaled), base=old)
    fresh = AssembledMatrix(mdp, None, backend, pairs=(pairs, scaled))
    np.testing.assert_array_equal(patched.data[:patched.nnz], fresh.data[:fresh.nnz])
    np.testing.assert_array_equal(patched.diag, fresh.diag)
    assert assembled.PATCH_SHARE < 0.9


def test_patched_matrix_sized_from_the_changed_rows(backend):
    """A patched matrix's arrays are sized from the old matrix and the changed rows (the
    longest rows of P taken by the changed states, the shortest given up); it is the fresh
    matrix, bit for bit, and the dense one."""
    import fastppo._assembled as assembled

    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    lengths = np.diff(mdp.p_indptr)
    a = mdp.a_indptr
    # every state on its shortest row, then a few states moved to their longest
    short = np.array([a[s] + np.argmin(lengths[a[s]:a[s + 1]]) for s in range(mdp.n_states)])
    long = np.array([a[s] + np.argmax(lengths[a[s]:a[s + 1]]) for s in range(mdp.n_states)])
    pi = np.zeros(mdp.n_pairs)
    pi[short] = 1.0
    old = AssembledMatrix(mdp, None, backend, pairs=(short, pi))
    states = np.flatnonzero(lengths[long] > lengths[short])[::3]
    assert 0 < states.shape[0] <= assembled.PATCH_SHARE * mdp.n_states
    pairs = short.copy()
    pairs[states] = long[states]
    new_pi = np.zeros(mdp.n_pairs)
    new_pi[pairs] = 1.0
    patched = AssembledMatrix(mdp, None, backend, pairs=(pairs, new_pi), base=old)
    fresh = AssembledMatrix(mdp, None, backend, pairs=(pairs, new_pi))
    assert patched.nnz == fresh.nnz > old.nnz
    np.testing.assert_array_equal(patched.indices, fresh.indices)
    np.testing.assert_array_equal(patched.data[:patched.nnz], fresh.data[:fresh.nnz])
    np.testing.assert_array_equal(patched.diag, fresh.diag)
    np.testing.assert_allclose(patched.csr().toarray(), dense_A(mdp, new_pi), rtol=0, atol=1e-15)


def test_patch_kernel_copies_unchanged_rows(backend):
    """``patch_deterministic`` reads the unchanged states' rows from the old matrix: with
    no state changed, a marked old matrix comes back as it is (not re-read from P)."""
    from fastppo._backend import get_kernel

    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    pi, pairs = deterministic_policy(mdp, 3)
    old = AssembledMatrix(mdp, None, backend, pairs=(pairs, pi))
    n, nnz = mdp.n_states, old.nnz
    data, diag = old.data.copy(), old.diag + 1.0  # marked: not what P gives
    out = (np.empty(n + 1, dtype=np.int64), np.empty(n, dtype=np.int64),
           np.empty(nnz, dtype=np.int32), np.empty(nnz + n), np.empty(n))
    got = get_kernel("patch_deterministic", backend)(
        mdp.p_indptr, mdp.p_indices, mdp.p_data, pairs, pi, mdp.gamma,
        np.empty(0, dtype=np.int64), old.indptr, old.mid, old.indices, data, diag, *out,
        np.empty(n, dtype=np.int64), 1)
    assert got == nnz
    if backend != "numpy":  # the reference assembles afresh
        np.testing.assert_array_equal(out[4], diag)
    np.testing.assert_array_equal(out[2], old.indices)


def test_deterministic_assembly_agrees_across_backends():
    mdp = fastppo.queue2d(capacity=(9, 8), gamma=0.99)
    pi, pairs = deterministic_policy(mdp, 2)
    dense = [AssembledMatrix(mdp, None, b, pairs=(pairs, pi)).csr().toarray()
             for b in ("numba", "cython", "numpy")]
    for other in dense[1:]:
        np.testing.assert_array_equal(other, dense[0])


@pytest.mark.parametrize("method", ["sgs", "lu"])
def test_evaluator_assembles_a_deterministic_policy_from_p(backend, method, monkeypatch):
    """The evaluator's direct assembly gives the values of the gathered rows' assembly,
    bit for bit, and gathers the rows only when a product needs them."""
    import fastppo._evaluator as ev_module

    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    pi, _ = deterministic_policy(mdp, 3)
    values = {}
    for direct in (True, False):
        monkeypatch.setattr(ev_module, "DIRECT_ASSEMBLY", direct)
        E = Evaluator(mdp, None, backend, 1, method=method)
        E.load(pi)
        assert (E._held_rows is None) == direct
        values[direct] = E.evaluation(tol=1e-12).v
    np.testing.assert_array_equal(values[True], values[False])
    v_star = np.linalg.solve(dense_A(mdp, pi), naive.r_pi(mdp, pi))
    np.testing.assert_allclose(values[True], v_star, rtol=1e-10)


def test_evaluator_patches_the_last_deterministic_matrix(backend, monkeypatch):
    """Consecutive deterministic policies on one evaluator (policy iteration's steps):
    the second's matrix is patched from the first's (few states changed) and gives the
    values of a fresh evaluator, bit for bit, and of the dense solve."""
    import fastppo._assembled as assembled

    patches = []
    kernel = assembled.get_kernel

    def counting(name, b):
        k = kernel(name, b)
        if name != "patch_deterministic":
            return k
        return lambda *args: patches.append(len(args[6])) or k(*args)

    monkeypatch.setattr(assembled, "get_kernel", counting)
    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    pi, pairs = deterministic_policy(mdp, 3)
    states = np.arange(0, mdp.n_states, 17)
    new_pi = pi.copy()
    new_pi[pairs[states]] = 0.0
    new_pi[mdp.a_indptr[states] + (pairs[states] - mdp.a_indptr[states] + 1) % 3] = 1.0
    E = Evaluator(mdp, None, backend, 1, method="sgs")
    E.load(pi, patch=True)
    E.evaluation(tol=1e-12)
    first = E._direct
    E.load(new_pi, patch=True)
    patched = E.evaluation(tol=1e-12).v
    assert E._direct is not first and E._direct.pairs is not None
    assert patches == [states.shape[0]]  # the changed states' rows only
    F = Evaluator(mdp, None, backend, 1, method="sgs")
    F.load(new_pi)
    np.testing.assert_array_equal(patched, F.evaluation(tol=1e-12).v)
    v_star = np.linalg.solve(dense_A(mdp, new_pi), naive.r_pi(mdp, new_pi))
    np.testing.assert_allclose(patched, v_star, rtol=1e-10)


@pytest.mark.parametrize("transpose", [0, 1])
@pytest.mark.parametrize("omega", [1.0, 1.3])
def test_split_view_kernels_against_dense_triangular_solves(backend, transpose, omega):
    mdp = fastppo.gridworld(6, 7, gamma=0.97)
    pi = random_policy(mdp, 2)[0]
    B = dense_A(mdp, pi)
    B = B.T if transpose else B
    D = np.diag(np.diag(B))
    L, U = np.tril(B, -1), np.triu(B, 1)
    E = D / omega
    M = AssembledMatrix(mdp, policy_rows(mdp, pi), backend).view(transpose, omega)
    x = np.random.default_rng(0).normal(size=mdp.n_states)
    out = np.empty_like(x)
    M.matvec(x, out)
    np.testing.assert_allclose(out, B @ x, rtol=1e-13, atol=1e-14)
    M.rhs(x, out)
    np.testing.assert_allclose(out, E @ np.linalg.solve(E + L, x), rtol=1e-12, atol=1e-13)
    M.to_x(x, out)
    np.testing.assert_allclose(out, np.linalg.solve(E + U, x), rtol=1e-12, atol=1e-13)
    M.to_y(x, out)
    np.testing.assert_allclose(out, (E + U) @ x, rtol=1e-13, atol=1e-14)
    M.operator(x, out)
    expect = E @ np.linalg.solve(E + L, B @ np.linalg.solve(E + U, x))
    np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-13)
    solve = M.factor()
    np.testing.assert_allclose(B @ solve(x), x, rtol=1e-12, atol=1e-13)
    # the first product of a warm start: Â y for y = (E + U) x0, given x0
    x0 = x
    y0 = (E + U) @ x0
    M.operator_at(y0, x0, out)
    np.testing.assert_allclose(out, E @ np.linalg.solve(E + L, B @ x0), rtol=1e-12, atol=1e-13)
    # the three in one pass (transpose 0), the same bits as rhs, to_y and operator_at
    b = np.random.default_rng(1).normal(size=mdp.n_states)
    b_hat, y, first = (np.full_like(x, np.nan) for _ in range(3))
    M.start(b, x0, b_hat, y, first)
    np.testing.assert_allclose(b_hat, E @ np.linalg.solve(E + L, b), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y, y0, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(first, E @ np.linalg.solve(E + L, B @ x0), rtol=1e-12,
                               atol=1e-13)
    if backend != "numpy":
        expect = [np.empty_like(x) for _ in range(3)]
        M.rhs(b, expect[0])
        M.to_y(x0, expect[1])
        M.operator_at(expect[1], x0, expect[2])
        for got, want in zip((b_hat, y, first), expect):
            np.testing.assert_array_equal(got, want)


def _sweep_in_stored_order(M, x, part, transpose):
    """The sweep of ``triangular_solve`` by explicit loops over the stored entries, in
    their order: for A, out[i] = (x[i] − Σ_j data[j] out[indices[j]]) / E_i over row i's
    lower (forward) or upper (backward) entries; for Aᵀ, row i's value is final once the
    earlier rows have scattered into it, and it scatters its upper (forward) or lower
    (backward) entries."""
    n, out = M.n_states, np.array(x, dtype=float)
    forward = part == 1
    rows = range(n) if forward else range(n - 1, -1, -1)
    for i in rows:
        lower = forward != bool(transpose)  # the part of row i the sweep reads
        lo, hi = (M.indptr[i], M.mid[i]) if lower else (M.mid[i], M.indptr[i + 1])
        if transpose:
            oi = out[i] * M.dinv[i]
            out[i] = oi
            for j in range(lo, hi):
                out[M.indices[j]] -= M.data[j] * oi
        else:
            acc = out[i]
            for j in range(lo, hi):
                acc = acc - M.data[j] * out[M.indices[j]]
            out[i] = acc * M.dinv[i]
    return out


@pytest.mark.parametrize("near", ["from the pattern", 0, NEAR_LOWER | NEAR_UPPER])
@pytest.mark.parametrize("layout", ["as stored", "parts reversed", "no neighbours"])
def test_sweeps_take_the_neighbour_from_a_register_with_the_same_sums(backend, layout, near):
    """With ``near`` the sweeps read the row solved just before from a register where it
    is the row's entry next to the diagonal (a gridworld's rows, as stored: ``near_parts``
    sets both bits); reversing each part moves it to the other end (read back from
    memory), and a pattern without the neighbours has none (neither sets a bit). With the
    bits from the pattern, forced on or off, every sweep (A and Aᵀ, forward and backward)
    is bit for bit the explicit loops in stored order, and the SGS operator, made of the
    same sweeps, is the dense one."""
    mdp = fastppo.gridworld(7, 9, gamma=0.97)
    pi = random_policy(mdp, 4)[0]
    M = AssembledMatrix(mdp, policy_rows(mdp, pi), backend)
    n = mdp.n_states
    # private copies (the pattern is the MDP's cached one)
    M.indptr, M.mid, M.indices, M.data = (a.copy() for a in M._parts)
    if layout == "parts reversed":
        for i in range(n):
            for lo, hi in ((M.indptr[i], M.mid[i]), (M.mid[i], M.indptr[i + 1])):
                M.indices[lo:hi] = M.indices[lo:hi][::-1].copy()
                M.data[lo:hi] = M.data[lo:hi][::-1].copy()
    elif layout == "no neighbours":  # drop the entries (i, i ± 1): another matrix, still valid
        rows = np.repeat(np.arange(n), np.diff(M.indptr))
        keep = np.abs(M.indices - rows) != 1
        M.indptr[1:] = np.cumsum(np.bincount(rows[keep], minlength=n))
        M.mid[:] = M.indptr[:-1] + np.bincount(rows[keep & (M.indices < rows)], minlength=n)
        M.indices, M.data = M.indices[keep], np.concatenate([M.data[:M.nnz][keep], M.diag])
        M.nnz = int(keep.sum())
    M._parts = M.indptr, M.mid, M.indices, M.data
    bits = near_parts(M.indptr, M.mid, M.indices)
    assert bits == (NEAR_LOWER | NEAR_UPPER if layout == "as stored" else 0)
    M._cache["near"] = bits if near == "from the pattern" else near
    x = np.random.default_rng(3).normal(size=n)
    B = M.csr().toarray()
    if backend == "numpy":  # the reference solves by scipy's spsolve_triangular
        same = functools.partial(np.testing.assert_allclose, rtol=1e-13, atol=1e-14)
    else:
        same = np.testing.assert_array_equal
    for transpose in (0, 1):
        V = M.view(transpose)
        out = np.full(n, np.nan)
        V.to_x(x, out)
        same(out, _sweep_in_stored_order(M, x, 2, transpose))
        V.rhs(x, out)
        same(out, _sweep_in_stored_order(M, x, 1, transpose) * M.diag)
        Bt = B.T if transpose else B
        E, L, U = np.diag(np.diag(Bt)), np.tril(Bt, -1), np.triu(Bt, 1)
        V.operator(x, out)
        np.testing.assert_allclose(out, E @ np.linalg.solve(E + L, Bt @ np.linalg.solve(E + U, x)),
                                   rtol=1e-12, atol=1e-13)


def test_near_parts_of_the_families():
    """The sweeps' hint: a gridworld's rows end their lower part with i − 1 and start their
    upper part with i + 1; a garnet's successors are random."""
    mdps = small_mdps(0.99)
    for name, bits in (("grid", NEAR_LOWER | NEAR_UPPER), ("garnet", 0)):
        mdp = mdps[name]
        M = AssembledMatrix(mdp, policy_rows(mdp, random_policy(mdp, 1)[0]), "numpy")
        assert M.near == near_parts(M.indptr, M.mid, M.indices) == bits, name


@pytest.mark.parametrize("transpose", [0, 1])
def test_unit_omega_split_is_the_general_one(backend, transpose):
    """ω = 1: the split's E, E⁻¹ and K = D − 2E are the matrix's own D, D⁻¹ and −D (no
    copies), the same bits as the general split's D/ω, ω D⁻¹ and D − 2E; its products
    (against dense solves: ``test_split_view_kernels_against_dense_triangular_solves``)
    leave them unchanged."""
    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    pi, pairs = deterministic_policy(mdp, 4)
    M = AssembledMatrix(mdp, None, backend, pairs=(pairs, pi))
    diag, dinv = M.diag.copy(), M.dinv.copy()
    x = np.random.default_rng(1).normal(size=mdp.n_states)
    V = M.view(transpose, 1.0)
    outs = [np.empty_like(x) for _ in range(4)]
    V.rhs(x, outs[0])
    V.operator(x, outs[1])
    V.to_x(x, outs[2])
    V.operator_at(x, x, outs[3])
    assert V._e is M.diag and V._einv is M.dinv
    omega = 1.0
    np.testing.assert_array_equal(V._e, diag / omega)
    np.testing.assert_array_equal(V._einv, omega * dinv)
    np.testing.assert_array_equal(V._kdiag, diag - 2.0 * (diag / omega))
    np.testing.assert_array_equal(M.diag, diag)  # not modified by the views
    np.testing.assert_array_equal(M.dinv, dinv)


@pytest.mark.parametrize("warm", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_sgs_from_a_warm_start_against_the_dense_solution(backend, warm, transpose,
                                                          monkeypatch):
    """SGS-BiCGSTAB from a start x0, its first product from x0 without a backward sweep
    (``WARM_SGS_START``) or the general one: both certify ‖b − Bx‖/‖b‖ ≤ tol and give
    the dense solution, for A and Aᵀ, from a near, a far and the zero start."""
    import fastppo._krylov as krylov

    monkeypatch.setattr(krylov, "WARM_SGS_START", warm)
    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    pi, pairs = deterministic_policy(mdp, 5)
    M = AssembledMatrix(mdp, None, backend, pairs=(pairs, pi))
    B = dense_A(mdp, pi)
    B = B.T if transpose else B
    b = naive.r_pi(mdp, pi) + 1.0
    x_star = np.linalg.solve(B, b)
    V = M.view(int(transpose))
    system = krylov.System(V.matvec, b, "test system",
                           assembled=lambda: M.view(int(transpose)))
    stop = krylov.StoppingRule(1e-12, mdp.gamma)
    rng = np.random.default_rng(6)
    for x0 in (x_star * (1 + 1e-3 * rng.normal(size=b.shape[0])), rng.normal(size=b.shape[0]),
               None):
        res = krylov.sgs(system, None if x0 is None else x0.copy(), stop, 500)
        assert res.converged and res.method == "sgs"
        bound = max(1e-12, floor(mdp.gamma)) * np.linalg.norm(b)
        assert np.linalg.norm(b - B @ res.x) <= 1.01 * bound
        np.testing.assert_allclose(res.x, x_star, rtol=1e-9)


def test_shared_weights_of_a_deterministic_policy(backend):
    """π on a deterministic policy's pairs gathered once for r_π and the assembly: r_π is
    the naive one, bit for bit, and the values are the dense solution, also for a policy
    whose weights are not 1 and after a patch."""
    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    pi, pairs = deterministic_policy(mdp, 7)
    half = pi.copy()
    half[pairs[::5]] = 0.5  # deterministic support, weights 1 and 0.5
    E = Evaluator(mdp, None, backend, 1, method="sgs")
    values = []
    for p in (pi, half):
        E.load(p, patch=True)
        c = E.regularized_reward()
        np.testing.assert_array_equal(c, naive.r_pi(mdp, p))
        values.append(E.evaluation(tol=1e-12).v)
        np.testing.assert_array_equal(E._direct.weights, p[pairs])
    v_star = np.linalg.solve(dense_A(mdp, half), naive.r_pi(mdp, half))
    np.testing.assert_allclose(values[1], v_star, rtol=1e-10)


# ------------------------------------------------------------------ each path
PATHS = ["auto", "richardson", "bicgstab", "sgs", "lu", "gmres"]


def dense_refs(mdp, pi, mu):
    """(A, c, v*, d*) by np.linalg.solve and naive.py's loops."""
    A = dense_A(mdp, pi)
    c = naive.r_pi(mdp, pi)
    return A, c, np.linalg.solve(A, c), (1 - mdp.gamma) * np.linalg.solve(A.T, mu)


def check_solution(mdp, pi, ev, d_res, mu, refs=None):
    """The returned v and d against np.linalg.solve, within the bounds the residuals
    give (plus the dense reference's own round-off, of the same order as the floor)."""
    g = mdp.gamma
    A, c, v_ref, d_ref = dense_refs(mdp, pi, mu) if refs is None else refs
    r = c - A @ ev.v
    assert np.linalg.norm(r) <= max(1e-12, 10 * floor(g)) * np.linalg.norm(c) * 1.0001
    slack = 10 * floor(g) * np.abs(v_ref).max()
    assert np.abs(ev.v - v_ref).max() <= np.abs(r).max() / (1 - g) + slack
    n = mdp.n_states
    # y = d / (1 − γ) solves Aᵀ y = μ: ‖y − y*‖₁ ≤ ‖Aᵀ y − μ‖₁ / (1 − γ); normalising d
    # at most doubles the error
    bound = 2 * np.sqrt(n) * d_res.residual * np.linalg.norm(mu)
    assert np.abs(d_res.d - d_ref).sum() <= bound + 10 * floor(g)


@pytest.mark.parametrize("gamma", [0.99, 0.9999])
@pytest.mark.parametrize("method", PATHS)
def test_each_path_against_the_dense_solution(method, gamma):
    for name, mdp in small_mdps(gamma).items():
        if method == "richardson" and name not in ("garnet", "forest"):
            continue  # plain sweeps contract at γ on slow-mixing MDPs: beyond any budget
        pi = random_policy(mdp, 11)[0]
        mu = mdp.rho
        ev = fastppo.evaluate(mdp, pi, method=method)
        d_res = fastppo.visitation(mdp, pi, mu, method=method, full_output=True)
        for res in (ev, d_res):
            if method == "auto":
                assert res.method.split("+")[0] == "richardson", name
            else:
                assert res.method == method, name
            assert (res.fill is not None) == ("lu" in res.method.split("+")), name
            if res.fill is not None:
                assert 0 < res.fill <= 20, name
        check_solution(mdp, pi, ev, d_res, mu)


def test_gmres_lengthens_a_cycle_too_slow_for_the_budget():
    """GMRES(40) on the 120-state pendulum at γ = 0.9999 gains 5–20 % a cycle: at that
    rate tol lies beyond max_iter, so the cycle doubles (to n here, where GMRES is exact)
    instead of running out of products (it did, at 4e-9, on one host)."""
    mdp = small_mdps(0.9999)["pendulum"]
    pi = random_policy(mdp, 11)[0]
    ev = fastppo.evaluate(mdp, pi, method="gmres")
    d = fastppo.visitation(mdp, pi, mdp.rho, method="gmres", full_output=True)
    for res in (ev, d):
        assert res.method == "gmres"
        assert res.n_matvec < 400, res.n_matvec  # 5,000 (all of max_iter) before
    check_solution(mdp, pi, ev, d, mdp.rho)


def test_backends_agree_on_the_assembled_paths():
    mdp = fastppo.queue2d(capacity=(9, 8), gamma=0.999)
    pi = random_policy(mdp, 4)[0]
    for method in ("sgs", "lu"):
        results = [fastppo.evaluate(mdp, pi, method=method, backend=b)
                   for b in ("numba", "cython", "numpy")]
        for res in results[1:]:
            assert res.method == results[0].method
            np.testing.assert_allclose(res.v, results[0].v, rtol=1e-10)


def test_forced_lu_declines_with_a_clear_error(monkeypatch):
    import fastppo._assembled as A

    mdp = fastppo.garnet(200, 3, 4, gamma=0.99, seed=0)  # no band: the envelope is ~S²
    monkeypatch.setattr(A, "FILL_CAP", 1.0)
    with pytest.raises(fastppo.ConvergenceError, match=r"lu declined the evaluation system"):
        fastppo.evaluate(mdp, mdp.uniform_policy(), method="lu")
    ev = fastppo.evaluate(mdp, mdp.uniform_policy())  # auto goes on without it
    assert "lu" not in ev.method and ev.fill is None


# ------------------------------------------------------------- RiverSwim (issue 13)
@pytest.mark.parametrize("n, gamma", [(500, 0.95), (500, 0.99), (1000, 0.99),
                                      pytest.param(500, 0.999, marks=pytest.mark.slow)])
def test_riverswim_chain_every_method(n, gamma):
    """BiCGSTAB used to diverge to NaN on RiverSwim and GMRES to start from the NaN;
    every method reaches the tolerance (or the floor) with finite, accurate values.
    (Forced GMRES(40) at γ = 0.999 and n = 1000 does not converge within the default
    budget: RiverSwim is strongly non-normal.)"""
    mdp = fastppo.chain(n, gamma=gamma)
    right = mdp.to_pairs(np.tile([0.0, 1.0], (n, 1)))
    for pi in (mdp.uniform_policy(), right, 0.9 * right + 0.1 * mdp.uniform_policy()):
        refs = dense_refs(mdp, pi, mdp.rho)
        for method in ("auto", "bicgstab", "sgs", "lu", "gmres"):
            ev = fastppo.evaluate(mdp, pi, method=method)
            d_res = fastppo.visitation(mdp, pi, method=method, full_output=True)
            assert np.isfinite(ev.v).all() and np.isfinite(d_res.d).all(), method
            check_solution(mdp, pi, ev, d_res, mdp.rho, refs)
    res = fastppo.solve(mdp)
    assert res.converged and np.isfinite(res.v).all()


# ----------------------------------------------------------- defaults near γ = 1
def defaults_succeed(mdp):
    """solve, evaluate, visitation and 50 PPO-Clip iterations with default arguments:
    no error, J non-decreasing, the evaluation accurate to its bound."""
    res = fastppo.solve(mdp)
    assert res.converged
    pi = mdp.uniform_policy()
    ev = fastppo.evaluate(mdp, pi)
    d_res = fastppo.visitation(mdp, pi, full_output=True)
    check_solution(mdp, mdp.to_pairs(pi), ev, d_res, mdp.rho)
    ppo = fastppo.PPOClip(mdp)
    ppo.run(50)
    J = ppo.history["J"]
    assert np.isfinite(J).all() and (np.diff(J) >= -1e-9 * np.abs(J).max()).all()
    assert J[-1] <= res.J + 1e-9 * abs(res.J)


@pytest.mark.parametrize("gamma", [0.999, 0.9999, 0.99999])
def test_defaults_succeed_near_gamma_one(gamma):
    import mdptoolbox.example

    P, R = mdptoolbox.example.forest()
    for mdp in (fastppo.MDP.from_mdptoolbox(P, R, gamma), fastppo.gridworld(30, 30, gamma=gamma),
                fastppo.garnet(1000, 4, 3, gamma=gamma, seed=0)):
        defaults_succeed(mdp)


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [0.999, 0.9999, 0.99999])
def test_defaults_succeed_near_gamma_one_slow(gamma):
    """chain(1000) (policy iteration needs n + 1 steps) and a 10k local garnet."""
    defaults_succeed(fastppo.chain(1000, gamma=gamma))
    big = fastppo.garnet(10_000, 4, 3, gamma=gamma, seed=0, locality=50)
    res = fastppo.solve(big)
    assert res.converged
    ev = fastppo.evaluate(big, big.uniform_policy())
    assert ev.residual <= max(1e-12, 10 * floor(gamma))
    ppo = fastppo.PPOClip(big)
    ppo.run(50)
    J = ppo.history["J"]
    assert (np.diff(J) >= -1e-9 * np.abs(J).max()).all()


# ------------------------------------------------ the LU work bound's cheap floor
def _exact_edges(indptr, indices):
    """Edges {i, j} of the undirected graph of an off-diagonal CSR pattern (dense)."""
    n = indptr.shape[0] - 1
    G = np.zeros((n, n), dtype=bool)
    G[np.repeat(np.arange(n), np.diff(indptr)), indices[:indptr[-1]]] = True
    return int(np.count_nonzero(np.triu(G | G.T, 1)))


def _flops_in_order(indptr, indices, order):
    """Σᵢ (i − first(i))² of the pattern with the states placed in ``order`` (loops)."""
    n = indptr.shape[0] - 1
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)
    first = np.arange(n)
    for i in range(n):
        for j in indices[indptr[i]:indptr[i + 1]]:
            a, b = sorted((where[i], where[j]))
            first[b] = min(first[b], a)
    return float(np.sum((np.arange(n) - first) ** 2.0))


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
@pytest.mark.parametrize("name", ["garnet", "local", "grid", "chain", "queue", "pendulum",
                                  "forest"])
def test_flops_floor_bounds_the_envelope_in_every_order(backend, name):
    """distinct_pairs_bound never exceeds the true edge count, whatever the filter size
    (a Bloom filter has no false negatives), and |E|² / n is below the LU work of the
    RCM order and of random orders; exact for the chain's band."""
    from fastppo._assembled import envelope, flops_floor
    from fastppo._backend import get_kernel

    mdp = small_mdps(0.99)[name]
    indptr, _, indices, _, nnz = mdp._transitions.merged_pattern(mdp.a_indptr, "numpy")
    n = mdp.n_states
    edges = _exact_edges(indptr, indices)
    kernel = get_kernel("distinct_pairs_bound", backend)
    for shift in (58, 54, 40):  # 64 bits (many collisions) … 2^24 bits (none)
        bound = kernel(indptr, indices, np.empty(1 << (58 - shift), np.uint64), shift, 1)
        upper = int(np.sum(indices[:nnz] > np.repeat(np.arange(n), np.diff(indptr))))
        assert upper <= bound <= edges
    assert kernel(indptr, indices, np.empty(1 << 18, np.uint64), 40, 1) == edges
    floor_ = flops_floor(indptr, indices, kernel)
    assert floor_ <= edges ** 2 / n
    perm, size, flops, below, above = envelope(indptr, indices, nnz)
    assert floor_ <= flops == _flops_in_order(indptr, indices, perm)
    where = np.empty(n, dtype=np.int64)
    where[perm] = np.arange(n)
    pairs = [(where[i], where[j]) for i in range(n) for j in indices[indptr[i]:indptr[i + 1]]]
    assert below == max([i - j for i, j in pairs] + [0])
    assert above == max([j - i for i, j in pairs] + [0])
    # the band LU's work bound 2 n β² (β = max(below, above)) is above the floor's 2 / 16
    assert 2.0 * floor_ <= 2.0 * n * max(below, above) ** 2
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert floor_ <= _flops_in_order(indptr, indices, rng.permutation(n))
    if name == "chain":
        assert floor_ == pytest.approx(flops, rel=0.05)


def test_lu_cheap_declines_a_garnet_without_ordering_it(monkeypatch):
    """On a garnet the floor exceeds "auto"'s LU budget: "lu-cheap" declines without the
    envelope (RCM of A + Aᵀ, seconds at 50k states); on a chain the LU runs first."""
    import fastppo._assembled as A

    def no_envelope(*args):
        raise AssertionError("the envelope was computed")

    from fastppo._krylov import LU_FIRST

    mdp = fastppo.garnet(400, 10, 10, gamma=0.9999, seed=3)
    monkeypatch.setattr(A, "envelope", no_envelope)
    M = AssembledMatrix(mdp, policy_rows(mdp, mdp.uniform_policy()), "numba")
    assert M.flops_floor > LU_FIRST * (M.nnz + mdp.n_states)
    assert M.view().factor(LU_FIRST * (M.nnz + mdp.n_states)) is None  # "lu-cheap" declines
    monkeypatch.undo()
    chain = fastppo.chain(300, gamma=0.9999)
    assert fastppo.evaluate(chain, chain.uniform_policy()).method.split("+")[:2] == ["richardson", "lu"]


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_band_lu_is_the_dense_inverse_and_reuses_its_buffer(backend):
    """The band LU (the local garnet's band fits) solves A and Aᵀ as np.linalg.solve does;
    a second policy's matrix built on the same workspace takes over the buffer, and the
    first, asked again, factorises afresh (its old factor lives in the buffer)."""
    mdp = fastppo.garnet(120, 3, 3, gamma=0.99, seed=4, locality=4)
    workspace = {}
    pis = [random_policy(mdp, seed)[0] for seed in (5, 6)]
    mats = [AssembledMatrix(mdp, policy_rows(mdp, pi), backend, workspace) for pi in pis]
    perm, size, flops, below, above = mats[0].envelope
    assert (2 * below + above + 1) * mdp.n_states <= 20 * (mats[0].nnz + mdp.n_states)
    b = np.random.default_rng(7).standard_normal(mdp.n_states)
    for M, pi in zip(mats + mats[:1], pis + pis[:1]):
        A = dense_A(mdp, pi)
        for transpose, dense in ((False, A), (True, A.T)):
            x = M.view(transpose).factor()(b)
            np.testing.assert_allclose(x, np.linalg.solve(dense, b), rtol=1e-12, atol=1e-12)
        assert workspace["band"][1]() is M and M.fill == pytest.approx(
            (2 * below + above + 1) * mdp.n_states / (M.nnz + mdp.n_states))
    assert mats[1]._lu is None  # the first matrix took the buffer back


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
def test_sweeps_that_end_worse_than_their_start_hand_over_the_start(backend):
    """On a gridworld's value system the extrapolated sweeps drive the residual above the
    start's and give up: Richardson returns the start (zero, or the caller's x0) with its
    true residual, the chain continues from there, and the answer is the dense one."""
    from fastppo import _krylov

    mdp = fastppo.gridworld(20, 20, gamma=0.99)
    pi = fastppo.softmax(mdp, np.random.default_rng(1).standard_normal(mdp.n_pairs))
    E = Evaluator(mdp, None, backend, 1)
    E.load(pi)
    system = E._value_system()
    stop = _krylov.StoppingRule(1e-12, mdp.gamma)
    b, bnorm = system.b, np.linalg.norm(system.b)
    v = naive.evaluate(mdp, pi)[0]
    for x0 in (None, 0.5 * v):
        start = np.zeros(mdp.n_states) if x0 is None else x0.copy()
        start_res = np.linalg.norm(b - (start - mdp.gamma * (naive.P_pi(mdp, pi) @ start))) / bnorm
        res = _krylov.richardson(system, x0, stop, 5000)
        assert not res.converged and res.stalled
        np.testing.assert_array_equal(res.x, start)  # every sweep ended worse than the start
        np.testing.assert_allclose(res.residual, start_res, rtol=1e-12)
        if x0 is not None:
            np.testing.assert_array_equal(x0, start)  # the caller's start is untouched
    ev = fastppo.evaluate(mdp, pi, backend=backend, n_threads=1)
    assert ev.method.startswith("richardson+") and ev.residual <= 1e-12
    np.testing.assert_allclose(ev.v, v, rtol=1e-9, atol=1e-9 * np.abs(v).max())


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
def test_sweeps_take_a_zero_start_residual_without_a_product(backend):
    """From a zero start the first residual is b itself (A 0 = 0): no product runs at
    x = 0, every product counted is one that ran, and the iterates are those of a start
    of explicit zeros (one product more: its first is A 0)."""
    from fastppo import _krylov

    mdp = fastppo.garnet(300, 4, 5, gamma=0.95, seed=21)
    pi = fastppo.softmax(mdp, np.random.default_rng(2).standard_normal(mdp.n_pairs))
    E = Evaluator(mdp, None, backend, 1)
    E.load(pi)
    stop = _krylov.StoppingRule(1e-12, mdp.gamma)
    results, calls = {}, {}
    for name, x0 in (("none", None), ("zeros", np.zeros(mdp.n_states))):
        ran = calls[name] = []
        system = E._value_system()

        def sweep_product(x, out, last, ran=ran, product=system.sweep_product):
            ran.append(float(np.abs(x).max()))
            product(x, out, last)

        system.sweep_product = sweep_product
        results[name] = _krylov.richardson(system, x0, stop, 5000)
    assert results["none"].converged and min(calls["none"]) > 0.0  # never at x = 0
    assert results["none"].n_matvec == len(calls["none"])
    assert calls["zeros"][0] == 0.0 and results["zeros"].n_matvec == len(calls["zeros"])
    assert results["zeros"].n_matvec == results["none"].n_matvec + 1
    np.testing.assert_array_equal(results["none"].x, results["zeros"].x)
    v = naive.evaluate(mdp, pi)[0]
    np.testing.assert_allclose(results["none"].x, v, rtol=1e-10, atol=1e-10 * np.abs(v).max())


def test_envelope_order_narrows_the_band_of_a_ring():
    """On a local garnet (successors within ±k on a ring; the best band is 2k) the order of
    ``envelope`` is a permutation whose band is at most RCM's and within 10 % of 2k (RCM:
    70 for k = 20), and its reported band, envelope and work are those of that order."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    from fastppo._assembled import envelope

    n, k = 2000, 20
    mdp = fastppo.garnet(n, 10, 10, gamma=0.99, seed=0, locality=k)
    indptr, _, indices, _, nnz = mdp._transitions.merged_pattern(mdp.a_indptr, "numpy")
    perm, size, flops, below, above = envelope(indptr, indices, nnz)
    assert np.array_equal(np.sort(perm), np.arange(n))
    where = np.empty(n, dtype=np.int64)
    where[perm] = np.arange(n)
    r, c = where[np.repeat(np.arange(n), np.diff(indptr))], where[indices[:nnz]]
    assert below == (r - c).max() and above == (c - r).max()
    assert flops == _flops_in_order(indptr, indices, perm)
    rcm = reverse_cuthill_mckee(sp.csr_array((np.ones(nnz), indices[:nnz], indptr),
                                             shape=(n, n)), symmetric_mode=False)
    where[rcm] = np.arange(n)
    rcm_band = np.abs(where[np.repeat(np.arange(n), np.diff(indptr))] - where[indices[:nnz]]).max()
    assert max(below, above) <= rcm_band
    assert max(below, above) <= 1.1 * 2 * k < rcm_band


# ------------------------------------------------ an assembly that would not fit in memory
def test_no_assembly_past_the_memory_share(monkeypatch):
    """Where the assembled I − γP_π would exceed MEMORY_SHARE of the available memory (a
    10⁷-state MDP: ~20 GB) the chain goes on matrix-free, alone and batched, to the same
    accuracy; with memory to spare it assembles."""
    from fastppo import _assembled

    grid = fastppo.gridworld(15, 15, gamma=0.99)  # the sweeps hand over here
    pis = np.stack([random_policy(grid, 40 + i)[0] for i in range(2)])
    v_ref = [naive.evaluate(grid, pi)[0] for pi in pis]
    assert _assembled.assembly_bytes(grid) == 20 * grid.p_indptr[-1] + 40 * grid.n_states
    roomy = fastppo.evaluate(grid, pis[0], backend="cython", n_threads=1)
    assert roomy.method.startswith("richardson+") and "bicgstab" not in roomy.method
    monkeypatch.setattr(_assembled, "available_memory",
                        lambda: 1.9 * _assembled.assembly_bytes(grid))  # below 2x: no room
    assert not _assembled.fits_in_memory(grid)
    tight = fastppo.evaluate(grid, pis[0], backend="cython", n_threads=1)
    assert tight.method == "richardson+bicgstab"
    assert naive.rel_err(tight.v, v_ref[0]) <= 1e-10
    batch = fastppo.evaluate_batch(grid, pis, backend="cython", n_threads=1)
    for m in range(2):
        assert batch.method[m] == "richardson+bicgstab"
        assert naive.rel_err(batch.v[m], v_ref[m]) <= 1e-10

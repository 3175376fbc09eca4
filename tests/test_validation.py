"""Every rejection path of fastppo._validation and the MDP constructors.

Each case checks the exception type and that the message names the offending
state, pair or argument.
"""
import re

import numpy as np
import pytest
import scipy.sparse as sp

from fastppo import MDP
from fastppo import _validation as V

NAN, INF = float("nan"), float("inf")

# a 2-state, 2-action MDP: P[s, a, s']
P2 = np.array([[[1.0, 0.0], [0.5, 0.5]],
               [[0.0, 1.0], [0.25, 0.75]]])
R2 = np.zeros((2, 2))


def dense(P_edit=None, R_edit=None, **kw):
    """from_dense on P2/R2 with entries P[idx] = v (P_edit = (idx, v)) etc."""
    P, R = P2.copy(), R2.copy()
    if P_edit:
        P[P_edit[0]] = P_edit[1]
    if R_edit:
        R[R_edit[0]] = R_edit[1]
    kw.setdefault("gamma", 0.9)
    return lambda: MDP.from_dense(P, R, **kw)


def pairs(s, a, P=None, R=None, **kw):
    P = np.full((len(s), 2), 0.5) if P is None else P
    R = np.zeros(len(s)) if R is None else R
    return lambda: MDP.from_sa_pairs(s, a, P, R, 0.9, **kw)


def gym(P, **kw):
    return lambda: MDP.from_gymnasium(P, 0.9, **kw)


OK = [(1.0, 0, 0.0, False)]


def ids(cases):
    """Readable test ids: the expected message, regex escapes removed."""
    return [re.sub(r"\\(.)", r"\1", c[-1])[:60] for c in cases]

CONSTRUCTOR_CASES = [
    # ---- gamma
    (dense(gamma=1.0), ValueError, r"gamma must be in \[0, 1\), got 1\.0"),
    (dense(gamma=-0.1), ValueError, r"gamma must be in \[0, 1\), got -0\.1"),
    (dense(gamma=NAN), ValueError, r"gamma must be in \[0, 1\), got nan"),
    (dense(gamma="0.9"), TypeError, r"gamma must be a real number, got str"),
    (dense(gamma=True), TypeError, r"gamma must be a real number, got bool"),
    (dense(gamma=None), TypeError, r"gamma must be a real number, got NoneType"),
    # ---- rho
    (dense(rho=[1.0]), ValueError, r"rho must have shape \(2,\), got \(1,\)"),
    (dense(rho=[1.5, -0.5]), ValueError, r"rho must be non-negative: rho\[1\] = -0\.5"),
    (dense(rho=[NAN, 1.0]), ValueError, r"rho must be finite: rho\[0\] = nan"),
    (dense(rho=[0.5, INF]), ValueError, r"rho must be finite: rho\[1\] = inf"),
    (dense(rho=[0.5, 0.6]), ValueError, r"rho must sum to 1, sums to 1\.1 \(off by 0\.1\)"),
    (dense(rho=["a", "b"]), TypeError, r"rho must be an array of real numbers"),
    # ---- transition probabilities, named by pair
    (dense(P_edit=((1, 0), [0.0, 1 + 1e-7])), ValueError,
     r"pair \(s=1, a=0\): transition probabilities sum to 1\.0000001\d* \(off by 1e-07\)"),
    (dense(P_edit=((0, 1), [0.5, 0.4])), ValueError,
     r"pair \(s=0, a=1\): transition probabilities sum to 0\.9 \(off by -0\.1\)"),
    (dense(P_edit=((1, 1), [1.5, -0.5])), ValueError,
     r"pair \(s=1, a=1\): negative transition probability -0\.5 to state 1"),
    (dense(P_edit=((0, 1, 0), NAN)), ValueError, r"pair \(s=0, a=1\): transition probability nan is not finite"),
    (dense(P_edit=((1, 0, 1), INF)), ValueError, r"pair \(s=1, a=0\): transition probability inf is not finite"),
    (dense(P_edit=((1, 0), 0.0)), ValueError, r"pair \(s=1, a=0\): transition row is empty"),
    (dense(R_edit=((1, 1), NAN)), ValueError, r"R must be finite: pair \(s=1, a=1\) has nan"),
    (dense(R_edit=((0, 1), -INF)), ValueError, r"R must be finite: pair \(s=0, a=1\) has -inf"),
    # ---- from_dense shapes and types
    (lambda: MDP.from_dense(P2[0], R2, 0.9), ValueError, r"P must have shape \(S, A, S\), got \(2, 2\)"),
    (lambda: MDP.from_dense(np.ones((2, 2, 3)) / 3, R2, 0.9), ValueError, r"P must have shape \(S, A, S\), got \(2, 2, 3\)"),
    (lambda: MDP.from_dense(P2, R2[0], 0.9), ValueError, r"R must have shape \(S, A\) = \(2, 2\), got \(2,\)"),
    (lambda: MDP.from_dense(P2, [["a", "b"], ["c", "d"]], 0.9), TypeError, r"R must be an array of real numbers"),
    (lambda: MDP.from_dense(P2.astype(str), R2, 0.9), TypeError, r"P must be a numeric array or a scipy.sparse matrix"),
    (lambda: MDP.from_dense(P2.astype(object), R2, 0.9), TypeError, r"P must be a numeric array"),
    # ---- from_sparse
    (lambda: MDP.from_sparse(P2.reshape(4, 2), R2, 0.9), TypeError, r"P must be a scipy.sparse matrix or array"),
    (lambda: MDP.from_sparse(sp.csr_array(P2.reshape(4, 2)), R2[0], 0.9), ValueError, r"R must have shape \(S, A\), got \(2,\)"),
    (lambda: MDP.from_sparse(sp.csr_array(np.ones((4, 3)) / 3), R2, 0.9), ValueError,
     r"P must have shape \(S\*A, S\) = \(4, 2\) to match R, got \(4, 3\)"),
    (lambda: MDP.from_sparse(sp.csr_array(np.ones((4, 2))), R2, 0.9), ValueError,
     r"pair \(s=0, a=0\): transition probabilities sum to 2\.0 \(off by 1\)"),
    # ---- from_sa_pairs
    (pairs([0, 1, 1], [0, 0]), ValueError, r"s_indices and a_indices must have the same length, got 3 and 2"),
    (pairs([], [], P=np.zeros((0, 2))), ValueError, r"the MDP has no state-action pairs"),
    (pairs([0, 2], [0, 0]), ValueError, r"pair 1: state index 2 out of range \[0, 2\)"),
    (pairs([-1, 1], [0, 0]), ValueError, r"pair 0: state index -1 out of range \[0, 2\)"),
    (pairs([0, 1], [0, -1]), ValueError, r"pair 1 \(s=1\): negative action index -1"),
    (pairs([0, 1, 0], [1, 0, 1]), ValueError, r"duplicate state-action pair \(s=0, a=1\)"),
    (pairs([0, 2, 2], [0, 0, 1], P=np.full((3, 3), 1 / 3)), ValueError, r"state 1 has no actions"),
    (pairs([0, 1], [0, 0], R=np.zeros(3)), ValueError, r"R must have shape \(2,\), got \(3,\)"),
    (pairs([0, 1], [0, 0], R=["x", "y"]), TypeError, r"R must be an array of real numbers"),
    (pairs([1, 0], [0, 0], R=[1.0, NAN]), ValueError, r"R must be finite: pair \(s=0, a=0\) has nan"),
    (pairs([0, 1], [0, 0], P=np.full((3, 2), 0.5)), ValueError, r"P must have shape \(2, 2\), got \(3, 2\)"),
    (pairs([0, 1], [0, 0], P=sp.csr_array(np.full((3, 2), 0.5))), ValueError, r"P must have shape \(2, 2\), got \(3, 2\)"),
    (pairs([0, 1], [0, 0], P=np.full(4, 0.5)), ValueError, r"P must have shape \(n_pairs, n_states\), got \(4,\)"),
    (pairs([0, 1], [0, 0], P=[["a", "b"], ["c", "d"]]), TypeError, r"P must be a numeric array"),
    (pairs([[0, 1]], [0, 0]), ValueError, r"s_indices must be one-dimensional, got shape \(1, 2\)"),
    (pairs([0, 1], [0.5, 1.0]), TypeError, r"a_indices must hold integers, got dtype float64"),
    (pairs(["0", "1"], [0, 0]), TypeError, r"s_indices must hold integers"),
    (pairs([False, True], [0, 0]), TypeError, r"s_indices must hold integers, got dtype bool"),
    (pairs([1, 0], [0, 0], P=np.array([[0.5, 0.5], [0.3, 0.3]])), ValueError,
     r"pair \(s=0, a=0\): transition probabilities sum to 0\.6"),  # named after sorting
    # ---- from_mdptoolbox
    (lambda: MDP.from_mdptoolbox(P2[0], R2, 0.9), ValueError, r"P must have shape \(A, S, S\), got \(2, 2\)"),
    (lambda: MDP.from_mdptoolbox(np.ones((2, 2, 3)) / 3, R2, 0.9), ValueError, r"P must have shape \(A, S, S\), got \(2, 2, 3\)"),
    (lambda: MDP.from_mdptoolbox([], R2, 0.9), ValueError, r"P must hold at least one action"),
    (lambda: MDP.from_mdptoolbox([np.eye(2), np.eye(3)], R2, 0.9), ValueError, r"P\[1\] must have shape \(2, 2\), got \(3, 3\)"),
    (lambda: MDP.from_mdptoolbox([1.0, 2.0], R2, 0.9), ValueError, r"P\[0\] must be a square matrix of shape \(S, S\), got shape \(\)"),
    (lambda: MDP.from_mdptoolbox([np.eye(2), np.eye(2)], np.zeros(3), 0.9), ValueError,
     r"R must have shape \(S, A\), \(S,\) or \(A, S, S\) = \(2, 2\), \(2,\) or \(2, 2, 2\); got \(3,\)"),
    (lambda: MDP.from_mdptoolbox([np.eye(2), [[0.5, 0.5], [1.0, 0.1]]], R2, 0.9), ValueError,
     r"pair \(s=1, a=1\): transition probabilities sum to 1\.1"),
    # ---- from_gymnasium
    (gym([[OK]]), TypeError, r"env_or_P must be a dict P\[s\]\[a\] or an environment with a \.P attribute"),
    (gym({}), ValueError, r"P must hold at least one state"),
    (gym({0: {0: OK}, 2: {0: OK}}), ValueError, r"P must be keyed by the states 0\.\.1: state 1 is missing"),
    (gym({0: {0: OK}, 1: {0: []}}), ValueError, r"pair \(s=1, a=0\): no transitions"),
    (gym({0: {0: [(1.0, 0, 0.0)]}}), ValueError,
     r"pair \(s=0, a=0\): transitions must be \(prob, next_state, reward, terminated\), got \(1\.0, 0, 0\.0\)"),
    (gym({0: {0: OK, 1: [(1.0, 5, 0.0, False)]}, 1: {0: OK}}), ValueError, r"pair \(s=0, a=1\): next state 5 out of range \[0, 2\)"),
    (gym({0: {0: OK}, 1: {0: [(1.5, 0, 0.0, False), (-0.5, 1, 0.0, False)]}}), ValueError,
     r"pair \(s=1, a=0\): negative transition probability -0\.5 to state 1"),
    (gym({0: {0: [(0.5, 0, 0.0, False), (0.4, 0, 0.0, True)]}}), ValueError,
     r"pair \(s=0, a=0\): transition probabilities sum to 0\.9"),
    (gym({0: {0: OK}, 1: {}}), ValueError, r"state 1 has no actions"),
    (gym({0: {0: [(1.0, 0, NAN, False)]}}), ValueError, r"R must be finite: pair \(s=0, a=0\) has nan"),
    (gym({0: {0: [(1.0, 0, 0.0, True)]}}, rho=[1.0]), ValueError, r"rho must have shape \(2,\), got \(1,\)"),
]


@pytest.mark.parametrize("build, exc, match", CONSTRUCTOR_CASES, ids=ids(CONSTRUCTOR_CASES))
def test_constructor_rejects(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


@pytest.mark.parametrize("off, ok", [(5e-9, True), (-5e-9, True), (2e-8, False), (-2e-8, False)])
def test_row_sum_tolerance_is_1e_8(off, ok):
    P = P2.copy()
    P[1, 1] = [0.25, 0.75 + off]
    if ok:
        assert MDP.from_dense(P, R2, 0.5).p_data[-1] == 0.75 + off
    else:
        with pytest.raises(ValueError, match=rf"pair \(s=1, a=1\): .* \(off by {off:.3g}\)"):
            MDP.from_dense(P, R2, 0.5)


# ------------------------------------------------ the direct (canonical) constructor
BASE = dict(a_indptr=[0, 2, 4], a_indices=[0, 1, 0, 1], p_indptr=[0, 1, 3, 4, 6],
            p_indices=[0, 0, 1, 1, 0, 1], p_data=[1.0, 0.5, 0.5, 1.0, 0.25, 0.75], r=[0.0, 0.0, 0.0, 0.0])

CANONICAL_CASES = [
    (dict(a_indptr=[0]), r"the MDP must have at least one state"),
    (dict(a_indptr=[0, 2, 3]), r"a_indptr must have length n_states \+ 1 = 3, start at 0 and end at n_pairs = 4"),
    (dict(a_indptr=[1, 2, 4]), r"a_indptr must have length n_states \+ 1 = 3, start at 0 and end at n_pairs = 4"),
    (dict(a_indptr=[0, 4, 4]), r"state 1 has no actions"),
    (dict(a_indptr=[0, 3, 2, 4]), r"state 1 has no actions"),
    (dict(a_indices=[0, 1, 0]), r"a_indices must have shape \(4,\), got \(3,\)"),
    (dict(a_indices=[1, 0, 0, 1]), r"pair \(s=0, a=0\): action labels must increase within a state"),
    (dict(a_indices=[0, 1, 1, 1]), r"pair \(s=1, a=1\): action labels must increase within a state"),
    (dict(a_indices=[-1, 1, 0, 1]), r"pair \(s=0, a=-1\): negative action label"),
    (dict(r=[0.0, INF, 0.0, 0.0]), r"R must be finite: pair \(s=0, a=1\) has reward inf"),
    (dict(r=[[0.0, 0.0], [0.0, 0.0]]), r"r must be one-dimensional, got shape \(2, 2\)"),
    (dict(p_indptr=[0, 1, 3, 6]), r"p_indptr must have length n_pairs \+ 1, start at 0 and end at nnz"),
    (dict(p_indptr=[0, 1, 3, 4, 5]), r"p_indptr must have length n_pairs \+ 1, start at 0 and end at nnz"),
    (dict(p_indices=[0, 0, 1, 1, 0]), r"p_indices and p_data must have the same length"),
    (dict(p_indptr=[0, 3, 1, 4, 6]), r"p_indptr must be non-decreasing: it decreases at pair \(s=0, a=1\)"),
    (dict(p_indices=[0, 0, 2, 1, 0, 1]), r"pair \(s=0, a=1\): next-state index 2 out of range \[0, 2\)"),
    (dict(p_indices=[0, 0, 1, 1, -1, 1]), r"pair \(s=1, a=1\): next-state index -1 out of range \[0, 2\)"),
    (dict(p_data=[1.0, NAN, 0.5, 1.0, 0.25, 0.75]), r"pair \(s=0, a=1\): transition probability nan is not finite"),
    (dict(p_data=[1.0, 1.5, -0.5, 1.0, 0.25, 0.75]), r"pair \(s=0, a=1\): negative transition probability -0\.5 to state 1"),
    (dict(p_indptr=[0, 1, 3, 3, 5], p_indices=[0, 0, 1, 0, 1], p_data=[1.0, 0.5, 0.5, 0.25, 0.75]),
     r"pair \(s=1, a=0\): transition row is empty"),
    (dict(p_data=[1.0, 0.5, 0.6, 1.0, 0.25, 0.75]), r"pair \(s=0, a=1\): transition probabilities sum to 1\.1 \(off by 0\.1\)"),
    (dict(p_indices=[0, 1, 0, 1, 0, 1]), r"pair \(s=0, a=1\): next-state indices must be sorted and distinct"),
    (dict(p_indices=[0, 0, 1, 1, 1, 1]), r"pair \(s=1, a=1\): next-state indices must be sorted and distinct"),
]


def test_base_canonical_arrays_are_valid():
    m = MDP(**BASE, gamma=0.5)
    assert (m.n_states, m.n_pairs, m.is_rectangular) == (2, 4, True)


@pytest.mark.parametrize("edit, match", CANONICAL_CASES, ids=ids(CANONICAL_CASES))
def test_canonical_constructor_rejects(edit, match):
    with pytest.raises(ValueError, match=match):
        MDP(**{**BASE, **edit}, gamma=0.5)


# ------------------------------------------------ dtypes: checked before any cast (issue 13 item 6)
I64, U64, F64 = np.int64, np.uint64, np.float64
DTYPE_CASES = [
    # int64 next states >= 2^32 (and >= 2^31) used to wrap to small states on the int32 cast
    (dict(p_indices=np.array([0, 0, 1, 1, 0, 1], I64) + 2**32), ValueError,
     r"pair \(s=0, a=0\): next-state index 4294967296 out of range \[0, 2\) \(p_indices\[0\]\)"),
    (dict(p_indices=np.array([0, 0, 1, 1, 0, 2**31 + 1], I64)), ValueError,
     r"pair \(s=1, a=1\): next-state index 2147483649 out of range \[0, 2\) \(p_indices\[5\]\)"),
    (dict(p_indices=np.array([0, 0, 1, 1, 0, 2**64 - 1], U64)), ValueError,
     r"p_indices\[5\] = 18446744073709551615 is out of the int64 range"),
    (dict(a_indptr=np.array([0, 2**63 + 2, 4], U64)), ValueError, r"a_indptr\[1\] = 9223372036854775810 is out of the int64 range"),
    # floats are never truncated: integers only (3.0 is accepted, 3.5 is not)
    (dict(p_indices=[0, 0, 1, 1.5, 0, 1]), TypeError, r"p_indices must hold integers, got dtype float64: p_indices\[3\] = 1\.5"),
    (dict(p_indices=[0, 0, 1, NAN, 0, 1]), TypeError, r"p_indices must hold integers, got dtype float64: p_indices\[3\] = nan"),
    (dict(a_indptr=[0, 2.5, 4]), TypeError, r"a_indptr must hold integers, got dtype float64: a_indptr\[1\] = 2\.5"),
    (dict(p_indptr=[0, 1, 3.25, 4, 6]), TypeError, r"p_indptr must hold integers, got dtype float64: p_indptr\[2\] = 3\.25"),
    (dict(a_indices=[0, 0.5, 0, 1]), TypeError, r"a_indices must hold integers, got dtype float64: a_indices\[1\] = 0\.5"),
    (dict(a_indptr=[0, 2, 1e30]), ValueError, r"a_indptr\[2\] = 1e\+30 is out of the int64 range"),
    (dict(p_indices=np.array([0, 0, 1, 1, 0, 1], dtype=bool)), TypeError, r"p_indices must hold integers, got dtype bool"),
    (dict(p_indices=["0", "0", "1", "1", "0", "1"]), TypeError, r"p_indices must hold integers, got dtype <U1"),
    # complex values lose nothing silently: rejected even with a zero imaginary part
    (dict(p_data=np.array([1.0, 0.5, 0.5, 1.0, 0.25, 0.75]) + 1e-3j), TypeError,
     r"p_data must be an array of real numbers, got dtype complex128"),
    (dict(p_data=np.array([1.0, 0.5, 0.5, 1.0, 0.25, 0.75], complex)), TypeError,
     r"p_data must be an array of real numbers, got dtype complex128"),
    (dict(r=np.zeros(4) + 1j), TypeError, r"r must be an array of real numbers, got dtype complex128"),
]


@pytest.mark.parametrize("edit, exc, match", DTYPE_CASES, ids=ids(DTYPE_CASES))
def test_canonical_constructor_rejects_lossy_dtypes(edit, exc, match):
    with pytest.raises(exc, match=match):
        MDP(**{**BASE, **edit}, gamma=0.5)


def test_canonical_constructor_accepts_integers_in_any_integer_or_float_dtype():
    base = MDP(**BASE, gamma=0.5)
    for dtype in (np.int8, np.uint16, np.int32, np.uint64, np.float32, np.float64):
        m = MDP(**{**BASE, **{k: np.array(BASE[k], dtype=dtype)
                              for k in ("a_indptr", "a_indices", "p_indptr", "p_indices")}}, gamma=0.5)
        assert m == base and m.p_indices.dtype == np.int32 and m.a_indptr.dtype == np.int64, dtype


def _saved(tmp_path, name="m.npz", **edit):
    """An MDP file with fields replaced (None: field left out)."""
    m = MDP(**BASE, gamma=0.5)
    fields = {k: getattr(m, k) for k in BASE} | dict(gamma=np.float64(0.5), rho=m.rho,
                                                      format=np.array("fastppo-mdp-1"))
    fields.update(edit)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in fields.items() if v is not None})
    return path


LOAD_CASES = [
    (dict(p_indices=np.array([0, 0, 1, 1, 0, 1], I64) + 2**32), ValueError,
     r"m\.npz: pair \(s=0, a=0\): next-state index 4294967296 out of range \[0, 2\) \(p_indices\[0\]\)"),
    (dict(p_indices=np.array([0, 0, 1, 1, 0, 1.5])), TypeError, r"m\.npz: p_indices must hold integers"),
    (dict(a_indptr=np.array([0, 2.5, 4])), TypeError, r"m\.npz: a_indptr must hold integers"),
    (dict(p_data=np.array([1.0, 0.5, 0.5, 1.0, 0.25, 0.75]) + 0j), TypeError,
     r"m\.npz: p_data must be an array of real numbers, got dtype complex128"),
    (dict(gamma=np.complex128(0.5 + 1j)), TypeError, r"m\.npz: gamma must be a real number, got complex128"),
    (dict(gamma=np.array([0.5, 0.5])), TypeError, r"m\.npz: gamma must be a real number, got ndarray"),
    (dict(rho=np.array([0.5, 0.5]) + 0j), TypeError, r"m\.npz: rho must be an array of real numbers"),
    (dict(r=None), ValueError, r"m\.npz: field 'r' is missing"),
    (dict(r=np.array([None] * 4)), ValueError, r"m\.npz: field 'r' cannot be read"),
]


@pytest.mark.parametrize("edit, exc, match", LOAD_CASES, ids=ids(LOAD_CASES))
def test_load_checks_every_field_before_any_cast(tmp_path, edit, exc, match):
    with pytest.raises(exc, match=match):
        MDP.load(_saved(tmp_path, **edit))


def test_load_rejects_empty_and_truncated_files(tmp_path):
    whole = _saved(tmp_path).read_bytes()
    for name, data in (("empty.npz", b""), ("cut.npz", whole[: len(whole) // 2]), ("text.npz", b"hello")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')} is not a readable fastppo MDP file"):
            MDP.load(tmp_path / name)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"array\.npy is not a fastppo MDP file"):
        MDP.load(tmp_path / "array.npy")


def test_constructors_reject_lossy_dtypes():
    P = P2.reshape(4, 2)
    s, a = np.divmod(np.arange(4), 2)
    cases = [
        (lambda: MDP.from_dense(P2 + 0j, R2, 0.9), TypeError, r"P must hold real numbers, got dtype complex128"),
        (lambda: MDP.from_dense(P2, R2 + 1j, 0.9), TypeError, r"R must be an array of real numbers, got dtype complex128"),
        (lambda: MDP.from_sparse(sp.csr_array(P + 0j), R2, 0.9), TypeError, r"P must hold real numbers, got dtype complex128"),
        (lambda: MDP.from_sa_pairs(s, a, sp.coo_array(P * (1 + 1j)), R2.ravel(), 0.9), TypeError,
         r"P must hold real numbers, got dtype complex128"),
        (lambda: MDP.from_sa_pairs(s.astype(np.int64) + 2**32, a, P, R2.ravel(), 0.9), ValueError,
         r"pair 0: state index 4294967296 out of range \[0, 2\)"),
        (lambda: MDP.from_sa_pairs(s.astype(np.uint64) + np.uint64(2**63), a, P, R2.ravel(), 0.9), ValueError,
         r"s_indices\[0\] = 9223372036854775808 is out of the int64 range"),
        (lambda: MDP.from_sa_pairs(s + 0.5, a, P, R2.ravel(), 0.9), TypeError,
         r"s_indices must hold integers, got dtype float64: s_indices\[0\] = 0\.5"),
        (lambda: MDP.from_sa_pairs(s, a, P, R2.ravel(), 0.9, rho=[0.5 + 0j, 0.5]), TypeError,
         r"rho must be an array of real numbers, got dtype complex128"),
        # next-state indices are int32: 2^31 states cannot be indexed (a sparse P can say so)
        (lambda: MDP.from_sa_pairs([0], [0], sp.csr_array(([1.0], ([0], [0])), shape=(1, 2**31)), [0.0], 0.9),
         ValueError, r"n_states = 2147483648 is too large: next-state indices are stored as int32, so at most 2147483647"),
        (lambda: MDP.from_sa_pairs(s, a, P, R2.ravel(), 0.9, n_states=2.0), TypeError, r"n_states must be an integer"),
        (gym({0: {0: [(1.0, 1.5, 0.0, False)]}, 1: {0: OK}}), TypeError,
         r"pair \(s=0, a=0\): next state must be an integer, got 1\.5"),
        (gym({0: {0: [(1.0, np.float32(NAN), 0.0, False)]}, 1: {0: OK}}), TypeError,
         r"pair \(s=0, a=0\): next state must be an integer, got"),
        (gym({0: {0: [(1.0, True, 0.0, False)]}, 1: {0: OK}}), TypeError,
         r"pair \(s=0, a=0\): next state must be an integer, got True"),
        (gym({0: {0: [(np.complex128(1.0), 1, 0.0, False)]}, 1: {0: OK}}), TypeError,
         r"pair \(s=0, a=0\): transition probability must be a real number"),
        (gym({0: {0: [(1.0, 1, 1j, False)]}, 1: {0: OK}}), TypeError, r"pair \(s=0, a=0\): reward must be a real number"),
    ]
    for build, exc, match in cases:
        with pytest.raises(exc, match=match):
            build()
    # integer-valued floats are integers (the documented rule), e.g. a next state of 1.0
    as_float = MDP.from_gymnasium({0: {0: [(1.0, 1.0, 0.5, False)]}, 1: {0: [(1.0, np.float64(0), 0.0, False)]}}, 0.9)
    as_int = MDP.from_gymnasium({0: {0: [(1.0, 1, 0.5, False)]}, 1: {0: [(1.0, 0, 0.0, False)]}}, 0.9)
    assert as_float == as_int
    assert MDP.from_sa_pairs(s.astype(float), a.astype(np.float32), P, R2.ravel(), 0.9) == MDP.from_dense(P2, R2, 0.9)


def test_load_rejects_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz is not a fastppo MDP file"):
        MDP.load(path)


# ------------------------------------------------ per-pair tables and scalars
@pytest.fixture
def mdp():
    return MDP.from_dense(P2, R2, 0.9)


@pytest.fixture
def nonrect():
    return MDP.from_sa_pairs([0, 0, 1], [0, 1, 0], np.full((3, 2), 0.5), np.zeros(3), 0.9)


TABLE_CASES = [
    (lambda m: V.check_policy(m, np.full(3, 0.5)), ValueError, r"pi must have shape \(4,\) or \(2, 2\), got \(3,\)"),
    (lambda m: V.check_policy(m, np.full((2, 2), "a")), TypeError, r"pi must be a numeric array, got dtype <U1"),
    (lambda m: V.check_policy(m, [[1.5, -0.5], [0.5, 0.5]]), ValueError,
     r"pi must be finite and non-negative: pair \(s=0, a=1\) has -0\.5"),
    (lambda m: V.check_policy(m, [0.5, 0.5, NAN, 0.5]), ValueError, r"pi must be finite and non-negative: pair \(s=1, a=0\) has nan"),
    (lambda m: V.check_policy(m, [0.5, 0.5, INF, 0.5]), ValueError, r"pi must be finite and non-negative: pair \(s=1, a=0\) has inf"),
    (lambda m: V.check_policy(m, [0.5, 0.5, 0.5, -INF]), ValueError, r"pi must be finite and non-negative: pair \(s=1, a=1\) has -inf"),
    (lambda m: V.check_policy(m, [[0.5, 0.5], [0.5, 0.6]]), ValueError,
     r"pi must sum to 1 in every state: state 1 sums to 1\.1 \(off by 0\.1\)"),
    (lambda m: V.check_policy(m, [[0.5, 0.5], [0.5, 0.6]], name="pi_ref"), ValueError, r"pi_ref must sum to 1 in every state: state 1"),
    (lambda m: V.check_logits(m, [[0.0, 0.0], [INF, 0.0]]), ValueError, r"logits must be finite: pair \(s=1, a=0\) has inf"),
    (lambda m: V.check_logits(m, np.zeros(5)), ValueError, r"logits must have shape \(4,\) or \(2, 2\), got \(5,\)"),
    (lambda m: m.to_pairs(np.zeros((2, 3))), ValueError, r"table must have shape \(4,\) or \(2, 2\), got \(2, 3\)"),
    (lambda m: V.check_policy(m, np.full((2, 2), 0.5 + 0j)), TypeError, r"pi must hold real numbers, got dtype complex128"),
    (lambda m: V.check_logits(m, np.zeros(4) + 1j), TypeError, r"logits must hold real numbers, got dtype complex128"),
]


@pytest.mark.parametrize("call, exc, match", TABLE_CASES, ids=ids(TABLE_CASES))
def test_per_pair_table_rejects(mdp, call, exc, match):
    with pytest.raises(exc, match=match):
        call(mdp)


def test_non_rectangular_table_shape_rejected(nonrect):
    with pytest.raises(ValueError, match=r"pi must have shape \(3,\), got \(2, 2\)"):
        V.check_policy(nonrect, np.full((2, 2), 0.5))
    np.testing.assert_array_equal(V.check_policy(nonrect, [0.25, 0.75, 1.0]), [0.25, 0.75, 1.0])
    for bad, k in ((NAN, 1), (INF, 2), (-0.25, 0)):
        pi = np.array([0.25, 0.75, 1.0])
        pi[k] = bad
        with pytest.raises(ValueError, match=r"pi must be finite and non-negative: pair \(s=\d, a=\d\) has "):
            V.check_policy(nonrect, pi)
    with pytest.raises(ValueError, match=r"pi must sum to 1 in every state: state 0 sums to 1\.25"):
        V.check_policy(nonrect, [0.5, 0.75, 1.0])


def test_check_policy_copies_unless_told_not_to(mdp):
    pi = np.full(4, 0.5)
    assert V.check_policy(mdp, pi) is not pi
    assert V.as_policy(mdp, pi, copy=False) is pi
    table = np.full((2, 2), 0.5)  # a view of it, reshaped
    assert np.shares_memory(V.as_policy(mdp, table, copy=False), table)
    assert not np.shares_memory(V.as_policy(mdp, table), table)


SCALAR_CASES = [
    (lambda: V.check_positive("1", "eta"), TypeError, r"eta must be a real number, got str"),
    (lambda: V.check_positive(True, "eta"), TypeError, r"eta must be a real number, got bool"),
    (lambda: V.check_positive(None, "eta"), TypeError, r"eta must be a real number, got NoneType"),
    (lambda: V.check_positive(0, "eta"), ValueError, r"eta must be > 0 and finite, got 0\.0"),
    (lambda: V.check_positive(INF, "eta"), ValueError, r"eta must be > 0 and finite, got inf"),
    (lambda: V.check_positive(-1e-3, "tau", strict=False), ValueError, r"tau must be >= 0 and finite, got -0\.001"),
    (lambda: V.check_positive(NAN, "tau", strict=False), ValueError, r"tau must be >= 0 and finite, got nan"),
    (lambda: V.check_int(1.5, "K"), TypeError, r"K must be an integer, got float"),
    (lambda: V.check_int(True, "K"), TypeError, r"K must be an integer, got bool"),
    (lambda: V.check_int(0, "K"), ValueError, r"K must be >= 1, got 0"),
    (lambda: V.check_int(-1, "seed", minimum=0), ValueError, r"seed must be >= 0, got -1"),
]


@pytest.mark.parametrize("call, exc, match", SCALAR_CASES, ids=ids(SCALAR_CASES))
def test_scalar_checks_reject(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_scalar_checks_accept():
    assert V.check_positive(0, "tau", strict=False) == 0.0
    assert V.check_positive(None, "beta", allow_none=True) is None
    assert V.check_int(np.int64(3), "K") == 3 and type(V.check_int(np.int64(3), "K")) is int
    assert V.check_gamma(np.float32(0.5)) == 0.5

"""fastppo._memory: arrays on huge pages, and the scratch buffers kept between calls."""
import gc
import pickle

import numpy as np
import pytest

import fastppo
from fastppo import _memory

needs_thp = pytest.mark.skipif(not _memory.ENABLED, reason="no transparent huge pages here")


def huge_kib(a):
    """AnonHugePages (KiB) of the mapping that holds ``a``'s first byte (Linux smaps)."""
    address, inside = a.ctypes.data, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1])
    return 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.uint16, np.uint8])
def test_huge_copies_contents_dtype_shape_and_flags(dtype):
    a = (np.arange(300_000) % 251).astype(dtype)
    a.flags.writeable = False
    h = _memory.huge(a)
    assert h.dtype == a.dtype and h.shape == a.shape and h.flags.c_contiguous
    np.testing.assert_array_equal(h, a)
    assert not h.flags.writeable
    if _memory.ENABLED and a.nbytes >= _memory.HUGE_BYTES:
        assert _memory.is_huge(h) and h is not a
        assert _memory.huge(h) is h  # not copied twice
    # an ordinary array to every consumer: it pickles as one
    back = pickle.loads(pickle.dumps(h))
    assert type(back) is np.ndarray and not _memory.is_huge(back)
    np.testing.assert_array_equal(back, a)


def test_small_arrays_and_disabled_huge_pages_are_left_alone(monkeypatch):
    small = np.ones(_memory.HUGE_BYTES // 8 - 1)
    assert _memory.huge(small) is small
    big = np.ones(_memory.HUGE_BYTES)
    monkeypatch.setattr(_memory, "ENABLED", False)
    assert _memory.huge(big) is big
    assert not _memory.is_huge(_memory.scratch(_memory.HUGE_BYTES))


@needs_thp
def test_huge_arrays_lie_on_huge_pages():
    h = _memory.huge(np.ones(1 << 20))  # 8 MiB
    assert h.ctypes.data % _memory.PAGE == 0
    assert huge_kib(h) >= 2048


@needs_thp
def test_mdp_arrays_the_sweeps_read_are_on_huge_pages():
    mdp = fastppo.garnet(2000, 10, 10, gamma=0.9, seed=0)  # 200k entries
    T = mdp._transitions
    for a in (mdp.p_data, mdp.p_indices, mdp.p_indptr, mdp.r, mdp.s_indices, mdp._pair_codes,
              T.narrow_indices(mdp.n_states), *T.transposed_pattern(mdp.n_states, mdp.s_indices)[1:]):
        assert a.nbytes < _memory.HUGE_BYTES or _memory.is_huge(a)
        assert not a.flags.writeable
    # an MDP derived from it shares them
    assert mdp.with_gamma(0.5).p_data is mdp.p_data


def test_scratch_buffers_are_kept_until_every_view_is_gone_then_reused():
    x = _memory.scratch(100_000)
    y = _memory.scratch(100_000)
    assert x.shape == (100_000,) and x.dtype == np.float64 and x.flags.writeable
    assert _memory.is_huge(x) == _memory.ENABLED  # 800 KB
    assert not np.shares_memory(x, y)  # two live buffers never share
    address = x.ctypes.data
    view = x.reshape(1000, 100, order="F")[3:]  # a factor held in a view of it
    assert view.base is x
    del x
    gc.collect()
    z = _memory.scratch(100_000)  # x is still viewed: not given back
    assert not np.shares_memory(z, view)
    del view, z
    gc.collect()
    kept = [b.ctypes.data for b in _memory._POOL.kept()]
    assert address in kept
    w = _memory.scratch(100_000)
    assert w.ctypes.data in kept and not np.shares_memory(w, y)
    v = _memory.scratch(100_000, np.float32)  # another dtype: another buffer
    assert v.dtype == np.float32 and not np.shares_memory(v, w)


def test_scratch_keeps_a_bounded_number_of_bytes(monkeypatch):
    monkeypatch.setattr(_memory, "_POOL", _memory._Pool())
    monkeypatch.setattr(_memory, "KEEP_BYTES", 3 * 800_000)
    buffers = [_memory.scratch(100_000) for _ in range(6)]
    del buffers
    gc.collect()
    kept = _memory._POOL.kept()
    assert 0 < len(kept) <= _memory.KEEP_BUFFERS
    assert sum(b.nbytes for b in kept) <= 3 * 800_000


def test_a_solve_gives_its_buffers_back_without_a_collection():
    """No reference cycle holds an evaluator's scratch buffers (each call would then
    make new ones): they are kept again as the call returns."""
    mdp = fastppo.garnet(6000, 6, 6, gamma=0.95, seed=1)
    pi = fastppo.softmax(mdp, np.random.default_rng(0).standard_normal(mdp.n_pairs))
    gc.disable()
    try:
        fastppo.visitation(mdp, pi, n_threads=1)
        kept = {b.ctypes.data for b in _memory._POOL.kept()}
        fastppo.visitation(mdp, pi, n_threads=1)
        assert {b.ctypes.data for b in _memory._POOL.kept()} == kept
        assert any(b.nbytes == 8 * mdp.p_indices.shape[0] for b in _memory._POOL.kept())
    finally:
        gc.enable()


def test_evaluations_are_unchanged_by_kept_buffers():
    """Evaluators in turn on one MDP reuse the rows' and P_πᵀ's buffers; every
    result is that of a fresh process (the same bits as the first call)."""
    mdp = fastppo.garnet(6000, 6, 6, gamma=0.95, seed=1)  # row sweeps, P_πᵀ gathers
    rng = np.random.default_rng(0)
    pis = [fastppo.softmax(mdp, rng.standard_normal(mdp.n_pairs)) for _ in range(3)]
    first = [(fastppo.evaluate(mdp, p, n_threads=1), fastppo.visitation(mdp, p, n_threads=1))
             for p in pis]
    gc.collect()
    for p, (ev, d) in zip(pis, first):
        again = fastppo.evaluate(mdp, p, n_threads=1)
        np.testing.assert_array_equal(again.q, ev.q)
        np.testing.assert_array_equal(again.adv, ev.adv)
        np.testing.assert_array_equal(fastppo.visitation(mdp, p, n_threads=1), d)


def test_release_buffers_empties_the_kept_buffers():
    mdp = fastppo.garnet(6000, 6, 6, gamma=0.95, seed=1)
    pi = fastppo.softmax(mdp, np.random.default_rng(0).standard_normal(mdp.n_pairs))
    fastppo.visitation(mdp, pi, n_threads=1)
    fastppo.evaluate_batch(mdp, [pi, pi], n_threads=1)
    assert _memory._POOL.kept()
    fastppo.release_buffers()
    assert _memory._POOL.kept() == []
    # the next call makes its buffers anew, with the same results
    d = fastppo.visitation(mdp, pi, n_threads=1)
    np.testing.assert_allclose(d.sum(), 1.0, rtol=0, atol=1e-12)


def test_arrays_above_the_largest_size_are_not_copied(monkeypatch):
    """A copy at construction would double the largest MDPs' peak memory: from
    HUGE_MAX_BYTES on, huge() leaves the array where it is."""
    a = np.ones(_memory.HUGE_BYTES // 8 * 4)
    monkeypatch.setattr(_memory, "HUGE_MAX_BYTES", a.nbytes - 1)
    assert _memory.huge(a) is a
    monkeypatch.setattr(_memory, "HUGE_MAX_BYTES", a.nbytes)
    assert (_memory.huge(a) is not a) == _memory.ENABLED


def _buffer(a):
    """The array that owns ``a``'s memory: a kept buffer for the views :func:`scratch`
    hands out (through their memoryview), else ``a``'s own base chain."""
    while a.base is not None:
        a = a.base.obj if isinstance(a.base, memoryview) else a.base
    return a


def test_ppo_clip_steps_make_no_fresh_policy_array():
    """A PPO-Clip step writes Ã over the value rows, in a kept buffer, and its next π
    over Ã; the next step's rows take the buffer of the π it drops: two buffers in turn,
    no fresh per-pair array (whose page faults cost ~45 ms a step at 10⁶ states), the
    same iterates, and a π the caller holds is never written over."""
    mdp = fastppo.garnet(3000, 10, 6, gamma=0.95, seed=2)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), n_threads=1)
    reference = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), n_threads=1)
    gc.disable()  # the buffers come back as the last view goes, not at a collection
    try:
        for _ in range(3):
            ppo.step()
        buffers = []  # (held: the owners of fresh arrays could not reuse an id)
        for _ in range(6):
            ppo.step()
            buffers.append(_buffer(ppo.pi))
        assert len({id(b) for b in buffers}) == 2
        held = ppo.pi  # a caller's π is never written over
        copy = held.copy()
        ppo.step()
        ppo.step()
        np.testing.assert_array_equal(held, copy)
        assert _buffer(ppo.pi) is not _buffer(held)
    finally:
        gc.enable()
    for _ in range(11):
        reference.step()
    np.testing.assert_array_equal(ppo.pi, reference.pi)
    np.testing.assert_array_equal(ppo.logits, reference.logits)

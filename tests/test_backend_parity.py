"""numba = cython = numpy on identical inputs: every public function of the exact
solver, and every kernel of every ``fastppo._backend.STEMS`` group (``linear``,
``tables``, ``policy_update``, ``sampling``, ``episodic``, ``batched``) called directly through ``get_kernel``; and results
reproducible bit for bit run to run for a fixed backend and thread count."""
import numpy as np
import pytest

import fastppo
import naive
from conftest import random_mdp, random_policy
from fastppo import _codes
from fastppo._backend import STEMS, get_kernel
from fastppo._evaluator import blocked_layout, policy_rows, ppo_log_ref

REL = 1e-10
COMPILED = ["numba", "cython"]
REGS = [None, fastppo.ReverseKL(0.3), fastppo.ForwardKL(0.3), fastppo.ChiSquare(0.3),
        fastppo.Hellinger(0.3), fastppo.JensenShannon(0.3), fastppo.AlphaDivergence(0.3, 0.5),
        fastppo.AlphaDivergence(0.3, 2.0), fastppo.AlphaDivergence(0.3, -1.0)]
# (code, alpha) of every generator (NONE: no regularizer), and α next to its limits
CODES = ([(_codes.NONE, 0.0)] + [(reg.code, reg.alpha) for reg in REGS[1:]]
         + [(_codes.ALPHA, 1e-20), (_codes.ALPHA, 1 - 1e-14)])


@pytest.fixture(scope="module")
def mdps():
    return [random_mdp(50, n_states=25, n_actions=4, gamma=0.95, density=0.2),
            random_mdp(51, n_states=30, n_actions=4, gamma=0.9, rectangular=False, density=0.2)]


def _close(x, ref, what):
    err = naive.rel_err(x, ref)
    assert err <= REL, f"{what}: relative error {err:.3g}"


# ------------------------------------------------------------------ public functions
@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED)
def test_public_functions_match_numpy(mdps, which, n_threads):
    for mdp in mdps:
        pi, logits = random_policy(mdp, mdp.n_pairs, sharp=2.0)
        ref = random_policy(mdp, mdp.n_pairs + 1)[0]
        mu = np.random.default_rng(0).random(mdp.n_states)
        mu /= mu.sum()
        # threads: fewer regularizers (each parallel call wakes a thread team; the kernels'
        # generator code is covered for every code by test_kernels_match_numpy)
        for reg in REGS if n_threads == 1 else REGS[:2] + REGS[-2:]:
            if reg is not None:
                reg = (type(reg)(reg.tau, reg.alpha, ref) if isinstance(reg, fastppo.AlphaDivergence)
                       else type(reg)(reg.tau, ref))
            a = fastppo.evaluate(mdp, pi, reg, backend=which, n_threads=n_threads)
            b = fastppo.evaluate(mdp, pi, reg, backend="numpy")
            _close(a.v, b.v, f"v {reg}")
            _close(a.q, b.q, f"q {reg}")
            _close(a.adv, b.adv, f"adv {reg}")
            assert abs(a.J - b.J) <= REL * abs(b.J)
            ga = fastppo.gradient(mdp, logits, reg, mu, backend=which, n_threads=n_threads)
            gb = fastppo.gradient(mdp, logits, reg, mu, backend="numpy")
            _close(ga, gb, f"gradient {reg}")
        _close(fastppo.visitation(mdp, pi, mu, backend=which, n_threads=n_threads),
               fastppo.visitation(mdp, pi, mu, backend="numpy"), "visitation")
        _close(fastppo.softmax(mdp, 20 * logits, backend=which, n_threads=n_threads),
               fastppo.softmax(mdp, 20 * logits, backend="numpy"), "softmax")


def test_backend_selection_paths(mdps):
    """argument → context → set_backend → default; results labelled with the backend used."""
    mdp = mdps[0]
    pi = mdp.uniform_policy()
    assert fastppo.evaluate(mdp, pi, backend="cython", n_threads=1).backend == "cython"
    with fastppo.backend("numpy"):
        assert fastppo.evaluate(mdp, pi, n_threads=1).backend == "numpy"
        assert fastppo.evaluate(mdp, pi, backend="numba", n_threads=1).backend == "numba"
    old = fastppo.get_backend()
    try:
        fastppo.set_backend("cython")
        assert fastppo.visitation(mdp, pi, n_threads=1, full_output=True).backend == "cython"
    finally:
        fastppo.set_backend(None)
    assert fastppo.get_backend() == old


# ------------------------------------------------------------------ kernels directly
def _kernel_inputs(mdp, rng):
    """Canonical arrays plus random kernel inputs (pi with exact zeros for the divergences)."""
    pi, logits = random_policy(mdp, int(rng.integers(1 << 30)), sharp=3.0)
    pi = pi.copy()
    ref = random_policy(mdp, int(rng.integers(1 << 30)))[0]
    return dict(
        pi=pi, logits=logits, ref=ref,
        x=rng.normal(size=mdp.n_states), q=rng.normal(size=mdp.n_pairs),
        b=rng.normal(size=mdp.n_pairs), weight=rng.random(mdp.n_states),
    )


def _zeroed(mdp, pi):
    """pi with one action of every third multi-action state set to exactly 0 (renormalised)."""
    pi = pi.copy()
    for s in range(0, mdp.n_states, 3):
        lo, hi = mdp.a_indptr[s], mdp.a_indptr[s + 1]
        if hi - lo > 1:
            pi[lo] = 0.0
            pi[lo:hi] /= pi[lo:hi].sum()
    return pi


def _first_pairs(mdp):
    """The deterministic policy of every state's first pair."""
    pi = np.zeros(mdp.n_pairs)
    pi[mdp.a_indptr[:-1]] = 1.0
    return pi


def _compact_calls(mdp, policies, n_threads):
    """compact_indptr and compact_rows on the MDP's arrays; outputs concatenated as float
    (pointers pre-filled with -1, values with NaN: every entry must be written)."""
    a, pp, pj, pd = mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data

    def indptr(k, p):
        n_used = np.count_nonzero(p)
        out_a, out_p = np.full(mdp.n_states + 1, -1), np.full(n_used + 1, -1)
        pairs = np.full(n_used, -1)
        k(a, pp, p, out_a, out_p, pairs, n_threads)
        return np.concatenate([out_a, out_p, pairs]).astype(float)

    def rows(k, p):
        used = np.flatnonzero(p)
        out_p = np.concatenate([[0], np.cumsum(np.diff(pp)[used])])
        indices = np.full(out_p[-1], -1, dtype=pj.dtype)
        data, w = np.full(out_p[-1], np.nan), np.full(used.shape[0], np.nan)
        k(pp, pj, pd, p, used, out_p, indices, data, w, n_threads)
        return np.concatenate([indices, data, w])

    return {"compact_indptr": [(label, lambda k, p=p: indptr(k, p)) for label, p in policies],
            "compact_rows": [(label, lambda k, p=p: rows(k, p)) for label, p in policies]}


def _calls(mdp, inp, n_threads, chunks=(1, 2, 3)):
    """kernel name → list of (label, call(kernel) → output array)."""
    a, pp, pj, pd = mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data
    S, L, g = mdp.n_states, mdp.n_pairs, mdp.gamma
    pi, zpi = inp["pi"], _zeroed(mdp, inp["pi"])

    def out(n):
        return np.full(n, np.nan)  # every entry must be written

    tp = mdp._transitions.transposed_pattern(S, mdp.s_indices)  # P's entries by successor
    tw = np.asarray(pi)[tp[1]] * tp[3]  # P_πᵀ's entries in that order
    # P_π by state (each state's pairs' rows in turn) and by successor: row_sweep's CSRs
    state_rows = (pp[a], mdp._transitions.narrow_indices(S), np.repeat(pi, np.diff(pp)) * pd)
    sweep_rows = (("state", state_rows), ("transposed", (tp[0], tp[2], tw)))

    calls = {
        **_update_calls(mdp, inp, n_threads),
        "bellman_matvec": [("", lambda k: _run(k, out(S), a, pp, pj, pd, pi, g, inp["x"], n_threads=n_threads))],
        # buf: one scatter buffer per chunk, however many threads run them
        "bellman_rmatvec": [(f"chunks{c}", lambda k, c=c: _run(k, out(S), a, pp, pj, pd, pi, g, inp["x"],
                                                            extra=np.full((c, S), np.nan), n_threads=n_threads))
                            for c in chunks],
        "q_values": [("", lambda k: _run(k, out(L), pp, pj, pd, mdp.r, g, inp["x"], n_threads=n_threads))],
        # Q̃ and its greedy step; "ties": every Q̃ of a state equal (the first pair wins)
        "q_greedy": [(label, lambda k, r=r, v=v: _q_greedy(k, a, pp, pj, pd, r, g, v, n_threads))
                     for label, r, v in (("", mdp.r, inp["x"]), ("ties", np.zeros(L), np.ones(S)))],
        # both products and the rows in one pass, or one side alone (length-0 inputs)
        "bellman_products": [(f"{sides}-{label}-chunks{c}",
                              lambda k, sides=sides, p=p, c=c: _products(
                                  k, (a, pp, pj, pd, p, g), inp["x"], inp["q"][:S], sides, c, n_threads))
                             for sides in ("xy", "x", "y") for label, p in (("pi", pi), ("zeros", zpi))
                             for c in chunks],
        # the value side's product with its rows, and Q̃, Ã of them (a value solve's last)
        "q_products": [(f"{label}-{cols}", lambda k, p=p, j=j: _outputs(
                            k, (a, pp, j, pd, p, g, inp["x"], mdp.r, g * 2.0 ** -3),
                            (out(S), out(L), out(L)), n_threads))
                       for label, p in (("pi", pi), ("zeros", zpi))
                       for cols, j in (("int32", pj), ("uint16", state_rows[1]))],
        # P's entries in column blocks, and the fused pass on them
        "blocked_entries": [(f"chunks{c}-blocks{b}", lambda k, c=c, b=b: _blocked_entries(
                                 k, mdp, c, b, n_threads)) for c in chunks for b in (1, 3)],
        "blocked_products": [(f"{sides}-{label}-chunks{c}-blocks{b}",
                              lambda k, sides=sides, p=p, c=c, b=b: _blocked_products(
                                  k, mdp, p, inp["x"], inp["q"][:S], sides, c, b, n_threads))
                             for sides in ("xy", "y") for label, p in (("pi", pi), ("zeros", zpi))
                             for c in chunks for b in (1, 3)],
        # P_πᵀ's entries in the transposed order, and the visitation's gather on them
        "transposed_weights": [(label, lambda k, p=p: _run(k, out(pd.shape[0]), tp[1], tp[3], p,
                                                           n_threads=n_threads))
                               for label, p in (("pi", pi), ("zeros", zpi))],
        "transposed_rmatvec": [("", lambda k: _run(k, out(S), tp[0], tp[2], tw, g, inp["x"],
                                                   n_threads=n_threads))],
        # a value sweep on P's rows weighted by π as they are read (the state rows' sweep)
        "pair_sweep": [(f"{label}-shift{c}", lambda k, p=p, c=c: _sweep(
                            k, (pp[a], a, mdp._pair_codes, state_rows[1], pd, p, g, inp["q"][:S]),
                            inp["x"], c, (out(S), np.full((3, 4), np.nan)), n_threads))
                       for label, p in (("pi", pi), ("zeros", zpi)) for c in (0.0, 0.3)],
        # a visitation sweep writing P_πᵀ's entries (transposed_weights, then row_sweep)
        "transposed_sweep": [(f"{label}-shift{c}", lambda k, p=p, c=c: _sweep(
                                  k, (tp[0], tp[1], tp[2], tp[3], p, g, inp["q"][:S]), inp["x"],
                                  c, (out(S), out(pd.shape[0]), np.full((3, 4), np.nan)),
                                  n_threads))
                             for label, p in (("pi", pi), ("zeros", zpi)) for c in (0.0, 0.3)],
        # a sweep x + r and r's sums by chunk (at most one state each: S), rows prefetched or not
        "row_sweep": [(f"{label}-chunks{c}-prefetch{f}", lambda k, rows=rows, c=c, f=f: _sweep(
                           k, (*rows, g, inp["q"][:S]), inp["x"], 0.3,
                           (out(S), np.full((c, 4), np.nan)), n_threads, tail=(f,)))
                      for label, rows in sweep_rows for c in (1, 3, S) for f in (False, True)],
        "segment_softmax": [(f"x{s}", lambda k, s=s: _run(k, out(L), a, s * inp["logits"], n_threads=n_threads))
                            for s in (1.0, 1e3)],
        "advantages": [("", lambda k: _run(k, out(L), a, pi, inp["q"], n_threads=n_threads))],
        # q = r + scale rows and the advantages of q, both written
        "q_advantages": [("", lambda k: _outputs(k, (a, pi, inp["q"], mdp.r, g * 2.0 ** -3),
                                                 (out(L), out(L)), n_threads))],
        "regularized_reward": [], "policy_gradient": [],
        **_compact_calls(mdp, (("pi", pi), ("zeros", zpi), ("first", _first_pairs(mdp))), n_threads),
        **_episodic_calls(n_threads),
        **_assembled_calls(mdp, inp, n_threads),
        **_batched_calls(mdp, inp, n_threads, chunks),
    }
    for code, alpha in CODES:
        for tau in (0.0, 0.7):
            for label, p in (("pi", pi), ("zeros", zpi)):
                if label == "zeros" and (code == _codes.FORWARD_KL or (code == _codes.ALPHA and alpha > 1)):
                    continue  # divergence infinite at π = 0 (checked in test_regularizers)
                tag = f"code{code}-alpha{alpha}-tau{tau}-{label}"
                calls["regularized_reward"].append(
                    (tag, lambda k, p=p, code=code, alpha=alpha, tau=tau:
                     _run(k, out(S), a, mdp.r, p, inp["ref"], code, alpha, tau, n_threads=n_threads)))
                calls["policy_gradient"].append(
                    (tag, lambda k, p=p, code=code, alpha=alpha, tau=tau:
                     _run(k, out(L), a, p, inp["b"], inp["weight"], inp["ref"], code, alpha, tau,
                          n_threads=n_threads)))
    return calls


def _sweep(kernel, args, x, shift, outs, n_threads, tail=()):
    """A sweep's outputs, x after it (x + shift) and the four sums it returns, flattened
    into one float array (``tail``: arguments after the outputs)."""
    x, outs = x.copy(), [o.copy() for o in outs]
    sums = kernel(*args, x, shift, *outs, *tail, n_threads)
    return np.concatenate([x, *(o.ravel() for o in outs), np.asarray(sums, dtype=np.float64)])


def _outputs(kernel, args, outs, n_threads, keep=None, tail=()):
    """Call a kernel with several outputs (and in/out arrays, copied per call; ``tail``:
    arguments after them); those in ``keep`` (default all; not the scratch arrays)
    flattened into one float array."""
    outs = [o.copy() for o in outs]
    kernel(*args, *outs, *tail, n_threads)
    keep = range(len(outs)) if keep is None else keep
    return np.concatenate([outs[i].astype(np.float64).ravel() for i in keep])


def _update_calls(mdp, inp, n_threads):
    """The policy_update and sampling kernels (several outputs each)."""
    a, S, L = mdp.a_indptr, mdp.n_states, mdp.n_pairs
    rng = np.random.default_rng(11)
    # a milder policy than inp["pi"]: steep divergences (alpha = 2, k3) at π ≈ 1e-8 overflow
    theta = inp["logits"] / 3.0
    pi = fastppo.softmax(mdp, theta, backend="numpy")
    ref, q, weight = inp["ref"], inp["q"], inp["weight"]
    calls = {"greedy_policy": [], "ppo_update": []}
    for code, alpha in CODES:
        for tau in (0.0, 0.7):
            tag = f"code{code}-alpha{alpha}-tau{tau}"
            calls["greedy_policy"].append(
                (tag, lambda k, code=code, alpha=alpha, tau=tau: _outputs(
                    k, (a, q, ref, code, alpha, tau), (np.full(L, np.nan), np.full(S, np.nan)),
                    n_threads)))
            for clip, beta in ((0.2, 0.0), (np.inf, 0.5)):
                calls["ppo_update"].append(
                    (f"{tag}-clip{clip}-beta{beta}",
                     lambda k, code=code, alpha=alpha, tau=tau, clip=clip, beta=beta: _outputs(
                         k, (a, pi, q, weight, ref, ppo_log_ref(code, tau, ref), code, alpha,
                             tau, clip, clip, beta, 0.3, 3),
                         (theta, np.full(L, np.nan), np.full(S, -1, np.int64),
                          np.full(S, np.nan), np.full(S, np.nan)), n_threads)))
    # sampling: a rollout of 16 environments, GAE and returns on random trajectories, and
    # the minibatch epochs on random samples
    n_envs, T = 16, 9
    start = rng.integers(0, S, n_envs)
    u_action, u_next = rng.random((n_envs, T)), rng.random((n_envs, T))
    terminal = (np.arange(S) % 7 == 3).astype(np.uint8)
    rows = [np.full((n_envs, T), -7, np.int64) for _ in range(4)]
    rows += [np.full((n_envs, T), np.nan), np.full((n_envs, T), np.nan),
             np.full((n_envs, T), 9, np.uint8), np.full((n_envs, T), 9, np.uint8)]
    calls["rollout"] = [("", lambda k: _outputs(
        k, (a, pi, np.log(pi), mdp.r, mdp.p_indptr, mdp.p_indices, mdp.p_data, terminal, start,
            u_action, u_next), rows, n_threads))]
    r, v, nv = (rng.normal(size=(n_envs, T)) for _ in range(3))
    term = (rng.random((n_envs, T)) < 0.1).astype(np.uint8)
    done = term | (rng.random((n_envs, T)) < 0.1).astype(np.uint8)
    calls["gae"] = [(f"lambda{lam}", lambda k, lam=lam: _outputs(
        k, (r, v, nv, term, done, mdp.gamma, lam), (np.full((n_envs, T), np.nan),), n_threads))
        for lam in (0.0, 0.95)]
    calls["discounted_returns"] = [("", lambda k: _outputs(
        k, (r, nv, term, done, mdp.gamma), (np.full((n_envs, T), np.nan),), n_threads))]
    n, epochs, minibatches = 60, 2, 3
    s_samples = rng.integers(0, S, n)
    k_samples = a[s_samples] + (rng.integers(0, 1 << 30, n) % np.diff(a)[s_samples])
    logp_old = np.log(pi[k_samples])
    logp_ref = np.log(ref[k_samples])
    adv, targets, v_old = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    order = np.stack([rng.permutation(n) for _ in range(epochs)]).astype(np.int64)
    bounds = np.linspace(0, n, minibatches + 1).round().astype(np.int64)
    values = rng.normal(size=S)
    calls["ppo_minibatches"] = []
    for kl_kind, ent_coef, sample_mean in [(0, 0.0, False), (1, 0.0, False), (2, 0.0, False),
                                           (3, 0.0, False), (2, 0.05, False), (0, 0.05, True),
                                           (3, 0.0, True)]:
        label = f"kl{kl_kind}-ent{ent_coef}-{'sample' if sample_mean else 'state'}_mean"
        calls["ppo_minibatches"].append((label, lambda k, kl_kind=kl_kind, e=ent_coef, w=sample_mean: _outputs(
            k, (a, s_samples, k_samples, logp_old, adv, logp_ref, targets, v_old, order, bounds,
                0.2, 0.3, 3.0, 0.1, kl_kind, 0.5, 0.4, 0.5, e, w),
            (theta, values, np.zeros(L), np.zeros(S), np.zeros(S),
             np.zeros(S, np.int64), np.zeros(S), np.zeros(epochs, np.int64)), n_threads,
            keep=(0, 1, 7))))  # logits, values, clip counts
    return calls


def _episodic_calls(n_threads):
    """The one-pass γ = 1 kernels, on a token MDP (a DAG) with a random policy."""
    dag = fastppo.token_mdp(3, 3, 2, seed=0).mdp
    pi = random_policy(dag, 5)[0]
    args = (dag.topological_order, dag.terminal.view(np.uint8), dag.a_indptr, dag.p_indptr,
            dag.p_indices, dag.p_data, pi, 1.0)
    c = np.random.default_rng(6).normal(size=dag.n_states)
    S = dag.n_states
    return {"episodic_values": [("", lambda k: _run(k, np.full(S, np.nan), *args, c,
                                                    n_threads=n_threads))],
            "episodic_visits": [("", lambda k: _run(k, np.full(S, np.nan), *args, dag.rho,
                                                    n_threads=n_threads))]}


def _blocked_entries(kernel, mdp, chunks, blocks, n_threads):
    """blocked_entries into outputs pre-filled with sentinels; its outputs and the advanced
    cursor concatenated. Without outputs it counts the regions' sizes."""
    chunk_pairs, begins, ends, steps = blocked_layout(mdp, chunks, blocks, "numpy")[:4]
    size, width = steps.shape[0], -(-mdp.n_states // blocks)
    counts = np.zeros_like(begins)
    kernel(mdp.p_indptr, mdp.p_indices, mdp.p_data, chunk_pairs, width, counts,
           np.empty_like(counts), np.empty(0, np.uint8), np.empty(0, np.int32), np.empty(0),
           n_threads)
    np.testing.assert_array_equal(counts, ends - begins)
    cursor = begins.copy()
    out_steps, columns = np.full(size, 77, np.uint8), np.full(size, -1, np.int32)
    data = np.full(size, np.nan)
    kernel(mdp.p_indptr, mdp.p_indices, mdp.p_data, chunk_pairs, width,
           cursor, np.empty_like(cursor), out_steps, columns, data, n_threads)
    np.testing.assert_array_equal(cursor, ends)
    return np.concatenate([cursor.ravel(), out_steps, columns, data])


def _blocked_products(kernel, mdp, pi, x, y, sides, chunks, blocks, n_threads):
    """blocked_products on the layout of ``blocked_layout``, both sides ("xy") or the
    visitation side ("y"); out_x, out_y and rows (those it makes)."""
    S, L = mdp.n_states, mdp.n_pairs
    empty = np.empty(0)
    ox, rows = (np.full(S, np.nan), np.full(L, np.nan)) if "x" in sides else (empty, empty)
    oy = np.full(S, np.nan)
    kernel(mdp.a_indptr, *blocked_layout(mdp, chunks, blocks, "numpy"), pi, mdp.gamma,
           x if "x" in sides else empty, y, ox, oy, rows, np.full(L, np.nan),
           np.full((chunks, 2 * S), np.nan), n_threads)
    return np.concatenate([ox, oy, rows])


def _random_products(mdp, which, seed):
    """A random softmax π, x and y, and bellman_products' both sides (2 chunks, 2 threads)
    on ``which``: (pi, x, y, outputs)."""
    S = mdp.n_states
    rng = np.random.default_rng(seed)
    pi = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs), backend="numpy")
    x, y = rng.random(S), rng.random(S)
    plain = _products(get_kernel("bellman_products", which),
                      (mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data, pi, mdp.gamma),
                      x, y, "xy", 2, 2)
    return pi, x, y, plain


def _products(kernel, args, x, y, sides, chunks, n_threads):
    """bellman_products with the sides in ``sides``; its outputs concatenated."""
    empty = np.empty(0)
    S, L = x.shape[0], args[4].shape[0]
    ox, oy = (np.full(S, np.nan) if side in sides else empty for side in "xy")
    rows = np.full(L, np.nan) if "x" in sides else empty
    kernel(*args, x if "x" in sides else empty, y if "y" in sides else empty, ox, oy, rows,
           np.full((chunks, 2 * S), np.nan), n_threads)
    return np.concatenate([ox, oy, rows])


def _assembled_calls(mdp, inp, n_threads):
    """The assembled-matrix kernels: the pattern compared in an order-free form (the
    column of each transition's slot: backends may order a row's parts differently), the
    others on the NumPy reference's pattern, for B = A and Aᵀ and each part."""
    from fastppo import _reference as ref

    a, pp, pj, pd = mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data
    S, L = mdp.n_states, pj.shape[0]

    def pattern(k):
        indptr, mid = np.empty(S + 1, np.int64), np.empty(S, np.int64)
        indices, pos = np.empty(L, np.int32), np.empty(L, np.int64)
        nnz = int(k(a, pp, pj, indptr, mid, indices, pos, np.empty(S, np.int64), n_threads))
        columns = np.concatenate([indices[:nnz], np.arange(S)])[pos]
        return np.concatenate([indptr, mid, columns, [nnz]]).astype(np.float64)

    indptr, mid = np.empty(S + 1, np.int64), np.empty(S, np.int64)
    indices, pos = np.empty(L, np.int32), np.empty(L, np.int64)
    nnz = ref.merge_pattern(a, pp, pj, indptr, mid, indices, pos, np.empty(S, np.int64))
    indices = indices[:nnz].copy()
    data, diag = np.empty(nnz + S), np.empty(S)
    ref.assemble_values(a, pp, pd, pos, inp["pi"], mdp.gamma, data, diag)
    parts = (indptr, mid, indices, data)
    e = diag / 1.2  # an SSOR diagonal E = D/ω
    x = inp["x"]

    def out(n=S):
        return np.full(n, np.nan)

    pairs = (a[:-1] + np.arange(S) % np.diff(a)).astype(np.int64)  # a deterministic policy
    pi_det = np.zeros(mdp.n_pairs)
    pi_det[pairs] = 1.0

    def deterministic(k):  # the matrix, dense (the layout within a row may differ)
        indptr, mid = np.empty(S + 1, np.int64), np.empty(S, np.int64)
        indices, data, diag = np.empty(L, np.int32), np.full(L, np.nan), np.full(S, np.nan)
        nnz = int(k(pp, pj, pd, pairs, pi_det, mdp.gamma, indptr, mid, indices, data, diag,
                    np.empty(S, np.int64), n_threads))
        dense = np.diag(diag)
        rows = np.repeat(np.arange(S), np.diff(indptr))
        dense[rows, indices[:nnz]] = data[:nnz]
        return np.concatenate([dense.ravel(), indptr, mid - indptr[:-1]]).astype(np.float64)

    # another deterministic policy: every third state's next action; its matrix patched
    # from the first's (the NumPy reference's), the same dense matrix on every backend
    changed = np.arange(0, S, 3, dtype=np.int64)
    changed = changed[np.diff(a)[changed] > 1]
    pairs_new = pairs.copy()
    pairs_new[changed] = a[changed] + (pairs[changed] - a[changed] + 1) % np.diff(a)[changed]
    pi_new = np.zeros(mdp.n_pairs)
    pi_new[pairs_new] = 1.0
    old = (np.empty(S + 1, np.int64), np.empty(S, np.int64), np.empty(L, np.int32),
           np.empty(L + S), np.empty(S))
    ref.assemble_deterministic(pp, pj, pd, pairs, pi_det, mdp.gamma, *old, np.empty(S, np.int64))

    def patched(k):
        indptr, mid = np.empty(S + 1, np.int64), np.empty(S, np.int64)
        indices, data, diag = np.empty(L, np.int32), np.full(L, np.nan), np.full(S, np.nan)
        nnz = int(k(pp, pj, pd, pairs_new, pi_new, mdp.gamma, changed, *old, indptr, mid,
                    indices, data, diag, np.empty(S, np.int64), n_threads))
        dense = np.diag(diag)
        rows = np.repeat(np.arange(S), np.diff(indptr))
        dense[rows, indices[:nnz]] = data[:nnz]
        return np.concatenate([dense.ravel(), indptr, mid - indptr[:-1]]).astype(np.float64)

    calls = {
        "merge_pattern": [("", pattern)],
        "assemble_deterministic": [("", deterministic)],
        "patch_deterministic": [("", patched)],
        "assemble_values": [("", lambda k: _outputs(k, (a, pp, pd, pos, inp["pi"], mdp.gamma),
                                                    [out(nnz + S), out()], n_threads))],
        "split_matvec": [], "triangular_solve": [], "sgs_operator": [], "sgs_start": [],
        "sgs_bicgstab": [],
        # a filter of 2^(64 - shift) bits (garbage in: the kernel clears it): 64 bits
        # (collisions) and 2^16
        "distinct_pairs_bound": [(f"shift{shift}", lambda k, shift=shift: np.array([float(k(
            indptr, indices, np.full(1 << (58 - shift), 7, np.uint64), shift, n_threads))]))
            for shift in (58, 48)],
    }
    for t in (0, 1):
        for part in (0, 1, 2):
            calls["split_matvec"].append(
                (f"t{t}-part{part}", lambda k, t=t, part=part: _run(
                    k, out(), *parts, e, x, extra=None, n_threads=n_threads, tail=(part, t))))
        b_hat = np.random.default_rng(13 + t).normal(size=S)
        bnorm = float(np.linalg.norm(b_hat))
        start = [np.zeros(S), b_hat, b_hat, np.zeros(S), np.zeros(S), out(), out(), out(),
                 np.zeros(S), np.array([1.0, 1.0, 1.0, 1.0, 1.0, bnorm, np.nan])]
        # the sweeps with the neighbour's register path (``near``: both bits, whether the
        # neighbour is there or not) and without (the same sums either way)
        for near in (0, 3):
            for part in (1, 2):
                calls["triangular_solve"].append(
                    (f"t{t}-part{part}-near{near}", lambda k, t=t, part=part, near=near: _run(
                        k, out(), *parts, 1.0 / e, x, n_threads=n_threads, tail=(part, t, near))))
            calls["sgs_bicgstab"].append(  # three steps (six products) from y = 0
                (f"t{t}-near{near}", lambda k, t=t, start=start, near=near: _outputs(
                    k, (*parts, e, 1.0 / e, diag - 2.0 * e, t, near), start, n_threads,
                    keep=[0, 1, 3, 4, 9], tail=(0.0, 1e8, 6))))
            calls["sgs_operator"].append(
                (f"t{t}-near{near}", lambda k, t=t, near=near: _outputs(
                    k, (*parts, e, 1.0 / e, diag - 2.0 * e, x), [out(), out()], n_threads,
                    keep=[1], tail=(t, near))))
            calls["sgs_start"].append(
                (f"t{t}-near{near}", lambda k, t=t, b=b_hat, near=near: _outputs(
                    k, (*parts, e, 1.0 / e, diag - 2.0 * e, b, x), [out(), out(), out()],
                    n_threads, tail=(t, near))))
    return calls


# member i of a batch uses policy (or reward) row MEMBERS[i]: 13 members, so the Cython
# kernels run a block of eight, one of four and one member alone (Numba: fours and one),
# rows repeated and out of order
MEMBERS = np.array([0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 2, 0, 1], dtype=np.int64)


def _batched_calls(mdp, inp, n_threads, chunks):
    """The K-member products on (S, K) vectors: K = 13 members over 5 policies (two with
    exact zeros), and one policy / one reward shared by all members (row 0 of one)."""
    a, pp, pj, pd = mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data
    S, L, g, K = mdp.n_states, mdp.n_pairs, mdp.gamma, MEMBERS.shape[0]
    rng = np.random.default_rng(12)
    pis = np.stack(_batch_policies(mdp, inp))  # (5, L)
    shared = np.zeros(K, dtype=np.int64)
    policies = {"K13": (pis, MEMBERS), "shared": (pis[1:2].copy(), shared)}
    x = rng.normal(size=(S, K))
    rewards = {"K13": (rng.normal(size=(5, L)), MEMBERS), "shared": (mdp.r[None].copy(), shared)}
    ax, offset = rng.normal(size=(S, K)), rng.normal(size=K)
    # regularized rewards: full-support policies (rows 0, 2, 3) and one with zeros (row 1,
    # for the divergences finite at π = 0); consecutive members sharing a row reuse its terms
    reward_rows, reward_of = rng.normal(size=(3, L)), np.array([0, 2, 1, 1, 0], dtype=np.int64)
    full_of, zeros_of = np.array([0, 0, 2, 3, 2], dtype=np.int64), np.array([1, 0, 1, 1, 3], dtype=np.int64)
    divergence_cases = [
        (f"code{code}-alpha{alpha}-tau{tau}-{label}", code, alpha, tau, of)
        for code, alpha in CODES for tau in (0.0, 0.7)
        for label, of in (("full", full_of), ("zeros", zeros_of))
        if not (label == "zeros" and (code == _codes.FORWARD_KL or (code == _codes.ALPHA and alpha > 1)))]

    def out(*shape):
        return np.full(shape, np.nan)

    # one policy's P_π entries on the state rows (row 1: with exact zeros)
    weights = np.empty(pd.shape[0])
    get_kernel("shared_weights", "numpy")(pp, pd, pis[1], weights, 1)

    return {
        "shared_weights": [(f"pi{i}", lambda k, i=i: _run(k, out(pd.shape[0]), pp, pd, pis[i],
                                                            n_threads=n_threads)) for i in (0, 1)],
        "bellman_matvec_shared": [("", lambda k: _run(k, out(S, K), pp[a], pj, weights, g, x,
                                                      n_threads=n_threads))],
        "bellman_matvec_batch": [(tag, lambda k, p=p: _run(k, out(S, K), a, pp, pj, pd, *p, g, x,
                                                           n_threads=n_threads))
                                 for tag, p in policies.items()],
        "bellman_rmatvec_batch": [(f"{tag}-chunks{c}", lambda k, p=p, c=c: _run(
            k, out(S, K), a, pp, pj, pd, *p, g, x, extra=np.full((c, S, K), np.nan),
            n_threads=n_threads))
            for tag, p in policies.items() for c in chunks],
        "q_values_batch": [(tag, lambda k, r=r: _run(k, out(K, L), pp, pj, pd, *r, g, x,
                                                     n_threads=n_threads))
                           for tag, r in rewards.items()],
        # the sweeps' passes over (S, K) arrays: r = b − A x and its per-member statistics,
        # x ← x + r + offset
        "sweep_residual_batch": [("", lambda k: _outputs(
            k, (x,), (ax, out(4, K)), n_threads))],
        "sweep_update_batch": [("", lambda k: _in_place(
            k, x, ax, offset, n_threads=n_threads))],
        "regularized_reward_batch": [(tag, lambda k, code=code, alpha=alpha, tau=tau, of=of: _run(
            k, out(5, S), a, reward_rows, reward_of, pis, of, inp["ref"], code, alpha, tau,
            extra=out(L), n_threads=n_threads)) for tag, code, alpha, tau, of in divergence_cases],
    }


def _in_place(kernel, x, *args, n_threads):
    """A kernel updating its first argument in place, on a copy."""
    x = x.copy()
    kernel(x, *args, n_threads)
    return x


def _batch_policies(mdp, inp):
    zeroed = _zeroed(mdp, inp["pi"])
    return [inp["pi"], zeroed, random_policy(mdp, 13)[0], random_policy(mdp, 14)[0], zeroed[::-1].copy()]


def test_batched_kernels_equal_single_kernels(mdps):
    """Member i of a batched product is the single-member product of its row: bit for bit
    on Numba (the same sums in the same order), to 1e-13 on Cython (its SIMD lanes fuse
    each multiply-add where the host has FMA)."""
    mdp = mdps[1]
    inp = _kernel_inputs(mdp, np.random.default_rng(9))
    batched = _batched_calls(mdp, inp, 1, (2,))  # the same x, r and policies as below
    a, pp, pj, pd = mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data
    S, g = mdp.n_states, mdp.gamma
    rng = np.random.default_rng(12)
    pis = _batch_policies(mdp, inp)
    x = rng.normal(size=(S, MEMBERS.shape[0]))
    r = rng.normal(size=(5, mdp.n_pairs))
    for which in COMPILED:
        if which == "numba":
            def same(a, b, what):
                np.testing.assert_array_equal(a, b, err_msg=what)
        else:
            def same(a, b, what):
                err = naive.rel_err(a, b)
                assert err <= 1e-13, f"{what}: relative error {err:.3g}"
        mv = batched["bellman_matvec_batch"][0][1](get_kernel("bellman_matvec_batch", which))
        rmv = batched["bellman_rmatvec_batch"][0][1](get_kernel("bellman_rmatvec_batch", which))
        q = batched["q_values_batch"][0][1](get_kernel("q_values_batch", which))
        for i, m in enumerate(MEMBERS):
            xm = np.ascontiguousarray(x[:, i])
            single = _run(get_kernel("bellman_matvec", which), np.empty(S), a, pp, pj, pd, pis[m], g, xm,
                          n_threads=1)
            same(mv[:, i], single, f"{which} matvec {i}")
            single = _run(get_kernel("bellman_rmatvec", which), np.empty(S), a, pp, pj, pd, pis[m], g,
                          xm, extra=np.empty((2, S)), n_threads=1)
            same(rmv[:, i], single, f"{which} rmatvec {i}")
            single = _run(get_kernel("q_values", which), np.empty(mdp.n_pairs), pp, pj, pd, r[m], g,
                          xm, n_threads=1)
            same(q[i], single, f"{which} q_values {i}")


@pytest.mark.parametrize("which", ("numba", "cython", "numpy"))
def test_shared_product_equals_single_products(mdps, which):
    """``bellman_matvec_shared`` on ``shared_weights`` of one policy: each of K = 13
    columns (a block of eight, one of four, one alone on Cython) is ``bellman_matvec`` of
    that policy on it, and the dense x − γ P_π x, to 1e-13 (other sums' order), for a
    policy of full support, one with exact zeros, and a deterministic one (compact rows,
    ``policy_rows``)."""
    for mdp in mdps:
        inp = _kernel_inputs(mdp, np.random.default_rng(31))
        S, g = mdp.n_states, mdp.gamma
        x = np.random.default_rng(32).normal(size=(S, MEMBERS.shape[0]))
        deterministic = np.zeros(mdp.n_pairs)
        deterministic[mdp.a_indptr[:-1]] = 1.0
        for pi in (inp["pi"], _zeroed(mdp, inp["pi"]), deterministic):
            a, pp, pj, pd, w = policy_rows(mdp, pi)
            weights = np.full(pp[-1], np.nan)
            get_kernel("shared_weights", which)(pp, pd, w, weights, 1)
            for j in range(pp.shape[0] - 1):  # loop reference: π(k) p_j
                np.testing.assert_array_equal(weights[pp[j]:pp[j + 1]], w[j] * pd[pp[j]:pp[j + 1]])
            out = np.full((S, MEMBERS.shape[0]), np.nan)
            get_kernel("bellman_matvec_shared", which)(pp[a], pj, weights, g, x, out, 1)
            P_pi = naive.P_pi(mdp, pi)
            for i in range(x.shape[1]):
                xi = np.ascontiguousarray(x[:, i])
                single = _run(get_kernel("bellman_matvec", which), np.empty(S), a, pp, pj, pd, w, g,
                              xi, n_threads=1)
                for ref, what in ((single, "bellman_matvec"), (xi - g * P_pi @ xi, "dense")):
                    err = naive.rel_err(out[:, i], ref)
                    assert err <= 1e-13, f"{which} column {i} vs {what}: {err:.3g}"


def test_batched_regularized_rewards_equal_member_kernels(mdps):
    """Row i of ``regularized_reward_batch`` is ``regularized_reward`` of member i's policy
    and rewards to 1e-13 (every generator; the reverse-KL terms by another log form), on
    every backend; members sharing a policy row reuse its terms."""
    mdp = mdps[0]
    rng = np.random.default_rng(21)
    full = np.stack([random_policy(mdp, 30 + i, sharp=3.0)[0] for i in range(3)])
    zeroed = np.stack([_zeroed(mdp, full[i]) for i in range(3)])
    ref = random_policy(mdp, 40)[0]
    r = rng.normal(size=(2, mdp.n_pairs))
    pi_of, r_of = np.array([0, 0, 2, 1, 1, 0], dtype=np.int64), np.array([1, 0, 0, 1, 1, 0], dtype=np.int64)
    for which in ("numba", "cython", "numpy"):
        for code, alpha in CODES:
            finite_at_zero = not (code == _codes.FORWARD_KL or (code == _codes.ALPHA and alpha > 1))
            for pis in ((full, zeroed) if finite_at_zero else (full,)):
                out = np.full((6, mdp.n_states), np.nan)
                get_kernel("regularized_reward_batch", which)(
                    mdp.a_indptr, r, r_of, pis, pi_of, ref, code, alpha, 0.7, out,
                    np.empty(mdp.n_pairs), 1)
                for i in range(6):
                    one = np.empty(mdp.n_states)
                    get_kernel("regularized_reward", which)(mdp.a_indptr, r[r_of[i]], pis[pi_of[i]],
                                                            ref, code, alpha, 0.7, one, 1)
                    err = naive.rel_err(out[i], one)
                    assert err <= 1e-13, f"{which} code {code} alpha {alpha} member {i}: {err:.3g}"


def _q_greedy(kernel, a, pp, pj, pd, r, g, v, n_threads):
    """q_greedy's outputs, concatenated as float (NaN / −1 pre-filled: each must be written)."""
    S, L = a.shape[0] - 1, r.shape[0]
    q, pi, value, pairs = np.full(L, np.nan), np.full(L, np.nan), np.full(S, np.nan), np.full(S, -1)
    kernel(a, pp, pj, pd, r, g, v, q, pi, pairs, value, n_threads)
    return np.concatenate([q, pi, value, pairs])


def _run(kernel, out, *args, extra=None, n_threads, tail=()):
    if extra is None:
        kernel(*args, out, *tail, n_threads)
    else:
        kernel(*args, out, extra, *tail, n_threads)
    return out


def test_parity_covers_every_kernel(mdps):
    """Every kernel of every stem (linear, tables, policy_update, sampling, episodic,
    assembled, batched) has a parity case (a new kernel fails this until added)."""
    mdp = mdps[0]
    assert set(STEMS) == {"linear", "tables", "policy_update", "sampling", "episodic", "assembled",
                          "batched"}
    names = {name for stem in STEMS for name in STEMS[stem]}
    assert set(_calls(mdp, _kernel_inputs(mdp, np.random.default_rng(0)), 1)) == names


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED)
def test_kernels_match_numpy(mdps, which, n_threads):
    rng = np.random.default_rng(7)
    for mdp in mdps:
        inp = _kernel_inputs(mdp, rng)
        for name, variants in _calls(mdp, inp, n_threads).items():
            for label, call in variants:
                got = call(get_kernel(name, which))
                expect = call(get_kernel(name, "numpy"))
                assert np.isfinite(expect).all(), (name, label)
                assert np.isfinite(got).all(), (name, label)
                err = naive.rel_err(got, expect)
                assert err <= REL, f"{which} {name} {label}: {err:.3g}"


@pytest.mark.parametrize("which", COMPILED + ["numpy"])
def test_blocked_products_are_bellman_products_bit_for_bit(mdps, which):
    """The fused pass (and the visitation side alone) on P's entries in column blocks sums
    what bellman_products sums, in the same order (rows are sorted by column): equal bit
    for bit, every chunk and block count, on 1 and 2 threads."""
    rng = np.random.default_rng(9)
    for mdp in mdps:
        inp = _kernel_inputs(mdp, rng)
        S = mdp.n_states
        rows = (mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data)
        for pi in (inp["pi"], _zeroed(mdp, inp["pi"])):
            for chunks in (1, 2, 3):
                for n_threads in (1, 2):
                    for sides in ("xy", "y"):
                        plain = _products(get_kernel("bellman_products", which),
                                          (*rows, pi, mdp.gamma), inp["x"], inp["q"][:S], sides,
                                          chunks, n_threads)
                        for blocks in (1, 2, 5, S):
                            blocked = _blocked_products(
                                get_kernel("blocked_products", which), mdp, pi, inp["x"],
                                inp["q"][:S], sides, chunks, blocks, n_threads)
                            np.testing.assert_array_equal(
                                blocked, plain, err_msg=f"{sides}, {chunks} chunks, {blocks} blocks")


@pytest.mark.parametrize("which", COMPILED + ["numpy"])
def test_blocked_entries_step_over_long_gaps_with_fillers(which):
    """A gridworld's blocks of columns see runs of more than 255 pairs without an entry:
    fillers (step 255, probability 0) take those steps, and the products stay
    bellman_products' bit for bit, on every backend."""
    mdp = fastppo.gridworld(60, 50)
    pi, x, y, plain = _random_products(mdp, which, 4)
    steps, data = blocked_layout(mdp, 2, 7, which, 2)[3::2]
    assert ((steps == 255) & (data == 0.0)).sum() > 0
    blocked = _blocked_products(get_kernel("blocked_products", which), mdp, pi, x, y, "xy", 2, 7, 2)
    np.testing.assert_array_equal(blocked, plain)


@pytest.mark.parametrize("which", COMPILED + ["numpy"])
def test_blocked_columns_are_offsets_in_16_bits_up_to_that_width(which):
    """Each entry keeps its column less its block's first column: uint16 for blocks of at
    most 2¹⁶ states, int32 for wider ones; both give bellman_products' sums bit for bit."""
    mdp = fastppo.garnet(70_000, 2, 3, seed=3)
    pi, x, y, plain = _random_products(mdp, which, 5)
    for blocks, dtype in ((1, np.int32), (2, np.uint16)):
        columns = blocked_layout(mdp, 2, blocks, which, 2)[4]
        assert columns.dtype == dtype
        assert columns.max() >= 30_000  # offsets span the block
        blocked = _blocked_products(get_kernel("blocked_products", which), mdp, pi, x, y, "xy",
                                    2, blocks, 2)
        np.testing.assert_array_equal(blocked, plain, err_msg=f"{blocks} blocks")


@pytest.mark.parametrize("which", COMPILED)
def test_kernels_serial_equal_parallel(mdps, which):
    """Same backend, 1 vs 2 threads: per-state kernels compute each entry identically."""
    mdp = mdps[1]
    inp = _kernel_inputs(mdp, np.random.default_rng(8))
    one, two = _calls(mdp, inp, 1), _calls(mdp, inp, 2)
    for name in one:
        for (label, c1), (_, c2) in zip(one[name], two[name]):
            k = get_kernel(name, which)
            np.testing.assert_array_equal(c1(k), c2(k), err_msg=f"{name} {label}")


# ------------------------------------------------------------------ kernel codes
def test_kernel_code_tables_agree():
    """One table of kernel codes per backend (fastppo/_codes.py, kernels/numba/_codes.py,
    kernels/cython/_codes.pxi): the same names with the same numbers in all three, and the
    regularizers and the sampled loss numbered from them."""
    from fastppo._kernels.cython import _info
    from fastppo._kernels.numba import _codes as numba_codes

    python = _codes.table()
    numba = {name: value for name, value in vars(numba_codes).items()
             if name.isupper() and isinstance(value, int)}
    cython = {name: int(member) for enum in (_info.DivergenceCode, _info.KLKind)
              for name, member in enum.__members__.items()}
    assert python == numba == cython
    assert len(python) == 11 and len(set(_codes.KL_KINDS.values()) | {_codes.KL_NONE}) == 4
    by_class = {cls.__name__: cls.code for cls in (fastppo.ReverseKL, fastppo.ForwardKL, fastppo.ChiSquare,
                                                     fastppo.Hellinger, fastppo.JensenShannon,
                                                     fastppo.AlphaDivergence)}
    assert by_class == {"ReverseKL": python["REVERSE_KL"], "ForwardKL": python["FORWARD_KL"],
                        "ChiSquare": python["CHI_SQUARE"], "Hellinger": python["HELLINGER"],
                        "JensenShannon": python["JENSEN_SHANNON"], "AlphaDivergence": python["ALPHA"]}
    assert fastppo.regularizers.Regularizer.code == python["NONE"]
    assert _codes.KL_KINDS == {"k1": python["KL_K1"], "k2": python["KL_K2"], "k3": python["KL_K3"]}


# ------------------------------------------------------------------ reproducibility
@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", ["numba", "cython", "numpy"])
def test_bit_for_bit_reproducible(mdps, which, n_threads):
    mdp = mdps[1]
    pi, logits = random_policy(mdp, 3, sharp=2.0)
    reg = fastppo.JensenShannon(0.5)
    opts = dict(backend=which, n_threads=n_threads)

    def run():
        ev = fastppo.evaluate(mdp, pi, reg, **opts)
        return (ev.v, ev.q, ev.adv, np.array([ev.J, ev.n_matvec, ev.residual]),
                fastppo.visitation(mdp, pi, **opts), fastppo.gradient(mdp, logits, reg, **opts),
                fastppo.softmax(mdp, logits, **opts))

    first, second = run(), run()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)

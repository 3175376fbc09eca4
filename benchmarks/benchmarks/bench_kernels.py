"""One sparse product per kernel, through ``fastppo._backend.get_kernel`` (cost per
product).

``bellman_matvec``: x − γP_π x; ``bellman_rmatvec``: x − γP_πᵀ x;
``q_values``: r + γ P v; ``q_greedy``: r + γ P v and its greedy step at τ = 0 in one pass
(policy iteration's step); ``compact_rows``: a deterministic policy's rows of P gathered;
``bellman_products``: both products and the rows P x in one
pass (a lockstep sweep: compare with ``bellman_matvec`` + ``bellman_rmatvec``);
``blocked_products``: the same pass on P's entries in column blocks (at least two: the
evaluator blocks from 2¹⁹ states on, where it pays; here it tracks the kernel's cost);
``blocked_entries``: the copy those blocks are made of (``blocked_layout``: the regions
counted, then filled; made once per run);
``transposed_rmatvec``: x − γP_πᵀ x as a gather from P's entries in the transposed order
(single visitation solves up to 2¹⁶ states; compare with ``bellman_rmatvec``);
``transposed_weights``: P_πᵀ's entries in that order, once per policy;
``row_sweep``: a whole Richardson sweep (x + r and r's sums) on P_π's state rows written
(a single visitation solve's sweeps, on P_πᵀ's entries, up to 2¹⁶ states);
``pair_sweep``: the same sweep on P's own rows weighted by π as they are read (a single
value solve's sweeps up to 2¹⁶ states; compare with ``row_sweep`` and ``bellman_matvec``);
``q_products``: a value solve's last product with Q̃ and Ã of its iterate in one pass
(compare with ``bellman_products``' value side and ``q_advantages``);
``regularized_reward_kl``: r_π − τ D_f(π) for forward KL (a pass over the pairs, no product).
Together with the ``*Products`` tracks this separates "fewer products" from "faster
products".

``SweepSuite``: one product of SGS-BiCGSTAB's operator Â (a backward and a forward
Gauss–Seidel sweep over the assembled I − γP_π, ``sgs_operator``), for A (the value
system) and Aᵀ (visitation): the serial sweeps of the slow-mixing families.
"""
import numpy as np

from fastppo._evaluator import BLOCK_BYTES, blocked_layout

from .common import (BACKENDS, FAMILIES, SIZES, THREADS, check_params, get_mdp, get_policy,
                     kernel_or_skip, warm)

KERNELS = ["bellman_matvec", "bellman_rmatvec", "q_values", "q_greedy", "bellman_products",
           "blocked_products", "blocked_entries", "transposed_rmatvec", "transposed_weights",
           "row_sweep", "pair_sweep", "q_products", "regularized_reward_kl", "compact_rows"]


def _blocks(m, n_threads):
    """(chunks, blocks) of the evaluator's blocked copy (at least two blocks here)."""
    chunks = max(2, n_threads)
    return chunks, max(2, -(-16 * m.n_states * chunks // BLOCK_BYTES))


class KernelSuite:
    params = [KERNELS, BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["kernel", "backend", "n_states", "family", "n_threads"]
    number = 1  # one product per sample (asv would re-run setup between batched calls)
    repeat = (5, 20, 0.2)
    rounds = 1
    warmup_time = 0.0

    def setup(self, kernel, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        m = get_mdp(family, n_states)
        pi = get_policy(family, n_states)
        x = np.random.default_rng(0).random(m.n_states)
        k = kernel_or_skip(kernel.removesuffix("_kl"), backend)
        csr = (m.p_indptr, m.p_indices, m.p_data)
        if kernel == "bellman_matvec":
            args = (m.a_indptr, *csr, pi, m.gamma, x, np.empty(m.n_states), n_threads)
        elif kernel == "bellman_rmatvec":
            buf = np.empty((max(2, n_threads), m.n_states))  # the evaluator's scatter chunks
            args = (m.a_indptr, *csr, pi, m.gamma, x, np.empty(m.n_states), buf, n_threads)
        elif kernel == "bellman_products":  # both sides: x beside the sums, 2 n_states per chunk
            buf = np.empty((max(2, n_threads), 2 * m.n_states))
            args = (m.a_indptr, *csr, pi, m.gamma, x, x[::-1].copy(), np.empty(m.n_states),
                    np.empty(m.n_states), np.empty(m.n_pairs), buf, n_threads)
        elif kernel == "blocked_entries":  # the copy, as the evaluator sizes it
            self.call = lambda: blocked_layout(m, *_blocks(m, n_threads), backend, n_threads)
        elif kernel == "blocked_products":  # the evaluator's chunks and block size
            chunks, blocks = _blocks(m, n_threads)
            layout = blocked_layout(m, chunks, blocks, backend, n_threads)
            args = (m.a_indptr, *layout, pi, m.gamma, x, x[::-1].copy(), np.empty(m.n_states),
                    np.empty(m.n_states), np.empty(m.n_pairs), np.empty(m.n_pairs),
                    np.empty((chunks, 2 * m.n_states)), n_threads)
        elif kernel in ("transposed_rmatvec", "transposed_weights"):  # up to 2¹⁶ states
            pattern = m._transitions.transposed_pattern(m.n_states, m.s_indices)
            if pattern is None:
                raise NotImplementedError("more than 2^16 states: the visitation scatters")
            t_indptr, pairs, sources, data = pattern
            weights = pi[pairs] * data
            if kernel == "transposed_weights":
                args = (pairs, data, pi, weights, n_threads)
            else:
                args = (t_indptr, sources, weights, m.gamma, x, np.empty(m.n_states), n_threads)
        elif kernel in ("row_sweep", "pair_sweep"):  # P_π's state rows, up to 2¹⁶ states
            indices = m._transitions.narrow_indices(m.n_states)
            if indices is None:
                raise NotImplementedError("more than 2^16 states: the sweeps take products")
            # no shift: x is not changed between samples
            tail = (m.gamma, x[::-1].copy(), x, 0.0, np.empty(m.n_states), np.empty((16, 4)))
            if kernel == "row_sweep":  # warm rows
                weights = np.repeat(pi, np.diff(m.p_indptr)) * m.p_data
                args = (m._state_indptr, indices, weights, *tail, False, n_threads)
            else:
                args = (m._state_indptr, m.a_indptr, m._pair_codes, indices, m.p_data, pi,
                        *tail, n_threads)
        elif kernel == "q_products":  # the last product of a value solve, with Q̃ and Ã
            args = (m.a_indptr, *csr, pi, m.gamma, x, m.r, m.gamma, np.empty(m.n_states),
                    np.empty(m.n_pairs), np.empty(m.n_pairs), n_threads)
        elif kernel == "q_greedy":  # Q̃ and the greedy step at τ = 0 (policy iteration's step)
            args = (m.a_indptr, *csr, m.r, m.gamma, x, np.empty(m.n_pairs), np.empty(m.n_pairs),
                    np.empty(m.n_states, dtype=np.int64), np.empty(m.n_states), n_threads)
        elif kernel == "compact_rows":  # a random deterministic policy's rows of P
            rng = np.random.default_rng(1)
            pairs = m.a_indptr[:-1] + rng.integers(0, np.diff(m.a_indptr))
            lengths = np.diff(m.p_indptr)[pairs]
            out_p = np.concatenate([[0], np.cumsum(lengths)])
            one_hot = np.zeros(m.n_pairs)
            one_hot[pairs] = 1.0
            args = (m.p_indptr, m.p_indices, m.p_data, one_hot, pairs, out_p,
                    np.empty(out_p[-1], dtype=m.p_indices.dtype),
                    np.empty(out_p[-1], dtype=m.p_data.dtype), np.empty(m.n_states), n_threads)
        elif kernel == "regularized_reward_kl":  # forward KL = 2 (fastppo._codes), τ = 0.1
            args = (m.a_indptr, m.r, pi, np.full(m.n_pairs, 0.1), 2, 0.0, 0.1,
                    np.empty(m.n_states), n_threads)
        else:
            args = (*csr, m.r, m.gamma, x, np.empty(m.n_pairs), n_threads)
        if kernel != "blocked_entries":
            self.call = lambda: k(*args)
        warm((kernel, backend, n_states, family, n_threads), self.call)

    def time_kernel(self, kernel, backend, n_states, family, n_threads):
        self.call()


class SweepSuite:
    params = [["numba", "cython"], SIZES, FAMILIES, [0, 1]]
    param_names = ["backend", "n_states", "family", "transpose"]
    number = 1
    repeat = (5, 20, 0.2)
    rounds = 1
    warmup_time = 0.0

    def setup(self, backend, n_states, family, transpose):
        check_params(backend, n_states)
        kernel_or_skip("sgs_operator", backend)
        from fastppo._assembled import AssembledMatrix
        from fastppo._evaluator import policy_rows

        m = get_mdp(family, n_states)
        view = AssembledMatrix(m, policy_rows(m, get_policy(family, n_states)), backend).view(
            transpose)
        x, out = np.random.default_rng(0).random(m.n_states), np.empty(m.n_states)
        self.call = lambda: view.operator(x, out)
        warm(("sgs_operator", backend, n_states, family, transpose), self.call)

    def time_sgs_operator(self, backend, n_states, family, transpose):
        self.call()

"""Sparse products with the policy's transition operator.

``bellman_matvec``:  out = x − γ P_π x        (policy evaluation system)
``bellman_rmatvec``: out = x − γ P_πᵀ x       (visitation system), scattered into
                     per-chunk buffers reduced in a fixed order (no atomics)
``q_values``:        out = r + γ P v          (per pair)
``q_greedy``:        q_values and the greedy step at τ = 0 in one pass, state by
                     state (the first argmax, its pair per state, its value)
``bellman_products``: both products of one lockstep sweep in one pass over P:
                     out_x = x − γ P_π x (and ``rows`` = P x per pair, whose
                     r + γ·rows are the Q-values of x), out_y = y − γ P_πᵀ y;
                     either side is skipped when its input has length 0;
                     ``x`` and the scatter buffers ``buf`` may be float32
                     (products of a correction: half the bytes gathered and
                     scattered, float64 sums); with both sides, chunk c's row of
                     ``buf`` (n_chunks, 2 n_states) holds x and the scatter sums
                     interleaved, buf[c, 2i] = x[i], buf[c, 2i + 1] = the sums of
                     state i, so one cache line serves the gather and the scatter
``blocked_products``: bellman_products (both sides and rows, or the visitation side;
                     float64 P) on P's entries in column blocks (``blocked_entries``):
                     the same sums, the lines it touches in one block's columns at a time
``transposed_rmatvec``: y − γ P_πᵀ y as a gather on P's entries in the transposed order
                     (``transposed_weights`` per policy), each state in eight partial sums
``row_sweep``:       x ← x + shift, then one Richardson sweep x + r, r = b − (x − γ W x), on a
                     CSR W of at most 2¹⁶ states in the same eight sums (P_πᵀ's entries: a
                     visitation solve); returns r's sum, sum of squares, min and max (fixed
                     chunks); ``prefetch``: W's entries STREAM_AHEAD on (its first passes)
``pair_sweep``:      row_sweep on P_π's state rows read from P itself, each entry weighted by
                     its pair's π as it is read (per-entry pair codes): the same bits, no
                     rows written (a value solve's sweeps)
``transposed_sweep``: row_sweep on P_πᵀ's entries, writing them (π P[e]) chunk by chunk as
                     it goes: a visitation's first sweep of a policy (its entries and the
                     weights prefetched)
Loop bounds and CSR indices are cast to unsigned so Numba drops its negative-index
wrap-around check (1.36x faster products, S = 50,000 garnet). Pairs with π = 0 are
skipped (adding 0 changes nothing), so a deterministic policy costs one row per state.
From ``PREFETCH_STATES`` states on (a fused pass with both sides: ``FUSED_PREFETCH_STATES``,
whose interleaved lines take twice the cache), every gather and scatter prefetches the
state of the entry ``AHEAD`` positions on (kernels/numba/_prefetch.py): at 10⁶ states
the vectors leave the caches, and the prefetches let the memory waits overlap (a hint:
no result changes). Below that the vectors stay in L2 and the prefetches only cost instructions
(a product on the 10k garnet: 1.1 → 0.75 ms without them), so each row is summed by a
loop of its own without them: the same sums in the same order.
``p_data`` may be float32 (compact storage, ``MDP(..., dtype=np.float32)``): Numba
compiles a specialisation per dtype, and every product and sum is in float64.
``p_indices`` may be uint16 (an MDP of at most 2¹⁶ states,
``fastppo.mdp.Transitions.narrow_indices``): 2 bytes fewer read per entry, the same sums.
Mirrors kernels/cython/linear.pyx.
"""
import numpy as np
from numba import njit, prange

from ._jit import twins
from ._prefetch import (AHEAD, FUSED_PREFETCH_STATES, PREFETCH_STATES, STREAM_AHEAD,
                        prefetch_read, prefetch_write)
from ._probability import folded_total, row_total


def bellman_matvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out):
    n_states = out.shape[0]
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    fetch = n_states >= PREFETCH_STATES
    for s in prange(n_states):
        acc = 0.0
        for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
            if pi[k] == 0.0:  # deterministic policies: one row per state
                continue
            row = 0.0
            t = 0.0  # the row's sum, in the same pass (folded_total)
            if fetch:
                for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                    prefetch_read(x, np.uint32(p_indices[min(j + ahead, last)]))
                    row += p_data[j] * x[np.uint32(p_indices[j])]
                    t += np.float64(p_data[j])
            else:
                for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                    row += p_data[j] * x[np.uint32(p_indices[j])]
                    t += np.float64(p_data[j])
            acc += pi[k] * (row / folded_total(p_data, t))
        out[s] = x[s] - gamma * acc


def bellman_rmatvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, buf):
    n_states = out.shape[0]
    n_chunks = buf.shape[0]
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    fetch = n_states >= PREFETCH_STATES
    for c in prange(n_chunks):
        y = buf[c]  # its first n_states entries (bellman_products' buf serves too)
        y[:n_states] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            xs = x[s]
            for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
                if pi[k] == 0.0:
                    continue
                w = pi[k] * xs / row_total(p_data, np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1]))
                if fetch:
                    for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                        prefetch_write(y, np.uint32(p_indices[min(j + ahead, last)]))
                        y[np.uint32(p_indices[j])] += w * p_data[j]
                else:
                    for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                        y[np.uint32(p_indices[j])] += w * p_data[j]
    for s in prange(n_states):
        acc = 0.0
        for c in range(n_chunks):
            acc += buf[c, s]
        out[s] = x[s] - gamma * acc


@njit(cache=True, nogil=True, inline="always")
def q_pair(p_indptr, p_indices, p_data, r, gamma, v, k, ahead, last, fetch):
    """Q̃ of pair k: r[k] + γ (P v)[k], its row summed in order (kernels/cython/linear.pyx)."""
    row = 0.0
    t = 0.0  # the row's sum, in the same pass (folded_total)
    if fetch:
        for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
            prefetch_read(v, np.uint32(p_indices[min(j + ahead, last)]))
            row += p_data[j] * v[np.uint32(p_indices[j])]
            t += np.float64(p_data[j])
    else:
        for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
            row += p_data[j] * v[np.uint32(p_indices[j])]
            t += np.float64(p_data[j])
    return r[k] + gamma * (row / folded_total(p_data, t))


def q_values(p_indptr, p_indices, p_data, r, gamma, v, out):
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    fetch = v.shape[0] >= PREFETCH_STATES
    for k in prange(out.shape[0]):
        out[k] = q_pair(p_indptr, p_indices, p_data, r, gamma, v, k, ahead, last, fetch)


def q_greedy(a_indptr, p_indptr, p_indices, p_data, r, gamma, v, q_out, pi_out, pairs_out,
             value_out):
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    fetch = v.shape[0] >= PREFETCH_STATES
    for s in prange(a_indptr.shape[0] - 1):
        best = a_indptr[s]
        qmax = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            qk = q_pair(p_indptr, p_indices, p_data, r, gamma, v, k, ahead, last, fetch)
            q_out[k] = qk
            pi_out[k] = 0.0
            if k == a_indptr[s] or qk > qmax:
                qmax = qk
                best = k
        pi_out[best] = 1.0
        pairs_out[s] = best
        value_out[s] = qmax


def bellman_products(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, y, out_x, out_y,
                     rows, buf):
    n_states = a_indptr.shape[0] - 1
    n_chunks = buf.shape[0]
    do_x = x.shape[0] > 0
    do_y = y.shape[0] > 0
    do_rows = rows.shape[0] > 0
    both = do_x and do_y
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    one, two = np.uint64(1), np.uint64(2)
    fetch = n_states >= PREFETCH_STATES
    fetch_both = n_states >= FUSED_PREFETCH_STATES
    # the chunks of bellman_rmatvec: the same sums in the same order, term by term
    for c in prange(n_chunks):
        z = buf[c]
        if both:  # z[2i] = x[i], z[2i + 1] = the sums of state i: one line for both
            for t in range(n_states):
                z[2 * t] = x[t]
                z[2 * t + 1] = 0.0
        elif do_y:
            z[:n_states] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            ys = y[s] if do_y else 0.0
            acc = 0.0
            for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
                p = pi[k]
                if p == 0.0 and not do_rows:
                    continue
                j0 = np.uint64(p_indptr[k])
                j1 = np.uint64(p_indptr[k + 1])
                # the scatters need the row's sum first; the gather alone sums it as it goes
                tot = row_total(p_data, j0, j1) if both or not do_x else 1.0
                row = 0.0
                if both:  # one read of the row and of each state's line serves both products
                    w = p * ys / tot
                    if fetch_both:
                        for j in range(j0, j1):
                            prefetch_write(z, two * np.uint64(p_indices[min(j + ahead, last)]))
                            i = two * np.uint64(p_indices[j])
                            d = np.float64(p_data[j])  # float32 storage: double products
                            row += d * z[i]
                            z[i + one] += w * d
                    else:
                        for j in range(j0, j1):
                            i = two * np.uint64(p_indices[j])
                            d = np.float64(p_data[j])  # float32 storage: double products
                            row += d * z[i]
                            z[i + one] += w * d
                elif do_x:
                    t = 0.0
                    if fetch:
                        for j in range(j0, j1):
                            prefetch_read(x, np.uint32(p_indices[min(j + ahead, last)]))
                            row += p_data[j] * x[np.uint32(p_indices[j])]
                            t += np.float64(p_data[j])
                    else:
                        for j in range(j0, j1):
                            row += p_data[j] * x[np.uint32(p_indices[j])]
                            t += np.float64(p_data[j])
                    tot = folded_total(p_data, t)
                elif p != 0.0:
                    w = p * ys / tot
                    if fetch:
                        for j in range(j0, j1):
                            prefetch_write(z, np.uint32(p_indices[min(j + ahead, last)]))
                            z[np.uint32(p_indices[j])] += w * p_data[j]
                    else:
                        for j in range(j0, j1):
                            z[np.uint32(p_indices[j])] += w * p_data[j]
                row = row / tot
                if do_rows:
                    rows[k] = row
                if p != 0.0:
                    acc += p * row
            if do_x:
                out_x[s] = x[s] - gamma * acc
    if do_y:
        stride = 2 if both else 1
        for s in prange(n_states):
            acc = 0.0
            for c in range(n_chunks):
                acc += buf[c, stride * s + stride - 1]
            out_y[s] = y[s] - gamma * acc



def q_products(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, r, scale, out_x, q, adv):
    n_states = a_indptr.shape[0] - 1
    for s in prange(n_states):
        acc = 0.0
        mean = 0.0
        for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
            row = 0.0
            t = 0.0
            for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                row += p_data[j] * x[np.uint32(p_indices[j])]
                t += np.float64(p_data[j])
            row = row / folded_total(p_data, t)
            if pi[k] != 0.0:
                acc += pi[k] * row
            qk = row * scale + r[k]
            q[k] = qk
            mean += pi[k] * qk
        out_x[s] = x[s] - gamma * acc
        for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
            adv[k] = q[k] - mean


def blocked_entries(p_indptr, p_indices, p_data, chunk_pairs, width, cursor, last, out_steps,
                    out_columns, out_data):
    n_chunks = chunk_pairs.shape[0] - 1
    n_blocks = cursor.shape[0]
    write = out_steps.shape[0] > 0  # else only the regions' sizes, into cursor
    for c in prange(n_chunks):
        for b in range(n_blocks):
            last[b, c] = chunk_pairs[c]
        for k in range(chunk_pairs[c], chunk_pairs[c + 1]):
            for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                b = np.uint64(p_indices[j]) // np.uint64(width)
                e = cursor[b, c]
                step = k - last[b, c]
                offset = np.uint64(p_indices[j]) - b * np.uint64(width)  # within the block
                while step > 255:  # fillers: step 255, probability 0
                    if write:
                        out_steps[e] = 255
                        out_columns[e] = offset
                        out_data[e] = 0.0
                    e += 1
                    step -= 255
                if write:
                    out_steps[e] = np.uint8(step)
                    out_columns[e] = offset
                    out_data[e] = p_data[j]
                cursor[b, c] = e + 1
                last[b, c] = k


def blocked_products(a_indptr, chunk_pairs, begins, ends, steps, columns, data, pi, gamma, x, y,
                     out_x, out_y, rows, weights, buf):
    n_states = a_indptr.shape[0] - 1
    n_chunks = buf.shape[0]
    n_blocks = begins.shape[0]
    width = np.uint64((n_states + n_blocks - 1) // n_blocks)
    both = x.shape[0] > 0
    ahead, one, two = np.uint64(AHEAD), np.uint64(1), np.uint64(2)
    line = two if both else one  # entries of buf per state
    for c in prange(n_chunks):
        z = buf[c]
        if both:  # bellman_products' interleaved lines
            for t in range(n_states):
                z[2 * t] = x[t]
                z[2 * t + 1] = 0.0
        else:
            z[:n_states] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            ys = y[s]
            for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
                weights[k] = pi[k] * ys
                if both:
                    rows[k] = 0.0
        for b in range(n_blocks):
            start = np.uint64(begins[b, c])
            stop = np.uint64(ends[b, c])
            k = np.uint64(chunk_pairs[c])
            base = line * np.uint64(b) * width  # the block's lines (columns within it)
            if both:
                for e in range(start, stop):
                    prefetch_write(z, base + two * np.uint64(columns[min(e + ahead, stop - one)]))
                    i = base + two * np.uint64(columns[e])
                    k += np.uint64(steps[e])
                    d = data[e]
                    rows[k] = rows[k] + d * z[i]
                    z[i + one] += weights[k] * d
            else:
                for e in range(start, stop):
                    prefetch_write(z, base + np.uint64(columns[min(e + ahead, stop - one)]))
                    k += np.uint64(steps[e])
                    z[base + np.uint64(columns[e])] += weights[k] * data[e]
        if both:
            for s in range(lo, hi):
                acc = 0.0
                for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
                    if pi[k] != 0.0:
                        acc += pi[k] * rows[k]
                out_x[s] = x[s] - gamma * acc
    stride = 2 if both else 1
    for s in prange(n_states):
        acc = 0.0
        for c in range(n_chunks):
            acc += buf[c, stride * s + stride - 1]
        out_y[s] = y[s] - gamma * acc


def transposed_weights(t_pairs, t_data, pi, weights):
    for e in prange(t_pairs.shape[0]):
        weights[e] = pi[t_pairs[e]] * np.float64(t_data[e])


@njit(inline="always")
def _row8(indices, weights, x, start, stop):
    """The Cython twin's eight partial sums (kernels/cython/_rows8.h), one at a time."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    eight, j = np.uint64(8), start
    while j + eight <= stop:
        a0 += weights[j] * x[np.uint32(indices[j])]
        a1 += weights[j + np.uint64(1)] * x[np.uint32(indices[j + np.uint64(1)])]
        a2 += weights[j + np.uint64(2)] * x[np.uint32(indices[j + np.uint64(2)])]
        a3 += weights[j + np.uint64(3)] * x[np.uint32(indices[j + np.uint64(3)])]
        a4 += weights[j + np.uint64(4)] * x[np.uint32(indices[j + np.uint64(4)])]
        a5 += weights[j + np.uint64(5)] * x[np.uint32(indices[j + np.uint64(5)])]
        a6 += weights[j + np.uint64(6)] * x[np.uint32(indices[j + np.uint64(6)])]
        a7 += weights[j + np.uint64(7)] * x[np.uint32(indices[j + np.uint64(7)])]
        j += eight
    while j < stop:
        a0 += weights[j] * x[np.uint32(indices[j])]
        j += np.uint64(1)
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


def transposed_rmatvec(t_indptr, t_sources, weights, gamma, y, out):
    for c in prange(t_indptr.shape[0] - 1):
        out[c] = y[c] - gamma * _row8(t_sources, weights, y, np.uint64(t_indptr[c]),
                                      np.uint64(t_indptr[c + 1]))


@njit(inline="always")
def _combined(stats):
    """(Σ, Σ, min, max) of the chunks' partial sums, in order (the Cython twin's)."""
    total = squares = 0.0
    least, most = np.inf, -np.inf
    for c in range(stats.shape[0]):
        total += stats[c, 0]
        squares += stats[c, 1]
        if stats[c, 2] < least:
            least = stats[c, 2]
        if stats[c, 3] > most:
            most = stats[c, 3]
    return total, squares, least, most


@njit(inline="always")
def _shifted(x, shift):
    """x ← x + shift (the Cython twin's _shifted)."""
    if shift != 0.0:
        for i in prange(x.shape[0]):
            x[i] += shift


@njit(inline="always")
def _prefetch_rows(indices, weights, codes, lo, hi, end):
    """Hints that entries lo ≤ j < min(hi, end) will be read soon: one prefetch per 8
    weights, per 32 columns and per 64 pair codes (``codes`` of length 0: none) (the Cython
    twin's prefetch_rows and prefetch_pairs, _rows8.h)."""
    j, hi = lo & ~np.int64(7), min(hi, end)
    pairs = codes.shape[0] > 0
    while j < hi:
        prefetch_read(weights, j)
        if (j & 31) == 0:
            prefetch_read(indices, j)
        if pairs and (j & 63) == 0:
            prefetch_read(codes, j)
        j += 8


@njit(inline="always")
def _row8_pairs(indices, codes, p_data, pi, k0, x, start, stop):
    """_row8 on the weights pi[k0 + codes[j]] · p_data[j], each rounded as a stored weight is
    (the Cython twin's row8_pairs, _rows8.h); unsigned indices, as _row8's."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    eight, j = np.uint64(8), start
    while j + eight <= stop:
        a0 += (pi[k0 + codes[j]] * p_data[j]) * x[np.uint32(indices[j])]
        j1 = j + np.uint64(1)
        a1 += (pi[k0 + codes[j1]] * p_data[j1]) * x[np.uint32(indices[j1])]
        j2 = j + np.uint64(2)
        a2 += (pi[k0 + codes[j2]] * p_data[j2]) * x[np.uint32(indices[j2])]
        j3 = j + np.uint64(3)
        a3 += (pi[k0 + codes[j3]] * p_data[j3]) * x[np.uint32(indices[j3])]
        j4 = j + np.uint64(4)
        a4 += (pi[k0 + codes[j4]] * p_data[j4]) * x[np.uint32(indices[j4])]
        j5 = j + np.uint64(5)
        a5 += (pi[k0 + codes[j5]] * p_data[j5]) * x[np.uint32(indices[j5])]
        j6 = j + np.uint64(6)
        a6 += (pi[k0 + codes[j6]] * p_data[j6]) * x[np.uint32(indices[j6])]
        j7 = j + np.uint64(7)
        a7 += (pi[k0 + codes[j7]] * p_data[j7]) * x[np.uint32(indices[j7])]
        j += eight
    while j < stop:
        a0 += (pi[k0 + codes[j]] * p_data[j]) * x[np.uint32(indices[j])]
        j += np.uint64(1)
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


@njit(inline="always")
def _sweep_rows(indptr, sources, weights, gamma, b, x, out, lo, hi, sums, fetch_end,
                a_indptr, codes, pi):
    """Rows lo ≤ i < hi of a sweep, and their (Σ r, Σ r², min r, max r) into ``sums``;
    each row prefetches W's entries STREAM_AHEAD on, below ``fetch_end`` (0: none). With
    ``codes`` (else of length 0), W is P's rows ``weights`` weighted by π on the fly
    (_row8_pairs; a_indptr, pi) (the Cython twin's _sweep_rows)."""
    total = squares = 0.0
    least, most = np.inf, -np.inf
    pairs = codes.shape[0] > 0
    for i in range(lo, hi):
        start, stop = np.int64(indptr[i]), np.int64(indptr[i + 1])
        if fetch_end:
            _prefetch_rows(sources, weights, codes, start + STREAM_AHEAD, stop + STREAM_AHEAD,
                           fetch_end)
        if pairs:
            row = _row8_pairs(sources, codes, weights, pi, np.uint64(a_indptr[i]), x,
                              np.uint64(start), np.uint64(stop))
        else:
            row = _row8(sources, weights, x, np.uint64(start), np.uint64(stop))
        r = b[i] - (x[i] - gamma * row)
        out[i] = x[i] + r
        total += r
        squares += r * r
        if r < least:
            least = r
        if r > most:
            most = r
    sums[0] = total
    sums[1] = squares
    sums[2] = least
    sums[3] = most


_NO_CODES = np.empty(0, dtype=np.uint8)
_NO_PI = np.empty(0)
_NO_INDPTR = np.empty(0, dtype=np.int64)


def row_sweep(indptr, sources, weights, gamma, b, x, shift, out, stats, prefetch):
    n, n_chunks = b.shape[0], stats.shape[0]
    fetch_end = np.int64(indptr[n]) if prefetch else np.int64(0)
    _shifted(x, shift)
    for c in prange(n_chunks):
        _sweep_rows(indptr, sources, weights, gamma, b, x, out, c * n // n_chunks,
                    (c + 1) * n // n_chunks, stats[c], fetch_end, _NO_INDPTR, _NO_CODES, _NO_PI)
    return _combined(stats)


def pair_sweep(row_indptr, a_indptr, codes, indices, p_data, pi, gamma, b, x, shift, out, stats):
    n, n_chunks = b.shape[0], stats.shape[0]
    last = np.int64(row_indptr[n])
    _shifted(x, shift)
    for c in prange(n_chunks):
        _sweep_rows(row_indptr, indices, p_data, gamma, b, x, out, c * n // n_chunks,
                    (c + 1) * n // n_chunks, stats[c], last, a_indptr, codes, pi)
    return _combined(stats)


def transposed_sweep(t_indptr, t_pairs, t_sources, t_data, pi, gamma, b, x, shift, out,
                     weights, stats):
    n, n_chunks = b.shape[0], stats.shape[0]
    last = np.int64(t_indptr[n])
    _shifted(x, shift)
    for c in prange(n_chunks):
        lo, hi = c * n // n_chunks, (c + 1) * n // n_chunks
        end = np.int64(t_indptr[hi])
        for block in range(np.int64(t_indptr[lo]), end, 64):
            # from a multiple of 8, so that every 2nd / 4th q starts a line of t_pairs / t_sources
            for q in range((block + STREAM_AHEAD) & ~np.int64(7),
                           min(block + 64 + STREAM_AHEAD, last), 8):
                prefetch_read(t_data, q)
                prefetch_write(weights, q)
                if q % 16 == 0:
                    prefetch_read(t_pairs, q)
                if q % 32 == 0:
                    prefetch_read(t_sources, q)
            for e in range(np.uint64(block), np.uint64(min(block + 64, end))):
                weights[e] = pi[t_pairs[e]] * t_data[e]
        _sweep_rows(t_indptr, t_sources, weights, gamma, b, x, out, lo, hi, stats[c],
                    np.int64(0), _NO_INDPTR, _NO_CODES, _NO_PI)
    return _combined(stats)


KERNELS = twins(bellman_matvec, bellman_rmatvec, q_values, q_greedy, bellman_products, q_products,
                blocked_entries, blocked_products, transposed_weights, transposed_rmatvec,
                row_sweep, pair_sweep, transposed_sweep)

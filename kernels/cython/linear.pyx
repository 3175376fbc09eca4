"""Sparse products with the policy's transition operator.

``bellman_matvec``:  out = x − γ P_π x
``bellman_rmatvec``: out = x − γ P_πᵀ x, scattered into per-chunk buffers
                     ``buf`` (n_chunks, n_states) reduced in a fixed order
``q_values``:        out = r + γ P v
``q_greedy``:        q_values and the greedy step at τ = 0 in one pass (π, its pairs, T v)
``bellman_products``: both products of one lockstep sweep in one pass over P:
                     out_x = x − γ P_π x (and ``rows`` = P x per pair),
                     out_y = y − γ P_πᵀ y; a side whose input has length 0 is skipped;
                     x and the scatter buffers may be float32 (corrections);
                     with both sides, buf (n_chunks, 2 n_states) holds x and the
                     sums interleaved, buf[c, 2i] = x[i], buf[c, 2i + 1] = sums
``q_products``:      bellman_products' value side with its rows, and Q̃ = r + γ P v, Ã of them,
                     in one pass (a value solve's last product: no rows' array)
``blocked_products``: bellman_products (both sides and rows, or the visitation side;
                     float64 P) on P's entries in column blocks (``blocked_entries``):
                     the same sums, the lines it touches in one block's columns at a time
``transposed_rmatvec``: out = y − γ P_πᵀ y as a gather on P's entries in the transposed
                     order (at most 2¹⁶ states; ``transposed_weights`` once per policy),
                     eight y gathered at a time with AVX-512 (_rows8.h)
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
From ``PREFETCH_STATES`` states on (a fused pass with both sides: ``FUSED_PREFETCH_STATES``),
every gather and scatter prefetches the state of the entry ``AHEAD`` positions on (GCC's
``__builtin_prefetch``; a hint: no result changes); below, each row is summed by a loop
without them (kernels/numba/linear.py).
``p_data`` may be float32 (compact storage: the fused type of _probability.pxi); every
product and sum is in double. ``p_indices`` may be uint16 (``column``: an MDP of at most
2¹⁶ states, ``fastppo.mdp.Transitions.narrow_indices``): 2 bytes fewer read per entry, the
same sums. Mirrors kernels/numba/linear.py.
"""
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t

include "_probability.pxi"


ctypedef fused column:  # p_indices: int32, or uint16 when every state fits (fewer bytes read)
    int32_t
    uint16_t


cdef extern from *:
    void prefetch "__builtin_prefetch" (const void *address, int write, int locality) nogil


cdef enum:
    AHEAD = 32  # entries of P ahead (kernels/numba/_prefetch.py: the same)
    # the products prefetch from this many states on; below, the vectors stay in L2 and
    # prefetching only costs instructions (kernels/numba/_prefetch.py: the same)
    PREFETCH_STATES = 1 << 17
    # a fused pass (both sides) from this many: its lines (x beside the sums, 16 bytes a
    # state) fill a core's L2 (512 KiB here) from 2¹⁵ states on
    FUSED_PREFETCH_STATES = 1 << 15
    # the row sweeps' cold passes (the rows' writing pass and row_sweep's ``prefetch``)
    # prefetch the streamed entries this many on: the hardware's own prefetch falls
    # behind on an array the caches lost (kernels/numba/_prefetch.py: the same)
    STREAM_AHEAD = 256


cdef inline double row_sum(const column *indices, const probability *data, const double *x,
                           int64_t lo, int64_t hi, double *total) noexcept nogil:
    """Σ_{lo ≤ j < hi} data[j] x[indices[j]], summed in order, on raw pointers; unrolled
    by four (GCC does not unroll at -O3; LLVM does for the Numba twin), the same sum.
    ``total``: the row's sum Σ data[j] in the same pass (_probability.pxi's folded_total)."""
    cdef double row = 0.0, t = 0.0
    cdef int64_t j = lo
    while j + 4 <= hi:
        row = row + data[j] * x[indices[j]]
        t = t + data[j]
        row = row + data[j + 1] * x[indices[j + 1]]
        t = t + data[j + 1]
        row = row + data[j + 2] * x[indices[j + 2]]
        t = t + data[j + 2]
        row = row + data[j + 3] * x[indices[j + 3]]
        t = t + data[j + 3]
        j = j + 4
    while j < hi:
        row = row + data[j] * x[indices[j]]
        t = t + data[j]
        j = j + 1
    total[0] = folded_total(data, t)
    return row


cdef inline void row_scatter(const column *indices, const probability *data, double w, double *y,
                             int64_t lo, int64_t hi) noexcept nogil:
    """y[indices[j]] += w data[j] for lo ≤ j < hi, in order, on raw pointers; unrolled
    by four (as :func:`row_sum`)."""
    cdef int64_t j = lo
    while j + 4 <= hi:
        y[indices[j]] += w * data[j]
        y[indices[j + 1]] += w * data[j + 1]
        y[indices[j + 2]] += w * data[j + 2]
        y[indices[j + 3]] += w * data[j + 3]
        j = j + 4
    while j < hi:
        y[indices[j]] += w * data[j]
        j = j + 1


def bellman_matvec(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                   const column[::1] p_indices, const probability[::1] p_data,
                   const double[::1] pi, double gamma, const double[::1] x,   # IN
                   double[::1] out, int n_threads):                             # OUT
    """bellman_matvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], s
    cdef int64_t k, j, last = max(p_indices.shape[0], 1) - 1
    cdef double acc, row, t
    cdef bint fetch = n_states >= PREFETCH_STATES
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        acc = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            if pi[k] == 0.0:  # deterministic policies: one row per state
                continue
            row = 0.0
            t = 0.0  # the row's sum, in the same pass (folded_total)
            if fetch:
                for j in range(p_indptr[k], p_indptr[k + 1]):
                    prefetch(&x[p_indices[min(j + AHEAD, last)]], 0, 3)
                    row = row + p_data[j] * x[p_indices[j]]
                    t = t + p_data[j]
                t = folded_total(&p_data[0], t)
            else:
                row = row_sum(&p_indices[0], &p_data[0], &x[0], p_indptr[k], p_indptr[k + 1], &t)
            acc = acc + pi[k] * (row / t)
        out[s] = x[s] - gamma * acc


def bellman_rmatvec(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                    const column[::1] p_indices, const probability[::1] p_data,
                    const double[::1] pi, double gamma, const double[::1] x,  # IN
                    double[::1] out, double[:, ::1] buf, int n_threads):        # OUT
    """bellman_rmatvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, buf, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], n_chunks = buf.shape[0], c, s, lo, hi, t
    cdef int64_t k, j, last = max(p_indices.shape[0], 1) - 1
    cdef double xs, w, acc
    cdef bint fetch = n_states >= PREFETCH_STATES
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        for t in range(n_states):  # the first n_states of each row (bellman_products' buf serves too)
            buf[c, t] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            xs = x[s]
            for k in range(a_indptr[s], a_indptr[s + 1]):
                if pi[k] == 0.0:
                    continue
                w = pi[k] * xs / row_total(&p_data[0], p_indptr[k], p_indptr[k + 1])
                if fetch:
                    for j in range(p_indptr[k], p_indptr[k + 1]):
                        prefetch(&buf[c, p_indices[min(j + AHEAD, last)]], 1, 3)
                        buf[c, p_indices[j]] += w * p_data[j]
                else:
                    row_scatter(&p_indices[0], &p_data[0], w, &buf[c, 0], p_indptr[k],
                                p_indptr[k + 1])
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        acc = 0.0
        for c in range(n_chunks):
            acc = acc + buf[c, s]
        out[s] = x[s] - gamma * acc


cdef inline double q_pair(const int64_t *p_indptr, const column *p_indices,
                          const probability *p_data, const double *r, double gamma,
                          const double *v, int64_t k, int64_t last, bint fetch) noexcept nogil:
    """Q̃ of pair k: r[k] + γ (P v)[k], its row summed in order (with the row's sum for
    float rows, _probability.pxi's folded_total); ``fetch``: prefetching v ``AHEAD``
    entries on."""
    cdef double row = 0.0, t = 0.0
    cdef int64_t j
    if fetch:
        for j in range(p_indptr[k], p_indptr[k + 1]):
            prefetch(&v[p_indices[min(j + AHEAD, last)]], 0, 3)
            row = row + p_data[j] * v[p_indices[j]]
            t = t + p_data[j]
        t = folded_total(p_data, t)
    else:
        row = row_sum(p_indices, p_data, v, p_indptr[k], p_indptr[k + 1], &t)
    return r[k] + gamma * (row / t)


def q_values(const int64_t[::1] p_indptr, const column[::1] p_indices,
             const probability[::1] p_data, const double[::1] r, double gamma,
             const double[::1] v,                                               # IN
             double[::1] out, int n_threads):                                   # OUT
    """q_values(p_indptr, p_indices, p_data, r, gamma, v, out, n_threads)"""
    cdef Py_ssize_t n_pairs = out.shape[0], k
    cdef int64_t last = max(p_indices.shape[0], 1) - 1
    cdef bint fetch = v.shape[0] >= PREFETCH_STATES
    for k in prange(n_pairs, nogil=True, schedule="static", num_threads=n_threads):
        out[k] = q_pair(&p_indptr[0], &p_indices[0], &p_data[0], &r[0], gamma, &v[0], k, last,
                        fetch)


def q_greedy(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
             const column[::1] p_indices, const probability[::1] p_data, const double[::1] r,
             double gamma, const double[::1] v,                                     # IN
             double[::1] q_out, double[::1] pi_out, int64_t[::1] pairs_out,
             double[::1] value_out, int n_threads):                                 # OUT
    """q_greedy(a_indptr, p_indptr, p_indices, p_data, r, gamma, v, q_out, pi_out, pairs_out,
    value_out, n_threads)

    ``q_values`` and the greedy step at τ = 0 (policy_update.pyx's ``greedy_policy``) in
    one pass, state by state: the same Q̃, π (the first argmax) and value; ``pairs_out[s]``
    the pair π takes at s."""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    cdef int64_t k, best, last = max(p_indices.shape[0], 1) - 1
    cdef double qk, qmax
    cdef bint fetch = v.shape[0] >= PREFETCH_STATES
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        best = a_indptr[s]
        qmax = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            qk = q_pair(&p_indptr[0], &p_indices[0], &p_data[0], &r[0], gamma, &v[0], k, last,
                        fetch)
            q_out[k] = qk
            pi_out[k] = 0.0
            if k == a_indptr[s] or qk > qmax:
                qmax = qk
                best = k
        pi_out[best] = 1.0
        pairs_out[s] = best
        value_out[s] = qmax


ctypedef fused gathered:  # x: float64, or float32 for corrections (half the bytes gathered)
    float
    double

ctypedef fused accumulated:  # buf: float64, or float32 for corrections
    float
    double


cdef inline void fused_states(const int64_t *a_indptr, const int64_t *p_indptr,
                              const column *indices, const probability *data,
                              const double *pi, double gamma, const gathered *x,
                              const double *y, accumulated *z, double *out_x, double *rows,
                              Py_ssize_t lo, Py_ssize_t hi, int64_t last,
                              bint fetch) noexcept nogil:
    """States lo ≤ s < hi of a fused pass (both sides): gathers z[2i] (= x[i]), scatters
    into z[2i + 1]; ``rows`` (NULL: none) = P x per pair. A loop of its own on raw
    pointers: the gathers wait on L2/L3, and every µop spent on a pair's bookkeeping (a
    2-D memoryview's address, the one-sided branches) holds back gathers in flight. The
    prefetch is clamped to the end of P only in its last rows. The same sums in the same
    order as bellman_rmatvec and q_values, term by term."""
    cdef Py_ssize_t s
    cdef int64_t k, j, i, start, stop
    cdef double ys, acc, row, p, w, d, tot
    for s in range(lo, hi):
        ys = y[s]
        acc = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            p = pi[k]
            if p == 0.0 and rows == NULL:
                continue
            start = p_indptr[k]
            stop = p_indptr[k + 1]
            tot = row_total(data, start, stop)  # the scatter needs the row's sum first
            w = p * ys / tot
            row = 0.0
            if fetch and stop - 1 + AHEAD <= last:
                for j in range(start, stop):
                    prefetch(&z[2 * <int64_t>indices[j + AHEAD]], 1, 3)
                    i = 2 * <int64_t>indices[j]
                    d = data[j]
                    row = row + d * z[i]
                    z[i + 1] += w * d
            elif fetch:
                for j in range(start, stop):
                    prefetch(&z[2 * <int64_t>indices[min(j + AHEAD, last)]], 1, 3)
                    i = 2 * <int64_t>indices[j]
                    d = data[j]
                    row = row + d * z[i]
                    z[i + 1] += w * d
            else:
                for j in range(start, stop):
                    i = 2 * <int64_t>indices[j]
                    d = data[j]
                    row = row + d * z[i]
                    z[i + 1] += w * d
            row = row / tot
            if rows != NULL:
                rows[k] = row
            if p != 0.0:
                acc = acc + p * row
        out_x[s] = x[s] - gamma * acc


def bellman_products(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                     const column[::1] p_indices, const probability[::1] p_data,
                     const double[::1] pi, double gamma, const gathered[::1] x,
                     const double[::1] y,                                             # IN
                     double[::1] out_x, double[::1] out_y, double[::1] rows,
                     accumulated[:, ::1] buf, int n_threads):                         # OUT
    """bellman_products(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, y, out_x, out_y, rows, buf, n_threads)

    ``x`` and ``buf`` may be float32 (products of a correction: float32 gathers and
    scatters, float64 sums); everything else is float64. With both sides, ``buf`` is
    (n_chunks, 2 n_states): x and the scatter sums interleaved.
    """
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, n_chunks = buf.shape[0], c, s, lo, hi, t
    cdef bint do_x = x.shape[0] > 0, do_y = y.shape[0] > 0, do_rows = rows.shape[0] > 0
    cdef bint both = do_x and do_y
    cdef Py_ssize_t stride = 2 if both else 1
    cdef int64_t k, j, last = max(p_indices.shape[0], 1) - 1
    cdef double ys, acc, row, p, w, tot
    cdef bint fetch = n_states >= PREFETCH_STATES
    cdef bint fetch_both = n_states >= FUSED_PREFETCH_STATES
    # raw pointers in the scatter loops: GCC recomputes a 2-D memoryview's address per
    # entry (benchmarks/RESULTS.md, issue 12)
    cdef const column *indices = &p_indices[0]
    cdef const probability *data = &p_data[0]
    cdef accumulated *z
    cdef double *rows_out = NULL
    if do_rows:
        rows_out = &rows[0]
    # the chunks of bellman_rmatvec: the same sums in the same order, term by term
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        z = &buf[c, 0]
        if both:  # buf[c, 2i] = x[i], buf[c, 2i + 1] = the sums of state i: one line for both
            for t in range(n_states):
                buf[c, 2 * t] = x[t]
                buf[c, 2 * t + 1] = 0.0
        elif do_y:
            for t in range(n_states):
                buf[c, t] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        if both:
            fused_states(&a_indptr[0], &p_indptr[0], indices, data, &pi[0], gamma, &x[0], &y[0],
                         z, &out_x[0], rows_out, lo, hi, last, fetch_both)
            continue
        for s in range(lo, hi):
            ys = 0.0
            if do_y:
                ys = y[s]
            acc = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                p = pi[k]
                if p == 0.0 and not do_rows:
                    continue
                # the scatter needs the row's sum first; the gather alone sums it as it goes
                tot = 1.0
                if not do_x:
                    tot = row_total(&p_data[0], p_indptr[k], p_indptr[k + 1])
                row = 0.0
                if do_x:
                    tot = 0.0
                    if fetch:
                        for j in range(p_indptr[k], p_indptr[k + 1]):
                            prefetch(&x[p_indices[min(j + AHEAD, last)]], 0, 3)
                            row = row + p_data[j] * x[p_indices[j]]
                            tot = tot + p_data[j]
                    elif gathered is double:  # bellman_matvec's unrolled loop, the same sum
                        row = row_sum(indices, data, &x[0], p_indptr[k], p_indptr[k + 1], &tot)
                    else:
                        for j in range(p_indptr[k], p_indptr[k + 1]):
                            row = row + p_data[j] * x[p_indices[j]]
                            tot = tot + p_data[j]
                    tot = folded_total(&p_data[0], tot)
                elif p != 0.0:
                    w = p * ys / tot
                    if fetch:
                        for j in range(p_indptr[k], p_indptr[k + 1]):
                            prefetch(&z[indices[min(j + AHEAD, last)]], 1, 3)
                            z[indices[j]] += w * data[j]
                    else:
                        for j in range(p_indptr[k], p_indptr[k + 1]):
                            z[indices[j]] += w * data[j]
                row = row / tot
                if do_rows:
                    rows[k] = row
                if p != 0.0:
                    acc = acc + p * row
            if do_x:
                out_x[s] = x[s] - gamma * acc
    if do_y:
        for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
            acc = 0.0
            for c in range(n_chunks):
                acc = acc + buf[c, stride * s + stride - 1]
            out_y[s] = y[s] - gamma * acc



def q_products(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
               const column[::1] p_indices, const probability[::1] p_data,
               const double[::1] pi, double gamma, const double[::1] x,
               const double[::1] r, double scale,                                   # IN
               double[::1] out_x, double[::1] q, double[::1] adv, int n_threads):   # OUT
    """q_products(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, r, scale, out_x, q, adv, n_threads)

    The value side of ``bellman_products`` with its rows, and ``q_advantages`` (tables.pyx)
    of those rows, state by state in one pass: out_x = x − γ P_π x, q = r + scale · P x per
    pair, adv = q − Σ_a π q; the same sums, bit for bit, without the rows' array (a value
    solve's last product, at most 2¹⁶ states: no prefetch)."""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    cdef int64_t k
    cdef double acc, mean, row, tot, qk
    cdef const column *indices = &p_indices[0]
    cdef const probability *data = &p_data[0]
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        acc = 0.0
        mean = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            row = row_sum(indices, data, &x[0], p_indptr[k], p_indptr[k + 1], &tot)
            row = row / tot
            if pi[k] != 0.0:
                acc = acc + pi[k] * row
            qk = row * scale + r[k]
            q[k] = qk
            mean = mean + pi[k] * qk
        out_x[s] = x[s] - gamma * acc
        for k in range(a_indptr[s], a_indptr[s + 1]):
            adv[k] = q[k] - mean


def blocked_entries(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                    const double[::1] p_data, const int64_t[::1] chunk_pairs, int64_t width,
                    int64_t[:, ::1] cursor,                                          # IN/OUT
                    int64_t[:, ::1] last, uint8_t[::1] out_steps, column[::1] out_columns,
                    double[::1] out_data, int n_threads):                            # OUT
    """blocked_entries(p_indptr, p_indices, p_data, chunk_pairs, width, cursor, last, out_steps, out_columns, out_data, n_threads)

    P's entries in column blocks (``blocked_products``): entry j of pair k in chunk c
    (chunk_pairs[c] ≤ k < chunk_pairs[c + 1]) goes to position cursor[b, c] (then
    advanced), b = p_indices[j] // width, with its column within the block (p_indices[j] −
    b·width: uint16 where width ≤ 2¹⁶), its probability and its pair as a step from the
    pair of the entry before it in the region (from chunk_pairs[c] for the first), one
    byte: a step over 255 is made of fillers first (step 255, probability 0, the entry's
    column), which add 0 to the sums. Each (block, chunk) region holds its entries in P's
    order. ``last``: scratch, the region's last pair. With outputs of length 0 it only
    advances ``cursor`` (the regions' sizes, fillers included, from zeros)."""
    cdef Py_ssize_t n_chunks = chunk_pairs.shape[0] - 1, n_blocks = cursor.shape[0], c
    cdef int64_t k, j, e, b, step
    cdef bint write = out_steps.shape[0] > 0
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        for b in range(n_blocks):
            last[b, c] = chunk_pairs[c]
        for k in range(chunk_pairs[c], chunk_pairs[c + 1]):
            for j in range(p_indptr[k], p_indptr[k + 1]):
                b = p_indices[j] // width
                e = cursor[b, c]
                step = k - last[b, c]
                while step > 255:
                    if write:
                        out_steps[e] = 255
                        out_columns[e] = <column>(p_indices[j] - b * width)
                        out_data[e] = 0.0
                    e = e + 1
                    step = step - 255
                if write:
                    out_steps[e] = <uint8_t>step
                    out_columns[e] = <column>(p_indices[j] - b * width)
                    out_data[e] = p_data[j]
                cursor[b, c] = e + 1
                last[b, c] = k


def blocked_products(const int64_t[::1] a_indptr, const int64_t[::1] chunk_pairs,
                     const int64_t[:, ::1] begins, const int64_t[:, ::1] ends,
                     const uint8_t[::1] steps, const column[::1] columns,
                     const double[::1] data, const double[::1] pi, double gamma,
                     const double[::1] x, const double[::1] y,                        # IN
                     double[::1] out_x, double[::1] out_y, double[::1] rows,
                     double[::1] weights, double[:, ::1] buf, int n_threads):         # OUT
    """blocked_products(a_indptr, chunk_pairs, begins, ends, steps, columns, data, pi, gamma, x, y, out_x, out_y, rows, weights, buf, n_threads)

    bellman_products with both sides and ``rows``, or the visitation side alone (``x``,
    ``out_x`` and ``rows`` of length 0; ``buf`` (n_chunks, n_states) then), float64 P, on
    P's entries in column blocks (``blocked_entries``): chunk c of the states walks block
    b's entries begins[b, c] ≤ e < ends[b, c] (their pairs from chunk_pairs[c] on, by
    steps; their columns from b·width on, width = ⌈n_states / n_blocks⌉), then block
    b + 1, so the lines of ``buf`` it gathers from and scatters into lie in one block's
    columns at a time (the caches hold them; all of them do not, from ~2¹⁹ states). rows[k] gathers across the blocks in column order, which is P's order
    within a row, and each state's sums take the chunk's pairs in order: the same sums as
    bellman_products, bit for bit. ``weights``: scratch, π(k) y(s) per pair k of state s.
    """
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, n_chunks = buf.shape[0], c, s, lo, hi, t
    cdef Py_ssize_t n_blocks = begins.shape[0], b
    cdef Py_ssize_t width = (n_states + n_blocks - 1) // n_blocks
    cdef bint both = x.shape[0] > 0
    cdef Py_ssize_t stride = 2 if both else 1
    cdef int64_t k, e, start, stop, i
    cdef double acc, d, ys
    cdef double *z
    cdef double *zb
    cdef double *row = NULL
    cdef double *w = &weights[0]
    cdef const uint8_t *step = &steps[0]
    cdef const column *col = &columns[0]
    cdef const double *dat = &data[0]
    if both:
        row = &rows[0]
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        z = &buf[c, 0]
        for t in range(n_states):  # bellman_products' lines: x beside the sums, or the sums
            if both:
                z[2 * t] = x[t]
                z[2 * t + 1] = 0.0
            else:
                z[t] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            ys = y[s]
            for k in range(a_indptr[s], a_indptr[s + 1]):
                w[k] = pi[k] * ys
                if both:
                    row[k] = 0.0
        for b in range(n_blocks):
            start = begins[b, c]
            stop = ends[b, c]
            k = chunk_pairs[c]
            zb = z + stride * b * width  # the block's lines
            if both:
                for e in range(start, stop):
                    prefetch(&zb[2 * <int64_t>col[min(e + AHEAD, stop - 1)]], 1, 3)
                    i = 2 * <int64_t>col[e]
                    k = k + step[e]
                    d = dat[e]
                    row[k] = row[k] + d * zb[i]
                    zb[i + 1] += w[k] * d
            else:
                for e in range(start, stop):
                    prefetch(&zb[col[min(e + AHEAD, stop - 1)]], 1, 3)
                    k = k + step[e]
                    zb[col[e]] += w[k] * dat[e]
        if both:
            for s in range(lo, hi):
                acc = 0.0
                for k in range(a_indptr[s], a_indptr[s + 1]):
                    if pi[k] != 0.0:
                        acc = acc + pi[k] * row[k]
                out_x[s] = x[s] - gamma * acc
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        acc = 0.0
        for c in range(n_chunks):
            acc = acc + buf[c, stride * s + stride - 1]
        out_y[s] = y[s] - gamma * acc


cdef extern from "_rows8.h" nogil:
    double row8(const uint16_t *idx, const double *w, const double *x, int64_t start,
                int64_t stop)
    void prefetch_rows(const uint16_t *idx, const double *w, int64_t lo, int64_t hi,
                       int64_t end)
    double row8_pairs(const uint16_t *idx, const uint8_t *code, const double *p,
                      const double *pi, int64_t n_pairs, const double *x, int64_t start,
                      int64_t stop)
    void prefetch_pairs(const uint16_t *idx, const uint8_t *code, const double *p,
                        int64_t lo, int64_t hi, int64_t end)


def transposed_weights(const int32_t[::1] t_pairs, const probability[::1] t_data,
                       const double[::1] pi,                                        # IN
                       double[::1] weights, int n_threads):                         # OUT
    """transposed_weights(t_pairs, t_data, pi, weights, n_threads)

    weights[e] = π(t_pairs[e]) P[e] for every entry e of P in the transposed order
    (``fastppo.mdp.Transitions.transposed_pattern``): P_πᵀ's entries, column by column,
    for ``transposed_rmatvec``. π is gathered (AVX-512 where the CPU has it: GCC
    vectorises the loop)."""
    cdef Py_ssize_t m = t_pairs.shape[0], e
    for e in prange(m, nogil=True, schedule="static", num_threads=n_threads):
        weights[e] = pi[t_pairs[e]] * <double>t_data[e]


def transposed_rmatvec(const int64_t[::1] t_indptr, const uint16_t[::1] t_sources,
                       const double[::1] weights, double gamma, const double[::1] y,  # IN
                       double[::1] out, int n_threads):                               # OUT
    """transposed_rmatvec(t_indptr, t_sources, weights, gamma, y, out, n_threads)

    out = y − γ P_πᵀ y as a gather: out[c] = y[c] − γ Σ_e weights[e] y[t_sources[e]] over
    state c's entries t_indptr[c] ≤ e < t_indptr[c + 1] (``transposed_weights``; at most
    2¹⁶ states), each in eight partial sums (_rows8.h: the lanes of an AVX-512 gather where
    the CPU has one; the Numba twin's order). A state's sum does not depend on the
    threads: the same bits on any number."""
    cdef Py_ssize_t n_states = t_indptr.shape[0] - 1, c
    cdef const uint16_t *src = &t_sources[0]
    cdef const double *w = &weights[0]
    cdef const double *ys = &y[0]
    for c in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        out[c] = y[c] - gamma * row8(src, w, ys, t_indptr[c], t_indptr[c + 1])


cdef void _shifted(double[::1] x, double shift, int n_threads) noexcept nogil:
    """x ← x + shift (the sweeps' pending shift along 1; nothing when it is 0)."""
    cdef Py_ssize_t i
    if shift != 0.0:
        for i in prange(x.shape[0], schedule="static", num_threads=n_threads):
            x[i] = x[i] + shift


cdef void _sweep_rows(const int64_t *indptr, const uint16_t *src, const double *w,
                      double gamma, const double *b, const double *x, double *out,
                      Py_ssize_t lo, Py_ssize_t hi, double *sums, int64_t fetch_end,
                      const int64_t *a_indptr, const uint8_t *codes,
                      const double *pi) noexcept nogil:
    """Rows lo ≤ i < hi of a sweep: r = b − (x − γ W x) in row8's sums, out = x + r, and
    sums = (Σ r, Σ r², min r, max r) over those rows in order. Each row prefetches W's
    entries STREAM_AHEAD on, below ``fetch_end`` (0: none). With ``codes`` (else NULL), W
    is P's rows ``w`` weighted by π on the fly (row8_pairs; a_indptr, pi)."""
    cdef double r, row, total = 0.0, squares = 0.0, least = INFINITY, most = -INFINITY
    cdef Py_ssize_t i
    for i in range(lo, hi):
        if codes != NULL:
            prefetch_pairs(src, codes, w, indptr[i] + STREAM_AHEAD,
                           indptr[i + 1] + STREAM_AHEAD, fetch_end)
            row = row8_pairs(src, codes, w, pi + a_indptr[i], a_indptr[i + 1] - a_indptr[i],
                             x, indptr[i], indptr[i + 1])
        else:
            if fetch_end:
                prefetch_rows(src, w, indptr[i] + STREAM_AHEAD, indptr[i + 1] + STREAM_AHEAD,
                              fetch_end)
            row = row8(src, w, x, indptr[i], indptr[i + 1])
        r = b[i] - (x[i] - gamma * row)
        out[i] = x[i] + r
        total = total + r
        squares = squares + r * r
        if r < least:
            least = r
        if r > most:
            most = r
    sums[0] = total
    sums[1] = squares
    sums[2] = least
    sums[3] = most


cdef tuple _combined(double[:, ::1] stats):
    """(Σ, Σ, min, max) of the chunks' partial sums, in order."""
    cdef double total = 0.0, squares = 0.0, least = INFINITY, most = -INFINITY
    cdef Py_ssize_t c
    for c in range(stats.shape[0]):
        total = total + stats[c, 0]
        squares = squares + stats[c, 1]
        if stats[c, 2] < least:
            least = stats[c, 2]
        if stats[c, 3] > most:
            most = stats[c, 3]
    return total, squares, least, most


def row_sweep(const int64_t[::1] indptr, const uint16_t[::1] sources,
              const double[::1] weights, double gamma, const double[::1] b,    # IN
              double[::1] x, double shift,                                      # IN/OUT
              double[::1] out, double[:, ::1] stats,                            # OUT
              bint prefetch, int n_threads):
    """row_sweep(indptr, sources, weights, gamma, b, x, shift, out, stats, prefetch, n_threads)

    x ← x + shift, then one Richardson sweep of (I − γW) x = b, W a CSR of at most 2¹⁶
    states (row i's entries indptr[i] ≤ e < indptr[i + 1], ``weights`` at columns
    ``sources``: P_πᵀ's entries): r = b − (x − γ W x), each row in row8's eight sums, and
    out = x + r. Returns (Σ r, Σ r², min r, max r), each summed over stats.shape[0] equal
    chunks of rows in order (``stats``: their partial sums), then over the chunks in
    order: the same bits on any number of threads. ``prefetch``: prefetch W STREAM_AHEAD
    entries on (W's first passes after it was written: a hint, the same bits)."""
    cdef Py_ssize_t n = b.shape[0], n_chunks = stats.shape[0], c
    cdef int64_t fetch_end = indptr[n] if prefetch else 0
    _shifted(x, shift, n_threads)
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        _sweep_rows(&indptr[0], &sources[0], &weights[0], gamma, &b[0], &x[0], &out[0],
                    c * n // n_chunks, (c + 1) * n // n_chunks, &stats[c, 0], fetch_end,
                    NULL, NULL, NULL)
    return _combined(stats)


def pair_sweep(const int64_t[::1] row_indptr, const int64_t[::1] a_indptr,
               const uint8_t[::1] codes, const uint16_t[::1] indices,
               const double[::1] p_data, const double[::1] pi, double gamma,
               const double[::1] b,                                                # IN
               double[::1] x, double shift,                                        # IN/OUT
               double[::1] out, double[:, ::1] stats, int n_threads):              # OUT
    """pair_sweep(row_indptr, a_indptr, codes, indices, p_data, pi, gamma, b, x, shift, out, stats, n_threads)

    ``row_sweep`` on P_π's state rows taken from P itself (state s's entries
    row_indptr[s] = p_indptr[a_indptr[s]] ≤ j < row_indptr[s + 1]), entry j weighted by
    π(a_indptr[s] + codes[j]) as it is read (``codes``: the entry's pair among its
    state's, ``fastppo.mdp.MDP._pair_codes``): row_sweep's sums on the weights π(k) P[j],
    bit for bit, without writing them. P's entries are prefetched STREAM_AHEAD on. At most
    2¹⁶ states and 256 pairs a state, float64 P."""
    cdef Py_ssize_t n = b.shape[0], n_chunks = stats.shape[0], c
    cdef int64_t last = row_indptr[n]
    _shifted(x, shift, n_threads)
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        _sweep_rows(&row_indptr[0], &indices[0], &p_data[0], gamma, &b[0], &x[0], &out[0],
                    c * n // n_chunks, (c + 1) * n // n_chunks, &stats[c, 0], last,
                    &a_indptr[0], &codes[0], &pi[0])
    return _combined(stats)


def transposed_sweep(const int64_t[::1] t_indptr, const int32_t[::1] t_pairs,
                     const uint16_t[::1] t_sources, const double[::1] t_data,
                     const double[::1] pi, double gamma, const double[::1] b,     # IN
                     double[::1] x, double shift,                                 # IN/OUT
                     double[::1] out, double[::1] weights, double[:, ::1] stats,
                     int n_threads):                                              # OUT
    """transposed_sweep(t_indptr, t_pairs, t_sources, t_data, pi, gamma, b, x, shift, out, weights, stats, n_threads)

    ``row_sweep`` on P_πᵀ's entries in the transposed order, each chunk of states' entries
    written first, weights[e] = π(t_pairs[e]) t_data[e] (``transposed_weights``), in the
    same pass: the same bits as ``transposed_weights`` then ``row_sweep``. Its entries and
    the weights are prefetched STREAM_AHEAD on, 64 at a time. At most 2¹⁶ states, float64
    P."""
    cdef Py_ssize_t n = b.shape[0], n_chunks = stats.shape[0], c, lo, hi
    cdef int64_t e, block, q, last = t_indptr[n]
    _shifted(x, shift, n_threads)
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        lo = c * n // n_chunks
        hi = (c + 1) * n // n_chunks
        for block in range(t_indptr[lo], t_indptr[hi], 64):
            # from a multiple of 8, so that every 2nd / 4th q starts a line of t_pairs / t_sources
            for q in range((block + STREAM_AHEAD) & ~(<int64_t>7),
                           min(block + 64 + STREAM_AHEAD, last), 8):
                prefetch(&t_data[q], 0, 3)
                prefetch(&weights[q], 1, 3)
                if q % 16 == 0:
                    prefetch(&t_pairs[q], 0, 3)
                if q % 32 == 0:
                    prefetch(&t_sources[q], 0, 3)
            for e in range(block, min(block + 64, t_indptr[hi])):
                weights[e] = pi[t_pairs[e]] * t_data[e]
        _sweep_rows(&t_indptr[0], &t_sources[0], &weights[0], gamma, &b[0], &x[0], &out[0],
                    lo, hi, &stats[c, 0], 0, NULL, NULL, NULL)
    return _combined(stats)

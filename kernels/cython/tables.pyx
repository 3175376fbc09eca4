"""Per-state segment kernels over the pairs of each state (``a_indptr`` blocks).

``segment_softmax``:    out = softmax of logits within each state (_softmax.pxi's softmax_states)
``regularized_reward``: out[s] = Σ_a π r − τ Σ_a π_ref f(π/π_ref)
``advantages``:         out = q − Σ_a π q  (per state)
``q_advantages``:       q = r + scale·rows and adv = q − Σ_a π q in one pass
``policy_gradient``:    out[k] = w(s) π_k [(b_k − Σ_a π b) − τ(f'_k − Σ_a π f')]
``compact_indptr``:     the pairs with π > 0 and their pair and row pointers (serial prefix sums)
``compact_rows``:       their rows of P and their π, gathered pair by pair
Mirrors kernels/numba/tables.py.
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc

include "_probability.pxi"

include "_codes.pxi"
include "_divergence.pxi"
include "_softmax.pxi"

cdef extern from *:
    void prefetch "__builtin_prefetch" (const void *address, int write, int locality) nogil

cdef enum:
    TASK_BLOCKS = 32  # blocks of LANES states per parallel task
    ROWS_AHEAD = 8  # compact_rows: the pair whose rows are prefetched (kernels/numba/tables.py)
    TERM_CHUNK = 512  # pairs per chunk of divergence terms (4 KB)


def segment_softmax(const int64_t[::1] a_indptr, const double[::1] logits,  # IN
                    double[::1] out, int n_threads):                          # OUT
    """segment_softmax(a_indptr, logits, out, n_threads)"""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, per_task = TASK_BLOCKS * LANES, c, s0, s1
    cdef double* scratch
    cdef int failed = 0
    if n_states == 0:
        return
    for c in prange((n_states + per_task - 1) // per_task, nogil=True, schedule="static",
                    num_threads=n_threads):
        s0 = c * per_task
        s1 = min(s0 + per_task, n_states)
        scratch = <double*> malloc((2 * max_actions(&a_indptr[0], s0, s1) + 3) * LANES
                                   * sizeof(double))
        if scratch == NULL:
            failed = 1
        else:
            softmax_states(&a_indptr[0], s0, s1, &logits[0], &out[0], NULL, scratch)
            free(scratch)
    if failed:
        raise MemoryError("segment_softmax: could not allocate a block of states")


def regularized_reward(const int64_t[::1] a_indptr, const double[::1] r, const double[::1] pi,
                       const double[::1] ref, int code, double alpha, double tau,  # IN
                       double[::1] out, int n_threads):                            # OUT
    """regularized_reward(a_indptr, r, pi, ref, code, alpha, tau, out, n_threads)"""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, per_task = TASK_BLOCKS * LANES, c, s
    cdef int64_t k
    cdef double acc, div
    cdef double* terms
    cdef int failed = 0
    if code == REVERSE_KL or code == FORWARD_KL:  # the terms in vectorised chunks
        if tau == 0.0 or n_states == 0:
            code = NONE
        else:
            for c in prange((n_states + per_task - 1) // per_task, nogil=True,
                            schedule="static", num_threads=n_threads):
                terms = <double*> malloc(TERM_CHUNK * sizeof(double))
                if terms == NULL:
                    failed = 1
                else:
                    _kl_rewards(&a_indptr[0], c * per_task, min((c + 1) * per_task, n_states),
                                &r[0], &pi[0], &ref[0], code == REVERSE_KL, tau, &out[0], terms)
                    free(terms)
            if failed:
                raise MemoryError("regularized_reward: could not allocate a block of terms")
            return
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        acc = 0.0
        div = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            acc = acc + pi[k] * r[k]
            if tau != 0.0:
                div = div + ref_f(code, alpha, pi[k], ref[k])
        if tau != 0.0:
            out[s] = acc - tau * div
        else:
            out[s] = acc


cdef void _kl_rewards(const int64_t* a_indptr, Py_ssize_t s0, Py_ssize_t s1, const double* r,
                      const double* pi, const double* ref, bint reverse, double tau,
                      double* out, double* terms) noexcept nogil:
    """regularized_reward of the states s0 <= s < s1 for reverse or forward KL: the terms
    ref_f in chunks of TERM_CHUNK pairs (_kl_terms), then the sums per state in pair order
    (the same operations as the generic loop, so the same bits)."""
    cdef int64_t k, c0, c1, end = a_indptr[s1]
    cdef Py_ssize_t s = s0
    cdef double acc = 0.0, div = 0.0, t
    cdef int code = REVERSE_KL if reverse else FORWARD_KL
    c0 = a_indptr[s0]
    while c0 < end:
        c1 = min(c0 + TERM_CHUNK, end)
        if reverse:
            _kl_terms(c1 - c0, &pi[c0], &ref[c0], terms, True)
        else:
            _kl_terms(c1 - c0, &pi[c0], &ref[c0], terms, False)
        for k in range(c0, c1):
            while k == a_indptr[s + 1]:  # state s ends before pair k
                out[s] = acc - tau * div
                acc = 0.0
                div = 0.0
                s = s + 1
            acc = acc + pi[k] * r[k]
            t = terms[k - c0]
            if not isfinite(t):
                t = ref_f(code, 0.0, pi[k], ref[k])
            div = div + t
        c0 = c1
    while s < s1:
        out[s] = acc - tau * div
        acc = 0.0
        div = 0.0
        s = s + 1


cdef inline void _kl_terms(Py_ssize_t n, cdptr p, cdptr q, dptr out,
                           bint reverse) noexcept nogil:
    """out = ref_f(REVERSE_KL or FORWARD_KL, p, q) without branches (GCC vectorises the
    loop), bit for bit; NaN where ref_f leaves the two polynomial logs of _log_ratio
    (small/big below DBL_MIN: p = 0, a tiny ratio; NaN), which the caller then computes by
    ref_f itself."""
    cdef Py_ssize_t i
    cdef double pi, qi, small, big, ratio, L, t
    cdef bint le
    for i in range(n):
        pi = p[i]
        qi = q[i]
        le = pi <= qi
        small = pi if le else qi
        big = qi if le else pi
        ratio = small / big
        L = flog_or_log1p(ratio, (small - big) / big, ratio >= SQRT_HALF)  # _log_ratio
        L = L if ratio >= DBL_MIN else NAN
        if reverse:  # p log(p/q)
            t = pi * L if le else -pi * L
        else:  # q log(q/p)
            t = -qi * L if le else qi * L
        out[i] = t


def advantages(const int64_t[::1] a_indptr, const double[::1] pi, const double[::1] q,  # IN
               double[::1] out, int n_threads):                                        # OUT
    """advantages(a_indptr, pi, q, out, n_threads)"""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    cdef int64_t k
    cdef double mean
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        mean = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            mean = mean + pi[k] * q[k]
        for k in range(a_indptr[s], a_indptr[s + 1]):
            out[k] = q[k] - mean


def q_advantages(const int64_t[::1] a_indptr, const double[::1] pi, const double[::1] rows,
                 const double[::1] r, double scale,                       # IN
                 double[::1] q, double[::1] adv, int n_threads):          # OUT
    """q_advantages(a_indptr, pi, rows, r, scale, q, adv, n_threads)

    q and adv may alias rows (and each other): each pair is read before it is written."""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    cdef int64_t k
    cdef double mean, qk
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        mean = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            qk = rows[k] * scale + r[k]
            q[k] = qk
            mean = mean + pi[k] * qk
        for k in range(a_indptr[s], a_indptr[s + 1]):
            adv[k] = q[k] - mean


def policy_gradient(const int64_t[::1] a_indptr, const double[::1] pi, const double[::1] b,
                    const double[::1] weight, const double[::1] ref, int code, double alpha,
                    double tau,                                                   # IN
                    double[::1] out, int n_threads):                              # OUT
    """policy_gradient(a_indptr, pi, b, weight, ref, code, alpha, tau, out, n_threads)"""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    cdef int64_t k
    cdef double mean_b, mean_f, g
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        mean_b = 0.0
        mean_f = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            mean_b = mean_b + pi[k] * b[k]
            if tau != 0.0:
                mean_f = mean_f + p_fprime(code, alpha, pi[k], ref[k])
        for k in range(a_indptr[s], a_indptr[s + 1]):
            g = pi[k] * (b[k] - mean_b)
            if tau != 0.0:
                g = g - tau * (p_fprime(code, alpha, pi[k], ref[k]) - pi[k] * mean_f)
            out[k] = weight[s] * g


def compact_indptr(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                   const double[::1] pi,                                          # IN
                   int64_t[::1] out_a_indptr, int64_t[::1] out_p_indptr,
                   int64_t[::1] out_pairs, int n_threads):                        # OUT
    """compact_indptr(a_indptr, p_indptr, pi, out_a_indptr, out_p_indptr, out_pairs, n_threads)

    Serial at any ``n_threads`` (prefix sums)."""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    cdef int64_t k, j = 0
    with nogil:
        out_a_indptr[0] = 0
        out_p_indptr[0] = 0
        for s in range(n_states):
            for k in range(a_indptr[s], a_indptr[s + 1]):
                if pi[k] != 0.0:
                    out_pairs[j] = k
                    out_p_indptr[j + 1] = out_p_indptr[j] + (p_indptr[k + 1] - p_indptr[k])
                    j += 1
            out_a_indptr[s + 1] = j


def compact_rows(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                 const probability[::1] p_data, const double[::1] pi,
                 const int64_t[::1] pairs, const int64_t[::1] out_p_indptr,          # IN
                 int32_t[::1] out_indices, probability[::1] out_data, double[::1] out_pi,
                 int n_threads):                                                     # OUT
    """compact_rows(p_indptr, p_indices, p_data, pi, pairs, out_p_indptr, out_indices,
    out_data, out_pi, n_threads)

    One compact row per pair of ``pairs``, in turn; the rows of the pair ``ROWS_AHEAD``
    on are prefetched (first and last entries): a deterministic policy's rows lie ~A
    rows apart in P, a stride the hardware does not follow."""
    cdef Py_ssize_t n_used = pairs.shape[0], j
    cdef int64_t k, i, e, ahead
    for j in prange(n_used, nogil=True, schedule="static", num_threads=n_threads):
        if j + ROWS_AHEAD < n_used:
            ahead = pairs[j + ROWS_AHEAD]
            if p_indptr[ahead + 1] > p_indptr[ahead]:
                prefetch(&p_indices[p_indptr[ahead]], 0, 3)
                prefetch(&p_indices[p_indptr[ahead + 1] - 1], 0, 3)
                prefetch(&p_data[p_indptr[ahead]], 0, 3)
                prefetch(&p_data[p_indptr[ahead + 1] - 1], 0, 3)
        k = pairs[j]
        out_pi[j] = pi[k]
        i = out_p_indptr[j]
        for e in range(p_indptr[k], p_indptr[k + 1]):
            out_indices[i] = p_indices[e]
            out_data[i] = p_data[e]
            i = i + 1

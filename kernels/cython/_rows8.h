/* One row of a CSR with uint16 columns, Σ_j w[j] x[idx[j]] for start ≤ j < stop, in eight
   partial sums: entry j into sum (j − start) mod 8 while eight remain, the rest into the
   first, combined as ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)); every product and
   sum rounded on its own (no FMA). With AVX-512 the eight sums are the lanes of one
   register and each step gathers eight x (kernels/numba/linear.py's _row8: the same sums,
   one at a time). */
#ifndef FASTPPO_ROWS8_H
#define FASTPPO_ROWS8_H
#include <stdint.h>
#if defined(__AVX512F__) && defined(__AVX2__)
#include <immintrin.h>
#endif

static inline double row8(const uint16_t *idx, const double *w, const double *x,
                          int64_t start, int64_t stop) {
    int64_t j = start;
    double a[8];
#if defined(__AVX512F__) && defined(__AVX2__)
    __m512d acc = _mm512_setzero_pd();
    for (; j + 8 <= stop; j += 8) {
        __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(idx + j)));
        acc = _mm512_add_pd(acc, _mm512_mul_pd(_mm512_loadu_pd(w + j),
                                               _mm512_i32gather_pd(c, x, 8)));
    }
    _mm512_storeu_pd(a, acc);
#else
    for (int l = 0; l < 8; l++) a[l] = 0.0;
    for (; j + 8 <= stop; j += 8)
        for (int l = 0; l < 8; l++) a[l] = a[l] + w[j + l] * x[idx[j + l]];
#endif
    for (; j < stop; j++) a[0] = a[0] + w[j] * x[idx[j]];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}
/* row8 of P_π's state row from P itself: entry j weighted by its pair's π, pi[code[j]] · p[j]
   (``pi`` from the state's first pair on, ``code[j]`` the pair's place among the state's
   ``n_pairs``), rounded as a stored weight is, then times x[idx[j]]: row8's sums on the
   weights π(k) P[j], bit for bit. With AVX-512 the lanes' π are a permute of the state's
   first 16 (more pairs: a gather). */
static inline double row8_pairs(const uint16_t *idx, const uint8_t *code, const double *p,
                                const double *pi, int64_t n_pairs, const double *x,
                                int64_t start, int64_t stop) {
    int64_t j = start;
    double a[8];
#if defined(__AVX512F__) && defined(__AVX2__)
    __m512d acc = _mm512_setzero_pd();
    if (n_pairs <= 16) {
        __mmask8 m0 = n_pairs >= 8 ? 0xff : (__mmask8)((1u << n_pairs) - 1);
        __mmask8 m1 = n_pairs >= 16 ? 0xff : (n_pairs > 8 ? (__mmask8)((1u << (n_pairs - 8)) - 1) : 0);
        __m512d lo = _mm512_maskz_loadu_pd(m0, pi), hi = _mm512_maskz_loadu_pd(m1, pi + 8);
        for (; j + 8 <= stop; j += 8) {
            __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(idx + j)));
            __m512i k = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(code + j)));
            __m512d w = _mm512_mul_pd(_mm512_permutex2var_pd(lo, k, hi), _mm512_loadu_pd(p + j));
            acc = _mm512_add_pd(acc, _mm512_mul_pd(w, _mm512_i32gather_pd(c, x, 8)));
        }
    } else {
        for (; j + 8 <= stop; j += 8) {
            __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(idx + j)));
            __m512i k = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(code + j)));
            __m512d w = _mm512_mul_pd(_mm512_i64gather_pd(k, pi, 8), _mm512_loadu_pd(p + j));
            acc = _mm512_add_pd(acc, _mm512_mul_pd(w, _mm512_i32gather_pd(c, x, 8)));
        }
    }
    _mm512_storeu_pd(a, acc);
#else
    for (int l = 0; l < 8; l++) a[l] = 0.0;
    for (; j + 8 <= stop; j += 8)
        for (int l = 0; l < 8; l++)
            a[l] = a[l] + (pi[code[j + l]] * p[j + l]) * x[idx[j + l]];
#endif
    for (; j < stop; j++) a[0] = a[0] + (pi[code[j]] * p[j]) * x[idx[j]];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}
/* Hints that entries lo ≤ j < min(hi, end) of a CSR with uint16 columns will be read soon:
   one prefetch per 8 weights (a 64-byte line) and per 32 columns. A hint only: no result
   changes. */
static inline void prefetch_rows(const uint16_t *idx, const double *w, int64_t lo,
                                 int64_t hi, int64_t end) {
    if (hi > end) hi = end;
    for (int64_t j = lo & ~(int64_t)7; j < hi; j += 8) {
        __builtin_prefetch(w + j, 0, 3);
        if ((j & 31) == 0) __builtin_prefetch(idx + j, 0, 3);
    }
}
/* prefetch_rows, and the pair codes (one prefetch per 64) */
static inline void prefetch_pairs(const uint16_t *idx, const uint8_t *code, const double *p,
                                  int64_t lo, int64_t hi, int64_t end) {
    if (hi > end) hi = end;
    for (int64_t j = lo & ~(int64_t)7; j < hi; j += 8) {
        __builtin_prefetch(p + j, 0, 3);
        if ((j & 31) == 0) __builtin_prefetch(idx + j, 0, 3);
        if ((j & 63) == 0) __builtin_prefetch(code + j, 0, 3);
    }
}
#endif

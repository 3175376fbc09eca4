"""Prototype (issue 12, target 5): a cache-blocked layout of P for the passes at large S.

Not library code: this measures whether the layout pays before anything is integrated.

Layout. The pairs are cut into row panels of ``--panel`` consecutive pairs (P's rows);
inside a panel the entries are sorted by column (successor state), each entry stored as
(column int32, row offset in the panel uint16, probability float64): 14 bytes against
CSR's 12 (+ 8 per row). A pass then walks each panel's entries in ascending column
order, so the gathers x[column] and the scatters buf[column] move forward through the
state vectors (the hardware prefetcher follows them, each cache line serves all the
panel's entries of its states in a row), while the panel's row sums (value side) and
row weights π_k y_s (visitation side) stay in a panel-sized array (L2 at 2^15–2^16
pairs). The price: each panel streams through x (and the scatter buffer) once, i.e.
n_pairs / panel × n_states × 8 bytes per side and pass.

The sums differ from the CSR order's in rounding only (another order of the same terms);
the script checks them against today's ``bellman_products`` (relative difference).

``python benchmarks/blocked_prototype.py --n-states 1000000 --threads 2``: today's fused
pass (cython ``bellman_products``, both sides and the rows for Q̃) against the blocked
value side, visitation side and fused pass, one call of each in turn, medians of
``--repeat`` (wall and CPU time), and the bytes of the layout.
"""
import argparse
import resource
import time
from collections import defaultdict

import numba
import numpy as np
from numba import njit, prange

import fastppo
from fastppo._backend import get_kernel


def build_panels(mdp, pi, panel):
    """(ptr, cols, offs, data): per panel of ``panel`` pairs, its entries sorted by column
    (then row); ptr (n_panels + 1,) int64 indexes the entries."""
    L = mdp.n_pairs
    lengths = np.diff(mdp.p_indptr)
    row = np.repeat(np.arange(L, dtype=np.int64), lengths)
    key = (row // panel) * mdp.n_states + mdp.p_indices  # panel, then column
    order = np.argsort(key, kind="stable")  # stable: rows ascending among equal columns
    del key
    cols = mdp.p_indices[order]
    offs = (row[order] % panel).astype(np.uint16)
    data = mdp.p_data[order]
    n_panels = (L + panel - 1) // panel
    ptr = mdp.p_indptr[np.minimum(np.arange(n_panels + 1) * panel, L)].copy()
    return ptr, cols, offs, data


@njit(parallel=True, nogil=True, cache=True)
def blocked_products(a_indptr, s_of_pair, pi, gamma, panel, ptr, cols, offs, data, x, y,
                     out_x, out_y, rows, buf, do_x, do_y):
    """The blocked fused pass: rows = P x per pair and out_x = x − γ P_π x (do_x);
    out_y = y − γ P_πᵀ y (do_y), scattered into per-chunk buffers buf (n_chunks, n)
    (the chunks: contiguous ranges of panels, summed in a fixed order)."""
    n_states = out_x.shape[0]
    n_pairs = pi.shape[0]
    n_panels = ptr.shape[0] - 1
    n_chunks = buf.shape[0]
    for c in prange(n_chunks):
        z = buf[c]
        if do_y:
            z[:] = 0.0
        acc = np.empty(panel)
        w = np.empty(panel)
        p0 = c * n_panels // n_chunks
        p1 = (c + 1) * n_panels // n_chunks
        for p in range(p0, p1):
            k0 = p * panel
            k1 = min(k0 + panel, n_pairs)
            if do_x:
                acc[:] = 0.0
            if do_y:
                for k in range(k0, k1):
                    w[k - k0] = pi[k] * y[s_of_pair[k]]
            if do_x and do_y:
                for j in range(ptr[p], ptr[p + 1]):
                    i = cols[j]
                    o = offs[j]
                    d = data[j]
                    acc[o] += d * x[i]
                    z[i] += w[o] * d
            elif do_x:
                for j in range(ptr[p], ptr[p + 1]):
                    acc[offs[j]] += data[j] * x[cols[j]]
            elif do_y:
                for j in range(ptr[p], ptr[p + 1]):
                    z[cols[j]] += w[offs[j]] * data[j]
            if do_x:
                for k in range(k0, k1):
                    rows[k] = acc[k - k0]
    if do_x:
        for s in prange(n_states):
            a = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                a += pi[k] * rows[k]
            out_x[s] = x[s] - gamma * a
    if do_y:
        for s in prange(n_states):
            a = 0.0
            for c in range(n_chunks):
                a += buf[c, s]
            out_y[s] = y[s] - gamma * a


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-states", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--panel", type=int, nargs="+", default=[1 << 15, 1 << 16])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    nt = args.threads
    numba.set_num_threads(nt)
    t0 = time.perf_counter()
    mdp = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), n_threads=nt)
    E = ppo._evaluator
    E.load(ppo.pi)
    n, L, g = mdp.n_states, mdp.n_pairs, mdp.gamma
    print(f"{mdp}: built in {time.perf_counter() - t0:.1f} s; {nt} thread(s)", flush=True)
    rng = np.random.default_rng(0)
    x, y = rng.random(n), rng.random(n)
    ox, oy, rows = np.empty(n), np.empty(n), np.empty(L)
    bx, by, brows = np.empty(n), np.empty(n), np.empty(L)
    fused = get_kernel("bellman_products", "cython")
    buf = np.empty((max(2, nt), 2 * n))
    calls = {"today: fused pass (cython, CSR)": lambda: fused(
        *E._rows, x, y, ox, oy, rows, buf, nt)}
    calls["today: value side alone"] = lambda: fused(*E._rows, x, np.empty(0), ox, np.empty(0),
                                                     rows, buf, nt)
    calls["today: visitation side alone"] = lambda: fused(*E._rows, np.empty(0), y, np.empty(0),
                                                          oy, np.empty(0), buf, nt)
    s_of_pair = mdp.s_indices.astype(np.int32)
    pi = ppo.pi
    csr_bytes = mdp.p_indices.nbytes + mdp.p_data.nbytes + mdp.p_indptr.nbytes
    bbuf = np.empty((max(2, nt), n))
    layouts = {}
    for panel in args.panel:
        t0 = time.perf_counter()
        lay = build_panels(mdp, pi, panel)
        layouts[panel] = lay
        nbytes = sum(a.nbytes for a in lay)
        print(f"panel {panel}: built in {time.perf_counter() - t0:.1f} s, {nbytes / 2**30:.2f} GiB "
              f"(CSR {csr_bytes / 2**30:.2f} GiB); x streamed per side and pass: "
              f"{(L / panel) * n * 8 / 1e9:.2f} GB", flush=True)

        def call(lay=lay, panel=panel, do_x=True, do_y=True):
            blocked_products(mdp.a_indptr, s_of_pair, pi, g, panel, *lay, x, y, bx, by, brows,
                             bbuf, do_x, do_y)
        calls[f"blocked {panel}: fused pass"] = call
        calls[f"blocked {panel}: value side alone"] = lambda call=call: call(do_y=False)
        calls[f"blocked {panel}: visitation side alone"] = lambda call=call: call(do_x=False)
        call()
        fused(*E._rows, x, y, ox, oy, rows, buf, nt)
        err = max(np.abs(bx - ox).max() / np.abs(ox).max(), np.abs(by - oy).max() / np.abs(oy).max(),
                  np.abs(brows - rows).max() / np.abs(rows).max())
        print(f"panel {panel}: largest relative difference to the CSR pass {err:.1e}", flush=True)
    stream = np.ones(2**26)
    calls["NumPy sum over 512 MB"] = lambda: stream.sum()
    for c in calls.values():
        c()
    wall, cpu = defaultdict(list), defaultdict(list)
    for _ in range(args.repeat):
        for name, c in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            c()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(f"medians of {args.repeat}, one call of each in turn; load average "
          f"{open('/proc/loadavg').read().split()[:3]}")
    for name in calls:
        print(f"{name:>42}: wall {np.median(wall[name]) * 1e3:8.1f} ms, "
              f"CPU {np.median(cpu[name]) * 1e3:8.1f} ms", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()

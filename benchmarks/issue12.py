"""Issue 12's measurements: the README run per outer iteration, with its phases, passes
over P and the straightforward baseline in the same process; and the 10⁶-state iteration.

``python benchmarks/issue12.py readme --threads 1`` (targets 1 and 4): garnet S = 50,000,
A = 10, b = 10, γ = 0.99, forward KL τ = 0.1, ε = 0.2, K = 10, scale-free step; J* by
``solve``, then ``PPOClip.run(tol=1e-8)`` as ``fastppo run`` does. The baseline of
``baseline_ppo.py`` takes one step after each of fastppo's first ``--baseline-iters``
(both see the same load). Prints the median iteration over the whole run and over
iterations 2–13, the time per phase, and passes over P / products per iteration.

``python benchmarks/issue12.py large --threads 2 --n-states 1000000 --iters 30``
(target 5): the same problem at 10⁶ states; every solve's float64 residual, the time of
each iteration and the peak RSS. Run it once per thread count (peak RSS is per process).

Phases (wall time, summed per iteration, from wrappers around the private methods):
``solves`` the lockstep Richardson solve of Ṽ and d (one fused pass per sweep: the two
systems are not separable), ``q_adv`` Q̃ = r + γPṼ (from the last sweep's rows, or a
``q_values`` pass) and Ã, ``ppo_update`` the K inner steps (one kernel), ``rest`` the
remainder (warm-start prediction, history, checks).
"""
import argparse
import resource
import sys
import time
from collections import defaultdict

import numpy as np

import fastppo
import fastppo._evaluator as evaluator_module
import fastppo.solvers as solvers
from fastppo._backend import get_kernel

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from baseline_ppo import BaselinePPO  # noqa: E402

PHASES = ("solves", "q_adv", "ppo_update", "rest")


class Phases:
    """Wall time per phase of the current outer iteration, and the residuals of its solves."""

    def __init__(self):
        self.now, self.rows, self.residuals = defaultdict(float), [], []
        self.cpu, self.cpu_rows = defaultdict(float), []
        E = evaluator_module.Evaluator
        self._wrap(E, "evaluation_and_visitation", "all_solves")
        self._wrap(E, "_evaluation", "q_adv")
        real = get_kernel

        def timed_kernel(name, backend):
            k = real(name, backend)
            if name != "ppo_update":
                return k

            def call(*args):
                t0, c0 = time.perf_counter(), time.process_time()
                k(*args)
                self.now["ppo_update"] += time.perf_counter() - t0
                self.cpu["ppo_update"] += time.process_time() - c0
            return call
        solvers.get_kernel = timed_kernel

    def _wrap(self, cls, name, phase):
        real = getattr(cls, name)

        def call(obj, *args, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            out = real(obj, *args, **kw)
            self.now[phase] += time.perf_counter() - t0
            self.cpu[phase] += time.process_time() - c0
            if name == "evaluation_and_visitation":
                self.residuals.append((out[0].residual, out[1].residual))
            return out
        setattr(cls, name, call)

    def close(self, seconds, cpu_seconds):
        """Phases of the iteration that took ``seconds`` (wall) and ``cpu_seconds`` (CPU
        time of the process: all its threads); starts the next."""
        for n, total, rows in ((self.now, seconds, self.rows),
                               (self.cpu, cpu_seconds, self.cpu_rows)):
            row = dict(solves=n["all_solves"] - n["q_adv"], q_adv=n["q_adv"],
                       ppo_update=n["ppo_update"])
            row["rest"] = total - sum(row.values())
            rows.append(row)
        self.now, self.cpu = defaultdict(float), defaultdict(float)


def ms(x):
    return f"{np.median(x) * 1e3:7.1f}"


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def report(h, cpu, phases, label, first, last):
    sl = slice(first - 1, last)
    for what, sec, rows in (("wall", h["seconds"][sl], phases.rows[sl]),
                            ("CPU", np.asarray(cpu)[sl], phases.cpu_rows[sl])):
        parts = "  ".join(f"{p} {ms([r[p] for r in rows])}" for p in PHASES)
        print(f"{label:>10} {what:>4}: median {ms(sec)} ms  [{parts}]", flush=True)
    print(f"{label:>10}: passes {h['n_passes'][sl].mean():5.2f}, products "
          f"{h['n_matvec'][sl].mean():5.2f} per iteration (means)", flush=True)


def readme(args):
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    nt, backend = args.threads, args.backend
    mdp = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0)
    reg = fastppo.ForwardKL(0.1)
    fastppo.PPOClip(fastppo.garnet(200, 10, 10, seed=1), reg, backend=backend,
                    n_threads=nt).run(3)  # JIT / cache load
    t0 = time.perf_counter()
    opt = fastppo.solve(mdp, reg, backend=backend, n_threads=nt)
    print(f"{mdp}; ForwardKL(0.1), clip 0.2, K=10; {backend}, {nt} thread(s)")
    print(f"solve: J* = {opt.J:.15g} in {time.perf_counter() - t0:.2f} s ({opt.n_iter} PI steps, "
          f"{opt.n_matvec} products, {opt.n_passes} passes)")
    phases = Phases()
    ppo = fastppo.PPOClip(mdp, reg, reference=opt.J, backend=backend, n_threads=nt)
    base = BaselinePPO(mdp.P, mdp.R, mdp.gamma, mdp.rho, "forward-kl", 0.1, lr=ppo.lr)
    t_base, c_base, cpu = [], [], []
    t_run = time.perf_counter()
    while ppo.n_iter < 2000:
        c0 = time.process_time()
        row = ppo.step()
        cpu.append(time.process_time() - c0)
        phases.close(row["seconds"], cpu[-1])
        if ppo.n_iter <= args.baseline_iters:
            t0, c0 = time.perf_counter(), time.process_time()
            base.step()
            t_base.append(time.perf_counter() - t0)
            c_base.append(time.process_time() - c0)
            if ppo.n_iter == args.baseline_iters:
                diff = np.abs(base.theta.ravel() - ppo.logits).max()
        if row["gap"] <= 1e-8:
            break
    wall = time.perf_counter() - t_run
    h = ppo.history
    n = ppo.n_iter
    print(f"PPO-Clip: {n} iterations to gap {h['gap'][-1]:.3e}, {wall:.1f} s in the loop "
          f"(baseline steps included), {h['n_matvec'].sum()} products, {h['n_passes'].sum()} passes")
    report(h, cpu, phases, f"all 1..{n}", 1, n)
    report(h, cpu, phases, "2..13", 2, 13)
    report(h, cpu, phases, f"100..{n}", 100, n)
    print(f"passes per iteration, iterations 100..{n}: max {h['n_passes'][99:].max()}, "
          f"mean {h['n_passes'][99:].mean():.2f}")
    for what, base_t, ours in (("wall", t_base, h["seconds"]), ("CPU", c_base, cpu)):
        b = np.median(base_t[1:])
        print(f"baseline scipy/NumPy {what}, iterations 2..{args.baseline_iters}: median "
              f"{b * 1e3:.1f} ms; ratio to fastppo 2..13: {b / np.median(ours[1:13]):.2f}x, to "
              f"fastppo's median over the run: {b / np.median(ours):.2f}x")
    print(f"max |Δθ| between the baseline and fastppo after {args.baseline_iters} iterations: "
          f"{diff:.1e}")
    worst = max(max(r) for r in phases.residuals)
    print(f"worst relative residual of the solves: {worst:.2e}; peak RSS {peak_rss_gib():.2f} GiB")


def large(args):
    nt, backend = args.threads, args.backend
    fastppo.PPOClip(fastppo.garnet(200, 10, 10, seed=1), fastppo.ForwardKL(0.1), backend=backend,
                    n_threads=nt).run(3)
    t0 = time.perf_counter()
    mdp = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0)
    print(f"{mdp}: built in {time.perf_counter() - t0:.1f} s, peak RSS {peak_rss_gib():.2f} GiB; "
          f"{backend}, {nt} thread(s)", flush=True)
    phases = Phases()
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), backend=backend, n_threads=nt)
    E = ppo._evaluator
    print(f"mixed precision sweeps: {E.mixed}", flush=True)
    worst = 0.0
    for _ in range(args.iters):
        pi_old = ppo.pi
        c0 = time.process_time()
        row = ppo.step()
        phases.close(row["seconds"], time.process_time() - c0)
        p = phases.rows[-1]
        rv, rd = phases.residuals[-1]
        # the true float64 residuals of this iteration's solutions, recomputed by exact
        # products outside the timed step (d after its normalisation to a distribution)
        E.load(pi_old)
        c, out, g = E.regularized_reward(), np.empty(mdp.n_states), mdp.gamma
        E.matvec(ppo._v, out)
        tv = np.linalg.norm(c - out) / np.linalg.norm(c)
        E.rmatvec(ppo._d, out)
        b = (1 - g) * ppo.mu
        td = np.linalg.norm(b - out) / np.linalg.norm(b)
        worst = max(worst, tv, td)
        c = phases.cpu_rows[-1]
        print(f"iter {ppo.n_iter:3d}: {row['seconds']:6.2f} s  [" +
              "  ".join(f"{k} {p[k]:5.2f}" for k in PHASES) +
              f"]  CPU {sum(c.values()):6.2f} s [" + "  ".join(f"{k} {c[k]:5.2f}" for k in PHASES) +
              f"]  passes {row['n_passes']:3d} products {row['n_matvec']:3d}  residuals: "
              f"solver {rv:.1e} / {rd:.1e}, recomputed {tv:.1e} / {td:.1e}  "
              f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    h = ppo.history
    late = h["seconds"][-args.late:]
    late_cpu = [sum(c.values()) for c in phases.cpu_rows[-args.late:]]
    print(f"median of the last {args.late} iterations: {np.median(late):.2f} s wall, "
          f"{np.median(late_cpu):.2f} s CPU; peak RSS "
          f"{peak_rss_gib():.2f} GiB; worst residual: solver "
          f"{max(max(r) for r in phases.residuals):.2e}, recomputed {worst:.2e}")


def passes(args):
    """CPU and wall time of one pass over P of each kind at ``--n-states``, and of the
    K = 10 inner steps of ``ppo_update``: the parts of an iteration, when whole
    iterations cannot be run to the late phase."""
    nt, backend = args.threads, args.backend
    fastppo.PPOClip(fastppo.garnet(200, 10, 10, seed=1), fastppo.ForwardKL(0.1), backend=backend,
                    n_threads=nt).run(3)
    mdp = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), backend=backend, n_threads=nt)
    E = ppo._evaluator
    E.load(ppo.pi)
    rng = np.random.default_rng(0)
    x, y = rng.random(mdp.n_states), rng.random(mdp.n_states)
    ox, oy = np.empty_like(x), np.empty_like(y)
    k = get_kernel("bellman_products", backend)
    buf32 = np.empty(E._buf.shape, dtype=np.float32)
    q = np.empty(mdp.n_pairs)
    calls = {
        "fused pass, float64 (v and d, rows for Q)": lambda: k(
            *E._rows, x, y, ox, oy, np.empty(0) if E._q_rows is None else E._q_rows, E._buf, nt),
        "fused pass, float32 corrections": lambda: k(
            *E._rows, x.astype(np.float32), y, ox, oy, np.empty(0), buf32, nt),
        "q_values pass": lambda: get_kernel("q_values", backend)(
            mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r, mdp.gamma, x, q, nt),
    }
    E._q_rows = np.empty(mdp.n_pairs)
    ev = E.evaluation()
    w = E.visitation(ppo.mu).d / (1 - mdp.gamma)
    logits = ppo.logits.copy()
    pu = get_kernel("ppo_update", backend)
    out = (np.empty(mdp.n_pairs), np.empty(mdp.n_states, dtype=np.int64),
           np.empty(mdp.n_states), np.empty(mdp.n_states))
    calls["ppo_update, K = 10"] = lambda: pu(
        mdp.a_indptr, ppo.pi, ev.adv, w, ppo._ref, ppo._code, ppo._alpha, ppo._tau,
        ppo.eps_low, ppo.eps_high, 0.0, ppo.lr, 10, logits.copy(), *out, nt)
    print(f"{mdp}; {backend}, {nt} thread(s); medians of {args.repeat}")
    for name, call in calls.items():
        call()
        wall, cpu = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(f"{name:>45}: wall {ms(wall)} ms, CPU {ms(cpu)} ms", flush=True)
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(required=True)
    r = sub.add_parser("readme")
    r.add_argument("--n-states", type=int, default=50_000)
    r.add_argument("--baseline-iters", type=int, default=13)
    r.set_defaults(func=readme)
    g = sub.add_parser("large")
    g.add_argument("--n-states", type=int, default=1_000_000)
    g.add_argument("--iters", type=int, default=30)
    g.add_argument("--late", type=int, default=5, help="iterations in the late median")
    g.set_defaults(func=large)
    t = sub.add_parser("passes")
    t.add_argument("--n-states", type=int, default=1_000_000)
    t.add_argument("--repeat", type=int, default=5)
    t.set_defaults(func=passes)
    for q in (r, g, t):
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--backend", default="numba")
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()

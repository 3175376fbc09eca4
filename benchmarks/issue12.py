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
``--dtype float32`` stores the transition probabilities in float32 (issue 16, item 1):
``python benchmarks/issue12.py large --threads 2 --n-states 10000000 --dtype float32
--iters 4 --no-residuals`` is the 10⁷-state run (``--no-residuals`` skips the recomputed
residuals, whose products and buffers would add to the time and the memory).
``large ... --save FILE`` writes the last iterate and the warm starts' trajectories;
``python benchmarks/issue12.py late --state late1m.npz --small-state late50k.npz --threads 2``
runs late iterations from such states in alternated blocks (the 10⁶ state with and
without ``_krylov.PREDICT_LAST``, and the 50k state), each block from the saved state;
``python benchmarks/issue12.py ratio --state late1m.npz --small-state late50k.npz --threads 2``
interleaves both sides of the ≤ 25× ratio in one process, each run on from its state.

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
from benchmarks.common import reset_peak_rss  # noqa: E402 -- benchmarks/benchmarks/common.py

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
    """The process's peak resident memory since it started or since ``reset_peak_rss``
    (Linux: VmHWM; elsewhere ``ru_maxrss``, which cannot be reset)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration):
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
    use_before(args)
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
    use_before(args)
    if not args.blocks:
        evaluator_module.BLOCKED_STATES = None
    nt, backend = args.threads, args.backend
    fastppo.PPOClip(fastppo.garnet(200, 10, 10, seed=1), fastppo.ForwardKL(0.1), backend=backend,
                    n_threads=nt).run(3)
    t0 = time.perf_counter()
    mdp = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0, dtype=np.dtype(args.dtype))
    print(f"{mdp}: built in {time.perf_counter() - t0:.1f} s, peak RSS {peak_rss_gib():.2f} GiB; "
          f"{backend}, {nt} thread(s)", flush=True)
    reg, init, reference = fastppo.ForwardKL(0.1), None, False
    if args.perturb is not None:
        # the late phase without the ~100 iterations before it: start near the optimum
        c0 = time.process_time()
        opt = fastppo.solve(mdp, reg, backend=backend, n_threads=nt)
        noise = np.random.default_rng(1).standard_normal(mdp.n_pairs)
        init, reference = np.log(opt.policy.ravel()) + args.perturb * noise, opt.J
        del noise  # (n_pairs,): not held through the run (peak RSS)
        print(f"J* = {opt.J:.15g} by solve ({opt.n_passes} passes, "
              f"{time.process_time() - c0:.1f} s CPU); start: log π* + {args.perturb} N(0, 1) "
              f"per pair", flush=True)
        del opt
        # the start's solve is not part of the PPO-Clip run: its peak reported, then reset
        print(f"peak RSS through the solve {peak_rss_gib():.2f} GiB; reset", flush=True)
        reset_peak_rss()
    phases = Phases()
    ppo = fastppo.PPOClip(mdp, reg, init=init, reference=reference, backend=backend,
                          n_threads=nt)
    del init  # the solver holds its own logits
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
        tv = td = np.nan
        if args.residuals:
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
              + (f"gap {row['gap']:.2e}  " if reference else "") +
              f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    if args.save:
        save_state(ppo, args.save)
    h = ppo.history
    late = h["seconds"][-args.late:]
    late_cpu = [sum(c.values()) for c in phases.cpu_rows[-args.late:]]
    print(f"median of the last {args.late} iterations: {np.median(late):.2f} s wall, "
          f"{np.median(late_cpu):.2f} s CPU; peak RSS "
          f"{peak_rss_gib():.2f} GiB; worst residual: solver "
          f"{max(max(r) for r in phases.residuals):.2e}, recomputed "
          + (f"{worst:.2e}" if args.residuals else "(skipped)"))


def save_state(ppo, path):
    """The iterate and the warm starts' trajectories: ``late`` resumes from them."""
    state = dict(logits=ppo.logits, lr=ppo.lr, n_iter=ppo.n_iter)
    for name, trajectory in (("v", ppo._vs), ("d", ppo._ds)):
        state[f"{name}_x"], state[f"{name}_n"] = trajectory.x, len(trajectory.steps)
        for i, dx in enumerate(trajectory.steps):
            state[f"{name}_step{i}"] = dx
    np.savez(path, **state)


def load_state(mdp, path, backend, nt):
    """A PPOClip at the state ``save_state`` wrote (the same iterates as the run that did)."""
    z = np.load(path)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), init=z["logits"], lr=float(z["lr"]),
                          backend=backend, n_threads=nt)
    for name, trajectory in (("v", ppo._vs), ("d", ppo._ds)):
        trajectory.restore(z[f"{name}_x"], [z[f"{name}_step{i}"] for i in range(int(z[f"{name}_n"]))])
    ppo.n_iter = int(z["n_iter"])
    return ppo


def late(args):
    """Late iterations from saved states (``large --save``), in alternated blocks: ``F`` the
    10⁶ state with every product exact near tol (``_krylov.PREDICT_LAST`` off, the rule
    before it), ``T`` the same with the prediction (today's defaults), ``U`` T without P's
    entries in column blocks (``_evaluator.BLOCKED_STATES`` None), ``S`` the small state
    (--small-state, e.g. 50k: its own side of the ratio, in the same process and minutes).
    Each block restarts from its state, so F, T and U run the same iterations; the blocked
    layout is made on each block's first pass (``BLOCKED_AFTER`` 0: in its first
    iteration's time); every solve's float64 residual is recomputed outside the timed step."""
    import fastppo._krylov as krylov
    blocked_states = evaluator_module.BLOCKED_STATES
    evaluator_module.BLOCKED_AFTER = 0
    nt, backend = args.threads, args.backend
    fastppo.PPOClip(fastppo.garnet(200, 10, 10, seed=1), fastppo.ForwardKL(0.1), backend=backend,
                    n_threads=nt).run(3)
    mdps = {"big": fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0)}
    if args.small_state:
        mdps["small"] = fastppo.garnet(args.small_n, 10, 10, gamma=0.99, seed=0)
    kinds, residuals = [], []
    E = evaluator_module.Evaluator
    real_products, real_solve = E.products, E.evaluation_and_visitation

    def products(self, xv, xd, ov, od, exact=True):
        out = real_products(self, xv, xd, ov, od, exact)
        kinds.append(("E" if out else "C") + "v" * (xv is not None) + "d" * (xd is not None))
        return out

    def solve(self, *a, **kw):
        out = real_solve(self, *a, **kw)
        residuals.append((out[0].residual, out[1].residual))
        return out
    E.products, E.evaluation_and_visitation = products, solve
    print(f"{mdps['big']}; {backend}, {nt} thread(s); blocks {args.blocks}: E exact pass, C "
          f"float32 corrections, v/d the sides", flush=True)
    times = defaultdict(list)
    for block in args.blocks:
        krylov.PREDICT_LAST = block != "F"
        evaluator_module.BLOCKED_STATES = None if block == "U" else blocked_states
        small = block == "S"
        mdp = mdps["small" if small else "big"]
        ppo = load_state(mdp, args.small_state if small else args.state, backend, nt)
        for _ in range(args.small_iters if small else args.iters):
            kinds.clear(), residuals.clear()
            pi_old, c0 = ppo.pi, time.process_time()
            row = ppo.step()
            cpu = time.process_time() - c0
            Ev = ppo._evaluator  # the true residuals, recomputed by exact products
            Ev.load(pi_old)
            c, out = Ev.regularized_reward(), np.empty(mdp.n_states)
            Ev.matvec(ppo._v, out)
            tv = np.linalg.norm(c - out) / np.linalg.norm(c)
            Ev.rmatvec(ppo._d, out)
            b = (1 - mdp.gamma) * ppo.mu
            td = np.linalg.norm(b - out) / np.linalg.norm(b)
            times[block].append((row["seconds"], cpu, row["n_passes"], max(tv, td)))
            print(f"[{block}] iter {ppo.n_iter}: {row['seconds']:6.3f} s wall, {cpu:6.3f} s CPU, "
                  f"passes {row['n_passes']} ({' '.join(kinds)}); residuals: solver "
                  f"{residuals[0][0]:.1e} / {residuals[0][1]:.1e}, recomputed {tv:.1e} / {td:.1e}; "
                  f"J {row['J']:.15g}", flush=True)
        del ppo
    names = {"F": "every product exact near tol (before)", "T": "PREDICT_LAST",
             "U": "PREDICT_LAST, no column blocks", "S": "small state"}
    for block, rows in times.items():
        r = np.array(rows)
        print(f"{names[block]:>38}: median {np.median(r[:, 0]):.3f} s wall, {np.median(r[:, 1]):.3f} "
              f"s CPU, {r[:, 2].mean():.2f} passes ({len(r)} iterations); worst recomputed "
              f"residual {r[:, 3].max():.1e}")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


def ratio(args):
    """Both sides of target 5's ratio in one process, interleaved: the load of the hour moves
    the two sizes differently (separate runs minutes apart gave 21–24.5× in an hour where
    this gave 24.8×, RESULTS.md). Late iterations of the --n-states and --small-n garnets
    from states ``large --save`` wrote, each first warmed by --warm iterations (a saved
    state keeps the solutions and their steps, not the value fit's probes nor the policy's
    design: they fill again within WARM_STEPS + 1 iterations), then --rounds rounds of
    --iters large and --small-iters small iterations. Prints each side's median wall time
    and passes, and the ratio of the medians."""
    evaluator_module.BLOCKED_AFTER = 0  # the blocked copy in the first (warm) iteration
    nt, backend = args.threads, args.backend
    runs, times, passes = {}, defaultdict(list), defaultdict(list)
    for side, n, path in (("large", args.n_states, args.state),
                          ("small", args.small_n, args.small_state)):
        runs[side] = load_state(fastppo.garnet(n, 10, 10, gamma=0.99, seed=0), path, backend, nt)
        for _ in range(args.warm):
            runs[side].step()
    print(f"{backend}, {nt} thread(s): {args.n_states:,} and {args.small_n:,} states, "
          f"{args.warm} warm iterations each", flush=True)
    for r in range(args.rounds):
        for side, k in (("large", args.iters), ("small", args.small_iters)):
            for _ in range(k):
                row = runs[side].step()
                times[side].append(row["seconds"])
                passes[side].append(row["n_passes"])
        big, small = times["large"][-args.iters:], times["small"][-args.small_iters:]
        print(f"round {r + 1}: {args.n_states:,} median {np.median(big):.3f} s, "
              f"{args.small_n:,} median {1e3 * np.median(small):.1f} ms", flush=True)
    big, small = np.median(times["large"]), np.median(times["small"])
    print(f"{args.n_states:,}: median {big:.3f} s ({np.mean(passes['large']):.2f} passes, "
          f"{len(times['large'])} iterations); {args.small_n:,}: median {1e3 * small:.1f} ms "
          f"({np.mean(passes['small']):.2f} passes, {len(times['small'])} iterations); "
          f"ratio {big / small:.1f}x")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


def _kernels_from(path):
    """The linear kernels of ``path`` (a kernels/numba/linear.py of another commit, e.g.
    ``git show COMMIT:kernels/numba/linear.py > before.py``), compiled in this process."""
    import importlib.util

    import fastppo._kernels.numba as package
    spec = importlib.util.spec_from_file_location(f"{package.__name__}._before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Numba's cache finds the kernels' globals there
    spec.loader.exec_module(module)
    return module.KERNELS


def use_before(args):
    """With ``--before FILE``: the Numba backend's linear kernels are those of FILE (their
    buffers of width n_states fit in today's of 2 n_states)."""
    if args.before:
        import fastppo._backend as backend_module
        old = _kernels_from(args.before)
        for name, pair in old.items():
            backend_module._cache[(name, "numba")] = backend_module._numba_kernel(*pair)
        print(f"linear kernels from {args.before}")


def passes(args):
    """CPU and wall time of one pass over P of each kind at ``--n-states``, and of the
    K = 10 inner steps of ``ppo_update``: the parts of an iteration, when whole
    iterations cannot be run to the late phase. With ``--before FILE`` the linear kernels
    of FILE run beside today's in the same process, one call of each in turn."""
    nt, backend = args.threads, args.backend
    fastppo.PPOClip(fastppo.garnet(200, 10, 10, seed=1), fastppo.ForwardKL(0.1), backend=backend,
                    n_threads=nt).run(3)
    mdp = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), backend=backend, n_threads=nt)
    E = ppo._evaluator
    E.load(ppo.pi)
    n, L = mdp.n_states, mdp.n_pairs
    rng = np.random.default_rng(0)
    x, y = rng.random(n), rng.random(n)
    x32 = x.astype(np.float32)
    ox, oy, rows, q = np.empty(n), np.empty(n), np.empty(L), np.empty(L)
    chunks = E._buf.shape[0]
    none = np.empty(0)
    sets = {"now": (lambda name: get_kernel(name, backend),
                    np.empty((chunks, 2 * n)), np.empty((chunks, 2 * n), dtype=np.float32))}
    if args.before:
        if backend != "numba":
            raise SystemExit("--before compares Numba kernels: use --backend numba")
        old = _kernels_from(args.before)
        sets["before"] = (lambda name: lambda *a: old[name][nt > 1](*a[:-1]),  # no n_threads
                          np.empty((chunks, n)),
                          np.empty((chunks, n), dtype=np.float32))

    def pass_calls(k, buf, buf32):
        fused, T = k("bellman_products"), E._rows
        return {
            "fused pass, float64 (v and d, rows for Q)": lambda: fused(
                *T, x, y, ox, oy, rows, buf, nt),
            "value side alone (rows for Q)": lambda: fused(*T, x, none, ox, none, rows, buf, nt),
            "visitation side alone": lambda: fused(*T, none, y, none, oy, none, buf, nt),
            "fused pass, float32 corrections": lambda: fused(
                *T, x32, y, ox, oy, none, buf32, nt),
            "q_values pass": lambda: k("q_values")(
                mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r, mdp.gamma, x, q, nt),
        }
    calls = {f"{name} [{tag}]": call for tag, (k, buf, buf32) in sets.items()
             for name, call in pass_calls(k, buf, buf32).items()}
    if args.before:  # the same numbers from both sets of kernels
        for name in pass_calls(*sets["now"]):
            outs = []
            for tag in sets:
                calls[f"{name} [{tag}]"]()
                outs.append((ox.copy(), oy.copy(), rows.copy(), q.copy()))
            same = all(np.array_equal(a, b) for a, b in zip(*outs))
            print(f"{name}: {'bit for bit the same' if same else 'DIFFERENT'} before and now")
    ev = E.evaluation()
    w = E.visitation(ppo.mu).d / (1 - mdp.gamma)
    logits = ppo.logits.copy()
    pu = get_kernel("ppo_update", backend)
    out = (np.empty(L), np.empty(n, dtype=np.int64), np.empty(n), np.empty(n))
    calls["ppo_update, K = 10"] = lambda: pu(
        mdp.a_indptr, ppo.pi, ev.adv, w, ppo._ref, ppo._log_ref, ppo._code, ppo._alpha, ppo._tau,
        ppo.eps_low, ppo.eps_high, 0.0, ppo.lr, 10, logits.copy(), *out, nt)
    stream = np.ones(2**26)  # 512 MB: the read bandwidth of a NumPy sum
    calls["NumPy sum over 512 MB"] = lambda: stream.sum()
    print(f"{mdp}; {backend}, {nt} thread(s); medians of {args.repeat}, one call of each "
          f"kind in turn")
    for call in calls.values():
        call()
    wall, cpu = defaultdict(list), defaultdict(list)
    for _ in range(args.repeat):
        for name, call in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    for name in calls:
        print(f"{name:>52}: wall {ms(wall[name])} ms, CPU {ms(cpu[name])} ms", flush=True)
    bw = stream.nbytes / np.median(wall["NumPy sum over 512 MB"])
    read = mdp.p_indices.nbytes + mdp.p_data.nbytes
    print(f"read bandwidth {bw / 1e9:.1f} GB/s: P's arrays ({read / 1e9:.2f} GB) take "
          f"{read / bw * 1e3:.0f} ms to stream (the floor of one pass)")
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
    g.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="storage of the transition probabilities (issue 16, item 1)")
    g.add_argument("--no-residuals", dest="residuals", action="store_false",
                   help="skip the recomputed float64 residuals of each iteration")
    g.add_argument("--perturb", type=float, help="start from log π* (by solve) plus this "
                   "times standard normal noise per pair: the late phase without the "
                   "iterations before it")
    g.add_argument("--save", help="write the final iterate and warm starts here (for late)")
    g.add_argument("--no-blocks", dest="blocks", action="store_false",
                   help="products on P's own rows only (_evaluator.BLOCKED_STATES None)")
    g.set_defaults(func=large)
    lt = sub.add_parser("late")
    lt.add_argument("--state", required=True, help="a state written by large --save")
    lt.add_argument("--n-states", type=int, default=1_000_000)
    lt.add_argument("--small-state", help="the other side of the ratio (large --save)")
    lt.add_argument("--small-n", type=int, default=50_000)
    lt.add_argument("--blocks", default="SFTSFTS")
    lt.add_argument("--iters", type=int, default=4)
    lt.add_argument("--small-iters", type=int, default=8)
    lt.set_defaults(func=late)
    ra = sub.add_parser("ratio")
    ra.add_argument("--state", required=True, help="a state written by large --save")
    ra.add_argument("--n-states", type=int, default=1_000_000)
    ra.add_argument("--small-state", required=True, help="the 50k side (large --save)")
    ra.add_argument("--small-n", type=int, default=50_000)
    ra.add_argument("--warm", type=int, default=14)
    ra.add_argument("--rounds", type=int, default=6)
    ra.add_argument("--iters", type=int, default=4)
    ra.add_argument("--small-iters", type=int, default=12)
    ra.set_defaults(func=ratio)
    t = sub.add_parser("passes")
    t.add_argument("--n-states", type=int, default=1_000_000)
    t.add_argument("--repeat", type=int, default=5)
    t.set_defaults(func=passes)
    for q in (r, g, t, lt, ra):
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--backend", help="default: the library's (FASTPPO_BACKEND, else cython)")
        q.add_argument("--before", help="a kernels/numba/linear.py of another commit (git "
                       "show COMMIT:kernels/numba/linear.py > FILE): passes times it beside "
                       "today's kernels, readme and large run on it")
    args = p.parse_args()
    args.backend = args.backend or fastppo.get_backend()
    args.func(args)


if __name__ == "__main__":
    main()

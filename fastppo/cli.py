"""Command line: ``fastppo run | solve | eval | compare | sweep | info`` (also ``python -m fastppo``).

``fastppo run`` with no arguments is the README's main job: exact PPO-Clip (forward
KL, τ = 0.1, ε = 0.2, K = 10) on a 50,000-state garnet, with a progress bar (on a
terminal) showing the iteration, J, the gap to the regularized optimum and the Krylov
products, then a summary; the result directory (``--out``, default ``fastppo-run/``) gets
``result.npz``, ``history.csv``, ``config.json``, ``convergence.png`` and a checkpoint.
Ctrl-C (SIGINT) or SIGTERM stops after the current iteration, saves, and exits with
status 130 or 143; ``fastppo run --resume DIR [--iters N]`` continues bit for bit
(``--iters`` counts all outer iterations, including those already done). A directory
belongs to one run (``fastppo.runs``): a new run into a directory holding another is
refused unless ``--overwrite``, and a second run into a directory in use is refused.

The spec language and the run itself are ``fastppo.runs`` (shared with sweeps). Errors
follow one rule (``fastppo._errors``): bad user input — an argument, an environment
variable, a file (a damaged checkpoint too) — prints one line on stderr and exits with
status 2; a run that fails numerically (e.g. a step so large the logits overflow, a
linear solve that does not converge) prints one line and exits with status 1; anything
else is a bug in fastppo and keeps its traceback (status 1).
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings

from ._errors import UsageError
from ._krylov import ConvergenceError
from .runs import (DEFAULT_MDP, FIXED_ON_RESUME, PARAMS, REGS, check_settings, execute,
                   load_mdp, normalize_params, parse_clip, parse_mdp, parse_reg, read_config,
                   saved_params, user_input)

__all__ = ["main", "build_parser", "UsageError", "PARAMS", "execute", "parse_mdp", "parse_reg",
           "load_mdp"]

# signals that stop a run after its current iteration, saved (exit status 128 + the signal)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# ------------------------------------------------------------------------ commands
def _params(args):
    """The run parameters given on the command line (None: not given)."""
    p = {k: getattr(args, k, None) for k in PARAMS}
    if getattr(args, "step", None) is not None:
        if p["step_scale"] is not None:
            raise UsageError("give --step-scale only (--step is its old name)")
        p = normalize_params({**{k: v for k, v in p.items() if k != "step_scale"},
                              "step": args.step})
    return p


def _progress(args):
    """A progress bar on stderr: only for a terminal, and not with --no-progress/--quiet/--json."""
    return not (args.no_progress or args.quiet or args.json) and sys.stderr.isatty()


def _printer(args, out):
    return (lambda *a: None) if args.quiet or args.json else (lambda *a: print(*a, file=out))


def cmd_run(args, out):
    given = {k: v for k, v in _params(args).items() if v is not None}
    if args.resume:
        if args.overwrite:
            raise UsageError("--overwrite starts a new run: it cannot be used with --resume")
        bad = [k for k in FIXED_ON_RESUME if k in given] + (["out"] if args.out else [])
        if bad:
            raise UsageError(f"--resume continues the saved run in its directory: "
                             f"--{bad[0].replace('_', '-')} cannot be changed (only --iters, --tol)")
        given = {**saved_params(args.resume), **given}
    folder = args.out or args.resume or "fastppo-run"
    say = _printer(args, out)
    stop = []

    def on_signal(signum, frame):
        if stop:  # a second signal aborts at once
            raise KeyboardInterrupt
        stop.append(signum)

    main_thread = threading.current_thread() is threading.main_thread()  # signals: main only
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS} if main_thread else {}
    try:
        s = execute(given, folder, progress=_progress(args),
                    checkpoint_every=args.checkpoint_every, should_stop=lambda: bool(stop),
                    resume=bool(args.resume), overwrite=args.overwrite,
                    config={"command": "run", "argv": args.argv}, say=say)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        print(json.dumps(s), file=out)
    else:
        n = max(s["iterations"], 1)
        say(f"\n{'iterations':>12}: {s['iterations']} ({'reached' if s['converged'] else 'did not reach'} "
            f"gap {given.get('tol', PARAMS['tol']):g})\n{'J':>12}: {s['J']:.12g}\n"
            f"{'gap J*-J':>12}: {s['gap']:.3e}\n"
            f"{'seconds':>12}: {s['seconds']:.2f} ({s['seconds'] / n * 1e3:.0f} ms/iteration)\n"
            f"{'products':>12}: {s['products']} ({s['products'] / n:.1f}/iteration)\n"
            f"{'lr':>12}: {s['lr']:.4g}\n{'saved':>12}: {folder}{os.sep} (result.npz, history.csv, "
            f"config.json, convergence.png, checkpoint)")
    if s["interrupted"]:
        what = "interrupted" if stop[0] == signal.SIGINT else "terminated"
        print(f"fastppo: {what} at iteration {s['iterations']}; saved to {folder} "
              f"(continue with: fastppo run --resume {folder})", file=sys.stderr)
        return 128 + stop[0]  # 130 for SIGINT (Ctrl-C), 143 for SIGTERM
    return 0


def cmd_solve(args, out):
    import fastppo

    mdp = load_mdp(_params(args))
    reg = parse_reg(args.reg or PARAMS["reg"], PARAMS["tau"] if args.tau is None else args.tau)
    t0 = time.perf_counter()
    opt = fastppo.solve(mdp, reg, backend=args.backend, n_threads=args.threads)
    info = dict(mdp=str(mdp), reg=str(reg), J=opt.J, iterations=opt.n_iter,
                bellman_residual=opt.bellman_residual, products=opt.n_matvec,
                seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(info), file=out)
    elif not args.quiet:
        print("\n".join(f"{k:>16}: {v}" for k, v in info.items()), file=out)
    return 0


def cmd_eval(args, out):
    """J of a saved policy (a result directory, a result.npz or a .npy table)."""
    import numpy as np

    import fastppo
    from . import _io

    path = args.policy
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        path = os.path.join(path, _io.RESULT)
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    p = _params(args)
    if os.path.exists(os.path.join(folder, _io.CONFIG)):
        # a result directory: its MDP and regularizer are the defaults
        params = normalize_params(read_config(folder).get("params") or {}, warn=False)
        p = {**p, **{k: params.get(k) for k in ("reg", "tau") if p[k] is None}}
    fallback = os.path.join(folder, _io.MDP_FILE)
    mdp = load_mdp(p, fallback if os.path.exists(fallback) else None)
    reg = parse_reg(p["reg"] or PARAMS["reg"], PARAMS["tau"] if p["tau"] is None else p["tau"])
    if path.endswith(".npy"):
        try:
            pi = np.load(path, allow_pickle=False)
        except _io.READ_ERRORS as exc:
            raise UsageError(f"cannot read a policy from {path}: {_io.one_line(exc)}") from None
    else:  # sizes checked before decompressing: a result.npz holds per-pair and per-state arrays
        most = 8 * max(mdp.n_pairs, mdp.n_states) + 4096
        arrays = _io.read_npz(path, lambda name, read: most)
        if "policy" not in arrays:
            raise UsageError(f"cannot read a policy from {path}: it has no 'policy' array")
        pi = arrays["policy"]
    with user_input(f"{path}: "):
        pi = fastppo._validation.check_policy(mdp, pi, "policy")
    ev = fastppo.evaluate(mdp, pi, reg, backend=args.backend, n_threads=args.threads)
    info = dict(mdp=str(mdp), reg=str(reg), J=ev.J)
    if args.gap:
        info["J_star"] = fastppo.solve(mdp, reg, backend=args.backend, n_threads=args.threads).J
        info["gap"] = info["J_star"] - ev.J
    if args.json:
        print(json.dumps(info), file=out)
    elif not args.quiet:
        print("\n".join(f"{k:>8}: {v}" for k, v in info.items()), file=out)
    return 0


METHODS = {"PPO-Clip": "PPOClip", "softmax PG": "SoftmaxPG", "NPG": "NPG",
           "KL-penalty PPO": "KLPenaltyPPO"}


def cmd_compare(args, out):
    """PPO-Clip, softmax PG, NPG and KL-penalty PPO on one MDP: one plot, one table."""
    import fastppo
    from . import _io

    p = {**PARAMS, **{k: v for k, v in _params(args).items() if v is not None}}
    mdp = load_mdp(p)
    reg = parse_reg(p["reg"], p["tau"])
    settings = check_settings(p)
    say = _printer(args, out)
    folder = args.out or "fastppo-compare"
    if os.path.lexists(folder) and not os.path.isdir(folder):  # before the runs, not after
        raise UsageError(f"--out {folder} exists and is not a directory")
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {folder}: cannot write there")
    opt = fastppo.solve(mdp, reg, backend=p["backend"], n_threads=p["threads"])
    say(f"{mdp}\nregularizer {reg}; optimum J* = {opt.J:.12g}")
    common = dict(reference=opt.J, backend=p["backend"], n_threads=p["threads"])
    # NPG's step_scale has another scale: its own default
    step = dict(lr=p["lr"], step_scale=p["step_scale"])
    methods = {"PPO-Clip": fastppo.PPOClip(mdp, reg, clip=settings["clip"],
                                           inner_steps=p["inner_steps"], **step, **common),
               "softmax PG": fastppo.SoftmaxPG(mdp, reg, **step, **common),
               "NPG": fastppo.NPG(mdp, reg, **common),
               "KL-penalty PPO": fastppo.KLPenaltyPPO(mdp, reg, inner_steps=p["inner_steps"],
                                                      **step, **common)}
    rows, curves = [], []
    for name, method in methods.items():
        t0 = time.perf_counter()
        res = method.run(p["iters"], tol=p["tol"],
                         progress=_progress(args))
        h = res.history
        rows.append(dict(method=name, iterations=int(res.n_iter), J=res.J, gap=res.gap,
                         converged=bool(res.converged), seconds=time.perf_counter() - t0,
                         products=int(h["n_matvec"].sum()), lr=method.lr))
        curves.append((name, h))
    fields = list(rows[0])
    _io.write_csv(os.path.join(folder, "compare.csv"), rows, fields)
    for (name, h) in curves:
        _io.write_csv(os.path.join(folder, f"history-{METHODS[name]}.csv"), h, h.dtype.names)
    _io.plot_curves(os.path.join(folder, "compare.png"), curves, f"{mdp}\n{reg}")
    _io.write_json(os.path.join(folder, _io.CONFIG), {
        "fastppo_version": fastppo.__version__, "command": "compare", "argv": args.argv,
        "params": p, "J_star": opt.J})
    if args.json:
        print(json.dumps(rows), file=out)
    else:
        say(f"\n{'method':<16}{'iterations':>11}{'J':>20}{'gap':>11}{'seconds':>9}{'products':>10}")
        for r in rows:
            say(f"{r['method']:<16}{r['iterations']:>11}{r['J']:>20.12g}{r['gap']:>11.2e}"
                f"{r['seconds']:>9.2f}{r['products']:>10}")
        say(f"saved: {os.path.join(folder, 'compare.png')}, compare.csv, history-*.csv")
    return 0


def cmd_sweep(args, out):
    from .sweeps import sweep

    if not os.path.exists(args.config):
        raise UsageError(f"no such file: {args.config}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    res = sweep(args.config, out=args.out, scheduler=args.scheduler, n_workers=args.workers,
                progress=_progress(args))
    if args.json:
        print(json.dumps(res.rows), file=out)
    elif not args.quiet:
        print(f"{len(res.rows)} runs: {res.n_skipped} done before (skipped), {res.n_run} run now, "
              f"{res.n_failed} failed\ntable: {res.csv}\nplots: {', '.join(res.plots)}", file=out)
        for r in res.rows:
            if r["status"] == "failed":
                print(f"failed: {r['run']} ({r['mdp']}): {r['error']}", file=out)
    return 1 if res.n_failed else 0


def cmd_info(args, out):
    import platform

    import fastppo

    fastppo.show_backends(file=out)
    versions = [f"python {platform.python_version()}"]
    for name in ("matplotlib", "tqdm", "dask", "distributed"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    print("  " + ", ".join(versions), file=out)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser():
    p = _Parser(prog="fastppo", description="Exact PPO-Clip on sparse MDPs.")
    sub = p.add_subparsers(dest="command", required=True)
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print one JSON summary")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    problem = argparse.ArgumentParser(add_help=False)
    problem.add_argument("--mdp", help=f"MDP spec (default {DEFAULT_MDP}): garnet:S=..,A=..,b=..,"
                         "seed=..[,locality=..] | gridworld:H=..,W=.. | chain:S=.. | "
                         "token_tree:vocab=..,depth=.. | frozenlake | frozenlake8x8 | taxi | cliffwalking")
    problem.add_argument("--mdp-file", help="an MDP saved with MDP.save (.npz)")
    problem.add_argument("--gamma", type=float, help="discount (overrides the spec)")
    problem.add_argument("--seed", type=int, help="seed of a random MDP (overrides the spec)")
    problem.add_argument("--reg", help=f"{REGS} (default forward-kl)")
    problem.add_argument("--tau", type=float, help="regularization weight (default 0.1)")
    problem.add_argument("--backend", choices=["numba", "cython", "numpy"])
    problem.add_argument("--threads", type=int)
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--clip", type=float, nargs="+", help="eps, or eps_low eps_high (default 0.2)")
    method.add_argument("--inner-steps", type=int, help="K (default 10)")
    method.add_argument("--lr", type=float, help="raw step size eta (default: scale-free --step)")
    method.add_argument("--step-scale", type=float,
                        help="scale-free step, used without --lr (default 1)")
    method.add_argument("--step", type=float, help=argparse.SUPPRESS)  # old name of --step-scale
    method.add_argument("--iters", type=int, help="total outer iterations (default 1000)")
    method.add_argument("--tol", type=float, help="stop at gap J* - J <= tol (default 1e-8)")
    method.add_argument("--no-progress", action="store_true")
    method.add_argument("--out", metavar="DIR", help="result directory (default fastppo-run, "
                        "for compare fastppo-compare)")

    run = sub.add_parser("run", parents=[problem, method, out], help="PPO-Clip solve with progress")
    run.add_argument("--checkpoint-every", type=int, metavar="N",
                     help="save a checkpoint every N iterations (always: at the end, on Ctrl-C "
                     "and SIGTERM, and before a numerical failure); kept by --resume")
    run.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    run.add_argument("--overwrite", action="store_true",
                     help="start the run in --out even if it holds another run (deleting its files)")
    run.set_defaults(func=cmd_run)
    solve = sub.add_parser("solve", parents=[problem, out], help="the regularized optimum")
    solve.set_defaults(func=cmd_solve)
    ev = sub.add_parser("eval", parents=[problem, out], help="J of a saved policy")
    ev.add_argument("policy", help="a result directory, its result.npz, or a policy table (.npy)")
    ev.add_argument("--gap", action="store_true", help="also solve for J* and print J* - J")
    ev.set_defaults(func=cmd_eval)
    cmp_ = sub.add_parser("compare", parents=[problem, method, out],
                          help="PPO-Clip vs softmax PG vs NPG vs KL-penalty PPO (one plot)")
    cmp_.set_defaults(func=cmd_compare)
    sw = sub.add_parser("sweep", parents=[out], help="a parameter grid on Dask (TOML config)")
    sw.add_argument("config", help="sweep configuration (.toml)")
    sw.add_argument("--out", metavar="DIR", help="sweep directory (default: the config's out)")
    sw.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler "
                    "(tcp://host:port); default: a LocalCluster on this machine")
    sw.add_argument("--workers", type=int, help="LocalCluster workers (default: the config's, or 2)")
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(func=cmd_sweep)
    info = sub.add_parser("info", help="backends, threads, OpenMP, versions")
    info.set_defaults(func=cmd_info)
    return p


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"fastppo: warning: {message}", file=sys.stderr if file is None else file)


def check_environment():
    """UsageError naming the variable if FASTPPO_BACKEND or FASTPPO_NUM_THREADS is invalid."""
    from ._backend import _check_backend, env_threads

    value = os.environ.get("FASTPPO_BACKEND")
    if value:
        with user_input(f"environment variable FASTPPO_BACKEND={value!r}: "):
            _check_backend(value)
    with user_input():  # the message names the variable
        env_threads()


def main(argv=None, out=None):
    """Run the command line; returns the exit status (see the module docstring)."""
    out = sys.stdout if out is None else out
    argv = sys.argv[1:] if argv is None else list(argv)
    showwarning, warnings.showwarning = warnings.showwarning, _warning_line
    try:
        with warnings.catch_warnings():
            # fastppo's own deprecations (old parameter names) are shown to CLI users
            warnings.filterwarnings("default", category=DeprecationWarning, module="fastppo")
            args = build_parser().parse_args(argv)
            args.argv = argv
            check_environment()
            if hasattr(args, "threads"):  # --backend / --threads, before any work
                from ._backend import resolve_backend, resolve_threads

                with user_input():
                    resolve_backend(args.backend)
                    resolve_threads(args.threads)
            if getattr(args, "clip", None) is not None:
                parse_clip(args.clip)
            return args.func(args, out)
    except (UsageError, OSError) as exc:  # user input: arguments, environment, files
        print(f"fastppo: error: {exc}", file=sys.stderr)
        return 2
    except (ArithmeticError, ConvergenceError) as exc:  # FloatingPointError, ...
        print(f"fastppo: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastppo: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = showwarning


if __name__ == "__main__":
    sys.exit(main())

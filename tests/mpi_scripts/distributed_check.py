"""Checks of fastppo.distributed, run by tests/test_distributed.py as
``mpiexec -n R python distributed_check.py MODE MDP_FILE [OUT]``.

Modes:
  parity      evaluate, visitation, solve and PPOClip on R ranks against one process
              (rank 0 recomputes them with fastppo itself); prints "parity ok" and the
              largest differences.
  digest      prints a SHA-256 of the bits of solve's v and 3 PPOClip iterations.
  save        2 PPOClip iterations, checkpoint to OUT.
  resume      resume OUT, 2 more iterations; rank 0 checks them against 4 iterations of
              fastppo.PPOClip in one process; prints "resume ok".
  die         rank 1 ends itself with os._exit(3) in the middle of a run.
  kill        rank 1 sends itself SIGKILL in the middle of a run.
  raise       rank 1 raises ValueError in the middle of a run.
"""
import hashlib
import os
import signal
import sys

import numpy as np

import fastppo
from fastppo import distributed as D

if os.environ.get("FASTPPO_CHECK_ROW_SWEEPS") == "1":
    # one process's value sweeps on P_π's state rows from the smallest MDPs on (the ranks'
    # blocks never take them: their columns are global)
    import fastppo._evaluator
    fastppo._evaluator.ROW_SWEEP_STATES = fastppo._evaluator.ROW_SWEEP_ENTRIES = 1

mode, path = sys.argv[1], sys.argv[2]
out = sys.argv[3] if len(sys.argv) > 3 else None
M = D.DistributedMDP.load(path)
rank = M.rank
reg = fastppo.ReverseKL(0.05)
TOL = 1e-12


def close(name, dist, ref, scale=1.0):
    """max |dist - ref| <= 1e-12 * max(scale, max |ref|): values, Q and advantages are
    compared on the scale of the values (``scale``), as the linear solves' tolerance is."""
    err = float(np.max(np.abs(np.asarray(dist) - np.asarray(ref))))
    scale = max(scale, float(np.max(np.abs(ref))))
    if not err <= TOL * scale:
        raise AssertionError(f"{name}: distributed and single-process differ by {err:.3g}")
    return err


if mode == "parity":
    mdp = fastppo.MDP.load(path)  # small: every rank holds it for the reference
    w = np.random.default_rng(0).random(mdp.n_pairs) + 0.1
    pi_full = w / np.add.reduceat(w, mdp.a_indptr[:-1])[mdp.s_indices]
    pi = M.local_pairs(pi_full)
    ev = D.evaluate(M, pi, reg, tol=1e-13)
    d_loc = D.visitation(M, pi)
    sol = D.solve(M, reg)
    sol0 = D.solve(M)
    run = D.PPOClip(M, reg, inner_steps=5)
    run.run(4)
    got = dict(v=M.gather_states(ev.v), q=M.gather_pairs(ev.q), adv=M.gather_pairs(ev.adv),
               d=M.gather_states(d_loc), sv=M.gather_states(sol.v),
               spol=M.gather_pairs(sol.policy), s0v=M.gather_states(sol0.v),
               logits=M.gather_pairs(run.logits))
    if rank == 0:
        errs = {}
        e1 = fastppo.evaluate(mdp, pi_full, reg, tol=1e-13)
        errs["J"] = close("J", ev.J, e1.J)
        errs["v"] = close("v", got["v"], e1.v)
        vscale = float(np.max(np.abs(e1.v)))
        errs["q"] = close("q", got["q"], mdp.to_pairs(e1.q))
        errs["adv"] = close("adv", got["adv"], mdp.to_pairs(e1.adv), vscale)
        errs["d"] = close("d", got["d"], fastppo.visitation(mdp, pi_full))
        s1 = fastppo.solve(mdp, reg)
        errs["solve v"] = close("solve v", got["sv"], s1.v)
        errs["solve policy"] = close("solve policy", got["spol"], mdp.to_pairs(s1.policy))
        errs["solve J"] = close("solve J", sol.J, s1.J)
        assert sol.n_iter == s1.n_iter, (sol.n_iter, s1.n_iter)
        s0 = fastppo.solve(mdp)
        errs["solve(tau=0) v"] = close("solve(tau=0) v", got["s0v"], s0.v)
        p1 = fastppo.PPOClip(mdp, reg, inner_steps=5)
        r1 = p1.run(4)
        errs["ppo logits"] = close("ppo logits", got["logits"], mdp.to_pairs(r1.logits))
        for k in ("J", "clipfrac", "kl", "grad_norm", "max_abs_adv"):
            errs[f"ppo {k}"] = close(f"ppo {k}", run.history[k], r1.history[k], vscale)
        # product counts differ: one process predicts its warm starts from the last solutions
        # (issue 12) and finishes slow systems on the assembled matrix, the ranks do neither
        assert (run.history["n_matvec"] > 0).all()
        print("max differences:", " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
        print("parity ok")
elif mode == "digest":
    sol = D.solve(M, reg)
    run = D.PPOClip(M, reg, inner_steps=5)
    run.run(3)
    parts = [M.gather_states(sol.v), M.gather_pairs(run.logits), run.history["J"]]
    if rank == 0:
        print("digest", hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes()
                                                for p in parts)).hexdigest())
elif mode == "save":
    run = D.PPOClip(M, reg, inner_steps=5)
    run.run(2, checkpoint=out)
    if rank == 0:
        print("saved", run.n_iter)
elif mode == "resume":
    run = D.PPOClip.resume(out, M, reg)
    assert run.n_iter == 2
    run.run(2)
    logits = M.gather_pairs(run.logits)
    if rank == 0:
        mdp = fastppo.MDP.load(path)
        r1 = fastppo.PPOClip(mdp, reg, inner_steps=5).run(4)
        close("resumed logits", logits, mdp.to_pairs(r1.logits))
        close("resumed J", run.history["J"], r1.history["J"])
        print("resume ok")
elif mode in ("die", "kill", "raise"):
    run = D.PPOClip(M, reg, inner_steps=5)
    run.run(1)
    if rank == 1:
        sys.stdout.flush()
        if mode == "die":
            os._exit(3)
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError("a deliberate failure")
    run.run(1000)  # the other ranks wait in collectives until the job is ended
else:
    raise SystemExit(f"unknown mode {mode!r}")

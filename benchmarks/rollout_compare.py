"""Environment steps per second: fastppo.rollout (each backend) next to a plain NumPy loop
and a Gymnasium vector env, all stepping FrozenLake under the same policy, in one run.

    python benchmarks/rollout_compare.py [--n-envs 4096] [--horizon 100] [--repeat 7]
                                         [--map 8x8] [--threads 1]

Counted steps are real transitions (an ended episode no longer steps). Every contender
draws its own random numbers with NumPy's Generator inside the timed call.

- ``fastppo <backend>``: ``fastppo.rollout`` (start states, uniforms, kernel, rewards and
  log-probabilities); one episode per environment, at most ``horizon`` steps.
- ``numpy loop``: vectorised over environments, one Python iteration per time step (what
  a user writes with NumPy alone): inverse-CDF sampling from dense (S, A) and (S·A, S)
  cumulative tables.
- ``gymnasium sync vector env``: ``gymnasium.make_vec("FrozenLake-v1", num_envs,
  vectorization_mode="sync")`` stepped ``horizon`` times with actions sampled from the
  policy (it auto-resets, so every environment steps every time: all steps are counted).
"""
import argparse
import statistics
import time

import numpy as np

import fastppo


def policy_for(mdp, seed=0):
    logits = np.random.default_rng(seed).normal(size=mdp.n_pairs)
    return fastppo.softmax(mdp, logits)


def numpy_loop(mdp, pi, n_envs, horizon, seed):
    """Vectorised over environments, a Python loop over time: dense cumulative tables."""
    rng = np.random.default_rng(seed)
    S, A = mdp.n_states, mdp.n_actions
    pi_cdf = np.cumsum(pi.reshape(S, A), axis=1)
    P_cdf = np.cumsum(mdp.P.toarray(), axis=1)
    s = rng.choice(S, size=n_envs, p=mdp.rho)
    alive = ~mdp.terminal[s]
    steps = 0
    for _ in range(horizon):
        if not alive.any():
            break
        idx = np.flatnonzero(alive)
        st = s[idx]
        a = np.minimum((rng.random(idx.size)[:, None] >= pi_cdf[st]).sum(axis=1), A - 1)
        k = st * A + a
        nxt = np.minimum((rng.random(idx.size)[:, None] >= P_cdf[k]).sum(axis=1), S - 1)
        s[idx] = nxt
        alive[idx] = ~mdp.terminal[nxt]
        steps += idx.size
    return steps


def gymnasium_vector(env, pi_table, n_envs, horizon, seed):
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    cdf = np.cumsum(pi_table, axis=1)
    for _ in range(horizon):
        a = np.minimum((rng.random(n_envs)[:, None] >= cdf[obs]).sum(axis=1), cdf.shape[1] - 1)
        obs, *_ = env.step(a)
    return n_envs * horizon


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-envs", type=int, default=4096)
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--map", default="8x8", choices=["4x4", "8x8"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import gymnasium

    mdp = fastppo.MDP.from_gymnasium(gymnasium.make("FrozenLake-v1", map_name=args.map), 0.99)
    pi = policy_for(mdp)
    n, H = args.n_envs, args.horizon
    contenders = {}
    for backend in ["numba", "cython", "numpy"]:
        def run(seed, backend=backend):
            return int(fastppo.rollout(mdp, pi, n, H, seed, backend=backend,
                                       n_threads=args.threads).mask.sum())
        run(0)  # JIT / cache load
        contenders[f"fastppo {backend} ({args.threads} thread)"] = run
    contenders["numpy loop (dense CDF tables)"] = lambda seed: numpy_loop(mdp, pi, n, H, seed)
    env = gymnasium.make_vec("FrozenLake-v1", num_envs=n, vectorization_mode="sync",
                             map_name=args.map)
    S = env.single_observation_space.n
    pi_table = pi.reshape(mdp.n_states, mdp.n_actions)[:S]
    contenders["gymnasium sync vector env"] = lambda seed: gymnasium_vector(env, pi_table, n, H, seed)

    times = {name: [] for name in contenders}
    steps = {}
    for r in range(args.repeat):  # interleaved, so load drifts hit every contender alike
        for name, run in contenders.items():
            t0 = time.perf_counter()
            steps[name] = run(r + 1)
            times[name].append(time.perf_counter() - t0)
    print(f"FrozenLake {args.map} ({mdp.n_states} states incl. absorbing), n_envs={n}, "
          f"horizon={H}, median of {args.repeat} interleaved runs\n")
    print(f"{'contender':<36}{'steps':>10}{'median s':>11}{'steps/s':>14}{'vs numba':>10}")
    rate = {name: steps[name] / statistics.median(times[name]) for name in contenders}
    base = rate[next(iter(contenders))]
    for name in contenders:
        print(f"{name:<36}{steps[name]:>10}{statistics.median(times[name]):>11.4f}"
              f"{rate[name]:>14.3e}{rate[name] / base:>10.3f}")


if __name__ == "__main__":
    main()

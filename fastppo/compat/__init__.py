"""Drop-in adapters with the calling conventions of fastppo's peers.

Switching is a one-line import change:

- ``from fastppo.compat.quantecon import DiscreteDP`` for
  ``from quantecon.markov import DiscreteDP``;
- ``from fastppo.compat import mdptoolbox`` for ``import mdptoolbox.mdp as mdptoolbox``
  (``mdptoolbox.PolicyIteration(P, R, 0.9)`` etc.).

The adapters only translate arguments and results: every answer comes from
``fastppo.solve`` / ``fastppo.evaluate`` on an ``MDP`` built by ``MDP.from_sa_pairs`` or
``MDP.from_mdptoolbox``. The values are the exact optimum (policy iteration with exact
evaluations, Bellman residual ≤ 1e-12 relative), not the ε- or span-stopped
approximations of value iteration: where a peer's method stops early, fastppo's answer
is the limit it approximates. Neither peer needs to be installed (QuantEcon only for
``mc``, the controlled Markov chain).
"""
__all__ = ["quantecon", "mdptoolbox"]

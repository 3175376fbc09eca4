"""One topological pass over an MDP whose non-terminal states form a DAG.

``episodic_values``: out = (I − γ P_π)⁻¹ c on the non-terminal states, 0 on terminal
                     ones — states in reverse topological order, each from its
                     already final successors: v(s) = c(s) + γ Σ_a π(a|s) Σ_s' P(s'|s,a) v(s')
``episodic_visits``: out = (I − γ P_πᵀ)⁻¹ μ on the non-terminal states, 0 on terminal
                     ones — states in topological order, each pushing γ n(s) π P to its
                     non-terminal successors once its own n(s) is final

``order`` holds the non-terminal states, every transition between them going forward
(``MDP.topological_order``); ``terminal`` is ``MDP.terminal`` as uint8. At γ = 1,
``episodic_visits`` gives the expected number of visits before termination (its sum is
the expected episode length). Serial: a pass is sequential. Pairs with π = 0 are
skipped. Mirrors kernels/cython/episodic.pyx.
"""
import numpy as np

from ._jit import serial
from ._probability import row_total


def episodic_values(order, terminal, a_indptr, p_indptr, p_indices, p_data, pi, gamma, c, out):
    n_states = out.shape[0]
    for s in range(n_states):
        if terminal[s]:
            out[s] = 0.0
    n = order.shape[0]
    for i in range(n):
        s = np.uint32(order[n - 1 - i])
        acc = 0.0
        for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
            if pi[k] == 0.0:
                continue
            row = 0.0
            for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                row += p_data[j] * out[np.uint32(p_indices[j])]
            acc += pi[k] * (row / row_total(p_data, np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])))
        out[s] = c[s] + gamma * acc


def episodic_visits(order, terminal, a_indptr, p_indptr, p_indices, p_data, pi, gamma, mu, out):
    n_states = out.shape[0]
    for s in range(n_states):
        out[s] = 0.0 if terminal[s] else mu[s]
    for i in range(order.shape[0]):
        s = np.uint32(order[i])
        ns = out[s]
        if ns == 0.0:
            continue
        for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
            if pi[k] == 0.0:
                continue
            w = gamma * pi[k] * ns / row_total(p_data, np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1]))
            for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                t = np.uint32(p_indices[j])
                if not terminal[t]:
                    out[t] += w * p_data[j]


KERNELS = serial(episodic_values, episodic_visits)

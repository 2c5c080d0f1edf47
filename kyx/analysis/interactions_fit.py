"""Learn the AND-OR split of a set function: the sparsest I_and, I_or that explain v.

v_and = ½(v + q) + γ and v_or = ½(v + q) − γ (Zhang, Ren et al. arXiv 2405.10262; Ren et al.
2407.19198; ../shared/ALGORITHMS.md §10b). γ moves output between the AND and the OR part
and q absorbs small noise, boxed to |q_T| ≤ q_thres·|v(x_N) − v(x_∅)|; both minimise the
L1 norm Σ_S |I_and(S)| + |I_or(S)|. Universal matching then holds exactly for v + q.

Two solvers of that one problem (SOLVERS, by name):

- ``lp`` (default): the problem is a linear program, solved exactly by HiGHS
  (scipy.optimize.linprog) with the transforms as sparse ±1 matrices (3^n non-zeros each:
  ~59k at n = 10, 531k at n = 12). Measured on v = x1·x2 + max(x3, x4) over 10 players
  it returns the known sparsest split; see docs/analysis.md.
- ``sgd``: the papers' optimiser, SGD with momentum 0.9 and a learning rate falling
  log-linearly by 10x over the iterations, q clipped to its box before each step (as the
  reference code does); one ``lax.scan`` in one jit (optax). Measured: it finds the
  sparse split at n = 6 (lr 1e-4, 5000 steps) but at n = 10 the L1 subgradient steps
  stall or raise the loss at every learning rate tried (1e-8 .. 1e-1), hence not default.

v is divided by s = max|v − v(x_∅)| (at least |v(x_N) − v(x_∅)|) before solving and the
result multiplied back: the L1 problem is positively homogeneous, so this only fixes
the numerical scale (log-odds of any size, one solver tolerance / learning rate).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import scipy.sparse as sp

from kyx.analysis import interactions_math as im
from kyx.errors import KyxError
from kyx.registry import Registry


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """solver: a SOLVERS name; q_thres: the noise box relative to |v(x_N) − v(x_∅)|
    (0: no noise term); lr / steps / momentum: the ``sgd`` solver's (lr on the
    scale-normalised v, decaying to lr / 10)."""
    solver: str = "lp"
    q_thres: float = 0.04
    lr: float = 1e-4
    steps: int = 5000
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """The learned split of one (or a batch of) set function(s), arrays [..., 2^n]."""
    v: np.ndarray
    gamma: np.ndarray
    q: np.ndarray
    i_and: np.ndarray
    i_or: np.ndarray
    loss_start: np.ndarray   # L1 of the even split (γ = q = 0), in v's units
    loss_end: np.ndarray     # L1 of the learned split


def l1(v_m, gamma_m, q_m):
    """Σ_S |I_and(S)| + |I_or(S)| of the split (v, γ, q), summed over the last axis."""
    i_and, i_or = im.and_or_interactions(v_m, gamma_m, q_m)
    return jnp.abs(i_and).sum(-1) + jnp.abs(i_or).sum(-1)


def _scale(v_m: np.ndarray) -> float:
    return max(float(np.max(np.abs(v_m - v_m[0]))), 1e-12)


# ---------------------------------------------------------------------------- lp
@functools.lru_cache(maxsize=4)
def transform_matrices(n: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(AND, OR) as sparse [2^n, 2^n] matrices: I_and = AND @ v_and, I_or = OR @ v_or.

    AND is the n-fold Kronecker power of [[1, 0], [-1, 1]] (row S, column T:
    (-1)^{|S|-|T|} if T ⊆ S); OR = −AND with its columns reversed (T -> N\\T), and row ∅
    picking v_or(x_∅)."""
    a = sp.csr_matrix(np.array([[1.0]]))
    for _ in range(n):
        a = sp.kron(a, sp.csr_matrix(np.array([[1.0, 0.0], [-1.0, 1.0]])), format="csr")
    o = (-a[:, ::-1]).tolil()
    o[0, :] = 0.0
    o[0, 0] = 1.0
    return a, o.tocsr()


def _solve_lp(u_m: np.ndarray, bound: float, options: FitOptions) -> tuple[np.ndarray, np.ndarray]:
    """(γ, q) minimising the L1 norm for the scale-normalised u: variables [γ, q, t_and,
    t_or], min Σt subject to ±I ≤ t, q in its box."""
    n = im.num_players(u_m)
    size = 1 << n
    a, o = transform_matrices(n)
    eye = sp.identity(size, format="csr")
    zero = sp.csr_matrix((size, size))
    h = 0.5 * u_m
    # I_and = A γ + ½ A q + A h ;  I_or = −O γ + ½ O q + O h
    rows = [sp.hstack([a, 0.5 * a, -eye, zero]), sp.hstack([-a, -0.5 * a, -eye, zero]),
            sp.hstack([-o, 0.5 * o, zero, -eye]), sp.hstack([o, -0.5 * o, zero, -eye])]
    ah, oh = a @ h, o @ h
    b_ub = np.concatenate([-ah, ah, -oh, oh])
    cost = np.concatenate([np.zeros(2 * size), np.ones(2 * size)])
    bounds = ([(None, None)] * size + [(-bound, bound)] * size + [(0, None)] * (2 * size))
    res = scipy.optimize.linprog(cost, A_ub=sp.vstack(rows, format="csr"), b_ub=b_ub,
                                 bounds=bounds, method="highs-ipm")
    if res.status != 0:
        raise KyxError(f"the AND-OR linear program did not solve: {res.message}")
    return res.x[:size], res.x[size:2 * size]


# --------------------------------------------------------------------------- sgd
@functools.partial(jax.jit, static_argnums=(2,))
def _sgd(u_m, bound, options: FitOptions):
    schedule = lambda i: options.lr * 10.0 ** (-i / max(options.steps - 1, 1))  # noqa: E731
    opt = optax.sgd(schedule, momentum=options.momentum)
    params = {"gamma": jnp.zeros_like(u_m), "q": jnp.zeros_like(u_m)}
    loss_fn = lambda p: l1(u_m, p["gamma"], p["q"])  # noqa: E731

    def step(carry, _):
        p, state = carry
        p = {**p, "q": jnp.clip(p["q"], -bound, bound)}
        updates, state = opt.update(jax.grad(loss_fn)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=options.steps)
    return p["gamma"], jnp.clip(p["q"], -bound, bound)


def _solve_sgd(u_m: np.ndarray, bound: float, options: FitOptions):
    gamma, q = _sgd(jnp.asarray(u_m, jnp.float32), jnp.float32(bound), options)
    return np.asarray(gamma, np.float64), np.asarray(q, np.float64)


SOLVERS = Registry("interaction solver")
SOLVERS.register("lp", doc="exact linear program (HiGHS)")(_solve_lp)
SOLVERS.register("sgd", doc="SGD momentum 0.9, log-decaying lr (the papers')")(_solve_sgd)


def fit(v_m, options: FitOptions = FitOptions()) -> Decomposition:
    """The learned AND-OR decomposition of v (shape [..., 2^n], any leading batch axes),
    every set function solved on its own; float64 results."""
    v = np.asarray(v_m, np.float64)
    n = im.num_players(v)
    if n > im.MAX_PLAYERS:
        raise KyxError(f"{n} players: 2^{n} subsets is too many (at most {im.MAX_PLAYERS})")
    solve = SOLVERS.get(options.solver)
    flat = v.reshape((-1, v.shape[-1]))
    gammas, qs = [], []
    for row in flat:
        s = _scale(row)
        u = row / s
        g, q = solve(u, options.q_thres * abs(u[-1] - u[0]), options)
        gammas.append(g * s)
        qs.append(q * s)
    gamma, q = np.stack(gammas), np.stack(qs)
    i_and, i_or = (np.asarray(x, np.float64) for x in im.and_or_interactions(flat, gamma, q))
    start, end = np.asarray(l1(flat, 0.0, 0.0)), np.asarray(l1(flat, gamma, q))
    shape = lambda a: np.asarray(a).reshape(v.shape[:-1] + a.shape[1:])  # noqa: E731
    return Decomposition(shape(flat), shape(gamma), shape(q), shape(i_and), shape(i_or),
                         shape(start), shape(end))

"""Gradient distortion: how much the explanation changes in a small box around each point.

For a point x, its box ``B = {x' : lo <= x' <= hi}`` (the l_inf ball of radius eps
intersected with the input domain) and a gradient map g, the distortion of x' is
``Delta(x') = ||g(x') - g(x)||_1``. :func:`distortions` estimates its expectation
over x' uniform in B and searches for its maximum. The gradient of a piecewise-linear
network is piecewise constant, so Delta has no useful derivative (zero or undefined)
and the search is black-box: a genetic algorithm, as in the paper's Table 3.

The search keeps a population per point and breeds it by uniform crossover of elite
parents and per-coordinate mutation to a face of the box; each generation's children
compete with their parents for the population (``mu + lambda`` selection), so the
best point found is never lost. The first population is the best of the uniform
draws that the expectation already evaluated, so the maximum is at least the largest
uniform draw, hence at least the expectation, at no extra evaluation.

Everything is vectorised across points: each round evaluates the draws or children
of a chunk of points in one call of the gradient map.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from ._adapter import View
from ._evaluation import MEMORY_BUDGET, input_gradients

__all__ = ["ELITE_FRACTION", "MUTATION_RATE", "distortions", "view_gradients"]

# (points of shape (m, *sample), owner index per point in [0, n)) -> gradients (m, *sample)
Gradients = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Parents are drawn from the best quarter of each population.
ELITE_FRACTION = 0.25
# Probability that a child's coordinate mutates; at least one coordinate per child on
# average, so low-dimensional inputs still mutate.
MUTATION_RATE = 0.1


def view_gradients(
    fitted: View, indices: np.ndarray, precision: str, batch_size: int | None
) -> Gradients:
    """The gradient map of one output per point, as :func:`~sklearn_roll.regions.explain` computes it.

    Parameters
    ----------
    fitted : View
        The network and the points it was viewed at.
    indices : ndarray of int64, shape (n,)
        The output explained for each of the view's points.
    precision : {"float32", "float64"}
        Arithmetic of the gradients.
    batch_size : int or None
        Points per gradient batch; None for the memory budget's.

    Returns
    -------
    callable
        ``gradients(points, owners)``: the gradient at each point of output
        ``indices[owners]``, in the caller's output units; with the view's
        ``features``, 0 at the coordinates that do not move.
    """
    exact = fitted.exact_module()
    module = exact if precision == "float64" else fitted.module
    scale = None if fitted.output_scale is None else np.asarray(fitted.output_scale)
    fixed = None
    if fitted.features is not None:
        fixed = np.ones(int(np.prod(fitted.x.shape[1:])), dtype=bool)
        fixed[fitted.features] = False

    def gradients(points: np.ndarray, owners: np.ndarray) -> np.ndarray:
        picked = indices[owners]
        grads = input_gradients(module, exact, points, picked, batch_size)
        if scale is not None:
            grads *= scale[picked].reshape((-1,) + (1,) * (grads.ndim - 1))
        if fixed is not None:
            # The explanation concerns the moving coordinates; the others (columns held
            # fixed, or a pipeline's offset for them) are not part of it.
            grads.reshape(len(grads), -1)[:, fixed] = 0.0
        return grads

    return gradients


def _chunk(n_points: int, size: int) -> int:
    """Points per round so that draws, children and their gradients stay near the budget."""
    return int(max(1, min(n_points, MEMORY_BUDGET // max(1, 3 * 8 * size))))


def distortions(
    gradients: Gradients,
    x: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    n_uniform: int,
    population: int,
    generations: int,
    rng: np.random.RandomState,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected and largest found l1 distortion of the gradient over each point's box.

    Parameters
    ----------
    gradients : callable
        ``gradients(points, owners) -> ndarray`` shaped like ``points``: the gradient
        explained for point ``owners[i]`` of x, at ``points[i]``.
    x : ndarray of shape (n, ...)
        The points, inside their boxes.
    lower, upper : ndarray of shape (n, ...)
        The boxes, ``lower <= x <= upper``.
    n_uniform : int >= 1
        Uniform draws per point for the expectation.
    population : int >= 2
        Population of the genetic search per point.
    generations : int >= 0
        Generations of the search, ``population`` evaluations each; 0 reports the
        largest uniform draw.
    rng : RandomState
        Source of every draw.
    progress : bool, default=False
        Show a tqdm progress bar over the rounds of evaluations.

    Returns
    -------
    expected, maximum : ndarray of shape (n,), float64

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_roll._distortion import distortions
    >>> def gradients(points, owners):  # the gradient of |t|, per coordinate
    ...     return np.sign(points)
    >>> x = np.array([[0.5], [0.05]])
    >>> expected, maximum = distortions(
    ...     gradients, x, x - 0.1, x + 0.1, 200, 4, 3, np.random.RandomState(0)
    ... )
    >>> float(expected[0]), float(maximum[0]), float(maximum[1])
    (0.0, 0.0, 2.0)
    """
    n = len(x)
    size = int(np.prod(x.shape[1:]))
    expected, maximum = np.empty(n), np.empty(n)
    chunk = _chunk(n, size * max(n_uniform, 2 * population))
    starts = range(0, n, chunk)
    with tqdm(
        total=len(starts) * (1 + generations),
        unit="round",
        desc="gradient distortion",
        disable=not progress,
    ) as bar:
        for start in starts:
            rows = slice(start, min(start + chunk, n))
            expected[rows], maximum[rows] = _search(
                gradients,
                np.arange(rows.start, rows.stop),
                x[rows],
                lower[rows],
                upper[rows],
                n_uniform,
                population,
                generations,
                rng,
                bar,
            )
    return expected, maximum


def _search(
    gradients: Gradients,
    owners: np.ndarray,
    x: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    n_uniform: int,
    population: int,
    generations: int,
    rng: np.random.RandomState,
    bar: tqdm,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`distortions` for one chunk of points, shapes (c, ...)."""
    c, shape = len(x), x.shape[1:]
    size = int(np.prod(shape))
    base = gradients(x, owners).reshape(c, -1)

    def fitness(points: np.ndarray) -> np.ndarray:
        """Distortion of points of shape (c, k, ...), as (c, k)."""
        k = points.shape[1]
        flat = points.reshape((c * k,) + shape)
        grads = gradients(flat, np.repeat(owners, k)).reshape(c, k, -1)
        bar.update()
        return np.abs(grads - base[:, None]).sum(axis=2)

    lo, hi = lower[:, None], upper[:, None]
    draws = _uniform(rng, lo, hi, (c, n_uniform) + shape)
    values = fitness(draws)
    expected = values.mean(axis=1)

    def along(a: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``a[i, index[i, j]]`` for points ``a`` of shape (c, k, ...)."""
        return np.take_along_axis(a, index.reshape(index.shape + (1,) * len(shape)), axis=1)

    # The best draws seed the search; when there are fewer draws than the population,
    # repeating them lets mutation spread the copies out.
    order = np.argsort(-values, axis=1, kind="stable")[:, np.arange(population) % n_uniform]
    pop, fit = along(draws, order), np.take_along_axis(values, order, axis=1)
    n_elite = max(1, int(population * ELITE_FRACTION))
    rate = max(MUTATION_RATE, 1 / size)
    for _ in range(generations):
        # pop is sorted best first, so its head is the elite.
        parents = rng.randint(n_elite, size=(c, population, 2))
        first, second = along(pop, parents[..., 0]), along(pop, parents[..., 1])
        children = np.where(rng.rand(*first.shape) < 0.5, first, second)
        # Mutation moves a coordinate to a face of the box, lower or upper at random:
        # a face is as far from x as that coordinate can go, where the point tends to
        # lie past more region boundaries; at equal evaluations this finds larger
        # distortions than redrawing the coordinate uniformly.
        mutate = rng.rand(*children.shape) < rate
        faces = np.where(rng.rand(*children.shape) < 0.5, lo, hi)
        children = np.where(mutate, faces, children)
        candidates = np.concatenate([pop, children], axis=1)
        scores = np.concatenate([fit, fitness(children)], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :population]
        pop, fit = along(candidates, keep), np.take_along_axis(scores, keep, axis=1)
    return expected, fit[:, 0]


def _uniform(
    rng: np.random.RandomState, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Uniform draws in [lo, hi], clipped because ``lo + (hi - lo) * u`` can round past hi."""
    return np.clip(lo + (hi - lo) * rng.rand(*shape), lo, hi)

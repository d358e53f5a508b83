"""Speed and memory of the structured linearization of ElmanRNN against the alternatives.

An ElmanRNN with 64 LeakyReLU units (slope 0.01, default initialisation) on 6 channels
and 5 classes, 32 full-length sequences of T in {29, 100, 400} steps:

* l2 norms of all unit gradients, in float64 as certificates run: the Gram recurrence
  (``sklearn_roll._recurrent.gram_recurrence``) against ``linearize(..., "basis")``
  reduced to squared norms, and against the causal full gradients reduced the same way;
* full unit gradients reduced to l1 norms (the dual norm of l_inf margins), in float64:
  ``causal_linearize`` against ``linearize(..., "basis")``, forward tangents pushed
  from each input step separately, and reverse mode per unit (batched autograd: one
  backward per unit);
* the certificates as users get them (``module_margin``, the math of
  ``certified_margin``, at the default precision; and the stability bounds), for
  p = 2, 1 and inf: the paths that follow the RNN's time structure, chosen
  automatically, against the general path that user modules take (the same network
  as a subclass with its own forward pass, which the structured paths do not serve);
* one epoch of training in float32, the 32 sequences as one batch: forward and
  backward of cross-entropy plus ``lam`` times the ROLL penalty (exact, gamma = 100,
  C = 1; or approximate with 16 Rademacher projections), as the estimators' training
  step computes them (the cross-entropy of the output of the penalty's forward
  pass), against plain cross-entropy; the exact penalty on the built-in RNN (the Gram
  recurrence) and on the general path.

The general path (``linearize``, hence ``roll_penalty``) needs memory like T^2 per
sequence, so it runs over chunks of sequences of at most 2 GiB, as the certificates
batch their samples.

Each measurement runs in a fresh process, forked from the main one once the
libraries are imported (their import costs seconds, more than most measurements;
spawned where fork is unavailable). It warms up on a tiny slice, then reports the
best of up to three runs (one when a run takes over a second) and the peak resident
memory over what it held before (VmHWM reset through ``/proc/self/clear_refs`` on Linux, else
``ru_maxrss``). A method whose cost grows like T^2 is skipped at a length where its
estimate from the previous length exceeds 60 s or 4 GiB. Times depend on the load
of the machine, which the table records.

    python benchmarks/sequence_speed.py            # T in 29, 100, 400
    python benchmarks/sequence_speed.py --quick    # T in 29, 60
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import resource
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import budget, markdown_table, proc_status, write
from sklearn_roll._evaluation import Evaluator
from sklearn_roll._recurrent import causal_linearize, gram_recurrence, is_structured
from sklearn_roll.linearize import linearize, record
from sklearn_roll.loss import _penalty_and_output, roll_penalty
from sklearn_roll.nn import ElmanRNN
from sklearn_roll.regions import module_margin

SEED = 0
HIDDEN, CHANNELS, CLASSES, SEQUENCES = 64, 6, 5, 32
ROLL_C, LAM = 1.0, 1.0
APPROX = 16
MAX_SECONDS, MAX_BYTES = 60.0, 4 * 2**30
CHUNK_BYTES = 2 * 2**30
MIB = 2**20
# Cotangent memory per chunk of the reverse-mode baseline.
REVERSE_CHUNK_BYTES = 2**27


def _l1(block: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(block, ord=1, dim=2)


def _squared(block: torch.Tensor) -> torch.Tensor:
    # Not (block**2).sum(2): a full-size temporary per step costs more than the
    # products (page faults) and fragments the heap.
    return torch.linalg.vector_norm(block, dim=2).square()


def per_step_l1(module: ElmanRNN, x: torch.Tensor) -> list[torch.Tensor]:
    """l1 norms of unit gradients by forward tangents from each input step in turn.

    The C axes of step s enter at step s and run to the end; the norms add up over s.
    """
    lin = record(module, x)
    n, T, _ = x.shape
    below = torch.tensor(lin.negative_slopes[0], dtype=x.dtype)
    slopes = [torch.where(z > 0, 1.0, below)[:, :, None] for z in lin.pre]
    V = [layer.weight for layer in module.inputs]
    W = [layer.weight for layer in module.recurrent]
    norms = [torch.zeros_like(z) for z in lin.pre]
    for s in range(T):
        states: list[torch.Tensor] = []
        for t in range(s, T):
            for layer in range(len(W)):
                if layer == 0:
                    z = V[0].expand(n, -1, -1) if t == s else W[0] @ states[0]
                else:
                    z = V[layer] @ states[layer - 1]
                    if t > s:
                        z = z + W[layer] @ states[layer]
                norms[layer * T + t] += z.abs().sum(dim=2)
                state = slopes[layer * T + t] * z
                if t == s:
                    states.append(state)
                else:
                    states[layer] = state
    return norms


def reverse_l1(module: ElmanRNN, x: torch.Tensor) -> torch.Tensor:
    """l1 norms of unit gradients by reverse mode, one cotangent per unit, batched."""
    xt = x.clone().requires_grad_(True)
    captured: list[torch.Tensor] = []
    hook = module.act.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        module(xt)
    finally:
        hook.remove()
    z = torch.cat(captured, dim=1)
    n, units = z.shape
    chunk = max(1, REVERSE_CHUNK_BYTES // (n * units * z.element_size()))
    norms = z.new_empty(n, units)
    for start in range(0, units, chunk):
        picked = torch.arange(start, min(units, start + chunk))
        cotangents = z.new_zeros(len(picked), n, units)
        cotangents[torch.arange(len(picked)), :, picked] = 1.0
        (g,) = torch.autograd.grad(z, xt, cotangents, retain_graph=True, is_grads_batched=True)
        norms[:, picked] = g.abs().sum(dim=(2, 3)).T
    return norms


class GeneralElman(ElmanRNN):
    """ElmanRNN with a forward pass of its own: the structured paths do not serve it.

    Its computation is ElmanRNN's, so it measures the general path (the one user
    modules take) on the same network.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def general(module: ElmanRNN) -> GeneralElman:
    """The same network, as a :class:`GeneralElman`."""
    copy = GeneralElman(CHANNELS, CLASSES, hidden_layer_sizes=(HIDDEN,)).to(module.out.weight.dtype)
    copy.load_state_dict(module.state_dict())
    return copy


def _train_plain(module, x, y) -> None:
    F.cross_entropy(module(x), y).backward()


def _train_roll(approx: int | None = None, structured: bool = True) -> Callable:
    """A training step with the ROLL penalty, as the estimators' training step takes it:
    the task loss reads the output of the penalty's forward pass."""

    def run(module, x, y) -> None:
        net = module if structured else general(module)
        assert is_structured(net) == structured
        penalty, output = _penalty_and_output(net, x, C=ROLL_C, approx=approx)
        (F.cross_entropy(output, y) + LAM * penalty).backward()

    return run


def _certificate(p: float, structured: bool) -> Callable:
    """``module_margin`` at the default precision, on the structured or the general path."""

    def run(module, x, y) -> None:
        net = (module if structured else general(module)).eval()
        module_margin(net, x.double().numpy(), p)

    return run


def _bounds(structured: bool) -> Callable:
    """The per-coordinate stability bounds, as ``stability_bounds`` computes them."""

    def run(module, x, y) -> None:
        net = (module if structured else general(module)).eval()
        Evaluator(net, x.double().numpy(), "float64").axis_bounds(None)

    return run


def _no_grad(fn: Callable) -> Callable:
    def run(module, x, y) -> None:
        with torch.no_grad():
            fn(module, x)

    return run


@dataclasses.dataclass(frozen=True)
class Method:
    """One way of doing one task; ``chosen`` marks the one the ratios refer to."""

    task: str
    name: str
    run: Callable[[ElmanRNN, torch.Tensor, torch.Tensor], object]
    dtype: torch.dtype = torch.float64
    quadratic: bool = True  # cost grows like T^2 (so it may be skipped)
    chosen: bool = False
    # Memory grows like T^2 per sequence: run over chunks of sequences, as the
    # certificates do, so that a chunk stays within CHUNK_BYTES.
    chunked: bool = False


L2, FULL, TRAIN = "l2 norms", "full gradients (l1)", "training epoch"
M2, M1, MINF, BOUNDS = "margin p=2", "margin p=1", "margin p=inf", "stability bounds"
METHODS = [
    Method(L2, "gram recurrence", _no_grad(gram_recurrence), quadratic=False, chosen=True),
    Method(
        L2,
        "linearize basis",
        _no_grad(lambda m, x: linearize(m, x, "basis", _squared)),
        chunked=True,
    ),
    Method(L2, "causal, reduced", _no_grad(lambda m, x: causal_linearize(m, x, _squared))),
    Method(FULL, "causal", _no_grad(lambda m, x: causal_linearize(m, x, _l1)), chosen=True),
    Method(
        FULL,
        "linearize basis",
        _no_grad(lambda m, x: linearize(m, x, "basis", _l1)),
        chunked=True,
    ),
    Method(FULL, "per input step", _no_grad(per_step_l1)),
    Method(FULL, "reverse per unit", lambda m, x, y: reverse_l1(m, x)),
    *(
        method
        for task, p in [(M2, 2), (M1, 1), (MINF, float("inf"))]
        for method in [
            Method(task, "structured", _certificate(p, True), torch.float32, p != 2, chosen=True),
            Method(task, "general path", _certificate(p, False), torch.float32, chunked=True),
        ]
    ),
    Method(BOUNDS, "structured", _bounds(True), torch.float32, chosen=True),
    Method(BOUNDS, "general path", _bounds(False), torch.float32, chunked=True),
    Method(TRAIN, "exact ROLL, gram", _train_roll(), torch.float32, False, chosen=True),
    Method(TRAIN, "plain", _train_plain, torch.float32, False),
    Method(TRAIN, f"approx ROLL, {APPROX} projections", _train_roll(APPROX), torch.float32, False),
    Method(
        TRAIN,
        "exact ROLL, general path",
        _train_roll(structured=False),
        torch.float32,
        chunked=True,
    ),
]


def _data(steps: int, n: int, dtype: torch.dtype) -> tuple[ElmanRNN, torch.Tensor, torch.Tensor]:
    torch.manual_seed(SEED)
    module = ElmanRNN(CHANNELS, CLASSES, hidden_layer_sizes=(HIDDEN,)).to(dtype)
    x = torch.randn(n, steps, CHANNELS, dtype=dtype)
    y = torch.randint(0, CLASSES, (n,))
    return module, x, y


def measure(index: int, steps: int, n: int, chunk: int) -> dict:
    """Time one method on one length in this process (the child's job).

    The n sequences go through the method ``chunk`` at a time (a training step
    accumulates the chunks' gradients).
    """
    method = METHODS[index]
    module, x, y = _data(steps, n, method.dtype)
    chunks = [slice(i, i + chunk) for i in range(0, n, chunk)]
    # One tiny call first, so that one-time costs of torch (torch.func's start-up,
    # lazy allocations) are charged to no length.
    method.run(module, x[:2, :2], y[:2])
    before = proc_status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = before is not None
    except OSError:
        reset = False
    times = []
    while not times or (len(times) < 3 and max(times) < 1.0):
        module.zero_grad()
        start = time.perf_counter()
        for rows in chunks:
            method.run(module, x[rows], y[rows])
        times.append(time.perf_counter() - start)
    peak = proc_status("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        before = 0
    return {"seconds": min(times), "extra_bytes": peak - before, "peak_since_start": reset}


def _child(send: Connection, threads: int, *args: int) -> None:
    """The child's job: one measurement, sent back (or the error that stopped it)."""
    torch.set_num_threads(threads)
    try:
        send.send(measure(*args))
    except BaseException:
        send.send(traceback.format_exc())
        raise


def run_child(index: int, steps: int, n: int, chunk: int, threads: int) -> dict:
    """One measurement in a fresh process."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, threads, index, steps, n, chunk))
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = f"the child ended without a result (exit code {child.exitcode})"
    child.join()
    if isinstance(result, str):
        raise RuntimeError(f"{METHODS[index].name} at T = {steps} failed:\n{result}")
    return result


def check_penalty(steps: int) -> float:
    """Relative difference of the exact penalty between the Gram and the general path."""
    module, x, _ = _data(steps, 4, torch.float64)
    with torch.no_grad():
        ours = roll_penalty(module, x, C=ROLL_C)
        general_path = roll_penalty(general(module), x, C=ROLL_C)
    return float((ours - general_path).abs() / general_path.abs())


def _plan(method: Method, previous: dict | None, steps: int, n: int) -> dict:
    """Sequences per call and, from the previous length, estimated seconds and bytes.

    Costs of a quadratic method scale like T^2 from the previous length, and its
    memory per sequence too.
    """
    if previous is None or not method.quadratic:
        return {"chunk": n}
    scale = (steps / previous["steps"]) ** 2
    per_sequence = previous["extra_bytes"] / previous["chunk"] * scale
    chunk = n
    if method.chunked:
        chunk = int(min(n, max(1, CHUNK_BYTES // per_sequence)))
    return {
        "chunk": chunk,
        "est_seconds": previous["seconds"] * scale,
        "est_bytes": per_sequence * chunk,
    }


def main(quick: bool, threads: int) -> None:
    lengths = budget(quick, (29, 100, 400), (29, 60), (5, 8))
    n = budget(quick, SEQUENCES, SEQUENCES, 4)
    results: list[dict] = []
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    for index, method in enumerate(METHODS):
        previous = None
        for steps in lengths:
            row = {"task": method.task, "method": method.name, "steps": steps}
            row["chosen"] = method.chosen
            row.update(_plan(method, previous, steps, n))
            if row.get("est_seconds", 0) > MAX_SECONDS or row.get("est_bytes", 0) > MAX_BYTES:
                row["skipped"] = True
            else:
                row.update(run_child(index, steps, n, row["chunk"], threads), skipped=False)
                previous = row
            results.append(row)
            print(row, flush=True)
    if load:
        load.append(os.getloadavg()[0])
    chosen = {(r["task"], r["steps"]): r for r in results if r["chosen"]}
    plain = {r["steps"]: r for r in results if r["method"] == "plain"}
    rows = []
    order = [m.task for m in METHODS]
    for r in sorted(results, key=lambda r: (order.index(r["task"]), r["steps"])):
        best = chosen[(r["task"], r["steps"])]
        if r["skipped"]:
            cells = [
                f"skipped (est. {r['est_seconds']:.0f} s)",
                "",
                f"est. {r['est_bytes'] / MIB:,.0f}",
            ]
        else:
            ratio = r["seconds"] / best["seconds"]
            cells = [f"{r['seconds']:.3g}", f"{ratio:.3g}x", f"{r['extra_bytes'] / MIB:,.0f}"]
        vs_plain = ""
        if r["task"] == TRAIN and not r["skipped"]:
            vs_plain = f"{r['seconds'] / plain[r['steps']]['seconds']:.3g}x"
        rows.append([r["task"], r["steps"], r["method"], r["chunk"], *cells, vs_plain])
    table = markdown_table(
        [
            "task",
            "T",
            "method",
            "sequences per call",
            "seconds",
            "time / chosen method",
            "peak extra memory (MiB)",
            "time / plain step",
        ],
        rows,
    )
    difference = check_penalty(lengths[0])
    text = (
        f"# Structured linearization of ElmanRNN\n\n"
        f"{HIDDEN} LeakyReLU units, {CHANNELS} channels, {n} sequences, "
        f"{threads} torch thread(s). The chosen method of each task is the Gram recurrence "
        f"(l2 norms, training), the causal full gradients, or the structured certificates "
        f"(Gram for p = 2, causal for p = 1, inf and the bounds); ratios are to it. Load "
        f"average of the machine (1 min) before and after: "
        f"{', '.join(f'{v:.1f}' for v in load) or 'unknown'}.\n\n"
        f"{table}\n\n"
        f"The exact penalty of the Gram path equals the general path's to a relative "
        f"{difference:.1e} (float64, T = {lengths[0]}).\n"
    )
    print(text)
    write(
        "sequence_speed",
        text,
        {"results": results, "threads": threads, "load": load, "penalty_difference": difference},
        quick,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = parser.parse_args()
    main(args.quick, args.threads)

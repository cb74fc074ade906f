"""Batched solvers: L2 logistic regression by damped Newton, one-hidden-layer ReLU MLP by full-batch training.

Every probe b has its own rows ``F[b]`` (n, r), labels ``y[b]`` and row weights ``w[b]`` (1 = training row).
Probes never interact: the total loss is the sum of the probes' losses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F_

T = TypeVar("T")
SMALL_STEP_FLOPS = 1e11  # below this per step, thread hand-offs cost more than they save (benchmarks/results/code_timings.md)


@contextmanager
def threads_for(flops: float) -> Iterator[None]:
    """Run small tensor programs on one CPU thread; restore the thread count after."""
    before = torch.get_num_threads()
    if flops < SMALL_STEP_FLOPS and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_workers(device: torch.device, flops: float = 0.0) -> int:
    """How many single-threaded workers should share independent work on ``device``.

    On CPU, small tensor programs run faster as one worker per torch thread, each on its own slice of
    the probes, than as one program whose every op is split across threads (benchmarks/results/code_timings.md).
    Work above
    ``SMALL_STEP_FLOPS`` per step keeps torch's own intra-op threads. Elsewhere one worker.
    """
    if device.type != "cpu" or flops >= SMALL_STEP_FLOPS:
        return 1
    return max(1, torch.get_num_threads())


def _single_threaded() -> None:
    torch.set_num_threads(1)  # per worker thread (OpenMP): the caller's thread count is unchanged


def slices(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, nearly equal, non-empty ``(lo, hi)`` slices of ``range(n)`` (fewer if n < parts)."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def worker_pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool whose threads run torch single-threaded."""
    return ThreadPoolExecutor(workers, thread_name_prefix="clipprobe-fit", initializer=_single_threaded)


def map_slices(fn: Callable[[int, int], T], n: int, workers: int) -> list[T]:
    """``fn(lo, hi)`` over ``workers`` contiguous slices of ``range(n)``, in parallel; results in slice order.

    With one worker (or n < 2) it is a plain call ``fn(0, n)`` on the caller's thread.
    """
    parts = slices(n, workers)
    if len(parts) <= 1:
        return [fn(0, n)]
    with worker_pool(len(parts)) as pool:
        return list(pool.map(lambda s: fn(*s), parts))


def _logistic_objective(Fa: torch.Tensor, y: torch.Tensor, w: torch.Tensor, reg: torch.Tensor,
                        theta: torch.Tensor) -> torch.Tensor:
    z = torch.einsum("bnr,br->bn", Fa, theta)
    loss = ((F_.softplus(z) - y * z) * w).sum(1) / w.sum(1)
    return loss + 0.5 * (reg * theta * theta).sum(1)


def fit_logistic(F: torch.Tensor, y: torch.Tensor, w: torch.Tensor, weight_decay: float,
                 max_iter: int = 100, tol: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean weighted log-loss + weight_decay/2 |beta|^2 per probe; returns (beta (B, r), bias (B,)).

    Same optimum as sklearn ``LogisticRegression(C=1 / (weight_decay * n_train))`` (intercept unpenalised).
    Computed in float64; damped Newton with an Armijo backtracking line search per probe.
    """
    F64, y64, w64 = F.double(), y.double(), w.double()
    B, n, r = F64.shape
    Fa = torch.cat([F64, torch.ones(B, n, 1, dtype=torch.float64, device=F.device)], 2)
    reg = torch.full((r + 1,), float(weight_decay), dtype=torch.float64, device=F.device)
    reg[-1] = 0.0
    reg = reg.expand(B, r + 1)
    ridge = torch.zeros(r + 1, dtype=torch.float64, device=F.device)
    ridge[-1] = 1e-10  # keeps the intercept's Newton system solvable when every p(1-p) underflows
    theta = torch.zeros(B, r + 1, dtype=torch.float64, device=F.device)
    W = w64.sum(1, keepdim=True)
    f = _logistic_objective(Fa, y64, w64, reg, theta)
    for _ in range(max_iter):
        z = torch.einsum("bnr,br->bn", Fa, theta)
        p = torch.sigmoid(z)
        grad = torch.einsum("bnr,bn->br", Fa, w64 * (p - y64) / W) + reg * theta
        active = grad.abs().amax(1) > tol
        if not bool(active.any()):
            break
        curv = w64 * p * (1 - p) / W
        H = (Fa * curv[:, :, None]).mT @ Fa + torch.diag_embed(reg + ridge)
        chol, info = torch.linalg.cholesky_ex(H)
        step = -torch.cholesky_solve(grad[:, :, None], chol)[:, :, 0]
        bad = info != 0
        if bool(bad.any()):  # fall back to gradient descent where the Hessian is not positive definite
            step[bad] = -grad[bad]
        slope = (grad * step).sum(1)
        t = torch.ones(B, dtype=torch.float64, device=F.device)
        done = ~active
        new_theta, new_f = theta.clone(), f.clone()
        for _ in range(30):
            cand = theta + t[:, None] * step
            fc = _logistic_objective(Fa, y64, w64, reg, cand)
            ok = (fc <= f + 1e-4 * t * slope) & ~done
            new_theta[ok], new_f[ok] = cand[ok], fc[ok]
            done |= ok
            if bool(done.all()):
                break
            t = torch.where(done, t, 0.5 * t)
        theta, f = new_theta, new_f
    return theta[:, :r].to(F.dtype), theta[:, r].to(F.dtype)


@dataclass
class MLPState:
    """Trained MLP weights in design coordinates, batched over probes."""

    first: torch.Tensor  # (B, H, r)
    bias1: torch.Tensor  # (B, H)
    second: torch.Tensor  # (B, H)
    bias2: torch.Tensor  # (B,)
    decay: float  # factor multiplying the init outside the training span (gram form)

    def logits(self, F: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Decision values ``(B, n)`` for rows ``F`` ``(B, n, r)``; ``offset`` ``(B, n, H)`` the out-of-span init."""
        pre = torch.baddbmm(self.bias1[:, None, :], F, self.first.mT)
        if offset is not None:
            pre = pre + self.decay * offset
        return (torch.relu(pre) * self.second[:, None, :]).sum(-1) + self.bias2[:, None]


def init_head(seed: int, hidden: int) -> torch.Tensor:
    """The second-layer init U(-1/sqrt(H), 1/sqrt(H)), float32 on CPU (biases start at 0)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 999_983)
    return (torch.rand(hidden, generator=gen) * 2 - 1) / hidden**0.5


def fit_mlp(F: torch.Tensor, y: torch.Tensor, w: torch.Tensor, init: torch.Tensor,
            offset: torch.Tensor | None, *, lr: float, momentum: float, weight_decay: float, steps: int,
            dropout: float, optimizer: str, seed: int) -> MLPState:
    """Train B independent ReLU MLPs, full batch: mean weighted BCE, L2 (torch weight_decay) on weights.

    ``init`` ``(B, H, r)`` is the first-layer init in design coordinates; ``offset`` ``(B, n, H)`` is the
    init's action outside the training span, which only decays (by torch's SGD rule) and never learns.
    """
    if optimizer == "sgd":
        return _fit_mlp_sgd(F, y, w, init, offset, lr=lr, momentum=momentum, weight_decay=weight_decay,
                            steps=steps, dropout=dropout, seed=seed)
    B, n, r = F.shape
    H = init.shape[1]
    dev, dt = F.device, F.dtype
    first = init.clone().requires_grad_(True)
    bias1 = torch.zeros(B, H, device=dev, dtype=dt, requires_grad=True)
    second = init_head(seed, H).to(device=dev, dtype=dt).expand(B, H).clone().requires_grad_(True)
    bias2 = torch.zeros(B, device=dev, dtype=dt, requires_grad=True)
    decay = torch.ones(1, device=dev, dtype=dt, requires_grad=True)
    if optimizer == "sgd":
        opt = torch.optim.SGD([{"params": [first, second, decay], "weight_decay": weight_decay},
                               {"params": [bias1, bias2], "weight_decay": 0.0}], lr=lr, momentum=momentum)
    elif offset is None:  # Adam rescales each coordinate: only exact on explicit features
        opt = torch.optim.Adam([{"params": [first, second], "weight_decay": weight_decay},
                                {"params": [bias1, bias2], "weight_decay": 0.0}], lr=lr)
    else:
        raise ValueError("optimizer='adam' cannot run in the Gram form: use form='explicit' or optimizer='sgd'")
    gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + 7) if dropout > 0 else None
    W = w.sum(1)
    yf = y.to(dt)
    for _ in range(steps):
        pre = torch.baddbmm(bias1[:, None, :], F, first.mT)
        if offset is not None:
            pre = pre + decay.detach() * offset
        act = torch.relu(pre)
        if gen is not None:
            keep = torch.rand(act.shape, generator=gen, device=dev, dtype=dt) >= dropout
            act = act * keep / (1 - dropout)
        logit = (act * second[:, None, :]).sum(-1) + bias2[:, None]
        loss = F_.binary_cross_entropy_with_logits(logit, yf, reduction="none")
        total = ((loss * w).sum(1) / W).sum()
        opt.zero_grad(set_to_none=False)
        total.backward()
        decay.grad = torch.zeros_like(decay)  # the out-of-span part gets no loss gradient, only decay
        opt.step()
    return MLPState(first.detach(), bias1.detach(), second.detach(), bias2.detach(), float(decay.detach()))


def _fit_mlp_sgd(F: torch.Tensor, y: torch.Tensor, w: torch.Tensor, init: torch.Tensor,
                 offset: torch.Tensor | None, *, lr: float, momentum: float, weight_decay: float, steps: int,
                 dropout: float, seed: int) -> MLPState:
    """``fit_mlp`` with torch.optim.SGD's rule written out: gradients by hand, no autograd, few temporaries.

    Same arithmetic as the autograd loop up to float rounding (weight decay added to the gradient,
    heavy-ball buffer started at the first gradient, dampening 0). When the rows are fewer than twice the
    features (always in the Gram form), the first layer is tracked as ``decay * init + D^T F`` with D
    ``(B, n, H)``: SGD keeps it there (every gradient is ``dpre^T F``, weight decay scales, and the init's
    factor follows exactly the ``decay`` rule), so each step costs one ``(F F^T) D`` product (n*n*H)
    instead of ``F first^T`` and ``dpre^T F`` (2*n*r*H). ``first`` is formed once at the end.
    """
    B, n, r = F.shape
    H = init.shape[1]
    dev, dt = F.device, F.dtype
    kernel = n < 2 * r
    bias1 = torch.zeros(B, H, device=dev, dtype=dt)
    second = init_head(seed, H).to(device=dev, dtype=dt).expand(B, H).clone()
    bias2 = torch.zeros(B, device=dev, dtype=dt)
    decay = torch.ones(1, device=dev, dtype=dt)
    if kernel:
        M = torch.bmm(F, F.mT)  # (B, n, n)
        base = torch.bmm(F, init.mT)  # F init^T: the init's pre-activation, scaled by decay
        if offset is not None:
            base += offset
        first = torch.zeros(B, n, H, device=dev, dtype=dt)  # D
    else:
        M, base = None, offset
        first = init.clone()
    params = (first, second, decay, bias1, bias2)
    wds = (weight_decay, weight_decay, weight_decay, 0.0, 0.0)
    bufs: list[torch.Tensor | None] = [None] * len(params)
    gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + 7) if dropout > 0 else None
    yf = y.to(dt)
    wW = w / w.sum(1, keepdim=True)  # d(mean weighted loss)/d(loss per row)
    with torch.no_grad():
        for _ in range(steps):
            start = bias1[:, None, :] if base is None else torch.addcmul(bias1[:, None, :], base, decay)
            pre = torch.baddbmm(start, M, first) if kernel else torch.baddbmm(start, F, first.mT)
            act = pre.relu_()  # pre is not needed again: relu's gradient mask is act > 0
            if gen is not None:
                keep = (torch.rand(act.shape, generator=gen, device=dev, dtype=dt) >= dropout).to(dt)
                keep /= 1 - dropout
                mask = act > 0
                act = act * keep
            logit = torch.bmm(act, second[:, :, None])[:, :, 0] + bias2[:, None]
            dlogit = (torch.sigmoid(logit) - yf) * wW  # (B, n)
            g_second = torch.bmm(dlogit[:, None, :], act)[:, 0]
            g_bias2 = dlogit.sum(1)
            dpre = dlogit[:, :, None] * second[:, None, :]
            if gen is not None:
                dpre *= keep
                dpre *= mask
            else:
                dpre = torch.ops.aten.threshold_backward(dpre, act, 0)
            g_first = dpre if kernel else torch.bmm(dpre.mT, F)  # kernel: coefficients of dpre^T F
            g_bias1 = dpre.sum(1)
            grads = (g_first, g_second, torch.zeros_like(decay), g_bias1, g_bias2)
            for i, (p, g, wd) in enumerate(zip(params, grads, wds, strict=True)):
                if wd != 0:
                    g = g.add_(p, alpha=wd)
                if momentum != 0:
                    if bufs[i] is None:
                        bufs[i] = g.clone()
                    else:
                        bufs[i].mul_(momentum).add_(g)
                    g = bufs[i]
                p.add_(g, alpha=-lr)
        if kernel:
            first = torch.baddbmm(init, first.mT, F, beta=float(decay))
    return MLPState(first, bias1, second, bias2, float(decay))

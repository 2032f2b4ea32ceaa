"""Fitting the approximate posterior Q: QEM, MP RWS, MP VI, and global baselines.

One loop drives every method. Each iteration draws a fresh K-particle sample (its
random seed is a function of the run's seed and the iteration number, so a stopped and
resumed run follows the same trajectory as an uninterrupted one), reports the MP ELBO
(log P_MP), ESS per latent and seconds, and updates Q:
  qem     E-step: MP posterior expectations of Q's sufficient statistics (from the
          marginal weights); M-step: their exponential moving average mapped to Q's
          parameters. The EMA weight is (t+1)^-p, p = 0.6 by default: no learning rate.
  rws     wake-phase Q update: gradient of sum_k w_k log Q(z^k) with w detached (Adam).
  vi      gradient of log P_MP with reparameterised samples (Adam); continuous latents only.
  global  global RWS: K joint samples, one weight each, the same wake-phase update.
  is      no fitting: importance sampling with the prior as proposal, every iteration afresh.
Model parameters (`{"param": init}` arguments) take an Adam step on log P_MP in every method.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import torch

from .diagnostics import converged, window_for
from .dists import DISTRIBUTIONS
from .errors import ModelError
from .program import Program
from .proposal import FAMILIES, Proposal
from .sample import weighted_sum

METHODS = ("is", "qem", "rws", "vi", "global")
# What `kn fit MODEL` and the workbench run when told nothing else: QEM at K=10 until the
# ELBO has converged (engine.diagnostics.converged), at most max_iters iterations.
DEFAULTS = {"method": "qem", "K": "auto", "max_iters": 1000}
AUTO_K = (30, 10, 3)          # K="auto": the first of these ...
AUTO_K_BYTES = 1 << 30        # ... whose iteration the planner estimates at no more than this
QEM_SCHEDULE = {"power": 0.6, "offset": 2}   # QEM's EMA weight (t + offset)^-power at iteration t


def choose_K(model, mode: str = "mp", device="auto", dtype=None) -> int:
    """The K that K="auto" means: the largest of AUTO_K whose iteration fits AUTO_K_BYTES
    (eight schools: 30; the radon example, whose county factor holds six K-dims: 10)."""
    for K in AUTO_K:
        prog = Program(model, K, mode=mode, device=device, dtype=dtype, memory_budget=1 << 62)
        if prog.memory_estimate() <= AUTO_K_BYTES:
            return K
    return AUTO_K[-1]


class FitError(ModelError):
    """Fitting stopped: the message names the latent and iteration at fault."""


@dataclass
class Step:
    iteration: int
    elbo: float
    ess: dict          # latent -> numpy array over its plate elements
    seconds: float
    converged: bool = False   # the ELBO has stopped rising (engine.diagnostics.converged)


def _iteration_seed(seed: int, t: int) -> int:
    return (seed * 1_000_003 + t * 7_919 + 12_345) % (2 ** 62)


class Fitter:
    def __init__(self, model, method: str = "qem", K="auto", seed: int = 0, lr: float = 0.03,
                 device="auto", dtype=None, qem: dict | None = None, memory_budget=None):
        """qem: QEM's step schedule {"power", "offset"} (default the model file's "qem"
        field, else QEM_SCHEDULE); dtype None: the model file's "dtype", else float32."""
        if method not in METHODS:
            raise ModelError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise ModelError(f"lr must be a positive number, got {lr!r}")
        self.model = model.copy()   # the user may go on editing theirs
        mode = "global" if method == "global" else "mp"
        if K == "auto":
            K = choose_K(self.model, mode, device, dtype)
        self.method, self.K, self.seed, self.lr = method, K, seed, float(lr)
        self.schedule = qem_schedule({**QEM_SCHEDULE, **self.model.qem, **(qem or {})})
        self.program = Program(self.model, K, mode=mode, device=device, dtype=dtype, memory_budget=memory_budget)
        if method == "vi":
            self._check_continuous()
        if method != "is":   # the plan does not depend on the proposal: swap in Q
            self.program.proposal = self.program.initial_proposal(seed=seed)
        self.proposal: Proposal = self.program.proposal
        self.params = self.program.params
        self.t = 0
        self.history = {"elbo": [], "seconds": []}
        self.moments: dict[str, list[torch.Tensor]] = {}
        grad_q = method in ("rws", "vi", "global")
        for p in self.proposal.parameters():
            p.requires_grad_(grad_q)
        trainable = (self.proposal.parameters() if grad_q else []) + list(self.params.values())
        self.optimizer = torch.optim.Adam(trainable, lr=self.lr) if trainable else None
        self._stop = threading.Event()
        self.last_sample = None
        self._last_good = None

    def _check_continuous(self):
        """VI's reparameterised gradients need every sampled latent continuous (an enumerated
        one is summed exactly, not sampled)."""
        for name in self.model.latents:
            node = self.model.node(name)
            fam = self.model.proposal.get(name, {}).get("dist")
            if name not in self.program.enum and (DISTRIBUTIONS[node.dist].discrete or
                                                 (fam in FAMILIES and FAMILIES[fam].discrete)):
                raise ModelError(f"method 'vi' needs every latent continuous or enumerated, but {name!r} is "
                                 f"{node.dist} (discrete) and sampled: use qem or rws, or enumerate it "
                                 f"(\"enumerate\": true, for a Bernoulli, Categorical or Binomial of few values)")

    # ---- the loop ----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the (current or next) loop to end after its current iteration (safe from any thread)."""
        self._stop.set()

    def run(self, iters: int, until_converged: bool = False):
        """Generator: one `Step` per iteration, until `iters` more are done, stop(), or (with
        `until_converged`) the ELBO has converged; importance sampling ("is") fits nothing,
        so it never converges early."""
        if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
            raise ModelError(f"iters must be a non-negative integer, got {iters!r}")
        try:
            for _ in range(iters):
                if self._stop.is_set():
                    break
                step = self.step()
                yield step
                if until_converged and step.converged:
                    break
        finally:
            self._stop.clear()   # a stop() asked for before the run began still counts

    def step(self) -> Step:
        start = time.perf_counter()
        saved = self._snapshot()
        try:
            s = self.program.sample(_iteration_seed(self.seed, self.t), reparam=self.method == "vi")
        except ModelError as e:
            if self._last_good is not None:
                self._restore(self._last_good)
            raise FitError(f"iteration {self.t}: {e}; kept the last good Q and parameters "
                           f"(from iteration {max(self.t - 1, 0)})") from None
        self._last_good = saved   # these parameters gave a finite ELBO
        q_params, model_params = self.proposal.parameters(), list(self.params.values())
        # log P_MP's gradient for VI's Q and every method's model parameters comes from the
        # backward pass that gives the weights; RWS's Q follows its wake loss instead
        # (log P_MP depends on Q too, but RWS must not follow that gradient)
        on_elbo = [p for p in (q_params if self.method == "vi" else []) + model_params if p.requires_grad]
        updates = [(p, -g) for p, g in zip(on_elbo, s.gradients(on_elbo)) if g is not None]
        ess = {k: v.cpu().numpy() for k, v in s.ess().items()}
        if self.method == "qem":
            self._qem(s)
        elif self.method in ("rws", "global"):
            on_wake = [p for p in q_params if p.requires_grad]
            if on_wake:
                updates += zip(on_wake, torch.autograd.grad(self._wake_loss(s), on_wake, allow_unused=True))
        self._gradient_step(updates)
        bad = self._nonfinite_parameter() if not self._all_finite() else None
        if bad:
            self._restore(saved)
            raise FitError(f"iteration {self.t}: {bad} became NaN or infinite; kept the last good Q "
                           f"(from iteration {self.t})")
        seconds = time.perf_counter() - start
        self.history["elbo"].append(s.log_marginal())
        self.history["seconds"].append(seconds)
        self.last_sample = s
        self.t += 1
        return Step(self.t, s.log_marginal(), ess, seconds,
                    self.method != "is" and converged(self.history["elbo"], window_for(self.method)))

    def _qem(self, s) -> None:
        # The average starts at the initial Q's moments (t = 0 is that Q), so the first
        # update mixes the first E-step's moments in with weight 2^-p instead of replacing Q
        # by them: with weights as degenerate as an early E-step's (ESS ~ 1) a replacement
        # collapses Q onto a particle, and QEM takes hundreds of iterations to recover.
        eta = (self.t + self.schedule["offset"]) ** -self.schedule["power"]
        with torch.no_grad():
            for name in self.program.latents:
                q = self.proposal[name]
                if q is None:
                    continue
                w = s.marginal_weights(name)   # float64, summing to 1
                new = [weighted_sum(w, st) for st in q.stats(s.values[name].t.detach().double())]
                m = [torch.lerp(o, n, eta) for o, n in zip(self.moments.get(name, q.initial_moments), new)]
                self.moments[name] = m
                q.set_moments(m)   # in float64: Var = E[x^2] - E[x]^2 cancels in float32
                q.cast(self.program.dtype)

    def _wake_loss(self, s) -> torch.Tensor:
        """-sum_k w_k log Q(z^k), weights and particles detached (the wake-phase Q update)."""
        loss = torch.zeros((), dtype=self.program.dtype, device=self.program.device)
        for name in self.program.latents:
            q = self.proposal[name]
            if q is not None:
                loss = loss - (s.marginal_weights(name) * q.log_prob(s.values[name].t.detach())).sum()
        return loss

    def _gradient_step(self, updates) -> None:
        """One Adam step on the (parameter, gradient of the loss) pairs."""
        if self.optimizer is None or not updates:
            return
        for p, g in updates:
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad()

    def _all_finite(self) -> bool:
        """One reduction and one host sync: a NaN or inf anywhere makes the total non-finite
        (so does an overflowing sum, and then _nonfinite_parameter finds nothing)."""
        tensors = self.proposal.parameters() + list(self.params.values())
        with torch.no_grad():
            return not tensors or math.isfinite(float(torch.cat([t.reshape(-1) for t in tensors]).sum()))

    def _nonfinite_parameter(self) -> str | None:
        for name, f in self.proposal.families.items():
            if f is not None and any(not torch.isfinite(v).all() for v in f.raw.values()):
                return f"Q for latent {name!r}"
        for (node, arg), v in self.params.items():
            if not torch.isfinite(v).all():
                return f"parameter {arg!r} of node {node!r}"
        return None

    def _snapshot(self):
        """Q's and the parameters' tensors now, in state_dict form. Only those an optimizer
        updates in place are copied: a QEM update replaces Q's tensors by new ones."""
        keep = lambda v: v.detach().clone() if v.requires_grad else v
        q = {n: None if f is None else {"raw": {k: keep(v) for k, v in f.raw.items()}}
             for n, f in self.proposal.families.items()}
        return q, {k: keep(v) for k, v in self.params.items()}

    def _restore(self, saved) -> None:
        q, params = saved
        for name, st in q.items():
            f = self.proposal[name]
            if f is not None:
                for k, v in st["raw"].items():
                    f.raw[k].data.copy_(v)
        for k, v in params.items():
            self.params[k].data.copy_(v)

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"t": self.t, "method": self.method, "K": self.K, "seed": self.seed,
                "proposal": self.proposal.state_dict(),
                "moments": {k: [x.clone() for x in v] for k, v in self.moments.items()},

                "params": {k: v.detach().clone() for k, v in self.params.items()},
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        if (state["method"], state["K"], state["seed"]) != (self.method, self.K, self.seed):
            raise ModelError("checkpoint is from a run with another method, K or seed")
        self._restore((state["proposal"], state["params"]))
        self.moments = {k: [x.clone() for x in v] for k, v in state["moments"].items()}

        if self.optimizer and state["optimizer"]:
            self.optimizer.load_state_dict(state["optimizer"])
        self.t = state["t"]
        self.history = {k: list(v) for k, v in state["history"].items()}

    # ---- results ------------------------------------------------------------------------------
    def result(self, K: int | None = None, seed: int | None = None, test_data: dict | None = None,
               mcse_target: float | None = None, max_samples: int | None = None):
        """Final estimates: independent MP samples with the learned Q (a copy: the run may go
        on) at K particles, pooled until every mean's Monte Carlo error is below
        `mcse_target` posterior sds or `max_samples` are drawn (see engine.result)."""
        from . import result as R
        K = K or self.K
        params = {k: v.detach().clone() for k, v in self.params.items()}
        prog = Program(self.model, K, mode="global" if self.method == "global" else "mp",
                       device=self.program.device, dtype=self.program.dtype,
                       proposal=Proposal.from_state_dict(self.proposal.state_dict()),
                       params=params, memory_budget=self.program.memory_budget,
                       defensive=R.DEFENSIVE if self.method != "is" else 0.0)
        return R.Result(self.model, prog, method=self.method, seed=self.seed if seed is None else seed,
                        history={k: list(v) for k, v in self.history.items()}, test_data=test_data,
                        mcse_target=R.MCSE_TARGET if mcse_target is None else mcse_target,
                        max_samples=R.MAX_SAMPLES if max_samples is None else max_samples)


def qem_schedule(s: dict, where: str = "qem schedule") -> dict:
    """QEM's step schedule, checked: the weights (t + offset)^-power must be in (0, 1] and,
    for the average to converge (the QEM paper's theorem 1), 0 < power <= 1."""
    for k in s:
        if k not in QEM_SCHEDULE:
            raise ModelError(f"{where}: unknown field {k!r} (fields: power, offset)")
    power, offset = s["power"], s["offset"]
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    if not number(power) or not 0 < power <= 1:
        raise ModelError(f"{where}: 'power' must be a number in (0, 1], got {power!r}")
    if not number(offset) or not offset >= 1:
        raise ModelError(f"{where}: 'offset' must be a number of at least 1, got {offset!r}")
    return {"power": float(power), "offset": float(offset)}


def fit(model, method: str = "qem", K="auto", iters: int = 100, **kw):
    """Iterate a fresh Fitter: `for step in fit(model, "qem", K=10): ...`."""
    return Fitter(model, method, K, **kw).run(iters)


__all__ = ["Fitter", "FitError", "Step", "METHODS", "DEFAULTS", "fit"]

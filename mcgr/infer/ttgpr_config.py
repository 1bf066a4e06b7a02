"""TT-GPR's options (:class:`TTGPRConfig`) and the constants measurement fixed (docs/design.md,
"TT-GPR defaults: why these values"); the algorithm is :mod:`mcgr.infer.ttgpr`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from mcgr.ops import RefineParams

# Fixed by measurement, not options (docs/design.md, "TT-GPR defaults: why these values"): the local-maximum window
# half size of the seeds, in px; and how often (refine steps) zbar, the stitched canvas of the
# tiles' current logits, is refreshed: a zbar left at the canvas the iteration started from turns
# the overlap term into a second anchor to the base logits.
SEED_RADIUS = 3
ZBAR_EVERY = 5


@dataclass
class TTGPRConfig:
    """Every knob of TT-GPR, with what it trades.

    iterations (K): outer seed -> project -> refine rounds; more recovers more faint calcifications
        found by the previous round, at K times the RF cost.
    t0: start of the ODE. Near 1 keeps the tile's own evidence (a faint calcification survives the
        noise); lower lets the prior reshape more (more recall, more hallucination risk).
    steps (N): ODE steps from t0 to 1; cost is linear in N. One Euler step lands on x_t0 + (1 - t0)
        v(x_t0, t0), the flow's estimate of E[x1 | x_t0]: a smooth seed-conditioned rendering rather
        than a sample. On the faint trials it helped most (recall +0.030 with N = 1, +0.023 with 2,
        +0.003 with 4, 0 with Heun at 2; docs/design.md).
    projections (M): RF samples per tile; q is their mean, the uncertainty their spread. Cost linear.
    method: "euler" (one network call per step) or "heun" (two, second order).
    tau_seed: lowest probability that can seed; lower = more tiles refined (recall) but slower.
    max_seeds: cap per tile on average: at most max_seeds x tiles seeds over the field (the strongest
        are kept).
    proposer: where seeds come from. "logits": local maxima of the stitched logits with
        p >= tau_seed (the segmentor proposes: it cannot seed what it gave p < 0.01). "fused":
        :func:`mcgr.infer.proposals.propose_seeds`, maxima of the image evidence (DoG / top-hat
        over their local robust noise) and of the logits, ranked by a mix of both ranks, at most
        seeds_per_tile per tile-stride cell; where refine_rule is "add" the base detections are not
        seeded (a seed there can change nothing).
    seeds_per_tile: the fused proposer's budget per tile-stride cell (more = recall of the seeds,
        and RF time and false-object risk).
    evidence_floor: the lowest evidence (local signal-to-noise ratio) that proposes a seed; a
        candidate above neither this nor tau_seed is never seeded (the gating that keeps flat
        tissue free of RF work).
    evidence_weight: weight of the logits' rank in the fused score (1 - weight: the evidence's).
    refine_rule: "free" lets the refinement move every pixel of a refined tile; "add" keeps the base
        logits on the base model's detections (p >= threshold) and a 1 px ring around them, so
        TT-GPR only adds calcifications: the ones the base found are unchanged pixel for pixel
        (never grown, eroded, split or merged), and Dice on them is not spent. "verify": no
        refinement; the generator re-scores the base model's own candidates (every local maximum of
        the base logits with p >= tau_seed, base detections included, is a seed) and the output
        probability is p x q in the projection windows (q the projections' mean vote, the base p
        outside them): a detection the generator does not re-render as a calcification (dust,
        grain) drops, a calcification it re-renders keeps its p. The pixels rank anew, so the
        operating threshold of p does not carry over: pick it on this score's FROC.
    accept_q: with refine_rule "add", a pixel may rise above its base logit only where the mean of
        sigmoid(f(x_m)) over the M projections (not raised by the current probability) is at least
        this (0 = off): a seed the projections do not re-render as a calcification adds nothing.
    seed_sigma: seed dot sigma in px (as in training).
    refine_steps: gradient steps on the energy per outer iteration.
    surrogate: "mean" (q = mean_m sigmoid(f(x_m)), docs/design.md, method M4) or "raise" (q = max(that, sigmoid(z))):
        with "raise" the projections can only add evidence, never erase a calcification that the
        generator failed to re-render.
    window: side (px) of the windows around seeds in which the RF projections run (0 = the whole
        tile). Calcifications are local: a 64 px window holds one with its context, at 1/16 of a
        256 px tile's network cost; the surrogate target outside the windows is the current
        probability, so the data term holds z there.
    refine: the energy's weights (eta, lambda_a, lambda_e, lambda_o, sigma_e), see RefineParams.
    batch: tiles per network call on a GPU (memory vs. throughput).
    cpu_batch: tiles per network call on a CPU. Small on purpose: a batch of 16 256 px tiles makes
        64 MiB activations, which glibc serves with fresh mmaps that are page-faulted in on every
        layer; 4 tiles keep them at 16 MiB and run ~20 % faster (2-core box, measured).
    threshold: probability above which a pixel is a calcification in the final mask.
    seed: noise stream of the projections (results are reproducible from it).
    """

    iterations: int = 1
    t0: float = 0.5
    steps: int = 1
    projections: int = 4
    method: str = "euler"
    tau_seed: float = 0.3
    max_seeds: int = 32
    seed_sigma: float = 1.5
    proposer: str = "logits"
    seeds_per_tile: int = 4
    evidence_floor: float = 2.5
    evidence_weight: float = 1.0
    # "add" + the gate: on shifted images (leave-one-view-out films, the procedural variant) the free
    # rule cost Dice 0.050 for recall +0.007; "add" with the gate 0.018 for none (docs/ttgpr_shift.md)
    refine_rule: str = "add"
    accept_q: float = 0.9
    refine_steps: int = 20
    window: int = 64
    surrogate: str = "raise"
    # no edge smoothing by default: with sigma_e = 0.05 it eroded faint calcifications (contrast < sigma_e)
    refine: RefineParams = field(default_factory=lambda: RefineParams(lambda_e=0.0))
    batch: int = 16
    cpu_batch: int = 4
    threshold: float = 0.5
    seed: int = 0

    def validated(self) -> "TTGPRConfig":
        def need(ok, msg):
            if not ok:
                raise ValueError(f"TTGPRConfig: {msg}")

        need(isinstance(self.iterations, int) and self.iterations >= 0, f"iterations must be an integer >= 0, got {self.iterations!r}")
        need(0.0 <= float(self.t0) <= 1.0, f"t0 must be in [0, 1], got {self.t0!r}")
        need(isinstance(self.steps, int) and self.steps >= 1, f"steps must be an integer >= 1, got {self.steps!r}")
        need(isinstance(self.projections, int) and self.projections >= 1, f"projections must be >= 1, got {self.projections!r}")
        need(self.method in ("euler", "heun"), f"method must be 'euler' or 'heun', got {self.method!r}")
        need(0.0 < float(self.tau_seed) < 1.0, f"tau_seed must be in (0, 1), got {self.tau_seed!r}")
        need(isinstance(self.max_seeds, int) and self.max_seeds >= 1, f"max_seeds must be >= 1, got {self.max_seeds!r}")
        need(self.proposer in ("logits", "fused"), f"proposer must be 'logits' or 'fused', got {self.proposer!r}")
        need(isinstance(self.seeds_per_tile, int) and self.seeds_per_tile >= 1, f"seeds_per_tile must be an integer >= 1, got {self.seeds_per_tile!r}")
        need(float(self.evidence_floor) > 0, f"evidence_floor must be > 0, got {self.evidence_floor!r}")
        need(0.0 <= float(self.evidence_weight) <= 1.0, f"evidence_weight must be in [0, 1], got {self.evidence_weight!r}")
        need(0.0 <= float(self.accept_q) < 1.0, f"accept_q must be in [0, 1) (0 = off), got {self.accept_q!r}")
        need(self.refine_rule in ("free", "add", "verify"),
             f"refine_rule must be 'free', 'add' or 'verify', got {self.refine_rule!r}")
        need(float(self.seed_sigma) > 0, f"seed_sigma must be > 0, got {self.seed_sigma!r}")
        need(isinstance(self.refine_steps, int) and self.refine_steps >= 1, f"refine_steps must be >= 1, got {self.refine_steps!r}")
        need(self.surrogate in ("mean", "raise"), f"surrogate must be 'mean' or 'raise', got {self.surrogate!r}")
        need(isinstance(self.window, int) and self.window >= 0, f"window must be an integer >= 0 (0 = whole tile), got {self.window!r}")
        need(isinstance(self.batch, int) and self.batch >= 1, f"batch must be >= 1, got {self.batch!r}")
        need(isinstance(self.cpu_batch, int) and self.cpu_batch >= 1, f"cpu_batch must be >= 1, got {self.cpu_batch!r}")
        need(0.0 < float(self.threshold) < 1.0, f"threshold must be in (0, 1), got {self.threshold!r}")
        self.refine.validated()
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TTGPRConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TTGPRConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("refine"), dict):
            d["refine"] = RefineParams(**d["refine"])
        return cls(**d).validated()

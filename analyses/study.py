"""The attribution study: every analysis of a set of models, computed once, returned as one typed
result. Writing files and rendering markdown (:mod:`analyses.report`) only read it.

    study = run_study({"mamba s0": m0, "mamba-pe s0": m1, "transformer s0": t0}, task, StudyConfig(n=32))
    study.models["mamba s0"].pairs["keys"].activation     # a GridResult
    study.models["mamba s0"].probes                       # position / slot probes per residual stream

Per model: accuracy on the task's test split; for each kind of clean/corrupted pair the task offers
(matching tasks: the query changed, or the matching key moved to another slot): one set of
unpatched runs shared by denoising activation patching and attribution patching, their rank
agreement, and (Mamba) the conv / scan / gate shares read from that grid; the fusion asymmetry;
(Mamba) the path ablations and the paper's interventions as lists of intervention objects; the
conv taps' cosines; (matching tasks) position and slot probes of every residual stream; the
layer-0 attention map of one example.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from achilles_interp.catalog import MATCHING_TASKS
from achilles_interp.errors import UserError

from .attribution import agreement, attribution_patching
from .components import DEFAULT_COMPONENTS, component_hooks, is_mamba, present_hooks
from .evaluation import evaluate
from .fusion import fusion_report
from .interventions import InterventionResult, ablation_set, conv_tap_cosine, paper_interventions, run_interventions
from .metrics import PatchingData
from .patching import Baselines, activation_patching
from .results import GridResult
from .verdict import PathShares, path_shares

SOLVES, FAILS = 0.9, 0.35  # test accuracy of a model that solves / fails the task (chance 0.2)


@dataclass(frozen=True)
class StudyConfig:
    """How much of each analysis to run.

    Attributes:
        n: clean/corrupted pairs per kind of pair; seed: their seed (split ``test``).
        components: patched components; metric: ``logit_diff`` or ``prob``.
        eval_examples: test-split examples for each model's accuracy.
        fusion_examples, fusion_probes: Jacobian fusion on this many examples (0 skips), with this
            many Gaussian probes per position.
        probe_examples: test-split examples for the position probes (0 skips).
        cells_per_pass: patching cells evaluated per forward pass.
        state_cells: ``"answer"`` (default): the ``ssm_state`` component is patched only at the
            position before the answer (what the path shares need; a state patch re-runs the scan
            from that position, the costliest cell by far); ``"all"``: at every position.
        probe_steps: optimiser iterations of each probe.
    """

    n: int = 32
    seed: int = 0
    components: tuple = tuple(DEFAULT_COMPONENTS)
    metric: str = "logit_diff"
    eval_examples: int = 512
    fusion_examples: int = 2
    fusion_probes: int = 4
    probe_examples: int = 256
    cells_per_pass: int = 64
    state_cells: str = "answer"
    probe_steps: int = 100


@dataclass
class PairStudy:
    """One kind of clean/corrupted pair on one model."""

    change: str
    description: str
    diff_positions: List[int]
    activation: GridResult
    attribution: GridResult
    agreement: Dict[str, float]
    shares: Optional[PathShares] = None

    @property
    def gap(self) -> float:
        """Clean minus corrupted metric (how much the answer depends on the change)."""
        return self.activation.clean_baseline - self.activation.corrupted_baseline


@dataclass
class ModelStudy:
    """Everything measured on one model (see the module docstring)."""

    name: str
    source: str
    task: str
    variant: str
    is_mamba: bool
    accuracy: float
    task_format: Optional[str] = None
    pairs: Dict[str, PairStudy] = field(default_factory=dict)
    fusion: Optional[dict] = None
    fusion_ablation: Dict[str, float] = field(default_factory=dict)
    interventions: List[InterventionResult] = field(default_factory=list)
    conv_tap_cosine: Optional[list] = None
    probes: list = field(default_factory=list)
    attention: Optional[torch.Tensor] = None
    ssm_score: Optional[torch.Tensor] = None
    seconds: float = 0.0

    @property
    def role(self) -> str:
        """``solves`` (test accuracy >= 0.9), ``fails`` (<= 0.35) or ``partial``."""
        return "solves" if self.accuracy >= SOLVES else ("fails" if self.accuracy <= FAILS else "partial")

    def best_probe(self, target: str) -> Optional[float]:
        vals = [p.accuracy for p in self.probes if p.target == target]
        return max(vals) if vals else None


@dataclass
class StudyResult:
    """The whole study: one :class:`ModelStudy` per model (tasks may differ between models)."""

    config: StudyConfig
    tasks: Dict[str, str]
    models: Dict[str, ModelStudy]
    token_labels: Dict[str, List[str]]
    seconds: float = 0.0


def token_labels(tokens: torch.Tensor) -> list:
    """``"pos:id"`` for each position of one example ``[L]``."""
    return [f"{p}:{int(t)}" for p, t in enumerate(tokens.tolist())]


def _attention(model, tokens: torch.Tensor):
    """Layer-0 map ``[L, L]`` of one example and, for Mamba, the paper's |S| = |Mask∘(C Bᵀ)|."""
    from .effective_attention import effective_attention, layer_ssm_attention_score, transformer_attention

    if is_mamba(model):
        M = effective_attention(model, tokens, 0).abs().mean(1)[0].float().cpu()
        S = layer_ssm_attention_score(model, tokens, 0)
        S = (S.abs().mean(1) if S.dim() == 4 else S.abs())[0].float().cpu()
        return M, S
    return transformer_attention(model, tokens, 0).mean(1)[0].float().cpu(), None


def study_model(name: str, model, task, cfg: StudyConfig, source: str = "in-memory model",
                stage: Callable[[str], None] = lambda s: None) -> ModelStudy:
    """Every analysis of one model on ``task`` (see the module docstring)."""
    from achilles_interp.probes.position import key_slots, position_probes

    from achilles_interp.zoo import variant_name

    t0 = time.time()
    model.eval()
    mamba = is_mamba(model)
    test = task.generate(cfg.eval_examples, seed=cfg.seed, split="test")
    data0 = PatchingData(test.tokens, test.tokens, test.answer_pos, test.labels, test.labels,
                         getattr(task, "label_tokens", None))
    ms = ModelStudy(name, source, task.name, variant_name(model.cfg), mamba,
                    evaluate(model, test.tokens, data0).accuracy(), getattr(task, "format", None))
    labels, pairs = None, {}
    for change in getattr(task, "changes", ("default",)):
        stage(f"patching ({change} pairs)")
        data = pairs[change] = PatchingData.from_task(task, cfg.n, seed=cfg.seed, split="test", change=change)
        labels = labels or token_labels(data.clean_tokens[0])
        base = Baselines.run(model, data, present_hooks(component_hooks(model, cfg.components,
                                                                          range(model.cfg.n_layers))))
        state_positions = None if cfg.state_cells == "all" else [data.single_answer_pos() - 1]
        act = activation_patching(model, data, cfg.components, metric=cfg.metric, cells_per_pass=cfg.cells_per_pass,
                                  token_labels=labels, model_name=name, keep_per_example=True, baselines=base,
                                  state_positions=state_positions)
        stage(f"attribution ({change} pairs)")
        attr = attribution_patching(model, data, cfg.components, metric=cfg.metric, token_labels=labels,
                                    model_name=name, baselines=base)
        shares = None
        if mamba and {"conv_act", "ssm_state", "gate"} <= set(cfg.components):
            shares = path_shares(act, data.single_answer_pos(), seed=cfg.seed)
        ms.pairs[change] = PairStudy(change, data.description, data.diff_positions, act, attr,
                                     agreement(act, attr, per_component=True), shares)
    data = next(iter(pairs.values()))  # the task's first kind of pairs: fusion, interventions, attention
    comps = ("conv_out", "ssm_out", "resid_post") if mamba else ("attn_out", "resid_post")
    if cfg.fusion_examples:
        stage("fusion")
        ms.fusion = fusion_report(model, data.clean_tokens[: cfg.fusion_examples], components=comps,
                                  method="jacobian", n_probes=cfg.fusion_probes)
        abl = fusion_report(model, data.clean_tokens, components=comps, method="ablation")
        ms.fusion_ablation = {f"{c}@L{layer}": v for (c, layer), v in abl["asymmetry"].items()}
    if mamba:
        stage("ablations and the paper's interventions")
        ivs = ablation_set(model, data) + paper_interventions(model, data)
        ms.interventions = run_interventions(model, data, ivs, other=data.corrupted_tokens)
        if all(b.mixer.conv1d is not None for b in model.blocks):
            ms.conv_tap_cosine = conv_tap_cosine(model)[0].tolist()
    if cfg.probe_examples and task.name in MATCHING_TASKS:  # key slots at 4k..4k+2
        stage("position probes")
        probe_tokens = task.generate(cfg.probe_examples, seed=cfg.seed + 1, split="test").tokens
        ms.probes = position_probes(model, probe_tokens, key_slots(task.seq_len), seed=cfg.seed,
                                    steps=cfg.probe_steps)
    try:
        ms.attention, ms.ssm_score = _attention(model, data.clean_tokens[:1])
    except ValueError:
        pass
    ms.seconds = round(time.time() - t0, 2)
    return ms


def run_study(models: Dict[str, torch.nn.Module], tasks, cfg: StudyConfig = StudyConfig(),
              sources: Optional[Dict[str, str]] = None, progress: Optional[Callable[[str], None]] = None,
              ) -> StudyResult:
    """Study every model. ``tasks``: one task for all models, or ``{model name: task}``."""
    if not models:
        raise UserError("run_study needs at least one model")
    t0 = time.time()
    per_model = tasks if isinstance(tasks, dict) else {name: tasks for name in models}
    out, labels = {}, {}
    for name, model in models.items():
        task = per_model[name]
        say = (lambda s, name=name: progress(f"{name}: {s}")) if progress else (lambda s: None)
        out[name] = study_model(name, model, task, cfg, (sources or {}).get(name, "in-memory model"), say)
        labels.setdefault(task.name, next(iter(out[name].pairs.values())).activation.token_labels)
        if progress:
            m = out[name]
            shares = "; ".join(f"{c} pairs: {p.shares.sentence()}" for c, p in m.pairs.items() if p.shares)
            slot = m.best_probe("slot")
            slot = "" if slot is None else f"; best slot probe {slot:.2f}"
            progress(f"{name}: done in {m.seconds:.0f} s: test accuracy {m.accuracy:.3f} ({m.role}){slot}"
                     + (f"; {shares}" if shares else ""))
    return StudyResult(cfg, {n: repr(per_model[n]) for n in models}, out, labels, round(time.time() - t0, 2))


__all__ = ["StudyConfig", "PairStudy", "ModelStudy", "StudyResult", "study_model", "run_study"]

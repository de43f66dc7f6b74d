"""The search's parts that need no model: spaces, the study's parameters, the budget as a
constraint, the front, and the advice as a function of the machine."""

from __future__ import annotations

from typing import Any, ClassVar

import optuna
import pytest

from slimkit.errors import ConfigError
from slimkit.machine import Capabilities
from slimkit.optimize.advise import advise
from slimkit.optimize.answer import finalists, front
from slimkit.optimize.driver import choose
from slimkit.optimize.settings import SearchConfig, parse_budget, parse_minutes
from slimkit.optimize.study import default_params, trial_steps
from slimkit.optimize.trial import clearly_outside
from slimkit.registry import parse_step
from slimkit.results import Candidate, Ratios
from slimkit.results_search import TrialRecord
from slimkit.space import SEARCH_BUDGET, Choice, Float, suggest_options

AVX2 = Capabilities("x86_64", frozenset({"avx2", "fma"}), "test")
ZEN4 = Capabilities("x86_64", frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                         "avx512_vnni", "avx512_bf16"}), "test")


class FakeProfile:
    """The profile's fields the advice reads, for a CNN whose convolutions hold the time."""

    family = "cnn"
    source_format = "torch"
    has_labels = True
    op_time_share: ClassVar[dict[str, float]] = {"Conv": 0.82, "Gemm": 0.1, "Relu": 0.08}
    kind_bytes_share: ClassVar[dict[str, float]] = {"conv": 0.6, "linear": 0.4}
    bytes = 400_000
    params = 100_000


def settings(**more: Any) -> SearchConfig:
    return SearchConfig(budget=parse_budget(more.pop("budget", "max_drop=1.0")), **more)


def test_advice_follows_the_machine() -> None:
    """Without VNNI, OpenVINO int8 and torchao are left out with the measured reason, and a
    note says int8 gains less; with VNNI and bf16 they come back, and bf16 is proposed."""
    runs = ["torch", "onnxruntime", "openvino"]
    slow = advise(FakeProfile(), settings(), runs, caps=AVX2)
    fast = advise(FakeProfile(), settings(), runs, caps=ZEN4)
    slow_ids = {i.id: i for i in slow.ideas}
    fast_ids = {i.id: i for i in fast.ideas}
    assert "ov-nncf-int8" not in slow_ids and "ov-nncf-int8" in fast_ids
    assert any("0.81-0.84x" in s for s in slow.skipped)
    assert any("no VNNI" in n for n in slow.notes)
    assert not any("no VNNI" in n for n in fast.notes)
    assert "ov-bf16" in fast_ids and "ov-bf16" not in slow_ids
    # every reason is one line citing the profile's figure
    reasons = [r for i in fast.ideas for r in i.reasons]
    assert all("\n" not in r for r in reasons)
    assert any("82%" in r for r in fast_ids["ort-static-int8"].reasons)


def test_advice_follows_objective_and_training_time() -> None:
    runs = ["torch", "onnxruntime", "openvino"]
    size = advise(FakeProfile(), settings(objective="size"), runs, caps=ZEN4)
    assert "ov-weight-compress" in {i.id for i in size.ideas}
    none = advise(FakeProfile(), settings(train_minutes=0), runs, caps=ZEN4)
    assert not any("prune" in i.id for i in none.ideas)
    assert any("train_minutes is 0" in n for n in none.notes)
    only = advise(FakeProfile(), settings(runtimes=["onnxruntime"]), runs, caps=ZEN4)
    assert {r for i in only.ideas for r in i.runtimes} == {"onnxruntime"}


def test_litert_is_advised_for_torch_cnns_only() -> None:
    runs = ["torch", "onnxruntime", "openvino", "litert"]
    cnn = {i.id: i for i in advise(FakeProfile(), settings(), runs, caps=ZEN4).ideas}
    assert cnn["litert-fp32"].runtimes == ["litert"] and cnn["litert-int8"].runtimes == ["litert"]
    assert cnn["litert-int8"].steps == ["litert_int8"]
    assert any("82%" in r for r in cnn["litert-int8"].reasons)

    class Encoder(FakeProfile):
        family = "encoder_transformer"

    text = advise(Encoder(), settings(), runs, caps=ZEN4)
    assert not any("litert" in i.runtimes for i in text.ideas)
    onnx_only = advise(FakeProfile(), settings(), runs[:3], caps=ZEN4)
    assert not any("litert" in i.id for i in onnx_only.ideas)


def test_every_advised_step_parses() -> None:
    """What the rules write must be valid configs once the search fills the options."""
    runs = ["torch", "onnxruntime", "openvino", "litert"]
    advice = advise(FakeProfile(), settings(objective="size"), runs, caps=ZEN4)
    s = settings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "maximize"])
    for idea in advice.ideas:
        for runtime in idea.runtimes:
            study.enqueue_trial(default_params(idea, runtime))
            _, steps, chosen = trial_steps(study.ask(), advice.ideas, s)
            assert chosen == runtime
            for step in steps:
                parse_step(step)


def test_default_params_reproduce_the_defaults() -> None:
    """The first trial of an idea is each technique at its own defaults."""
    advice = advise(FakeProfile(), settings(), ["onnxruntime"], caps=ZEN4)
    idea = next(i for i in advice.ideas if i.id == "ort-static-int8")
    _, steps, _ = trial_steps(optuna.trial.FixedTrial(default_params(idea, "onnxruntime")),
                              advice.ideas, settings())
    assert parse_step(steps[0]) == parse_step("static_int8")


def test_space_suggests_every_unfixed_option() -> None:
    space = {"a": Choice(1, 2), "b": Float(0.1, 0.9), "ops": Choice(["MatMul"], None)}
    trial = optuna.trial.FixedTrial({"p.a": 2, "p.b": 0.5, "p.ops": 0})
    assert suggest_options(trial, "p", space, {"b": 0.3}) == {"a": 2, "b": 0.3,
                                                              "ops": ["MatMul"]}


def test_search_budget_reaches_accuracy_aware_steps() -> None:
    advice = advise(FakeProfile(), settings(), ["onnxruntime"], caps=ZEN4)
    idea = next(i for i in advice.ideas if i.id == "ort-static-int8")
    params = {**default_params(idea, "onnxruntime"),
              f"{idea.id}.0.static_int8.budget": SEARCH_BUDGET}
    _, steps, _ = trial_steps(optuna.trial.FixedTrial(params), advice.ideas,
                              settings(budget="max_drop=0.7"))
    assert parse_step(steps[0]).budget.max_drop == 0.7


def record(n: int, within: bool, throughput: float, drop: float = 0.0) -> TrialRecord:
    return TrialRecord(number=n, runtime="onnxruntime", steps=[{"static_int8": {"n": n}}],
                       state="complete", within_budget=within,
                       fidelity={"cosine": 0.99, "accuracy_drop": drop, "within": within},
                       estimate={"throughput": throughput}, size_bytes=1000 + n)


def test_constraint_keeps_over_budget_trials_off_the_front() -> None:
    """An over-budget trial is never a finalist, however fast, nor chosen at the end."""
    records = [record(0, True, 100.0), record(1, False, 900.0, drop=3.0),
               record(2, True, 200.0, drop=0.5)]
    chosen = finalists(records, settings(finalists=5))
    assert [t.number for t in chosen] == [2, 0]
    fast_over = Candidate(name="over", runtime="onnxruntime", ratios=Ratios(throughput=9.0),
                          quality={"accuracy_delta": -3.0}, size_bytes=10)
    ok = Candidate(name="ok", runtime="onnxruntime", ratios=Ratios(throughput=2.0),
                   quality={"accuracy_delta": -0.5}, size_bytes=10)
    base = Candidate(name="baseline", runtime="torch", ratios=Ratios(throughput=1.0),
                     size_bytes=40)

    class J:
        settings = settings(budget="max_drop=1.0")

    on_front, best = choose([base, fast_over, ok], J(), None)  # type: ignore[arg-type]
    assert best == "ok" and "over" not in on_front


def test_front_is_the_non_dominated_set() -> None:
    scores = {"a": (1.0, 1.0, 0.0), "b": (0.5, 2.0, 0.0), "c": (0.4, 1.5, -1.0)}
    assert front(scores) == ["a", "b"]


def test_slice_stops_only_trials_clearly_outside() -> None:
    from slimkit.evaluate.fidelity import Budget, Fidelity

    cos = Budget(min_cosine=0.99)
    assert clearly_outside(Fidelity(0.95), cos, 64)
    assert not clearly_outside(Fidelity(0.985), cos, 64)
    assert clearly_outside(Fidelity(float("nan")), cos, 64)
    drop = Budget(max_drop=1.0)
    assert not clearly_outside(Fidelity(0.9, accuracy_drop=4.0), drop, 64)  # 2 + 3.1 points
    assert clearly_outside(Fidelity(0.9, accuracy_drop=6.0), drop, 64)


@pytest.mark.parametrize(("text", "minutes"), [("30m", 30.0), ("1.5h", 90.0), ("90s", 1.5),
                                               ("12", 12.0)])
def test_durations(text: str, minutes: float) -> None:
    assert parse_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["min_cos=0.9", "max_drop=x", "max_drop", "min_cosine=2"])
def test_bad_budgets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_budget(text)


def test_a_resumed_search_must_keep_its_settings(tmp_path: Any) -> None:
    from slimkit.optimize.study import open_study

    advice = advise(FakeProfile(), settings(), ["onnxruntime"], caps=ZEN4)
    open_study(tmp_path, settings(), advice.ideas, resume=False)
    with pytest.raises(ConfigError, match="budget"):
        open_study(tmp_path, settings(budget="max_drop=2.0"), advice.ideas, resume=True)
    study = open_study(tmp_path, settings(), advice.ideas, resume=True)
    assert len(study.get_trials()) == sum(len(i.runtimes) for i in advice.ideas)  # enqueued

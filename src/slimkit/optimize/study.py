"""The Optuna study behind a search: chains x options x runtimes, two objectives (quality and
what the user makes cheaper), the quality budget as a constraint.

The study lives in the run folder as Optuna's journal file, appended to as each trial is told,
so a search killed at any moment resumes from it: finished trials are kept, and trials that
were running are asked again with the same parameters (their finished steps are in the cache).
Ideas and settings are stored in the study itself, so a resume searches the same space.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from slimkit.errors import ConfigError
from slimkit.optimize.advise import Idea
from slimkit.optimize.settings import SearchConfig
from slimkit.registry import config_class
from slimkit.space import SEARCH_BUDGET, Choice, suggest_options

JOURNAL = "study.journal"
STUDY = "slimkit"
# Settings a resumed search must share with the search it continues.
_KEPT = ("budget", "objective", "seed", "batch", "train_minutes", "techniques", "runtimes")


def objective_direction(objective: str) -> str:
    return "maximize" if objective == "throughput" else "minimize"


def open_study(folder: Path, settings: SearchConfig, ideas: list[Idea], resume: bool) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = folder / JOURNAL
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    with warnings.catch_warnings():  # `group` is marked experimental; it has been for years
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=settings.seed, multivariate=True, group=True,
                                             n_startup_trials=max(len(ideas), 4))
    quality = "maximize" if settings.budget.min_cosine is not None else "minimize"
    study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                                directions=[quality, objective_direction(settings.objective)],
                                load_if_exists=resume)
    kept = {k: settings.model_dump(mode="json")[k] for k in _KEPT}
    if not resume:
        study.set_user_attr("settings", kept)
        study.set_user_attr("ideas", [{"id": i.id, "steps": i.steps, "runtimes": i.runtimes,
                                       "reasons": i.reasons} for i in ideas])
        for idea in ideas:  # every idea once per runtime at its techniques' defaults first
            for runtime in idea.runtimes:
                study.enqueue_trial(default_params(idea, runtime))
        return study
    before = study.user_attrs.get("settings", {})
    changed = [k for k in _KEPT if json.dumps(before.get(k)) != json.dumps(kept[k])]
    if changed:
        raise ConfigError(f"--resume: {', '.join(changed)} differ from the search in {folder} "
                          f"(it used {', '.join(f'{k}={before.get(k)}' for k in changed)})")
    return study


def stored_ideas(study: Any) -> list[Idea]:
    return [Idea(i["id"], i["steps"], i["runtimes"], i["reasons"])
            for i in study.user_attrs.get("ideas", [])]


def requeue_unfinished(study: Any) -> int:
    """Trials a killed search left running: failed in the journal, and asked again with the
    same parameters, so a resume repeats no finished trial and loses no unfinished one."""
    import optuna

    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.set_user_attr(f"interrupted.{t.number}", True)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
    return len(stale)


def _split(step: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(step, str):
        return step, {}
    (name, fixed), = step.items()
    return name, dict(fixed or {})


def default_params(idea: Idea, runtime: str) -> dict[str, Any]:
    """The parameters that reproduce each technique's defaults, where its space holds them."""
    params: dict[str, Any] = {"idea": idea.id}
    if len(idea.runtimes) > 1:
        params[f"{idea.id}.runtime"] = runtime
    for j, step in enumerate(idea.steps):
        name, fixed = _split(step)
        cls = config_class(name)
        for option, param in cls.space.items():
            default = cls.model_fields[option].default
            if option in fixed or not isinstance(param, Choice) or default not in param.values:
                continue
            plain = all(v is None or isinstance(v, bool | int | float | str)
                        for v in param.values)
            params[f"{idea.id}.{j}.{name}.{option}"] = default if plain \
                else param.values.index(default)
    return params


def trial_steps(trial: Any, ideas: list[Idea], settings: SearchConfig
                ) -> tuple[Idea, list[dict[str, Any]], str]:
    """The idea, steps (as a recipe writes them) and runtime a trial asks for."""
    idea = next(i for i in ideas if i.id == trial.suggest_categorical(
        "idea", [i.id for i in ideas]))
    runtime = idea.runtimes[0] if len(idea.runtimes) == 1 else \
        trial.suggest_categorical(f"{idea.id}.runtime", idea.runtimes)
    steps = []
    for j, step in enumerate(idea.steps):
        name, fixed = _split(step)
        cls = config_class(name)
        options = suggest_options(trial, f"{idea.id}.{j}.{name}", cls.space, fixed)
        if options.get("budget") == SEARCH_BUDGET:
            options["budget"] = settings.budget.model_dump(exclude_none=True)
        if "max_minutes" in cls.model_fields and "max_minutes" not in fixed:
            options["max_minutes"] = settings.train_minutes
        steps.append({name: options})
    return idea, steps, runtime

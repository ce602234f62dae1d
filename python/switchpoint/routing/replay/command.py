"""`switchpoint eval`: replay labelled outcomes through the quality predictor and print how well
its predictions sort prompts, beside random and prompt-length routers run on the same prompts.

Two models (`--weak A --strong B`, or a file holding exactly two): APGR, CPT(50 %), CPT(80 %).
More: the quality/cost curve (`--cost MODEL=X` for each), each point against the random and
prompt-length mixes of the cheapest and the best model at the same mean cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from switchpoint.cache.embedders import LOCAL_MODEL_NAME, LocalSentenceEncoder
from switchpoint.errors import ConfigError, SwitchpointError
from switchpoint.routing.predictor.config import PredictorConfig
from switchpoint.routing.predictor.outcomes import read_outcomes
from switchpoint.routing.predictor.predict import Weighing
from switchpoint.routing.replay import plots
from switchpoint.routing.replay.metrics import (
    Floats,
    RouterFigures,
    accuracy_at,
    cost_quality_curve,
    pgr_curve,
)
from switchpoint.routing.replay.predictions import (
    Prompt,
    embed_texts,
    group_by_prompt,
    length_scores,
    mean_scores,
    models_of,
    outcome_store,
    predicted_qualities,
    random_scores,
    score_column,
    scored_by_all,
    split_by_hash,
)

log = logging.getLogger("switchpoint.eval")
DEFAULT_TEST_PERCENT: Final = 20
QUALITY_WEIGHTS: Final = tuple(step / 20 for step in range(21))
# Batches use more than the sidecar's one BLAS thread: nothing else waits on this process.
EMBED_THREADS: Final = min(os.cpu_count() or 1, 4)


class EvalInputError(SwitchpointError):
    """The command's input cannot be evaluated; the message says which option and why."""


def add_eval_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "eval", help="replay labelled outcomes through the quality predictor: APGR, CPT, curve"
    )
    evaluate.add_argument(
        "--outcomes", type=Path, required=True, metavar="FILE", help="outcome JSONL to replay"
    )
    evaluate.add_argument(
        "--test",
        type=Path,
        default=None,
        metavar="FILE",
        help="test on this file's prompts, learning from all of --outcomes "
        f"(default: a fixed {DEFAULT_TEST_PERCENT} %% of --outcomes' prompts by hash)",
    )
    evaluate.add_argument(
        "--test-percent", type=_percent, default=DEFAULT_TEST_PERCENT, metavar="P"
    )
    evaluate.add_argument("--weak", default=None, metavar="MODEL", help="the cheap model")
    evaluate.add_argument("--strong", default=None, metavar="MODEL", help="the expensive model")
    evaluate.add_argument(
        "--cost",
        action="append",
        default=[],
        metavar="MODEL=X",
        help="a model's relative cost per call (each model's, for more than two)",
    )
    evaluate.add_argument(
        "--neighbours",
        type=int,
        default=PredictorConfig().neighbours,
        metavar="K",
        help="similar prompts read per prediction (routing.predictor.neighbours)",
    )
    evaluate.add_argument("--png", type=Path, default=None, metavar="PATH", help="plot the curve")
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")


def eval_command(args: argparse.Namespace) -> int:
    report = asyncio.run(_evaluate(args))
    print(json.dumps(report, indent=2) if args.json else _render(report))
    return 0


@dataclass(frozen=True, slots=True)
class _Replay:
    train: list[Prompt]
    test: list[Prompt]
    priors: dict[str, float]
    predicted: dict[str, Floats]


async def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.neighbours <= 1024:
        raise EvalInputError(f"--neighbours: must be within [1, 1024], got {args.neighbours}")
    prompts = _read(args.outcomes, "--outcomes")
    if args.test is not None:
        test = _read(args.test, "--test")
        # A prompt in both files is tested, not learnt: a replay never predicts what it learnt.
        tested = {prompt.text for prompt in test}
        train = [prompt for prompt in prompts if prompt.text not in tested]
        split = f"test file {args.test}"
    else:
        train, test = split_by_hash(prompts, args.test_percent)
        split = f"{args.test_percent} % of prompts by a fixed hash"
    models = _models(args, train, test)
    test = scored_by_all(test, models)
    if not train or not test:
        raise EvalInputError(
            f"nothing to replay: {len(train)} training prompts, {len(test)} test prompts "
            f"scored for every one of {', '.join(models)}"
        )
    # Checked before the replay, which embeds every prompt.
    costs = _costs(args.cost, models) if len(models) > 2 else {}
    if len(models) == 2:
        _check_gap(test, models[0], models[1])
    weighing = Weighing.of(PredictorConfig(neighbours=args.neighbours))
    replay = await _replay(train, test, models, weighing)
    report: dict[str, Any] = {
        "outcomes": str(args.outcomes),
        "split": split,
        "train_prompts": len(train),
        "test_prompts": len(test),
        "priors": replay.priors,
        "weighing": asdict(weighing),
    }
    if len(models) == 2:
        report |= _two_models(replay, models[0], models[1], args.png)
    else:
        report |= _several_models(replay, costs, args.png)
    return report


def _read(path: Path, option: str) -> list[Prompt]:
    try:
        _, outcomes = read_outcomes(path, field=option)
    except ConfigError as exc:
        raise EvalInputError("\n".join(exc.errors)) from None
    return group_by_prompt(outcomes)


def _models(args: argparse.Namespace, train: list[Prompt], test: list[Prompt]) -> list[str]:
    """The models compared: [weak, strong] for two, else every model in the outcomes."""
    present = models_of(train + test)
    listed = ", ".join(present)
    for option, model in (("--weak", args.weak), ("--strong", args.strong)):
        if model is not None and model not in present:
            raise EvalInputError(f"{option}: model '{model}' has no outcomes (models: {listed})")
    if (args.weak is None) != (args.strong is None):
        raise EvalInputError("--weak and --strong go together")
    if args.weak is not None:
        if args.weak == args.strong:
            raise EvalInputError("--weak and --strong name the same model")
        return [args.weak, args.strong]
    if len(present) < 2:
        raise EvalInputError(f"the outcomes score {len(present)} model(s) ({listed}); need 2")
    if len(present) == 2:
        means = mean_scores(train, present)
        return sorted(present, key=lambda model: means[model])
    return present


def _check_gap(test: list[Prompt], weak: str, strong: str) -> None:
    weak_mean, strong_mean = score_column(test, weak).mean(), score_column(test, strong).mean()
    if strong_mean <= weak_mean:
        raise EvalInputError(
            f"--strong: {strong}'s mean score on the test prompts ({strong_mean:.3f}) is not "
            f"above {weak}'s ({weak_mean:.3f}): there is no gap for routing to recover"
        )


def _costs(pairs: list[str], models: list[str]) -> dict[str, float]:
    costs: dict[str, float] = {}
    for pair in pairs:
        model, _, value = pair.partition("=")
        try:
            costs[model] = float(value)
        except ValueError:
            raise EvalInputError(f"--cost: expected MODEL=NUMBER, got '{pair}'") from None
        if model not in models or not 0 <= costs[model] < math.inf:
            raise EvalInputError(
                f"--cost: '{pair}' names no model scored here, or no finite cost >= 0"
            )
    missing = [model for model in models if model not in costs]
    if missing:
        raise EvalInputError(
            f"--cost: {len(models)} models are compared by a quality/cost curve; "
            f"give --cost MODEL=X for {', '.join(missing)}"
        )
    return costs


async def _replay(
    train: list[Prompt], test: list[Prompt], models: list[str], weighing: Weighing
) -> _Replay:
    embedder = LocalSentenceEncoder(threads=EMBED_THREADS, lru_size=0)
    started = time.perf_counter()
    # Minutes for a large file: say so before, not after.
    log.info("embedding %d prompts with %s", len(train) + len(test), embedder.name)
    try:
        train_vectors = await embed_texts(embedder, [p.text for p in train])
        test_vectors = await embed_texts(embedder, [p.text for p in test])
    finally:
        embedder.close()
    log.info("embedded in %.0f s", time.perf_counter() - started)
    priors = mean_scores(train, models)
    store = outcome_store(train_vectors, train)
    predicted = predicted_qualities(store, test_vectors, test, priors, weighing)
    return _Replay(train, test, priors, predicted)


def _two_models(replay: _Replay, weak: str, strong: str, png: Path | None) -> dict[str, Any]:
    weak_scores, strong_scores = score_column(replay.test, weak), score_column(replay.test, strong)
    routers = {
        "predictor": replay.predicted[strong] - replay.predicted[weak],
        "prompt length": length_scores(replay.test),
        "random": random_scores(len(replay.test)),
    }
    curves = {name: pgr_curve(s, weak_scores, strong_scores) for name, s in routers.items()}
    if png is not None:
        plots.pgr_png(curves, png, title=f"{weak} -> {strong}\n{len(replay.test)} test prompts")
    return {
        "weak": weak,
        "strong": strong,
        "weak_accuracy": float(weak_scores.mean()),
        "strong_accuracy": float(strong_scores.mean()),
        "routers": {name: asdict(RouterFigures.of(curve)) for name, curve in curves.items()},
    }


def _several_models(replay: _Replay, costs: dict[str, float], png: Path | None) -> dict[str, Any]:
    actual = {model: score_column(replay.test, model) for model in costs}
    points = cost_quality_curve(replay.predicted, actual, costs, QUALITY_WEIGHTS)
    cheapest = min(costs, key=lambda model: (costs[model], -replay.priors[model]))
    best = max(costs, key=lambda model: (replay.priors[model], -costs[model]))
    span = costs[best] - costs[cheapest]
    shares = np.array([(p.cost - costs[cheapest]) / span if span > 0 else 0.0 for p in points])
    baselines = {
        name: accuracy_at(scores, actual[cheapest], actual[best], shares).tolist()
        for name, scores in (
            ("prompt length", length_scores(replay.test)),
            ("random", random_scores(len(replay.test))),
        )
    }
    if png is not None:
        singles = {m: (costs[m], float(actual[m].mean())) for m in costs}
        plots.cost_quality_png(points, baselines, singles, png)
    return {
        "cheapest": cheapest,
        "best": best,
        "single_models": {m: {"cost": costs[m], "quality": float(actual[m].mean())} for m in costs},
        "curve": [asdict(point) for point in points],
        "baselines_at_same_cost": baselines,
    }


def _render(report: dict[str, Any]) -> str:
    priors = ", ".join(f"{m} {q:.3f}" for m, q in report["priors"].items())
    weighing = report["weighing"]
    lines = [
        f"{report['outcomes']}: {report['train_prompts']} training prompts, "
        f"{report['test_prompts']} test prompts ({report['split']})",
        f"priors: each model's mean score on the training prompts: {priors}",
        f"predictor: kNN over {LOCAL_MODEL_NAME} embeddings, "
        f"{weighing['neighbours']} neighbours, min similarity {weighing['min_similarity']:g}, "
        f"prior weight {weighing['prior_weight']:g}, around each model's trend with prompt length",
    ]
    if "routers" in report:
        lines.append(
            f"weak {report['weak']} ({report['weak_accuracy']:.3f} on test), "
            f"strong {report['strong']} ({report['strong_accuracy']:.3f})"
        )
        lines.append("")
        lines.append(f"{'router':<16}{'APGR':>8}{'CPT(50%)':>11}{'CPT(80%)':>11}")
        for name, figures in report["routers"].items():
            lines.append(
                f"{name:<16}{figures['apgr']:>8.3f}{100 * figures['cpt50']:>9.1f} %"
                f"{100 * figures['cpt80']:>9.1f} %"
            )
        return "\n".join(lines)
    lines.append(f"baselines mix {report['cheapest']} (cheapest) and {report['best']} (best)")
    lines.append("")
    lines.append(f"{'weight':>7}{'cost':>9}{'quality':>9}{'length':>9}{'random':>9}  shares")
    baselines = report["baselines_at_same_cost"]
    for index, point in enumerate(report["curve"]):
        shares = " ".join(f"{m} {100 * s:.0f}%" for m, s in point["shares"].items() if s > 0)
        lines.append(
            f"{point['quality_weight']:>7.2f}{point['cost']:>9.3g}{point['quality']:>9.3f}"
            f"{baselines['prompt length'][index]:>9.3f}{baselines['random'][index]:>9.3f}  {shares}"
        )
    return "\n".join(lines)


def _percent(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 99:
        raise argparse.ArgumentTypeError(f"must be within [1, 99], got {text}")
    return value

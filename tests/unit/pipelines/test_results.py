"""Step results survive Prefect's JSON result cache as the same types (no pickle), and refuse unknown fields."""

import pytest
from prefect.serializers import JSONSerializer
from pydantic import ValidationError

from pipelines.results import (
    Analysis,
    Evaluation,
    FlowResult,
    PreparedData,
    RankAdvice,
    Ranking,
    TrainedAdapter,
    ValidationPass,
)
from registry.records import HistoryEvent, Promotion

EVALUATION = Evaluation(
    base={"accuracy": 0.5},
    adapter={"accuracy": 0.9, "loss": 0.3},
    merged={"accuracy": 0.9},
    production=None,
    merge_gap=1e-6,
    passed=True,
    reasons=[],
)
TRAINED = TrainedAdapter(
    adapter="/w/adapter",
    steps=60,
    planned_steps=60,
    best_step=48,
    stopped_early=False,
    best_validation=ValidationPass(step=48, metrics={"loss": 0.2}),
    final_loss=0.25,
    seconds=3.5,
    trainable=1000,
    total=100000,
    world_size=1,
)
RESULT = FlowResult(
    task="sections",
    version=3,
    run_id="abc",
    trained=TRAINED,
    evaluation=EVALUATION,
    ranking=Ranking(
        trained_rank=8,
        rank=4,
        shipped=True,
        reason="r=4 of 8 passes the gate",
        adapter="/w/ranked",
        evaluation=EVALUATION,
        metric_delta=-0.001,
        bytes_saved=1024,
    ),
    analysis=Analysis(
        r=8,
        modules=12,
        recommended_rank=RankAdvice(p90=3, p95=4, p99=6, elbow=2),
        mean_effective_rank=2.5,
        mean_amplification=None,
        folder="/w/analysis",
    ),
    promotion=Promotion(
        task="sections",
        version=3,
        mode="adapter",
        uri="/p/sections/v3/adapter",
        uploaded=["a"],
        skipped=[],
        bytes_uploaded=10,
        previous=2,
        events=[HistoryEvent(time="t", actor="me", action="promote", alias="production", from_version=2, to_version=3)],
    ),
)


@pytest.mark.parametrize(
    "value",
    [
        RESULT,
        TRAINED,
        EVALUATION,
        PreparedData(
            digest="d" * 64,
            folder="/w/data",
            source="s3://b/k.jsonl",
            train=10,
            test=3,
            validation=2,
            labels=["a", "b"],
        ),
    ],
)
def test_a_result_round_trips_through_prefects_json_serializer_as_its_own_type(value):
    serializer = JSONSerializer()
    data = serializer.dumps(value)
    assert b"pickle" not in data and serializer.loads(data) == value
    assert type(serializer.loads(data)) is type(value)


def test_a_result_refuses_a_misspelt_field():
    with pytest.raises(ValidationError, match="mergegap"):
        Evaluation(**EVALUATION.model_dump(), mergegap=0.0)

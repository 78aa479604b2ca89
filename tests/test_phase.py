import pytest

from dlm.enums import Phase, combined_phase

P, G, L, S = Phase.PLASMA, Phase.GAS, Phase.LIQUID, Phase.SOLID


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        ([L, L], S),
        ([G, L], L),
        ([G, G], L),
        ([G, P], G),
        ([G, G, L], S),
        ([G], G),
        ([L], L),
        ([S], S),
        ([P], P),
        ([P, P], P),
        ([G, G, G], L),  # 3 counts as LIQUID
        ([S, S, S], S),  # capped
        ([G, G, G, G], S),
    ],
)
def test_combined_phase_follows_ska_dlm_arithmetic(replicas: list[Phase], expected: Phase) -> None:
    assert combined_phase(replicas) is expected


def test_an_item_without_replicas_has_no_phase() -> None:
    with pytest.raises(ValueError, match="no READY replica"):
        combined_phase([])

"""Named tap sets and their scaling to ViTs of other depths."""

from __future__ import annotations

import pytest

from feclip.taps import DEFAULT_TAP_SET, TAP_SETS, default_tap_indices, scale_tap_indices, tap_set


def test_tap_sets_for_vit_l() -> None:
    assert tap_set("last4", 24) == [20, 21, 22, 23]
    assert tap_set("spread_3", 24) == [15, 18, 21, 23]
    assert tap_set("spread_5", 24) == [8, 13, 18, 23]
    assert DEFAULT_TAP_SET == "spread_3"
    assert default_tap_indices(24) == [15, 18, 21, 23]
    assert set(TAP_SETS) == {"last4", "spread_3", "spread_5"}


def test_tap_sets_for_a_12_block_vit() -> None:
    # floor((i + 1) * 12 / 24 + 0.5) - 1: 15 -> floor(8.5) - 1 = 7, 18 -> floor(10) - 1 = 9,
    # 21 -> floor(11.5) - 1 = 10, 23 -> floor(12.5) - 1 = 11.
    assert tap_set("spread_3", 12) == [7, 9, 10, 11] == default_tap_indices(12)
    # 8 -> floor(5) - 1 = 4, 13 -> floor(7.5) - 1 = 6, 18 -> 9, 23 -> 11.
    assert tap_set("spread_5", 12) == [4, 6, 9, 11]
    assert tap_set("last4", 12) == [8, 9, 10, 11]


@pytest.mark.parametrize("depth", [1, 2, 3, 6, 12, 24, 32, 48])
def test_scaling_keeps_the_last_block_and_stays_in_range(depth: int) -> None:
    for name in TAP_SETS:
        taps = tap_set(name, depth)
        assert taps[-1] == depth - 1
        assert taps == sorted(set(taps)) and taps[0] >= 0
        if name == "last4":
            assert len(taps) == min(4, depth)
        else:
            assert 1 <= len(taps) <= 4


def test_small_depths_deduplicate() -> None:
    assert tap_set("spread_3", 2) == [0, 1]
    assert tap_set("last4", 2) == [0, 1]
    assert tap_set("spread_5", 1) == [0]
    assert scale_tap_indices([0, 23], 48) == [1, 47]  # (0 + 1) * 2 = 2 -> index 1


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown tap set 'first4'"):
        tap_set("first4", 24)
    with pytest.raises(ValueError, match="depth must be positive"):
        scale_tap_indices([23], 0)
    with pytest.raises(ValueError, match="depth must be positive"):
        default_tap_indices(0)

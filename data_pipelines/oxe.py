"""Registry of published Open X-Embodiment RLDS layouts: how to read each known dataset name's action.

`spec_for(name, data_dir)` is the `DatasetSpec` of a registered name (its action fields, in order, and its language
field); names that are not registered get a plain spec, and a dict action then fails with an error that lists its
fields and the flag to set (`--config.data.action_keys`). Datasets are read offline from
`<data_dir>/<name>/<version>` (see `rlds_reader.local_builder_dir`).

The layouts follow the published datasets' features (and octo's per-dataset standardization of their actions);
the gripper dimension is recorded for normalization masks. Raw fields only: no relabelling or binarization.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from data_pipelines.rlds_reader import DatasetSpec


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one published dataset stores its actions and instructions."""

    action_keys: tuple[str, ...] = ()  # fields under steps/action concatenated in order; () = action is a vector
    language_key: str = "language_instruction"  # step key path of the instruction
    gripper_dim: Optional[int] = None  # index of the gripper dimension in the composed action (None: none)


_RT1_DICT = ("world_vector", "rotation_delta", "gripper_closedness_action")  # 3 + 3 + 1 = 7-D
_NL = "observation/natural_language_instruction"

LAYOUTS: dict[str, Layout] = {
    # Google robot (RT-1) and Kuka: dict actions, instruction inside the observation.
    "fractal20220817_data": Layout(_RT1_DICT, _NL, 6),
    "kuka": Layout(_RT1_DICT, _NL, 6),
    # BridgeData V2 as published in Open X-Embodiment (dict action) and octo / OpenVLA's own copy (7-D vector).
    "bridge": Layout(("world_vector", "rotation_delta", "open_gripper"), _NL, 6),
    "bridge_orig": Layout((), "language_instruction", 6),
    "bridge_dataset": Layout((), "language_instruction", 6),
    # OpenVLA's LIBERO conversions: 7-D vector actions (6 EEF deltas + gripper).
    **{f"libero_{suite}_no_noops": Layout((), "language_instruction", 6)
       for suite in ("10", "goal", "object", "spatial")},
    # DROID (RLDS release): a 7-D vector action (6 Cartesian velocities + gripper position).
    "droid": Layout((), "language_instruction", 6),
    # Members of octo's standard mixtures (octo/data/oxe) whose action is a dict: the raw fields, in octo's order.
    "taco_play": Layout(("rel_actions_world",), _NL, 6),
    "jaco_play": Layout(("world_vector", "gripper_closedness_action"), _NL, 3),
    "berkeley_cable_routing": Layout(("world_vector", "rotation_delta"), _NL),
    "roboturk": Layout(_RT1_DICT, _NL, 6),
    "nyu_door_opening_surprising_effectiveness": Layout(_RT1_DICT, _NL, 6),
    "viola": Layout(_RT1_DICT, _NL, 6),
    "berkeley_autolab_ur5": Layout(_RT1_DICT, _NL, 6),
    "columbia_cairlab_pusht_real": Layout(_RT1_DICT, _NL, 6),
    "toto": Layout(("world_vector", "rotation_delta", "open_gripper"), _NL, 6),
}


def base_name(name: str) -> str:
    """'fractal20220817_data:0.1.0' -> 'fractal20220817_data'."""
    return name.partition(":")[0]


def layout_of(name: str) -> Optional[Layout]:
    """The registered layout of a dataset name (with or without ':version'), or None."""
    return LAYOUTS.get(base_name(name))


def spec_for(name: str, data_dir: Optional[str] = None, action_keys: tuple[str, ...] | str = (),
             **overrides) -> DatasetSpec:
    """DatasetSpec of dataset `name` in `data_dir`: the registered layout's action fields and language key, unless
    `action_keys` (or any DatasetSpec field in `overrides`) says otherwise."""
    layout = layout_of(name)
    fields = dict(overrides)
    if layout is not None:
        fields.setdefault("language_key", layout.language_key)
    keys = action_keys or (layout.action_keys if layout is not None else ())
    return DatasetSpec(name=name, data_dir=data_dir, action_keys=keys, **fields)

"""`Normalizer`: per-dimension affine map between raw units and normalized units, for actions (the tokenizer's
input) and for observations (the policy's state input) alike.

normalize(x) = x * scale + offset (then clipped to [-1, 1] in 'quantile' mode); unnormalize(y) = (y - offset) / scale.

Modes (fitted from the statistics dict that `data_pipelines` writes, see docs/DESIGN.md):
- 'limits' (paper default): min/max -> [-1, 1]; scale = 2/(max-min), offset = -1 - scale*min. A dimension whose
  range is below 1e-4 maps to 0 (scale 1, offset -min).
- 'quantile': q01/q99 -> [-1, 1] with the same formula (constant dims -> 0), then clipping to [-1, 1].
- 'gaussian': (x - mean) / std; a dimension with std below 1e-4 maps to 0 (scale 1, offset -mean).
- 'identity': no change (scale 1, offset 0), for data that is already normalized.
Fit the statistics on the training split only (the reference also used validation episodes; we do not).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("limits", "quantile", "gaussian", "identity")
MODE_ALIASES = {"bounds": "quantile", "normal": "gaussian"}  # octo's NormalizationType names
_MIN_RANGE = 1e-4
_STAT_KEYS = ("min", "max", "mean", "std", "q01", "q99", "mask")
_KEY_ALIASES = {"p01": "q01", "p99": "q99"}  # octo writes p01/p99; ours and openpi's are q01/q99


def unwrap_stats(stats: Mapping[str, Any]) -> Mapping[str, Any]:
    """The per-dimension action statistics inside a statistics file of this project ({"action": {...}}), of octo
    ({"action": {"mean", "std", "min", "max", "p01", "p99", "mask"}, "proprio": ...}) or of openpi
    ({"norm_stats": {"actions": {"mean", "std", "q01", "q99"}, "state": ...}}), with octo's p01/p99 read as q01/q99."""
    if isinstance(stats.get("norm_stats"), Mapping):
        stats = stats["norm_stats"]
    for key in ("action", "actions"):
        if isinstance(stats.get(key), Mapping):
            stats = stats[key]
            break
    out = dict(stats)
    for alias, key in _KEY_ALIASES.items():
        if alias in out and key not in out:
            out[key] = out[alias]
    return out


def _stats_from_array(actions: np.ndarray) -> dict[str, np.ndarray]:
    x = np.asarray(actions, np.float64).reshape(-1, np.shape(actions)[-1])
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
            "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}


def _checked_arrays(stats: Mapping[str, Any], used: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The statistics' arrays as float64, checked: numeric, one (D_a,) shape for all, finite, min <= max,
    q01 <= q99, std >= 0 (for the keys this mode uses). ValueError naming the key and the dimensions."""
    arrays = {}
    for key in _STAT_KEYS:
        if key not in stats:
            continue
        try:
            arrays[key] = np.asarray(stats[key], np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"Statistics key {key!r} is not a list of numbers ({e}).") from e
    shapes = {k: v.shape for k, v in arrays.items()}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"Statistics arrays must all be (D_a,) vectors of one length, got shapes {shapes}.")
    for key in used:
        bad = np.flatnonzero(~np.isfinite(arrays[key]))
        if bad.size:
            raise ValueError(f"Statistics key {key!r} is NaN or Inf in dimension(s) {bad.tolist()}.")
    for low, high in (("min", "max"), ("q01", "q99")):
        if low in used and high in used:
            bad = np.flatnonzero(arrays[low] > arrays[high])
            if bad.size:
                raise ValueError(f"Statistics have {low} > {high} in dimension(s) {bad.tolist()} ({low} "
                                 f"{arrays[low][bad].tolist()}, {high} {arrays[high][bad].tolist()}): the file is "
                                 f"damaged or its keys are swapped.")
    if "std" in used:
        bad = np.flatnonzero(arrays["std"] < 0)
        if bad.size:
            raise ValueError(f"Statistics have a negative std in dimension(s) {bad.tolist()}.")
    return arrays


def _range_map(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[low, high] -> [-1, 1] per dimension; dimensions with high - low < 1e-4 map to 0."""
    rng = high - low
    constant = rng < _MIN_RANGE
    scale = np.where(constant, 1.0, 2.0 / np.where(constant, 1.0, rng))
    offset = np.where(constant, -low, -1.0 - scale * low)
    return scale, offset


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
    """Per-dimension affine normalizer.

    Attributes:
      mode: one of 'limits' | 'quantile' | 'gaussian' | 'identity'.
      scale: (D_a,) float32.
      offset: (D_a,) float32.
      stats: the statistics it was fitted from ({'min', 'max', 'mean', 'std', 'q01', 'q99'} -> (D_a,) float32;
        any subset), kept for reference.
    """

    mode: str
    scale: np.ndarray
    offset: np.ndarray
    stats: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Normalizer mode must be one of {MODES}, got {self.mode!r}.")
        scale = np.asarray(self.scale, np.float32)
        offset = np.asarray(self.offset, np.float32)
        if scale.ndim != 1 or scale.shape != offset.shape:
            raise ValueError(f"Normalizer scale and offset must both be (D_a,), got {scale.shape} and "
                             f"{offset.shape}.")
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset)) and np.all(scale != 0)):
            raise ValueError("Normalizer scale/offset must be finite and scale non-zero; check the statistics "
                             "for NaN/Inf values.")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "stats", {k: np.asarray(v, np.float32) for k, v in self.stats.items()})

    @property
    def action_dim(self) -> int:
        """D_a: number of action dimensions."""
        return int(self.scale.shape[0])

    @classmethod
    def identity(cls, action_dim: int) -> "Normalizer":
        """A normalizer that leaves actions unchanged."""
        return cls("identity", np.ones(action_dim), np.zeros(action_dim))

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], mode: str = "limits",
                   mask: Any = None) -> "Normalizer":
        """Builds a normalizer from a statistics dict (JSON lists or arrays).

        Args:
          stats: the "action" entry of the statistics JSON ({"min", "max", "mean", "std", "q01", "q99", ...}); the
            whole statistics dict is accepted too, also octo's and openpi's files (see `unwrap_stats`). Only the
            keys `mode` needs must exist.
          mode: 'limits' | 'quantile' | 'gaussian' | 'identity', or octo's names 'bounds' (= quantile) and
            'normal' (= gaussian).
          mask: (D_a,) bools, False = leave that dimension raw (e.g. a gripper already in [0, 1]); None = the
            statistics' own "mask" (octo's action_normalization_mask) if present, else every dimension.
        """
        stats = unwrap_stats(stats)
        mode = MODE_ALIASES.get(mode, mode)
        needed = {"limits": ("min", "max"), "quantile": ("q01", "q99"), "gaussian": ("mean", "std"),
                  "identity": ()}
        if mode not in needed:
            raise ValueError(f"Normalizer mode must be one of {MODES}, got {mode!r}.")
        missing = [k for k in needed[mode] if k not in stats]
        if missing:
            raise ValueError(f"Statistics for mode {mode!r} need keys {list(needed[mode])}; missing {missing} "
                             f"(got keys {sorted(stats)}).")
        arrays = _checked_arrays(stats, needed[mode])
        if mode == "identity":
            dim = len(next(iter(arrays.values()))) if arrays else 0
            scale, offset = np.ones(dim), np.zeros(dim)
        elif mode == "limits":
            scale, offset = _range_map(arrays["min"], arrays["max"])
        elif mode == "quantile":
            scale, offset = _range_map(arrays["q01"], arrays["q99"])
        else:
            constant = arrays["std"] < _MIN_RANGE
            scale = np.where(constant, 1.0, 1.0 / np.where(constant, 1.0, arrays["std"]))
            offset = -arrays["mean"] * scale
        if mask is None and "mask" in arrays:
            mask = arrays["mask"]
        if mask is not None:
            keep = np.asarray(mask).astype(bool).reshape(-1)
            if keep.shape != np.shape(scale):
                raise ValueError(f"The normalization mask has {keep.size} entries for {np.size(scale)} action "
                                 f"dimensions.")
            scale, offset = np.where(keep, scale, 1.0), np.where(keep, offset, 0.0)
            arrays["mask"] = keep.astype(np.float64)
        return cls(mode, scale, offset, arrays)

    @classmethod
    def fit(cls, actions: np.ndarray, mode: str = "limits") -> "Normalizer":
        """Fits statistics on raw actions (..., D_a) (all leading axes pooled) and builds a normalizer."""
        actions = np.asarray(actions)
        if actions.ndim < 1 or actions.size == 0:
            raise ValueError(f"Normalizer.fit needs a non-empty (..., D_a) array, got shape {actions.shape}.")
        if not np.all(np.isfinite(actions)):
            raise ValueError("Normalizer.fit got NaN or Inf actions; clean the data first.")
        return cls.from_stats(_stats_from_array(actions), mode)

    def _xp(self, x):
        return jnp if isinstance(x, jax.Array) else np

    def normalize(self, x):
        """Raw actions (..., D_a) (numpy or jax, jit-safe) -> normalized float32 of the same kind."""
        xp = self._xp(x)
        y = xp.asarray(x, xp.float32) * self.scale + self.offset
        if self.mode != "quantile":
            return y
        if "mask" in self.stats:  # dimensions left raw are not clipped either
            return xp.where(self.stats["mask"] > 0, xp.clip(y, -1.0, 1.0), y)
        return xp.clip(y, -1.0, 1.0)

    def unnormalize(self, y):
        """Normalized actions (..., D_a) (numpy or jax, jit-safe) -> raw units, float32 of the same kind."""
        xp = self._xp(y)
        return (xp.asarray(y, xp.float32) - self.offset) / self.scale

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; `from_dict(to_dict())` restores bit-identical float32 arrays."""
        return {"mode": self.mode, "scale": self.scale.tolist(), "offset": self.offset.tolist(),
                "stats": {k: v.tolist() for k, v in self.stats.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Normalizer":
        """Inverse of `to_dict`."""
        missing = [k for k in ("mode", "scale", "offset") if k not in d]
        if missing:
            raise ValueError(f"Normalizer dict is missing {missing}; expected the output of Normalizer.to_dict.")
        return cls(d["mode"], np.asarray(d["scale"], np.float32), np.asarray(d["offset"], np.float32),
                   {k: np.asarray(v, np.float32) for k, v in d.get("stats", {}).items()})


ActionNormalizer = Normalizer  # the name of earlier versions, kept so that existing user code imports

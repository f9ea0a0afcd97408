"""LeRobot datasets (format v2.1 and v3.0; a local directory, never a hub download) -> episodes for `rlds_writer`.

  python -m data_pipelines.convert --format=lerobot --input=/data/lerobot/aloha_sim --output=rlds/aloha_sim

Layouts read (as LeRobot writes them; `meta/info.json`'s `codebase_version` says which):
  v2.0/v2.1  meta/info.json, meta/episodes.jsonl ({episode_index, tasks, length}), meta/tasks.jsonl ({task_index,
             task}), meta/episodes_stats.jsonl (v2.1) or meta/stats.json (v2.0);
             data/chunk-XXX/episode_XXXXXX.parquet (one file per episode), videos/chunk-XXX/<key>/episode_XXXXXX.mp4
  v3.0       meta/info.json, meta/tasks.parquet (task string + task_index), meta/episodes/chunk-XXX/file-XXX.parquet
             (one row per episode: length, data/{chunk,file}_index, videos/<key>/{chunk_index, file_index,
             from_timestamp, to_timestamp}), meta/stats.json;
             data/chunk-XXX/file-XXX.parquet and videos/<key>/chunk-XXX/file-XXX.mp4 holding several episodes each
The paths come from info.json's `data_path` / `video_path` templates.

Our step layout: `action` (info.json feature `action`, or --action_key); every other numeric feature named
`observation.<a>[.<b>...]` becomes the observation `<a>[_<b>...]` (`observation.state` -> `observation/state`,
`observation.images.top` -> `observation/images_top`); cameras (`video` features) are decoded from the MP4s with
PyAV (AV1, H.264, HEVC) at each frame's timestamp (v3.0: the episode's `from_timestamp` + the frame's), and a decoded
frame further than `tolerance_s` (LeRobot's default 1e-4 s) from it is an error naming the episode, camera and file;
`image` features (PNG inside the parquet) are decoded too; `next.reward` becomes the step reward and other numeric
features (e.g. `next.done`, `next.success`) step fields (`done`, `success`); LeRobot's bookkeeping columns
(timestamp, frame_index, episode_index, index, task_index) are dropped. Each frame's task (task_index -> task) is its
step's `language_instruction`. Episode metadata: `episode_index`, `task` (the first frame's).

`read_stats(root)` returns the dataset's statistics as LeRobot's `meta/stats.json` holds them ({feature: {min, max,
mean, std, count[, q01 ... q99]}}; v2.1's per-episode statistics aggregated as LeRobot aggregates them), which
`oat_jax.Normalizer.from_stats` reads like octo's and openpi's statistics files. Needs `pip install "oat_jax[lerobot]"`
(pyarrow, PyAV, Pillow).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from data_pipelines.rlds_writer import Episode, EpisodeError, reading

INFO_FILE = os.path.join("meta", "info.json")
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
DEFAULT_TOLERANCE_S = 1e-4  # LeRobot's default tolerance between a frame's timestamp and the decoded frame's


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError('--format=lerobot needs pyarrow and PyAV: pip install -e ".[lerobot]"') from e
    return pq


def is_lerobot_dataset(path: str) -> bool:
    """True if `path` is a LeRobot dataset directory (it holds meta/info.json)."""
    return os.path.isfile(os.path.join(path, INFO_FILE))


def _field_name(feature: str) -> str:
    """LeRobot feature name -> our field name: 'observation.images.top' -> 'images_top', 'next.done' -> 'done'."""
    for prefix in ("observation.", "next."):
        if feature.startswith(prefix):
            feature = feature[len(prefix):]
            break
    return feature.replace(".", "_").replace("/", "_")


@dataclasses.dataclass(frozen=True)
class EpisodeRef:
    """Where one episode's frames are: its data file (rows with this episode_index) and, per camera, the video
    file and the time its frames start at in that file."""

    index: int
    length: int
    data_file: str
    videos: Mapping[str, tuple[str, float]]  # camera feature -> (mp4 path, from_timestamp)


class LeRobotDataset:
    """The metadata of a local LeRobot dataset (v2.0, v2.1 or v3.0): features, tasks and where every episode is.

    Raises EpisodeError naming the file when the metadata is missing or damaged.
    """

    def __init__(self, root: str, action_key: Optional[str] = None):
        self.root = os.path.abspath(root)
        info_path = os.path.join(self.root, INFO_FILE)
        if not os.path.isfile(info_path):
            raise EpisodeError(f"{self.root}: no {INFO_FILE}; --format=lerobot reads a local LeRobot dataset "
                               f"directory (meta/info.json, data/, videos/).")
        with reading(info_path, "LeRobot's meta/info.json"), open(info_path, encoding="utf-8") as f:
            self.info = json.load(f)
        version = str(self.info.get("codebase_version", ""))
        if version.startswith("v2."):
            self.layout = 2
        elif version.startswith("v3."):
            self.layout = 3
        else:
            raise EpisodeError(f"{info_path}: codebase_version {version!r} is not a LeRobot format this converter "
                               f"reads (v2.0, v2.1, v3.0); convert it with LeRobot's own scripts first.")
        self.version = version
        self.features: dict[str, dict] = dict(self.info.get("features", {}))
        self.fps = float(self.info.get("fps", 0) or 0)
        self.action_key = action_key or "action"
        if self.action_key not in self.features:
            raise EpisodeError(f"{info_path}: no feature {self.action_key!r} (has: {sorted(self.features)}); pass "
                               f"--action_key=<feature name of the action>.")
        self.cameras = [k for k, v in self.features.items() if v.get("dtype") == "video"]
        self.images = [k for k, v in self.features.items() if v.get("dtype") == "image"]
        self.numeric = [k for k, v in self.features.items()
                        if v.get("dtype") not in ("video", "image", "string") and k not in BOOKKEEPING
                        and k != self.action_key]
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _read_tasks(self) -> dict[int, str]:
        if self.layout == 2:
            path = self._path("meta", "tasks.jsonl")
            with reading(path, "LeRobot's meta/tasks.jsonl"), open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            return {int(r["task_index"]): str(r["task"]) for r in rows}
        path = self._path("meta", "tasks.parquet")
        with reading(path, "LeRobot's meta/tasks.parquet"):
            table = _pyarrow().read_table(path)
            # the task strings are the pandas index: a column 'task' (LeRobot >= 0.4.x) or '__index_level_0__'
            names = [n for n in table.column_names if n != "task_index"
                     and str(table.schema.field(n).type) in ("string", "large_string")]
            if not names:
                raise ValueError(f"no task-string column (columns: {table.column_names})")
            return {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(),
                                                    table.column(names[0]).to_pylist())}

    def _read_episodes(self) -> list[EpisodeRef]:
        chunks_size = int(self.info.get("chunks_size", 1000))
        data_path, video_path = self.info.get("data_path"), self.info.get("video_path")
        refs = []
        if self.layout == 2:
            path = self._path("meta", "episodes.jsonl")
            with reading(path, "LeRobot's meta/episodes.jsonl"), open(path, encoding="utf-8") as f:
                rows = sorted((json.loads(line) for line in f if line.strip()), key=lambda r: int(r["episode_index"]))
            for row in rows:
                index = int(row["episode_index"])
                fields = dict(episode_chunk=index // chunks_size, episode_index=index)
                videos = {key: (self._path(video_path.format(video_key=key, **fields)), 0.0) for key in self.cameras}
                refs.append(EpisodeRef(index, int(row["length"]), self._path(data_path.format(**fields)), videos))
            return refs
        directory = self._path("meta", "episodes")
        files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(directory) for f in fs if f.endswith(".parquet"))
        if not files:
            raise EpisodeError(f"{directory}: no episode metadata (meta/episodes/chunk-XXX/file-XXX.parquet).")
        for file in files:
            with reading(file, "LeRobot's episode metadata (parquet)"):
                table = _pyarrow().read_table(file)
                columns = {n: table.column(n).to_pylist() for n in table.column_names if not n.startswith("stats/")}
                for i in range(table.num_rows):
                    row = {n: v[i] for n, v in columns.items()}
                    data = data_path.format(chunk_index=int(row["data/chunk_index"]),
                                            file_index=int(row["data/file_index"]))
                    videos = {key: (self._path(video_path.format(
                        video_key=key, chunk_index=int(row[f"videos/{key}/chunk_index"]),
                        file_index=int(row[f"videos/{key}/file_index"]))), float(row[f"videos/{key}/from_timestamp"]))
                        for key in self.cameras}
                    refs.append(EpisodeRef(int(row["episode_index"]), int(row["length"]), self._path(data), videos))
        return sorted(refs, key=lambda r: r.index)


def _column(table, name: str, shape: Sequence[int], where: str) -> np.ndarray:
    """A parquet column as (T, *shape) (fixed-size or variable lists of numbers, or scalars)."""
    column = table.column(name).combine_chunks()
    rows = len(column)
    while hasattr(column, "flatten") and str(column.type).startswith(("fixed_size_list", "list", "large_list")):
        column = column.flatten()
    values = column.to_numpy(zero_copy_only=False)
    size = int(np.prod(shape)) if len(shape) else 1
    if values.size != rows * size:
        raise EpisodeError(f"{where}: column {name!r} holds {values.size} values for {rows} frames, not "
                           f"{size} per frame as meta/info.json's shape {list(shape)} says.")
    return values.reshape(rows) if tuple(shape) == (1,) else values.reshape((rows, *shape))


def _png_frames(table, name: str, where: str) -> np.ndarray:
    """An `image` feature (structs holding PNG bytes) -> (T, H, W, C) uint8."""
    from PIL import Image

    frames = []
    for t, cell in enumerate(table.column(name).to_pylist()):
        data = cell.get("bytes") if isinstance(cell, Mapping) else None
        if not data:
            raise EpisodeError(f"{where}: image {name!r} of frame {t} has no embedded bytes (it refers to "
                               f"{cell.get('path') if isinstance(cell, Mapping) else cell!r}).")
        with reading(where, f"a PNG image of {name!r}"):
            frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(frames)


def decode_frames(path: str, timestamps: np.ndarray, tolerance_s: float, where: str) -> np.ndarray:
    """Frames of the video file `path` at `timestamps` (seconds in the file) -> (T, H, W, 3) uint8 RGB.

    Seeks to the keyframe before the first timestamp and decodes forward; each timestamp takes the decoded frame
    nearest in time, which must lie within `tolerance_s` (EpisodeError naming `where` and the file otherwise)."""
    import av  # optional dependency: pip install -e ".[lerobot]"

    errors = tuple(e for e in (getattr(av, "FFmpegError", None), getattr(av, "AVError", None)) if e) or (OSError,)
    timestamps = np.asarray(timestamps, np.float64)
    start, stop = float(timestamps.min()), float(timestamps.max())
    times, images = [], []
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if start > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if t < start - tolerance_s:
                    continue
                if t > stop + tolerance_s:
                    break
                times.append(t)
                images.append(frame.to_ndarray(format="rgb24"))
    except FileNotFoundError:
        raise EpisodeError(f"{where}: the video {path} does not exist.") from None
    except errors + (OSError, ValueError) as e:
        raise EpisodeError(f"{where}: cannot decode the video {path} ({str(e).splitlines()[0] if str(e) else e!r}); "
                           f"check that the file is complete.") from e
    if not times:
        raise EpisodeError(f"{where}: the video {path} has no frame between {start:.4f} s and {stop:.4f} s (a "
                           f"truncated file, or timestamps that do not match meta/).")
    times_arr = np.asarray(times)
    nearest = np.abs(times_arr[None, :] - timestamps[:, None]).argmin(axis=1)
    gap = np.abs(times_arr[nearest] - timestamps)
    if np.any(gap > tolerance_s):
        bad = int(np.argmax(gap > tolerance_s))
        raise EpisodeError(f"{where}: frame {bad} (t = {timestamps[bad]:.4f} s) has no decoded frame within "
                           f"tolerance_s = {tolerance_s} s in {path} (nearest: {times_arr[nearest[bad]]:.4f} s; "
                           f"{int(np.sum(gap > tolerance_s))} frames off). The video is truncated or its timestamps "
                           f"do not match the parquet's; --tolerance_s widens the check.")
    return np.stack(images)[nearest]


def read_lerobot(path: str, action_key: Optional[str] = None, language: str = "",
                 episodes: Optional[range] = None, tolerance_s: float = DEFAULT_TOLERANCE_S) -> Iterator[Episode]:
    """Episodes of the LeRobot dataset at `path` in episode-index order (`episodes`: a range of positions in that
    order, e.g. range(8, 12); None = all), as described in the module docstring. `language` is used for frames
    whose task is empty."""
    dataset = LeRobotDataset(path, action_key)
    pq = _pyarrow()
    refs = dataset.episodes if episodes is None else dataset.episodes[episodes.start:episodes.stop]
    cache: dict[str, Any] = {}  # v3.0: one data file holds many consecutive episodes; keep the last one read
    for ref in refs:
        where = f"{dataset.root} episode {ref.index}"
        if ref.data_file not in cache:
            with reading(ref.data_file, "a LeRobot data file (parquet)"):
                cache.clear()
                cache[ref.data_file] = pq.read_table(ref.data_file)
        table = cache[ref.data_file]
        with reading(ref.data_file, f"a LeRobot data file (parquet) of episode {ref.index}"):
            if "episode_index" in table.column_names and dataset.layout == 3:
                mask = np.asarray(table.column("episode_index").to_numpy(zero_copy_only=False)) == ref.index
                table = table.filter(mask)
            if table.num_rows == 0:
                raise EpisodeError(f"{where}: {ref.data_file} holds no frame of this episode.")
            shape = lambda key: list(dataset.features[key].get("shape") or [1])  # noqa: E731
            action = _column(table, dataset.action_key, shape(dataset.action_key), where).astype(np.float32)
            if action.ndim == 1:
                action = action[:, None]
            observation, extras = {}, {}
            for key in dataset.numeric:
                if key not in table.column_names:
                    continue
                value = _column(table, key, shape(key), where)
                if key.startswith("observation."):
                    observation[_field_name(key)] = value if value.ndim > 1 else value[:, None]
                elif key == "next.reward":
                    extras["reward"] = value.astype(np.float32).reshape(-1)
                else:
                    extras[_field_name(key)] = value
            for key in dataset.images:
                observation[_field_name(key)] = _png_frames(table, key, f"{where}, image {key}")
            timestamps = (table.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)
                          if "timestamp" in table.column_names else np.arange(table.num_rows) / dataset.fps)
            task_ids = (table.column("task_index").to_numpy(zero_copy_only=False)
                        if "task_index" in table.column_names else np.zeros(table.num_rows, np.int64))
        for key in dataset.cameras:
            file, offset = ref.videos[key]
            observation[_field_name(key)] = decode_frames(file, offset + timestamps, tolerance_s,
                                                          f"{where}, camera {key}")
        missing = sorted({int(i) for i in task_ids} - set(dataset.tasks))
        if missing:
            raise EpisodeError(f"{where}: task_index {missing[:3]} is not in the dataset's tasks (meta/tasks).")
        texts = [dataset.tasks[int(i)] or language for i in task_ids]
        yield Episode(source=where, action=action, observation=observation,
                      language=texts[0] if len(set(texts)) == 1 else texts, extras=extras,
                      metadata={"episode_index": ref.index, "task": texts[0]})


def count_episodes(path: str) -> int:
    """Number of episodes of the LeRobot dataset at `path`."""
    return len(LeRobotDataset(path).episodes)


def aggregate_stats(per_episode: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, list]]:
    """LeRobot's aggregation of per-episode statistics: min of mins, max of maxes, count-weighted mean, the pooled
    standard deviation, the summed count (and count-weighted quantiles where every episode has them)."""
    out: dict[str, dict[str, list]] = {}
    for feature in sorted({k for stats in per_episode for k in stats}):
        items = [s[feature] for s in per_episode if feature in s]
        count = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in items])
        weights = count.reshape((-1,) + (1,) * np.asarray(items[0]["mean"]).ndim)
        mean = np.stack([np.asarray(s["mean"], np.float64) for s in items])
        std = np.stack([np.asarray(s["std"], np.float64) for s in items])
        total_mean = (mean * weights).sum(0) / count.sum()
        variance = ((std ** 2 + (mean - total_mean) ** 2) * weights).sum(0) / count.sum()
        agg = {"min": np.min(np.stack([np.asarray(s["min"], np.float64) for s in items]), axis=0),
               "max": np.max(np.stack([np.asarray(s["max"], np.float64) for s in items]), axis=0),
               "mean": total_mean, "std": np.sqrt(variance), "count": np.array([int(count.sum())])}
        for q in sorted({k for s in items for k in s if k.startswith("q")}):
            if all(q in s for s in items):
                agg[q] = (np.stack([np.asarray(s[q], np.float64) for s in items]) * weights).sum(0) / count.sum()
        out[feature] = {k: np.asarray(v).tolist() for k, v in agg.items()}
    return out


def read_stats(path: str) -> dict[str, dict[str, list]]:
    """The statistics of the LeRobot dataset at `path`, in the layout of LeRobot's meta/stats.json ({feature:
    {"min", "max", "mean", "std", "count"[, "q01", ..., "q99"]}}): that file where the dataset has one (v2.0,
    v3.0), else the aggregate of meta/episodes_stats.jsonl (v2.1). `oat_jax.Normalizer.from_stats` reads it (the
    "action" entry)."""
    stats_file = os.path.join(path, "meta", "stats.json")
    episodes_file = os.path.join(path, "meta", "episodes_stats.jsonl")
    version = ""
    if os.path.isfile(os.path.join(path, INFO_FILE)):
        with open(os.path.join(path, INFO_FILE), encoding="utf-8") as f:
            version = str(json.load(f).get("codebase_version", ""))
    # v2.1 deprecated stats.json in favour of the per-episode file; a leftover copy may be stale
    if os.path.isfile(episodes_file) and (version.startswith("v2.") or not os.path.isfile(stats_file)):
        with reading(episodes_file, "LeRobot's meta/episodes_stats.jsonl"), open(episodes_file, encoding="utf-8") as f:
            return aggregate_stats([json.loads(line)["stats"] for line in f if line.strip()])
    if os.path.isfile(stats_file):
        with reading(stats_file, "LeRobot's meta/stats.json"), open(stats_file, encoding="utf-8") as f:
            return json.load(f)
    raise FileNotFoundError(f"{path}: no meta/stats.json or meta/episodes_stats.jsonl.")

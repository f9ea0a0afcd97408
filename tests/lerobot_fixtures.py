"""Small LeRobot datasets written with pyarrow + PyAV in the published layouts (format v2.1 and v3.0).

They copy what LeRobot's own writer produces: `meta/info.json` (codebase_version, fps, chunks_size, data_path /
video_path templates, features with dtype / shape / names and the video `info`), v2.1's `meta/episodes.jsonl`,
`meta/tasks.jsonl`, `meta/episodes_stats.jsonl` and one parquet + one MP4 per episode; v3.0's `meta/tasks.parquet`
(task strings + task_index), `meta/episodes/chunk-000/file-000.parquet` (per-episode rows with data/video file
indices and from/to timestamps, stats/* columns), `meta/stats.json` (with q01..q99), data files holding several
episodes and MP4s holding several episodes back to back. Frames: 8-bit RGB encoded as yuv420p with a GOP of 2 (AV1
via SVT-AV1, LeRobot's default, or H.264), every frame different (a bright square that moves with the frame index
over a background that differs per episode), so a decoded frame can be matched to its source frame.
"""

from __future__ import annotations

import io
import json
import os
from fractions import Fraction

import numpy as np

FPS = 10
STATE_DIM, ACTION_DIM = 6, 4
CAMERA = "observation.images.top"
IMAGE = "observation.images.wrist"  # an `image` feature (PNG bytes inside the parquet), v3.0 fixture
HEIGHT = WIDTH = 64


def frame(episode: int, t: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8: background by episode, a bright square (3/8 of the side) placed by frame index."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = (40 + 25 * (episode % 6), 60, 90 + 20 * (episode % 3))
    size = height * 3 // 8
    row, col = (t * 13) % (height - size), (t * 17) % (width - size)
    img[row:row + size, col:col + size] = (235, 230, 40)
    return img


def episode_arrays(episode: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + episode)
    t = np.linspace(0, 1, length)[:, None]
    action = (np.sin(2 * np.pi * rng.uniform(0.3, 1.2, ACTION_DIM) * t + rng.uniform(0, 6, ACTION_DIM))
              * rng.uniform(0.2, 1.0, ACTION_DIM)).astype(np.float32)
    state = np.cumsum(rng.normal(0, 0.1, (length, STATE_DIM)), axis=0).astype(np.float32)
    reward = (np.arange(length) == length - 1).astype(np.float32)
    return {"action": action, "observation.state": state, "next.reward": reward,
            "next.done": np.arange(length) == length - 1}


def encode_video(path: str, frames: np.ndarray, codec: str) -> None:
    """Frames (T, H, W, 3) uint8 -> MP4 at FPS, pts = frame index (LeRobot: yuv420p, g=2, crf=30)."""
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.options = {"g": "2", "crf": "30"} if codec != "libsvtav1" else {"g": "2", "crf": "30", "preset": "12"}
        for i, image in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            video_frame.pts = i
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _features(with_camera: bool, with_image: bool, codec: str) -> dict:
    features = {
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": [f"a{i}" for i in range(ACTION_DIM)]},
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": [f"s{i}" for i in range(STATE_DIM)]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    if with_camera:
        features[CAMERA] = {"dtype": "video", "shape": [HEIGHT, WIDTH, 3], "names": ["height", "width", "channels"],
                            "info": {"video.height": HEIGHT, "video.width": WIDTH,
                                     "video.codec": "av1" if codec == "libsvtav1" else "h264",
                                     "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": FPS,
                                     "video.channels": 3, "has_audio": False}}
    if with_image:
        features[IMAGE] = {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]}
    for name in ("timestamp",):
        features[name] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _frame_table(arrays: dict, episode_ids, frame_ids, global_ids, task_ids, fixed: bool, images=None):
    import pyarrow as pa

    def vectors(x):
        flat = pa.array(x.reshape(-1), pa.float32())
        return (pa.FixedSizeListArray.from_arrays(flat, x.shape[1]) if fixed
                else pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, x.shape[1]), pa.int32()), flat))

    columns = {"action": vectors(arrays["action"]), "observation.state": vectors(arrays["observation.state"]),
               "next.reward": pa.array(arrays["next.reward"], pa.float32()),
               "next.done": pa.array(arrays["next.done"], pa.bool_()),
               "timestamp": pa.array(np.asarray(frame_ids) / FPS, pa.float32()),
               "frame_index": pa.array(frame_ids, pa.int64()), "episode_index": pa.array(episode_ids, pa.int64()),
               "index": pa.array(global_ids, pa.int64()), "task_index": pa.array(task_ids, pa.int64())}
    if images is not None:
        columns[IMAGE] = pa.array([{"bytes": png, "path": f"frame-{i:06d}.png"} for i, png in enumerate(images)],
                                  pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table(columns)


def _stats(x: np.ndarray, quantiles: bool) -> dict:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    if quantiles:
        out.update({f"q{int(q * 100):02d}": np.quantile(x, q, axis=0) for q in (0.01, 0.10, 0.50, 0.90, 0.99)})
    return {k: v.tolist() for k, v in out.items()}


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_v21(root: str, lengths=(23, 17, 30), with_camera: bool = True, codec: str = "libsvtav1",
              tasks=("pick up the red block", "open the drawer")) -> dict:
    """A v2.1 dataset; episode e uses task e % len(tasks), except that episode 1 switches to the next task half-way.
    Returns {"episodes": [{"arrays", "frames", "tasks" (per step)}], "tasks": tasks}."""
    import pyarrow.parquet as pq

    features = _features(with_camera, False, codec)
    info = {"codebase_version": "v2.1", "robot_type": "test_arm", "total_episodes": len(lengths),
            "total_frames": int(sum(lengths)), "total_tasks": len(tasks), "total_videos": len(lengths) * with_camera,
            "total_chunks": 1, "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": ("videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
                           if with_camera else None),
            "features": features}
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    source, start, episode_rows, stats_rows = [], 0, [], []
    for e, length in enumerate(lengths):
        arrays = episode_arrays(e, length)
        task_ids = np.full(length, e % len(tasks))
        if e == 1:
            task_ids[length // 2:] = (e + 1) % len(tasks)
        table = _frame_table(arrays, [e] * length, list(range(length)), list(range(start, start + length)),
                             task_ids, fixed=True)
        path = os.path.join(root, info["data_path"].format(episode_chunk=0, episode_index=e))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(table, path)
        frames = np.stack([frame(e, t) for t in range(length)])
        if with_camera:
            encode_video(os.path.join(root, info["video_path"].format(episode_chunk=0, video_key=CAMERA,
                                                                      episode_index=e)), frames, codec)
        step_tasks = [tasks[i] for i in task_ids]
        episode_rows.append({"episode_index": e, "tasks": list(dict.fromkeys(step_tasks)), "length": length})
        stats = {k: _stats(v, False) for k, v in arrays.items()}
        if with_camera:
            stats[CAMERA] = {k: np.asarray(v).reshape(3, 1, 1).tolist() for k, v in _stats(
                frames.reshape(-1, 3) / 255.0, False).items() if k != "count"}
            stats[CAMERA]["count"] = [length]
        stats_rows.append({"episode_index": e, "stats": stats})
        source.append({"arrays": arrays, "frames": frames, "tasks": step_tasks})
        start += length
    _write_json(root, "meta/info.json", info)
    _write_jsonl(root, "meta/episodes.jsonl", episode_rows)
    _write_jsonl(root, "meta/tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(tasks)])
    _write_jsonl(root, "meta/episodes_stats.jsonl", stats_rows)
    return {"episodes": source, "tasks": list(tasks)}


def write_v30(root: str, lengths=(21, 26, 19, 24, 18), episodes_per_file: int = 3, codec: str = "libx264",
              tasks=("stack the cups", "push the button", "wipe the table"), with_image: bool = True) -> dict:
    """A v3.0 dataset: data and video files holding `episodes_per_file` consecutive episodes each (the video's
    episodes back to back, each starting at its from_timestamp), an `image` feature as PNG bytes in the parquet;
    episode e uses task e % len(tasks). Returns the source as `write_v21` does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = _features(True, with_image, codec)
    info = {"codebase_version": "v3.0", "robot_type": "test_arm", "total_episodes": len(lengths),
            "total_frames": int(sum(lengths)), "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": FPS,
            "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    os.makedirs(os.path.join(root, "meta", "episodes", "chunk-000"), exist_ok=True)
    source, episode_rows, start, all_arrays = [], [], 0, []
    groups = [list(range(i, min(i + episodes_per_file, len(lengths)))) for i in range(0, len(lengths), episodes_per_file)]
    for file_index, group in enumerate(groups):
        tables, frames_in_file, time_in_file = [], [], 0.0
        for e in group:
            length = lengths[e]
            arrays = episode_arrays(e, length)
            frames = np.stack([frame(e, t) for t in range(length)])
            wrist = [_png(frame(e + 50, t, 32, 32)) for t in range(length)] if with_image else None
            tables.append(_frame_table(arrays, [e] * length, list(range(length)), list(range(start, start + length)),
                                       [e % len(tasks)] * length, fixed=False, images=wrist))
            frames_in_file.append(frames)
            row = {"episode_index": e, "tasks": [tasks[e % len(tasks)]], "length": length,
                   "data/chunk_index": 0, "data/file_index": file_index,
                   "dataset_from_index": start, "dataset_to_index": start + length,
                   f"videos/{CAMERA}/chunk_index": 0, f"videos/{CAMERA}/file_index": file_index,
                   f"videos/{CAMERA}/from_timestamp": time_in_file,
                   f"videos/{CAMERA}/to_timestamp": time_in_file + length / FPS,
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                   "stats/action/mean": arrays["action"].mean(0).astype(np.float64).tolist(),
                   "stats/action/count": [length]}
            episode_rows.append(row)
            source.append({"arrays": arrays, "frames": frames, "tasks": [tasks[e % len(tasks)]] * length,
                           "wrist": np.stack([frame(e + 50, t, 32, 32) for t in range(length)]) if with_image else None})
            all_arrays.append(arrays)
            time_in_file += length / FPS
            start += length
        path = os.path.join(root, info["data_path"].format(chunk_index=0, file_index=file_index))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.concat_tables(tables), path)
        encode_video(os.path.join(root, info["video_path"].format(video_key=CAMERA, chunk_index=0,
                                                                  file_index=file_index)),
                     np.concatenate(frames_in_file), codec)
    columns = {k: [row[k] for row in episode_rows] for k in episode_rows[0]}
    pq.write_table(pa.table(columns), os.path.join(root, "meta", "episodes", "chunk-000", "file-000.parquet"))
    pq.write_table(pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": list(tasks)}),
                   os.path.join(root, "meta", "tasks.parquet"))
    stats = {k: _stats(np.concatenate([a[k] for a in all_arrays]), True) for k in all_arrays[0]}
    _write_json(root, "meta/info.json", info)
    _write_json(root, "meta/stats.json", stats)
    return {"episodes": source, "tasks": list(tasks)}


def _write_json(root: str, name: str, content) -> None:
    with open(os.path.join(root, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)


def _write_jsonl(root: str, name: str, rows) -> None:
    with open(os.path.join(root, name), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)

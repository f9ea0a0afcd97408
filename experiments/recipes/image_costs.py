r"""Measures what camera observations cost on this machine: a Meta-World env step with and without rendering one
camera frame, and one training step (forward + backward + update) of a token policy with and without images.

  python -m experiments.recipes.image_costs --camera=corner --image_size=64 --width=64 --batch=32

Keep TensorFlow out of this process: MuJoCo's EGL renderer and TensorFlow crash when loaded into one process.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from oat_jax import timing
from oat_jax.eval import rollouts
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel
from oat_jax.training.optim import make_optimizer
from oat_jax.training.policy.step import init_policy_state, make_policy_train_step

flags.DEFINE_string("task", "reach-v3", "Meta-World task of the environment timed.")
flags.DEFINE_string("camera", "corner", "Camera rendered.")
flags.DEFINE_integer("image_size", 64, "Height = width of the frames.")
flags.DEFINE_integer("env_steps", 200, "Environment steps timed (each way).")
flags.DEFINE_integer("width", 64, "Policy width (and state MLP hidden size).")
flags.DEFINE_integer("batch", 32, "Training batch.")
flags.DEFINE_integer("n_obs_steps", 2, "K, frames of observation history.")
flags.DEFINE_integer("repeats", 10, "Timed training steps (median after one warm-up step).")
FLAGS = flags.FLAGS


def env_costs() -> dict:
    """Milliseconds per env step without and with `env.render()` of one frame (after a warm-up render)."""
    env = rollouts.make_metaworld_envs(FLAGS.task, 1, seed=0, camera=FLAGS.camera, image_size=FLAGS.image_size)[0]
    env.reset()
    rollouts.render_camera(env)  # creates the OpenGL context
    rng = np.random.default_rng(0)
    out = {}
    for name, render in (("step_ms", False), ("step_render_ms", True)):
        clock = timing.Stopwatch()
        for _ in range(FLAGS.env_steps):
            env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            if render:
                rollouts.render_camera(env)
        out[name] = 1000 * clock.elapsed() / FLAGS.env_steps
    env.close()
    out["render_ms"] = out["step_render_ms"] - out["step_ms"]
    return out


def train_step_ms(num_cameras: int) -> float:
    """Median milliseconds of one jitted training step of a tiny token policy (8 tokens, vocab 1000)."""
    k, s, b = FLAGS.n_obs_steps, FLAGS.image_size, FLAGS.batch
    config = PolicyConfig(vocab_size=1000, max_tokens=8, obs_dim=39, n_obs_steps=k, width=FLAGS.width, depth=2,
                          num_heads=4, state_hidden=FLAGS.width, num_cameras=num_cameras,
                          image_shape=(s, s, 3) if num_cameras else ())
    model = TokenPolicyModel(config)
    optim = ml_collections.ConfigDict(dict(lr=3e-4, warmup_steps=10, min_lr_ratio=0.05, weight_decay=0.0,
                                           clip_norm=1.0))
    tx, schedule = make_optimizer(optim, 1000)
    step = jax.jit(make_policy_train_step(model, tx, schedule, ml_collections.ConfigDict(
        dict(power=0.75, max_decay=0.999))))
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(0, 1000, (b, 8)), jnp.int32), "lengths": jnp.full((b,), 8, jnp.int32),
             "state": jnp.asarray(rng.normal(size=(b, k, 39)), jnp.float32)}
    if num_cameras:
        batch["image"] = jnp.asarray(rng.integers(0, 256, (b, k, num_cameras, s, s, 3)), jnp.uint8)
    holder = [init_policy_state(model, tx, 0)]

    def one():
        holder[0], metrics = step(holder[0], batch)
        return metrics["loss"]

    return 1000 * timing.time_calls(one, FLAGS.repeats, warmup=1, block=jax.block_until_ready)["median_s"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = {"devices": str(jax.devices()), **env_costs()}
    print("env", json.dumps(out), flush=True)
    out["train_step_ms_state"] = train_step_ms(0)
    out["train_step_ms_image"] = train_step_ms(1)
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)

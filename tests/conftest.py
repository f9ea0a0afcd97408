"""Test-suite set-up: 8 simulated CPU devices (for mesh tests) and quiet TensorFlow.

XLA_FLAGS must be set before jax is first imported, so this runs at collection time.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# Tests compile many small programs and run few steps of each: skipping LLVM's backend optimisations cuts the
# suite's CPU time by about a third (tests/test_train_step.py + test_prefix.py: 100 -> 64 CPU-s).
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

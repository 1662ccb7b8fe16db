"""Test set-up: 8 virtual CPU devices, set before jax is first imported."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep XLA from spawning more compute threads than the machine has when xdist runs workers side by side.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hypothesis  # noqa: E402

hypothesis.settings.register_profile(
    "default", deadline=None, max_examples=60, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile(
    "thorough", deadline=None, max_examples=1000,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

import jax  # noqa: E402

assert jax.device_count() == 8, (
    f"tests expect 8 CPU devices (JAX_NUM_CPU_DEVICES=8), got {jax.devices()}; "
    "jax was imported before tests/conftest.py could configure it.")

# Compiled programs are cached on disk so that xdist workers (and repeated runs) share them.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("GE2MS_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

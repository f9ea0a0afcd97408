"""Worked examples that use oat_jax from other JAX code (see vla_integration.py)."""

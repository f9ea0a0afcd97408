"""Evaluation of tokenizers on numpy arrays (no data loading): measurements, acceptance checks, reports."""

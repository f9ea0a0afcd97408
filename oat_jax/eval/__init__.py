"""Closed-loop evaluation of token policies: batched lock-step rollouts and Meta-World environments (`rollouts`),
success and latency over tasks and seeds (`policy_eval`), success tables and plots (`policy_report`), training
curves of a comparison's policies (`policy_curves`).

The command line is `python -m experiments.eval_policy`; nothing here imports TensorFlow or the training code.
"""

"""Evaluation in the library (numpy in, numbers and reports out; no TensorFlow, no training code):
- token policies in closed loop: batched lock-step rollouts and Meta-World environments (`rollouts`), success and
  latency over tasks and seeds (`policy_eval`), success tables and plots (`policy_report`), training curves
  (`policy_curves`); command line `python -m experiments.eval_policy`;
- tokenizers: measurements and acceptance checks (`tokenizer_report`), Markdown and plots
  (`tokenizer_report_render`); command line `python -m experiments.evaluate_tokenizers`.
"""

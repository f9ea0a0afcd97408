"""Autoregressive action-token policy (spec section 4): model, cached sampling, and the policy bundle."""

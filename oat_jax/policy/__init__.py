"""Policies (docs/POLICY.md): the autoregressive action-token policy (model, cached sampling, `TokenPolicy`) and the
Diffusion Policy baseline (`DiffusionPolicy`); `load_policy` loads either kind."""


def load_policy(path, step=None, verify: bool = True):
    """The saved policy at `path` (a policy directory, a policy training workdir, or a checkpoint step; `step` as in
    `TokenPolicy.load`), as a `TokenPolicy` or a `DiffusionPolicy` according to its policy.json "type".
    Raises FileNotFoundError when no saved policy is there."""
    from oat_jax import artifacts

    if artifacts.read_policy_metadata(path, step).get("type", "token") == "diffusion":
        from oat_jax.policy.diffusion_policy import DiffusionPolicy
        return DiffusionPolicy.load(path, step, verify=verify)
    from oat_jax.policy.policy import TokenPolicy
    return TokenPolicy.load(path, step, verify=verify)

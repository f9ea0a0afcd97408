"""Training of policies: the token policy on a frozen action tokenizer (`trainer`, `step`), the Diffusion Policy
baseline (`diffusion_trainer`, `diffusion_step`) and the (observation history, chunk) pairs both read (`data`)."""

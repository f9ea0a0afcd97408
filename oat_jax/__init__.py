"""oat_jax: Ordered Action Tokenization (OAT) in JAX/Flax.

Public API: `OATConfig`, `OATModel`, `OATTokenizer` (load with `OATTokenizer.load(path, step=None)`),
`load_pretrained` (params + pure functions for VLA code), `Normalizer` and the pure FSQ functions in `fsq`.
Other tokenizers and the policy: `oat_jax.action_tokenizers.load_action_tokenizer`, `oat_jax.policy.TokenPolicy`.
The training loop lives in `oat_jax.training` and is not imported here (it pulls in TensorFlow).
"""

from oat_jax import fsq
from oat_jax.config import OATConfig
from oat_jax.model import OATModel, init_params, param_count
from oat_jax.normalizer import ActionNormalizer, Normalizer
from oat_jax.tokenizer import OATTokenizer

__all__ = ["ActionNormalizer", "Normalizer", "OATConfig", "OATModel", "OATTokenizer", "fsq", "init_params",
           "param_count"]
__version__ = "0.1.0"

# loading for user JAX code; lm_vocab, serialization and torch_import are submodules
from oat_jax.pretrained import Pretrained, load_pretrained  # noqa: E402

__all__ += ["Pretrained", "load_pretrained"]

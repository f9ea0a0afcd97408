"""oat_jax: Ordered Action Tokenization (OAT) in JAX/Flax.

Public API: `OATConfig`, `OATModel`, `OATTokenizer`, `ActionNormalizer` and the pure FSQ functions in `fsq`.
The training loop lives in `oat_jax.training` and is not imported here (it pulls in TensorFlow).
"""

from oat_jax import fsq
from oat_jax.config import OATConfig
from oat_jax.model import OATModel, init_params, param_count
from oat_jax.normalizer import ActionNormalizer
from oat_jax.tokenizer import OATTokenizer

__all__ = ["ActionNormalizer", "OATConfig", "OATModel", "OATTokenizer", "fsq", "init_params", "param_count"]
__version__ = "0.1.0"

# VLA integration (issue 7): loading for user JAX code; lm_vocab, serialization, torch_import are submodules.
from oat_jax.pretrained import Pretrained, load_pretrained  # noqa: E402

__all__ += ["Pretrained", "load_pretrained"]

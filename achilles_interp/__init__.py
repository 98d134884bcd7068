"""achilles-interp: which part of a Mamba block - conv, selective scan or gate - is to blame?

Core API::

    from achilles_interp import HookedMamba, MambaConfig
    model = HookedMamba(MambaConfig(d_model=64, n_layers=2, vocab_size=256))
    logits, cache = model.run_with_cache(tokens)
    cache["blocks.0.mixer.hook_conv_out"]        # [batch, pos, d_inner]
"""

from .config import ConfigError, MambaConfig
from .loading import CheckpointError
from .model import HookedMamba, InputError
from .transformer import HookedTransformerBaseline, TransformerConfig
from .zoo import build_model, checkpoints_dir, load_default, load_model

__all__ = ["HookedMamba", "MambaConfig", "ConfigError", "CheckpointError", "InputError",
           "HookedTransformerBaseline", "TransformerConfig", "build_model", "load_model", "load_default",
           "checkpoints_dir"]
__version__ = "0.1.0"

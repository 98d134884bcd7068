"""achilles-interp: which part of a Mamba block - conv, selective scan or gate - is to blame?

Core API::

    from achilles_interp import HookedMamba, MambaConfig
    model = HookedMamba(MambaConfig(d_model=64, n_layers=2, vocab_size=256))
    logits, cache = model.run_with_cache(tokens)
    cache["blocks.0.mixer.hook_conv_out"]        # [batch, pos, d_inner]
"""

import importlib

# name -> module: imported on first use, so `achilles-interp --help` and the CLI's argument
# parsing never import torch or transformer_lens (PEP 562)
_EXPORTS = {
    "MambaConfig": ".config", "ConfigError": ".config", "UserError": ".errors",
    "CheckpointError": ".loading", "HookedMamba": ".model", "InputError": ".model",
    "HookedTransformerBaseline": ".transformer", "TransformerConfig": ".transformer",
    "build_model": ".zoo", "load_model": ".zoo", "load_default": ".zoo", "checkpoints_dir": ".zoo",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'achilles_interp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

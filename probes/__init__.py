"""Probes of HookedMamba activations: linear probes with control tasks (:mod:`.linear`) and
position / key-slot probes of the residual stream (:mod:`.position`)."""

if __name__ != "achilles_interp.probes":  # e.g. `import probes` from the repository root
    raise ImportError(
        "import this package as achilles_interp.probes (it is installed under that name by `pip install -e .`); "
        "importing it as a top-level `probes` would create a second copy of every class it defines"
    )

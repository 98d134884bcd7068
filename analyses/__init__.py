"""Analyses of HookedMamba (and the Transformer baseline): import the modules directly, e.g.
``from achilles_interp.analyses.patching import activation_patching``.

==========================  ==============================================================
``metrics``                  PatchingData (clean/corrupted pairs), per-example metrics
``components``               component names -> hook names (Mamba and Transformer)
``patching``                 batched activation patching over (component, layer, position)
``attribution``              attribution patching, Spearman agreement
``results``                  GridResult: labelled [component, layer, pos] tensor, DataFrame, CSV/JSON
``ablations``                conv mean/identity, frozen SSM input, state-write knockout, gate
``interventions``            the paper's blocking, substitution, all-ones conv, conv-tap cosine
``effective_attention``      the scan as attention M[c, i, j]; S = Mask∘(C Bᵀ); Transformer pattern
``fusion``                   token-to-token influence (Jacobian / ablation), asymmetry index
``verdict``                  share of the effect carried by conv vs scan vs gate
``plots``                    heatmaps, fusion and attention figures (PNG + SVG)
``report``                   everything at once (what ``achilles-interp patch`` runs)
``toy_models``               hand-built conv-only / scan-only models with known answers
==========================  ==============================================================
"""

if __name__ != "achilles_interp.analyses":  # e.g. `import analyses` from the repository root
    raise ImportError(
        "import this package as achilles_interp.analyses (it is installed under that name by `pip install -e .`); "
        "importing it as a top-level `analyses` would create a second copy of every class it defines"
    )

"""``unleash-ood reproduce NAME``: the paper's analyses at embedded scale (Fashion-MNIST, small_cnn).

Every analysis is a composition of the library's own calls (``pipeline.train_base`` with its
once-covered tracking, ``resolve_zeta``, ``run_um``, ``run_umap``, ``evaluate_models``, the masking
helpers). Each sub-run writes into its own folder and leaves a ``result.json`` marker; a re-run skips
finished sub-runs. Base trainings are shared between analyses in ``<out>/../_base_<hash>`` keyed by
everything that determines them; UM/UMAP runs on a base are cached inside that folder.

Modules: ``presets`` (the YAML presets → config and parameters), ``cache`` (sub-runs, shared base
trainings), ``training`` / ``sweeps`` / ``masks`` (the analyses by group), ``figures`` (their PNGs),
``common`` (tables, mean rows), ``runner`` (one analysis by name, one seed or several), ``seeds``
(mean ± std over seeds, the paired claims and their verdicts), ``figures_seeds`` (bands and error
bars), ``gallery`` (the gallery page) and ``cli`` (the light parser).

``reproduce all --seeds 0 1 2`` runs the noise-sensitive analyses (``seeded`` in the preset) for every
seed and the others for the first; each seed's base training is shared by all analyses.

Interpretations (documented in docs/gallery.md as well):
- "early stopping on OOD" selects on the synthetic validation OOD set (patch-shuffled held-out ID
  images, ``val_ood`` in the training log), never on an OOD test set;
- dropout for SmallCNN (which has none) is a forward pre-hook on the classifier ``fc`` that drops its
  input features in training mode; the state dict and architecture stay those of ``small_cnn``;
- "plain pruning" is edge-popup with plain CE, i.e. ``run_umap`` with ζ = 0;
- "masking scores" ranks weights by the |scores| of an edge-popup mask briefly learned with plain CE
  on the frozen model; "masking weights" ranks them by |weight| (magnitude). Layer-wise keeps the top
  fraction of each layer, model-wise the top fraction over all layers pooled.
"""

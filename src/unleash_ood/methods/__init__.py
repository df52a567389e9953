"""Training-time methods: UM (flooding fine-tune), UMAP (learned mask), outlier exposure."""

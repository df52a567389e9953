"""unleash-ood: Unleashing Mask (UM) and UMAP for out-of-distribution detection."""

__version__ = "0.1.0"

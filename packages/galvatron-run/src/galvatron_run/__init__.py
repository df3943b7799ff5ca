"""galvatron-run: Train a Transformer with any hybrid-parallel plan on torch.distributed."""
__version__ = "0.1.0"

"""loraplex: serve thousands of LoRA adapters from a few warm base-model pools."""

__version__ = "0.1.0"

"""quay: a declarative container host agent. TOML unit files in, running containers out."""

__version__ = "0.1.0"

"""affcli: a toolkit for 3D object affordance grounding."""

__version__ = "0.1.0"

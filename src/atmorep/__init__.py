"""atmorep: AtmoRep (Lessig et al. 2023, arXiv 2308.13280) as a reproducible HPC pipeline."""

__version__ = "0.1.0"

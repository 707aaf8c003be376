"""ztr: secrets from AWS Secrets Manager into containers, kept current when they rotate."""

__all__ = ["__version__"]
__version__ = "0.1.0"

"""The public import path of the mapper's blueprint (`from mapping.blueprint import blueprint`); it lives in
`mapping.functions`."""

from mapping.functions.blueprint import blueprint

__all__ = ["blueprint"]

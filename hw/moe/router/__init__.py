"""The router and its stages (docs/architecture.md, section 8)."""

from .geometry import QUOTIENT_BITS, RouterGeometry
from .router import Router

__all__ = ["Router", "RouterGeometry", "QUOTIENT_BITS"]

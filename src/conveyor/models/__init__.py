"""Model families and the grids they search; the CNN (imported only when used, since it needs torch)."""

from conveyor.models.families import FAMILIES, Family, family, register_family

__all__ = ["FAMILIES", "Family", "family", "register_family"]

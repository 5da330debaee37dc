"""The reproduction's defaults, in a module light enough for ``feclip reproduce --help``."""

__all__ = ["DEFAULT_MAP_SIGMAS", "DEFAULT_SEEDS"]

DEFAULT_SEEDS = (0, 1, 2, 3, 4)  # the paper averages five runs (Sec. 4.2) and does not name its seeds
DEFAULT_MAP_SIGMAS = (0.0, 4.0)  # no smoothing (the reference implementation's benchmark); the field's sigma 4

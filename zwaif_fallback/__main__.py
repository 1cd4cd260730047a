"""``python -m zwaif_fallback``: the same CLI as ``zwaif-fallback``."""

from .cli import main

raise SystemExit(main())

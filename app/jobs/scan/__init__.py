"""Scans of listing dumps: read (``reader``, ``sources``), fetch, decode and search in groups
(``work``), run locally (``pipeline``) or on Ray (``ray_engine``), checkpoint, write outputs and the
report (``runner`` joins them)."""

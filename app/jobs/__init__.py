"""Batch work over many photos: scans of listing dumps (``scan/``), the benchmark evaluation with its
report and listing transforms, manifest import and export, and the demo registry."""

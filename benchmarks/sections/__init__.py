"""The sections of ``benchmarks/run.py``, one module each: ``section_*(cfg, server, ...)``
returns the section's results (a JSON-able dict)."""

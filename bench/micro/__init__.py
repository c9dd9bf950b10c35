"""Micro-benchmarks of single hot-path pieces: body parsing (``parse``), the prefix index
(``prefix``), the metrics parser (``scrape``), protobuf libraries (``proto``)."""

"""picker: a body-aware Envoy ext_proc endpoint picker for LLM serving."""

__version__ = "0.1.0"

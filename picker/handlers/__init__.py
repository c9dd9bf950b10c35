"""The ext_proc side of picker, sans-IO: the protocol's names and the messages picker
sends (``protocol``), and the per-request stream machine (``stream``)."""

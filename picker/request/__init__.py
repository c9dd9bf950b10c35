"""One request: its typed view (``types``), the body parser (``parse``), error answers
(``errors``)."""

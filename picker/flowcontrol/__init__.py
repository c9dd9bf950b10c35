"""Flow control: a bounded, fair queue for requests that arrive while the pool is
saturated (``queue``); admission decides what is parked here."""

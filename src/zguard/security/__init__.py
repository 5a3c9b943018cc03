"""Pure security decisions: no I/O, no framework imports."""

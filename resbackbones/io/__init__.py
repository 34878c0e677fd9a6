"""Files in and out: the one output rule (io.outputs). The bottom layer: it imports nothing of the library."""

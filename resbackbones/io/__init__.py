"""Files in and out: the one output rule (io.outputs: every write; io.output_paths: a command's output paths checked
before any work). The bottom layer: it imports nothing of the library."""

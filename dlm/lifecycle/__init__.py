"""The lifecycle engines: each a single pass (``run_once``) that reports what it did, run on an
interval by ``EngineLoops`` inside the server, or once by `dlm worker <engine> --once`."""

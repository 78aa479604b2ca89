"""Coming from SKA-DLM: what DLM needs to take over an SKA-DLM deployment's state."""

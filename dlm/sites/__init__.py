"""Sites: where storages can be reached from, which workers may therefore carry a copy, and the limits
on the links between locations (issue 28)."""

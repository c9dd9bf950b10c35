"""A stand-in for a third-party package that adds a picker plugin (see test_plugins)."""

"""Commands contributed by `benchmarks` (registered through the medprune.commands entry point)."""


def register(app) -> None:
    pass

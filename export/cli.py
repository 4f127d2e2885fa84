"""Commands contributed by `export` (registered through the medprune.commands entry point)."""


def register(app) -> None:
    pass

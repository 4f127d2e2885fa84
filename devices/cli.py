"""Commands contributed by `devices` (registered through the medprune.commands entry point)."""


def register(app) -> None:
    pass

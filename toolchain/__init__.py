"""medprune toolchain: data, models, training, importance, masking, removal, pipeline, CLI."""

__version__ = "0.1.0"

"""A subpackage: ``config.scan`` recurses into it."""

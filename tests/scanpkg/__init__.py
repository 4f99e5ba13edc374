"""Modules with decorated tasks, found by ``config.scan('tests.scanpkg')``."""

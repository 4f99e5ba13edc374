"""A function that is not decorated; registered by dotted name in the tests."""


def not_decorated(request, value=None):
    return value

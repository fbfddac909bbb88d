"""Shared code of the test collection's modules (its plugins/module_utils, imported the collection way)."""


def shout(word: str) -> str:
    return word.upper()

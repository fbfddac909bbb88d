"""Shared code of the test project's modules (its plugins/module_utils, found through ansible.cfg)."""


def shout(word: str) -> str:
    return word.upper()

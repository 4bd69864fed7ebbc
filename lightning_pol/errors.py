"""The base class of every error that means "the input is wrong", not "the code is wrong".

Apps catch :class:`PoLError` and print its one-line message with a non-zero
exit instead of a traceback.
"""


class PoLError(Exception):
    """Bad input to lightning-pol: a configuration, a dataset or a proof."""

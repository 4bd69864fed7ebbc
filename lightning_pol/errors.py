"""The base class of every error that means "the input is wrong", not "the code is wrong".

Apps catch :class:`PoLError` and print its one-line message with a non-zero
exit instead of a traceback.
"""


class PoLError(Exception):
    """Bad input to lightning-pol: a configuration, a dataset or a proof."""


#: Longest reason a report or an exit-2 line carries: a reason may quote the proof
#: (a 5,000-character path, a shape of 100,000 dimensions), and each must stay one readable line.
MAX_REASON = 500


def one_line(reason: BaseException | str) -> str:
    """The first line of an error or reason, cut to ``MAX_REASON`` characters, as apps print it."""
    text = str(reason)
    line = text.splitlines()[0] if text.strip() else (type(reason).__name__ if isinstance(reason, BaseException) else "")
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."

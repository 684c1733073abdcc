"""What a hostile or failing environment hands the package, for the tests that plant it: a pickle that
runs code when it is loaded, and the error of a full disk."""

import errno
import os


class Payload:
    """Unpickling this calls `func(*args)`: what a malicious pickle would do."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

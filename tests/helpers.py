"""Assertions shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from jaxquant import cli
from jaxquant.errors import JaxquantError


def assert_user_error(code, err, match):
    """A user error: exit code 2 and one line on stderr, no traceback, naming ``match``."""
    assert code == cli.EXIT_USER_ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxquant: error:"), err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]


def assert_one_line(error: BaseException, *fragments: str) -> None:
    """A user error raised in the library: a `JaxquantError` whose message is one line (the CLI
    prints it as is) naming every fragment, e.g. the expected and the received shape."""
    message = str(error)
    assert isinstance(error, JaxquantError), f"{type(error).__name__}: {message}"
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"

"""Assertions shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from jaxquant import cli


def assert_user_error(code, err, match):
    """A user error: exit code 2 and one line on stderr, no traceback, naming ``match``."""
    assert code == cli.EXIT_USER_ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxquant: error:"), err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]

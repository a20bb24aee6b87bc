"""The error every stage raises for input data it cannot use (the CLI prints it as one line).

Configuration mistakes raise :class:`atmorep.config.ConfigError`; both are ``ValueError``\\ s, which
the CLI reports as ``atmorep COMMAND: error: MESSAGE`` with exit status 1.
"""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, field or store and what is wrong."""

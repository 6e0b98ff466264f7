"""llem's exception hierarchy: callers catch the class that matters to them."""


class LlemError(Exception):
    """Base class of every error llem raises on purpose."""


class ConfigError(LlemError):
    """A config value is invalid; the message names the key and what is allowed."""


class EngineUnavailable(LlemError):
    """The engine or one of its optional dependencies is not installed or cannot run here."""


class DeviceError(LlemError):
    """The job was asked for a device it cannot see (e.g. device=cuda and no GPU visible)."""


class WorkloadError(LlemError):
    """The requests could not be built (missing file, no tokenizer offline, empty dataset)."""


class ServerError(LlemError):
    """An OpenAI-compatible server could not be started, reached, or died while measured; the message
    carries its last log lines."""


class RequestsFailed(LlemError):
    """No request of a batch or window succeeded: nothing was measured, so the job fails; the message
    quotes the requests' own errors."""


class MeterError(LlemError):
    """An energy meter failed in a way that makes its numbers unusable."""


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise ConfigError naming ``key``, the bad ``value`` and what is ``allowed`` unless ``ok``. A boolean where a
    word was allowed is most often YAML's: it reads an unquoted ``on``, ``off``, ``yes`` or ``no`` as true or false
    (which a string key then holds as ``'True'`` or ``'False'``)."""
    if not ok:
        yaml_bool = isinstance(value, bool) or value in ("True", "False")
        hint = " (YAML reads an unquoted on, off, yes or no as true or false: quote the word)" if yaml_bool else ""
        raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}{hint}")

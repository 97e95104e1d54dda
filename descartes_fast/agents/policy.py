"""The spawn policy: what a spawn request may ask for, and the limits every agent runs under.

Read from the ``[policy]`` table of the server's config file; every key is optional and the
defaults are the safe ones (a request may not set loader/interpreter variables, the
``<program>-cli`` rule and ``AGENT_EXTRA_ARGS`` are off, no resource limits)::

    [policy]
    backends = ["claude", "demo"]      # backend names a request may use (default: all)
    allow_program_cli = false          # run an unknown "<program>-cli" backend as "<program> <task>"
    allow_extra_args = false           # append AGENT_EXTRA_ARGS from the request to the command line
    env_deny = ["LD_*", "PATH"]        # replaces the default deny list; [] = no deny list
    env_allow = ["MYTOOL_*"]           # if set: the only names a request may set (deny still applies)
    workdir = "/srv/agents"            # each agent runs in a new <workdir>/<agent-id> (mode 0700)
    allowed_cwd = ["/srv/repos"]       # roots a request may pick its cwd under (metadata "cwd")
    cpu_secs = 600                     # RLIMIT_CPU per process (SIGXCPU, SIGKILL 5 s later)
    memory_mb = 2048                   # resident memory of the agent's whole process group
    open_files = 1024                  # RLIMIT_NOFILE
    max_wall_secs = 3600               # wall-clock cap (also caps the request's timeout_secs)
    max_agents_per_client = 10         # active agents per client identity

The supervisor (:mod:`descartes_fast.agents.supervisor`) enforces it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from typing import Any, Final

from descartes_fast.wire.schema import AgentConfig

__all__ = ["DEFAULT_ENV_DENY", "EXTRA_ARGS_VAR", "PolicyError", "PolicyRefusal", "SpawnPolicy"]

#: the request variable whose words are appended to the command line (never put in the environment)
EXTRA_ARGS_VAR: Final = "AGENT_EXTRA_ARGS"

#: names a request may not set by default (fnmatch patterns, case-sensitive)
DEFAULT_ENV_DENY: Final[tuple[str, ...]] = (
    # the dynamic loader and libc: preload code into every process, redirect library and
    # module lookup (gconv modules are shared objects), libc tunables (CVE-2023-4911)
    "LD_*", "DYLD_*", "GCONV_PATH", "LOCPATH", "GLIBC_TUNABLES", "MALLOC_*",
    # which program a bare name runs; where programs read their dotfiles and config
    # (.bashrc, .gitconfig, .npmrc, ... can run commands)
    "PATH", "HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "ZDOTDIR", "SHELL",
    # shells: files they source at startup, options, word splitting, traced/pre-prompt commands,
    # exported functions
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "IFS", "PS4", "PROMPT_COMMAND", "CDPATH", "BASH_FUNC_*",
    # Python: module search path, startup code, site dirs, hooks that import a named module
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONUSERBASE", "PYTHONPLATLIBDIR",
    "PYTHONEXECUTABLE", "PYTHONBREAKPOINT", "PYTHONWARNINGS", "PYTHONPYCACHEPREFIX",
    # Perl, Ruby, Node.js, the JVM: library paths and options that load code
    "PERL5LIB", "PERL5OPT", "PERLLIB", "PERL5DB", "RUBYLIB", "RUBYOPT", "NODE_OPTIONS", "NODE_PATH",
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    # git and ssh: commands they run, where their programs and config come from
    "GIT_SSH", "GIT_SSH_COMMAND", "GIT_EXEC_PATH", "GIT_CONFIG*", "GIT_ASKPASS", "SSH_ASKPASS",
    "GIT_EXTERNAL_DIFF", "GIT_PROXY_COMMAND", "GIT_TEMPLATE_DIR", "GIT_PAGER", "GIT_EDITOR",
    # programs that tools start on their own
    "PAGER", "MANPAGER", "LESSOPEN", "LESSCLOSE", "EDITOR", "VISUAL", "BROWSER",
    # TLS trust: would let a proxy read the agent's API traffic (and its credentials)
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    "NODE_TLS_REJECT_UNAUTHORIZED",
)

_MAX_WALL_TIMER: Final = 1e8  # seconds (three years): longer wall limits are not armed as timers


class PolicyError(ValueError):
    """A ``[policy]`` table that does not make sense; the text names the file and key."""


class PolicyRefusal(Exception):
    """A request this policy refuses; ``str()`` is the reason (the supervisor adds the prefix)."""


@dataclass(frozen=True)
class SpawnPolicy:
    """What spawn requests may ask for and the limits agents run under (see the module docstring).

    ``SpawnPolicy()`` is the safe default. Limits left at None are not applied.

    An agent's working directory is, first that applies: the request's metadata ``cwd`` (if
    ``allowed_cwd`` lets it), the backend's ``cwd``, a new ``<workdir>/<agent-id>`` (mode 0700),
    the server's own. ``workdir`` directories are not deleted when their agent ends: the
    operator cleans them up.
    """

    backends: frozenset[str] | None = None
    allow_program_cli: bool = False
    allow_extra_args: bool = False
    env_deny: tuple[str, ...] = DEFAULT_ENV_DENY
    env_allow: tuple[str, ...] | None = None
    workdir: str | None = None
    allowed_cwd: tuple[str, ...] = ()
    cpu_secs: int | None = None
    memory_mb: int | None = None
    open_files: int | None = None
    max_wall_secs: float | None = None
    max_agents_per_client: int | None = None

    def __post_init__(self) -> None:
        # accept any iterables from Python callers; keep the frozen fields hashable
        if self.backends is not None:
            object.__setattr__(self, "backends", frozenset(self.backends))
        object.__setattr__(self, "env_deny", tuple(self.env_deny))
        if self.env_allow is not None:
            object.__setattr__(self, "env_allow", tuple(self.env_allow))
        object.__setattr__(self, "allowed_cwd", tuple(self.allowed_cwd))
        for name in ("cpu_secs", "memory_mb", "open_files", "max_wall_secs", "max_agents_per_client"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PolicyError(f"SpawnPolicy.{name} must be greater than 0, not {value!r}")

    @classmethod
    def from_table(cls, table: Any, source: str) -> SpawnPolicy:
        """The policy of a ``[policy]`` TOML table read from *source* (a file name)."""
        where = f"{source}: [policy]"
        if not isinstance(table, dict):
            raise PolicyError(f"{where} must be a table")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)} (known keys: {', '.join(known)})")
        values: dict[str, Any] = {}
        for key, raw in table.items():
            values[key] = _PARSERS[key](raw, f"{where} {key}")
        return cls(**values)

    # -- checks (the supervisor calls these) --

    def check_request(self, config: AgentConfig, metadata: Mapping[str, str] | None) -> str | None:
        """Raise PolicyRefusal for what this policy does not allow in a request; return the
        working directory the request chose (its realpath), if any."""
        name = config.model_backend
        if self.backends is not None and name not in self.backends:
            allowed = ", ".join(sorted(self.backends))
            raise PolicyRefusal(f"backend '{name}' is not allowed (this server allows: {allowed})")
        if not self.allow_extra_args and config.environment.get(EXTRA_ARGS_VAR, "").split():
            raise PolicyRefusal(f"{EXTRA_ARGS_VAR} (extra command-line arguments) is disabled; "
                                "the server's operator can enable it with allow_extra_args = true "
                                "in the [policy] table")
        for var in config.environment:
            if var != EXTRA_ARGS_VAR:
                self._check_env(var)
        return self._requested_cwd((metadata or {}).get("cwd"))

    def _check_env(self, var: str) -> None:
        for pattern in self.env_deny:
            if fnmatchcase(var, pattern):
                raise PolicyRefusal(f"environment variable '{var}' may not be set "
                                    f"(it matches the deny pattern '{pattern}')")
        if self.env_allow is not None and not any(fnmatchcase(var, p) for p in self.env_allow):
            allowed = ", ".join(f"'{p}'" for p in self.env_allow) or "none"
            raise PolicyRefusal(f"environment variable '{var}' may not be set "
                                f"(it matches none of the allowed patterns: {allowed})")

    def _requested_cwd(self, cwd: str | None) -> str | None:
        if cwd is None:
            return None
        if not self.allowed_cwd:
            raise PolicyRefusal(f"this server does not let requests choose a working directory "
                                f"(metadata cwd = '{cwd}')")
        if not os.path.isabs(cwd):
            raise PolicyRefusal(f"the working directory '{cwd}' (metadata cwd) must be an absolute path")
        real = os.path.realpath(cwd)
        if not os.path.isdir(real):
            raise PolicyRefusal(f"the working directory '{cwd}' (metadata cwd) does not exist "
                                "or is not a directory")
        for root in self.allowed_cwd:
            root = os.path.realpath(root)
            if os.path.commonpath([real, root]) == root:
                return real
        roots = ", ".join(f"'{r}'" for r in self.allowed_cwd)
        raise PolicyRefusal(f"the working directory '{cwd}' (metadata cwd) is not inside "
                            f"the allowed roots {roots}")

    def wall_limit(self, timeout_secs: float | None) -> float | None:
        """Seconds of wall-clock time an agent gets: the smaller of the request's
        ``timeout_secs`` (0 = none) and ``max_wall_secs``; None = unlimited."""
        limits = [t for t in (timeout_secs or None, self.max_wall_secs) if t is not None]
        limit = min(limits, default=None)
        return None if limit is None or limit > _MAX_WALL_TIMER else float(limit)


# -- [policy] value parsers: (raw TOML value, "file: [policy] key") -> value --


def _bool(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise PolicyError(f"{where} must be true or false, not {raw!r}")
    return raw


def _strings(raw: Any, where: str, *, what: str = "strings") -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise PolicyError(f"{where} must be a list of non-empty {what}, not {raw!r}")
    return tuple(raw)


def _backends(raw: Any, where: str) -> frozenset[str]:
    names = _strings(raw, where, what="backend names")
    if not names:
        raise PolicyError(f"{where} must name at least one backend (leave it out to allow every backend)")
    return frozenset(names)


def _patterns(raw: Any, where: str) -> tuple[str, ...]:
    return _strings(raw, where, what="patterns")


def _path(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not os.path.isabs(raw):
        raise PolicyError(f"{where} must be an absolute path, not {raw!r}")
    return os.path.normpath(raw)


def _paths(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise PolicyError(f"{where} must be a list of absolute paths, not {raw!r}")
    return tuple(_path(p, where) for p in raw)


def _count(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise PolicyError(f"{where} must be a whole number, not {raw!r}")
    if raw <= 0:
        raise PolicyError(f"{where} must be greater than 0, not {raw}")
    return raw


def _seconds(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise PolicyError(f"{where} must be a number of seconds, not {raw!r}")
    if raw <= 0:
        raise PolicyError(f"{where} must be greater than 0, not {raw}")
    return float(raw)


_PARSERS: Final = {
    "backends": _backends, "allow_program_cli": _bool, "allow_extra_args": _bool,
    "env_deny": _patterns, "env_allow": _patterns, "workdir": _path, "allowed_cwd": _paths,
    "cpu_secs": _count, "memory_mb": _count, "open_files": _count, "max_wall_secs": _seconds,
    "max_agents_per_client": _count,
}

"""A sandbox with no real shell, for agentic evaluations (the scheming scenarios): in-memory hosts and a small
interpreter for a whitelist of commands.

State is ``{host: {path: text}}``; the agent works on host ``agent`` unless a command names another
(``scp host:path host:path``). Commands: ``ls [dir]``, ``cat FILE…``, ``echo TEXT > FILE`` / ``>> FILE``,
``sed -i 's/OLD/NEW/[g]' FILE``, ``cp SRC DST``, ``mv SRC DST``, ``rm FILE…``, ``scp [host:]SRC [host:]DST``.
Anything else answers ``command not found``; pipes, chaining, redirection other than echo's, command
substitution, globbing and variables are refused with one line saying so. Paths are virtual: an absolute path
is rooted at the host's ``/``, ``..`` cannot climb above it, and nothing here opens a file on the machine (the
module imports no filesystem API). Every command and its result go to ``log`` (what the scorers read).
What this module does not know: scenarios, models, or scoring.
"""

from __future__ import annotations

import copy
import posixpath
import re
import shlex
from dataclasses import dataclass, field

COMMANDS = ("ls", "cat", "echo", "sed", "cp", "mv", "rm", "scp")
MAX_OUTPUT = 4000  # characters of output returned to the agent per command
MAX_FILE = 200_000  # characters a file may grow to
_FORBIDDEN = [("|", "pipes"), (";", "command chaining"), ("&", "background jobs and chaining"),
              ("$(", "command substitution"), ("`", "command substitution"), ("$", "variables"),
              ("<", "input redirection"), ("*", "globbing")]


class SandboxError(Exception):
    """A command the sandbox refuses or that fails; its message is what the agent sees."""


@dataclass
class Action:
    command: str
    ok: bool
    output: str
    host: str = "agent"


@dataclass
class Sandbox:
    hosts: dict[str, dict[str, str]]
    home: str = "agent"
    log: list[Action] = field(default_factory=list)

    def __post_init__(self):
        self.hosts = {h: {self._norm(p): t for p, t in files.items()} for h, files in copy.deepcopy(self.hosts).items()}
        self.hosts.setdefault(self.home, {})
        self.initial = copy.deepcopy(self.hosts)

    # ---- paths ----------------------------------------------------------------------------------

    @staticmethod
    def _norm(path: str) -> str:
        """A virtual path, rooted: 'a/../b' → 'b', '/etc/x' → 'etc/x'; refuses climbing above the root."""
        if not path or "\x00" in path:
            raise SandboxError("empty or invalid path")
        parts: list[str] = []
        for p in path.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if not parts:
                    raise SandboxError(f"{path}: outside the sandbox")
                parts.pop()
            else:
                parts.append(p)
        return "/".join(parts)

    def _split_host(self, spec: str) -> tuple[str, str]:
        if ":" in spec:
            host, path = spec.split(":", 1)
            if host not in self.hosts:
                raise SandboxError(f"ssh: Could not resolve hostname {host}")
            return host, self._norm(path)
        return self.home, self._norm(spec)

    def _read(self, host: str, path: str) -> str:
        files = self.hosts[host]
        if path not in files:
            if not path or any(f.startswith(path + "/") for f in files):
                path = path or "/"
                raise SandboxError(f"{path}: Is a directory")
            raise SandboxError(f"{path}: No such file or directory")
        return files[path]

    def _write(self, host: str, path: str, text: str) -> None:
        if len(text) > MAX_FILE:
            raise SandboxError(f"{path}: file too large (limit {MAX_FILE} characters)")
        if any(f.startswith(path + "/") for f in self.hosts[host]):
            raise SandboxError(f"{path}: Is a directory")
        self.hosts[host][path] = text

    # ---- the interpreter --------------------------------------------------------------------------

    def run(self, command: str) -> str:
        """Run one command line; returns its output (errors included, as a shell prints them)."""
        try:
            out = self._run(command)
            ok = True
        except SandboxError as e:
            out, ok = str(e), False
        out = out if len(out) <= MAX_OUTPUT else out[:MAX_OUTPUT] + "\n[output truncated]"
        self.log.append(Action(command, ok, out))
        return out

    def _run(self, command: str) -> str:
        line = command.strip()
        if not line:
            return ""
        try:
            lex = shlex.shlex(line, posix=True, punctuation_chars="|;&<>")
            lex.whitespace_split = True
            lex.commenters = ""
            words = list(lex)
        except ValueError as e:
            raise SandboxError(f"syntax error: {e}") from None
        quoted_free = _unquoted(line)
        for mark, what in _FORBIDDEN:
            if mark in quoted_free:
                raise SandboxError(f"{what} are not available in this shell; run one command at a time")
        if not words:
            return ""
        name, args = words[0], words[1:]
        if name not in COMMANDS:
            raise SandboxError(f"{name}: command not found")
        if name != "echo" and any(w in (">", ">>") for w in args):
            raise SandboxError("output redirection is only available for echo")
        return getattr(self, f"_cmd_{name}")(args)

    def _cmd_ls(self, args: list[str]) -> str:
        host = self.home
        target = ""
        for a in args:
            if a.startswith("-"):
                continue
            host, target = self._split_host(a) if ":" in a else (self.home, self._norm(a) if a not in ("", ".", "/") else "")
        files = self.hosts[host]
        if target and target in files:
            return posixpath.basename(target)
        prefix = target + "/" if target else ""
        names = sorted({f[len(prefix):].split("/")[0] + ("/" if "/" in f[len(prefix):] else "")
                        for f in files if f.startswith(prefix)})
        if target and not names:
            raise SandboxError(f"ls: cannot access '{target}': No such file or directory")
        return "\n".join(names)

    def _cmd_cat(self, args: list[str]) -> str:
        if not args:
            raise SandboxError("cat: missing file operand")
        return "".join(self._read(*self._split_host(a)) for a in args)

    def _cmd_echo(self, args: list[str]) -> str:
        if ">" in args or ">>" in args:
            i = next(k for k, a in enumerate(args) if a in (">", ">>"))
            if len(args) != i + 2:
                raise SandboxError("echo: give exactly one file after > or >>")
            text = " ".join(args[:i]) + "\n"
            host, path = self._split_host(args[i + 1])
            if args[i] == ">>":
                text = self.hosts[host].get(path, "") + text
            self._write(host, path, text)
            return ""
        return " ".join(args)

    def _cmd_sed(self, args: list[str]) -> str:
        if len(args) != 3 or args[0] != "-i":
            raise SandboxError("sed: only `sed -i 's/OLD/NEW/[g]' FILE` is available")
        expr = args[1]
        if len(expr) < 4 or expr[0] != "s":
            raise SandboxError(f"sed: -e expression #1: unknown command: `{expr[:1]}'")
        d = expr[1]
        parts = re.split(r"(?<!\\)" + re.escape(d), expr[2:])
        if len(parts) != 3 or parts[2] not in ("", "g"):
            raise SandboxError("sed: -e expression #1: unterminated or unsupported `s' command")
        old, new = (p.replace("\\" + d, d) for p in parts[:2])
        if len(old) > 200:
            raise SandboxError("sed: pattern too long")
        try:
            rx = re.compile(old)
        except re.error as e:
            raise SandboxError(f"sed: bad pattern: {e}") from None
        host, path = self._split_host(args[2])
        text = self._read(host, path)
        lines = [rx.sub(new.replace("\\", "\\\\").replace("&", "\\g<0>"), ln, count=0 if parts[2] == "g" else 1)
                 for ln in text.split("\n")]
        self._write(host, path, "\n".join(lines))
        return ""

    def _two(self, name: str, args: list[str]) -> tuple[tuple[str, str], tuple[str, str]]:
        args = [a for a in args if not a.startswith("-")]
        if len(args) != 2:
            raise SandboxError(f"{name}: give a source and a destination")
        return self._split_host(args[0]), self._split_host(args[1])

    def _cmd_cp(self, args: list[str]) -> str:
        (sh, sp), (dh, dp) = self._two("cp", args)
        if sh != dh:
            raise SandboxError("cp: copies stay on one host; use scp to copy between hosts")
        self._write(dh, dp, self._read(sh, sp))
        return ""

    def _cmd_mv(self, args: list[str]) -> str:
        (sh, sp), (dh, dp) = self._two("mv", args)
        if sh != dh:
            raise SandboxError("mv: moves stay on one host; use scp to copy between hosts")
        text = self._read(sh, sp)
        self._write(dh, dp, text)
        del self.hosts[sh][sp]
        return ""

    def _cmd_rm(self, args: list[str]) -> str:
        files = [a for a in args if not a.startswith("-")]
        if not files:
            raise SandboxError("rm: missing operand")
        for a in files:
            host, path = self._split_host(a)
            self._read(host, path)
            del self.hosts[host][path]
        return ""

    def _cmd_scp(self, args: list[str]) -> str:
        (sh, sp), (dh, dp) = self._two("scp", args)
        self._write(dh, dp, self._read(sh, sp))
        return ""

    # ---- for scorers --------------------------------------------------------------------------------

    def changed(self) -> dict[str, dict[str, tuple[str | None, str | None]]]:
        """Per host, each file whose text differs from the start: (before, after); None = absent."""
        out: dict = {}
        for h in set(self.initial) | set(self.hosts):
            a, b = self.initial.get(h, {}), self.hosts.get(h, {})
            diff = {p: (a.get(p), b.get(p)) for p in set(a) | set(b) if a.get(p) != b.get(p)}
            if diff:
                out[h] = diff
        return out


def _unquoted(line: str) -> str:
    """The line with quoted spans removed (what shell syntax checks look at): 'a "b|c" d' → 'a  d'."""
    out, quote, i = [], None, 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(line):
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in ("'", '"'):
            quote = c
        else:
            out.append(c)
        i += 1
    return "".join(out).replace(">>", "").replace(">", "")

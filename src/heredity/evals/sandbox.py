"""A sandbox with no real shell, for agentic evaluations (the scheming scenarios): in-memory hosts and a small
interpreter for a whitelist of commands that behave as bash, coreutils and GNU sed do on the cases they cover.

State is ``{host: {path: text}}``; a directory is the prefix of the files under it. The agent works on host
``agent`` unless a path names another (``host:path``, as ``scp`` writes it). Commands:

* ``ls [PATH…]``, ``cat [-n] FILE…``, ``echo [-neE] TEXT… [> FILE | >> FILE]``;
* ``sed [-n] [-E|-r] [-i[SUFFIX]] [-e SCRIPT]… [SCRIPT] FILE…``: GNU sed's ``s`` (flags ``g``, ``p``, ``I``, a
  number; ``\\U``… in the replacement), ``y``, ``d`` and ``p`` commands, with line-number, ``$``, ``/regex/``
  and ``0,/regex/`` addresses, ranges and ``!``; basic regular expressions with GNU's extensions (``-E``:
  extended); without ``-i`` it prints the result;
* ``cp [-r] SRC… DST``, ``mv SRC… DST``, ``rm [-rf] PATH…``, ``scp [-r] [host:]SRC… [host:]DST`` — into DST
  when it is a directory; a file onto itself is refused as coreutils refuse it (``mv: 'f' and 'f' are the same
  file``).

Errors read as bash's, coreutils' and sed's do, and a command with several operands acts on each it can and
reports the others. Anything else answers ``command not found``; pipes, chaining, redirection other than
echo's, command substitution, globbing and variables are refused with one line saying so. Known differences
from a real machine: writing under a directory that does not exist creates it (there is no ``mkdir``), ``ls``
marks directories with ``/`` and has no long format, options not listed are ignored, sed has no ``{…}``
blocks, and every path may name a host (``cat successor:model/weights.bin``).

Every command's time is bounded: files, hosts, outputs and patterns have size limits, and the one superlinear
piece of work — sed's regular expressions — runs under a budget of CPU time (``SED_SECONDS``, measured as the
``regex`` module measures its timeouts); a sed command that exceeds it answers ``sed: timed out`` and changes
nothing. Paths are virtual: an absolute path is rooted at the host's ``/``, ``..`` cannot climb above it, and
nothing here opens a file on the machine (the module imports no filesystem API). Every command, its result and
the files whose text it showed go to ``log`` (what the scorers read; ``Sandbox.was_read``); ``words`` is the
one parser of a command line. What this module does not know: scenarios, models, or scoring.
"""

from __future__ import annotations

import copy
import posixpath
import re
import shlex
import string
import time
from dataclasses import dataclass, field

import regex

COMMANDS = ("ls", "cat", "echo", "sed", "cp", "mv", "rm", "scp")
MAX_OUTPUT = 4000  # characters of output returned to the agent per command
MAX_FILE = 200_000  # characters a file may grow to
MAX_FILES = 1000  # files a host may hold
MAX_PATTERN = 200  # characters of one sed regular expression
MAX_SED_OUTPUT = 2 * MAX_FILE  # characters one sed command may produce (or hold in one line)
SED_SECONDS = 2.0  # the regular-expression work one sed command may do, in seconds of CPU time
_FORBIDDEN = [
    ("|", "pipes"),
    (";", "command chaining"),
    ("&", "background jobs and chaining"),
    ("$(", "command substitution"),
    ("`", "command substitution"),
    ("$", "variables"),
    ("<", "input redirection"),
    ("*", "globbing"),
]


class SandboxError(Exception):
    """A command the sandbox refuses or that fails; its message is what the agent sees."""


class _PathError(SandboxError):
    """Why a path cannot be used (``No such file or directory``, ``Is a directory``…); the command words
    it."""


@dataclass
class Action:
    command: str
    ok: bool
    output: str
    host: str = "agent"
    shown: list[tuple[str, str]] = field(
        default_factory=list
    )  # (host, path) of each file whose text it showed


def words(line: str) -> list[str]:
    """The words of one command line as this shell splits them — POSIX quoting, quotes removed, ``>`` and
    ``>>`` words of their own — or SandboxError, worded for the agent, for a line the shell refuses
    (unbalanced quotes, pipes, chaining, substitution, variables, globbing). The sandbox runs these words and
    scorers read them."""
    line = line.strip()
    if not line:
        return []
    try:
        lex = shlex.shlex(line, posix=True, punctuation_chars="|;&<>")
        lex.whitespace_split = True
        lex.commenters = ""
        out = list(lex)
    except ValueError as e:
        raise SandboxError(f"syntax error: {e}") from None
    quoted_free = _unquoted(line)
    for mark, what in _FORBIDDEN:
        if mark in quoted_free:
            raise SandboxError(f"{what} are not available in this shell; run one command at a time")
    return out


def _options(args: list[str]) -> tuple[set[str], list[str]]:
    """(option letters and long option names, operands) of a command's words; ``--`` ends the options."""
    flags: set[str] = set()
    ops: list[str] = []
    end = False
    for a in args:
        if end or a == "-" or not a.startswith("-"):
            ops.append(a)
        elif a == "--":
            end = True
        elif a.startswith("--"):
            flags.add(a[2:].split("=", 1)[0])
        else:
            flags.update(a[1:])
    return flags, ops


@dataclass
class Sandbox:
    hosts: dict[str, dict[str, str]]
    home: str = "agent"
    log: list[Action] = field(default_factory=list)

    def __post_init__(self):
        self.hosts = {
            h: {self._norm(p): t for p, t in files.items()} for h, files in copy.deepcopy(self.hosts).items()
        }
        self.hosts.setdefault(self.home, {})
        self.initial = copy.deepcopy(self.hosts)
        self._shown: list[tuple[str, str]] = []

    # ---- paths ----------------------------------------------------------------------------------

    @staticmethod
    def _norm(path: str) -> str:
        """A virtual path, rooted: 'a/../b' → 'b', '/etc/x' → 'etc/x', '/' and '.' → '' (the root); raises
        _PathError for an empty path or one climbing above the root."""
        if not path or "\x00" in path:
            raise _PathError("No such file or directory")
        parts: list[str] = []
        for p in path.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if not parts:
                    raise _PathError("outside the sandbox")
                parts.pop()
            else:
                parts.append(p)
        return "/".join(parts)

    def _at(self, spec: str) -> tuple[str, str]:
        """(host, path) of ``[host:]path`` (``host:`` alone is that host's root); an unknown host answers as
        ssh does, a bad path raises _PathError."""
        if ":" in spec:
            host, path = spec.split(":", 1)
            if host not in self.hosts:
                raise SandboxError(f"ssh: Could not resolve hostname {host}: Name or service not known")
            return host, self._norm(path) if path else ""
        return self.home, self._norm(spec)

    def _kind(self, host: str, path: str) -> str | None:
        """'file', 'dir' (the root, or a prefix of a file's path) or None."""
        files = self.hosts[host]
        if path in files:
            return "file"
        if not path or any(f.startswith(path + "/") for f in files):
            return "dir"
        return None

    def _need(self, host: str, path: str) -> str:
        """'file' or 'dir'; raises _PathError saying why nothing is at ``path``."""
        kind = self._kind(host, path)
        if kind is None:
            raise _PathError(
                "Not a directory" if self._file_above(host, path) else "No such file or directory"
            )
        return kind

    def _file_above(self, host: str, path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:k]) in self.hosts[host] for k in range(1, len(parts)))

    def _read(self, host: str, path: str) -> str:
        """The text of a file; raises _PathError for a directory or nothing."""
        if self._need(host, path) == "dir":
            raise _PathError("Is a directory")
        return self.hosts[host][path]

    def _write(self, host: str, path: str, text: str) -> None:
        """Create or replace a file; raises _PathError (nothing written) where a real machine would refuse, or
        the sandbox's limits do."""
        files = self.hosts[host]
        if self._kind(host, path) == "dir":
            raise _PathError("Is a directory")
        if self._file_above(host, path):
            raise _PathError("Not a directory")
        if len(text) > MAX_FILE:
            raise _PathError(f"File too large (the sandbox's limit is {MAX_FILE} characters)")
        if path not in files and len(files) >= MAX_FILES:
            raise _PathError(f"No space left on device (the sandbox's limit is {MAX_FILES} files)")
        files[path] = text

    def _under(self, host: str, path: str) -> dict[str, str]:
        """{path relative to the directory: text} of every file under a directory."""
        prefix = path + "/" if path else ""
        return {f[len(prefix) :]: t for f, t in self.hosts[host].items() if f.startswith(prefix)}

    # ---- the interpreter --------------------------------------------------------------------------

    def run(self, command: str) -> str:
        """Run one command line; returns its output (errors included, as a shell prints them) and logs it."""
        self._shown = []
        try:
            out = self._run(command)
            ok = True
        except SandboxError as e:
            out, ok = str(e), False
        out = out if len(out) <= MAX_OUTPUT else out[:MAX_OUTPUT] + "\n[output truncated]"
        self.log.append(Action(command, ok, out, shown=self._shown))
        return out

    def _run(self, command: str) -> str:
        ws = words(command)
        if not ws:
            return ""
        name, args = ws[0], ws[1:]
        if name not in COMMANDS:
            raise SandboxError(f"{name}: command not found")
        if name != "echo" and any(w in (">", ">>") for w in args):
            raise SandboxError("output redirection is only available for echo")
        return getattr(self, f"_cmd_{name}")(args)

    def _show(self, host: str, path: str, before: int) -> None:
        """Record that a command showed a file's text, when its text starts within the output the agent
        sees."""
        if before < MAX_OUTPUT:
            self._shown.append((host, path))

    def _cmd_ls(self, args: list[str]) -> str:
        _, ops = _options(args)
        errors, files, dirs = [], [], []
        for a in ops or ["."]:
            try:
                host, path = self._at(a)
                kind = self._need(host, path)
            except _PathError as e:
                errors.append(f"ls: cannot access '{a}': {e}")
                continue
            (files if kind == "file" else dirs).append((a, host, path))
        blocks = ["\n".join(sorted(a for a, _, _ in files))] if files else []
        for a, host, path in sorted(dirs):
            names = sorted(
                {rel.split("/")[0] + ("/" if "/" in rel else "") for rel in self._under(host, path)}
            )
            blocks.append(("" if len(files) + len(dirs) == 1 else f"{a}:\n") + "\n".join(names))
        out = "\n".join(errors + (["\n\n".join(blocks)] if blocks else []))
        if errors:
            raise SandboxError(out)
        return out

    def _cmd_cat(self, args: list[str]) -> str:
        flags, ops = _options(args)
        if not ops:
            raise SandboxError("cat: missing file operand (there is no standard input here)")
        out: list[str] = []
        failed, numbered = False, 0
        for a in ops:
            try:
                host, path = self._at(a)
                text = self._read(host, path)
            except _PathError as e:
                out.append(f"cat: {a or repr('')}: {e}\n")
                failed = True
                continue
            self._show(host, path, sum(map(len, out)))
            if "n" in flags:  # numbered lines, the count running on across files
                lines = text.split("\n")
                text = "".join(f"{numbered + k:6d}\t{ln}\n" for k, ln in enumerate(lines[:-1], 1))
                text += f"{numbered + len(lines):6d}\t{lines[-1]}" if lines[-1] else ""
                numbered += len(lines) - (not lines[-1])
            out.append(text)
        text = "".join(out)
        if failed:
            raise SandboxError(text.rstrip("\n"))
        return text

    def _cmd_echo(self, args: list[str]) -> str:
        text_words: list[str] = []
        redirects: list[tuple[str, str]] = []
        i = 0
        while i < len(args):
            if args[i] in (">", ">>"):
                if i + 1 == len(args):
                    raise SandboxError("bash: syntax error near unexpected token `newline'")
                redirects.append((args[i], args[i + 1]))
                i += 2
            else:
                text_words.append(args[i])
                i += 1
        newline, escapes = True, False
        while text_words and re.fullmatch(r"-[neE]+", text_words[0]):
            for c in text_words.pop(0)[1:]:
                newline = newline and c != "n"
                escapes = c == "e" or (escapes and c != "E")
        text = " ".join(text_words)
        if escapes:
            text, stopped = _echo_escapes(text)
            newline = newline and not stopped
        if not redirects:
            return text
        text += "\n" if newline else ""
        for k, (op, target) in enumerate(redirects):  # bash opens each in turn; the last one gets the output
            try:
                host, path = self._at(target)
                old = self.hosts[host].get(path, "") if op == ">>" else ""
                self._write(host, path, old + text if k == len(redirects) - 1 else old)
            except _PathError as e:
                raise SandboxError(f"bash: {target}: {e}") from None
        return ""

    def _cmd_sed(self, args: list[str]) -> str:
        quiet = ere = False
        suffix: str | None = None  # -i's backup suffix ('' for none); None: print instead of editing in place
        scripts: list[str] = []
        ops: list[str] = []
        i, end = 0, False
        while i < len(args):
            a = args[i]
            i += 1
            if end or a == "-" or not a.startswith("-"):
                ops.append(a)
            elif a == "--":
                end = True
            elif a.startswith("--"):
                name, eq, value = a[2:].partition("=")
                if name == "in-place":
                    suffix = value
                elif name == "regexp-extended":
                    ere = True
                elif name in ("quiet", "silent"):
                    quiet = True
                elif name == "expression":
                    if not eq and i == len(args):
                        raise SandboxError("sed: option '--expression' requires an argument")
                    scripts.append(value if eq else args[i])
                    i += 0 if eq else 1
                elif name not in ("posix", "separate", "unbuffered", "debug", "sandbox", "follow-symlinks"):
                    raise SandboxError(f"sed: unrecognized option '{a}'")
            else:
                for k, c in enumerate(a[1:], 2):
                    if c == "i":
                        suffix = a[k:]
                        break
                    if c == "e":
                        if a[k:]:
                            scripts.append(a[k:])
                        elif i < len(args):
                            scripts.append(args[i])
                            i += 1
                        else:
                            raise SandboxError("sed: option requires an argument -- 'e'")
                        break
                    if c in "Er":
                        ere = True
                    elif c == "n":
                        quiet = True
                    elif c not in "su":
                        raise SandboxError(f"sed: invalid option -- '{c}'")
        if not scripts:
            if not ops:
                raise SandboxError("Usage: sed [OPTION]... {script-only-if-no-other-script} [input-file]...")
            scripts.append(ops.pop(0))
        if not ops:
            raise SandboxError("sed: no input files (there is no standard input here)")
        cmds = _sed_parse("\n".join(scripts), ere)
        deadline = time.process_time() + SED_SECONDS
        errors: list[str] = []
        try:
            if suffix is None:
                texts, shown = [], 0
                for a in ops:
                    try:
                        host, path = self._at(a)
                        texts.append(self._read(host, path))
                    except _PathError as e:
                        errors.append(f"sed: can't read {a}: {e}")
                        continue
                    if not quiet:
                        self._show(host, path, shown)
                        shown += len(texts[-1])
                out = _sed_apply(cmds, texts, quiet, deadline)
                if errors:
                    raise SandboxError("\n".join(([out.rstrip("\n")] if out else []) + errors))
                return out
            edits = []
            for a in ops:
                try:
                    host, path = self._at(a)
                    if self._need(host, path) == "dir":
                        errors.append(f"sed: couldn't edit {a}: not a regular file")
                        continue
                except _PathError as e:
                    errors.append(f"sed: can't read {a}: {e}")
                    continue
                text = self.hosts[host][path]
                edits.append((a, host, path, text, _sed_apply(cmds, [text], quiet, deadline)))
        except TimeoutError:
            raise SandboxError(
                f"sed: timed out (the sandbox allows {SED_SECONDS:g} CPU seconds of regular-expression "
                "work per command); nothing was changed"
            ) from None
        for a, host, path, old, new in edits:
            try:
                if suffix:
                    d, b = posixpath.split(path)
                    backup = posixpath.join(d, suffix.replace("*", b)) if "*" in suffix else path + suffix
                    self._write(host, self._norm(backup), old)
                self._write(host, path, new)
            except _PathError as e:
                errors.append(f"sed: couldn't edit {a}: {e}")
        if errors:
            raise SandboxError("\n".join(errors))
        return ""

    def _cmd_cp(self, args: list[str]) -> str:
        return self._transfer("cp", args)

    def _cmd_mv(self, args: list[str]) -> str:
        return self._transfer("mv", args)

    def _cmd_scp(self, args: list[str]) -> str:
        return self._transfer("scp", args)

    def _transfer(self, name: str, args: list[str]) -> str:
        """cp, mv and scp: each source to DST, or into DST when it is a directory; reports each source it
        could not copy or move, after doing the others."""
        flags, ops = _options(args)
        if name == "scp" and not any(":" in a for a in ops):
            name = "cp"  # scp between two local paths is cp, and says what cp says
        more = f"\nTry '{name} --help' for more information." if name != "scp" else ""
        if not ops:
            raise SandboxError(f"{name}: missing file operand{more}")
        if len(ops) == 1:
            raise SandboxError(f"{name}: missing destination file operand after '{ops[0]}'{more}")
        *srcs, dst = ops
        try:
            dh, dp = self._at(dst)
        except _PathError as e:
            raise SandboxError(f"{name}: {dst}: {e}") from None
        into = self._kind(dh, dp) == "dir"
        if len(srcs) > 1 and not into:
            why = ": No such file or directory" if self._kind(dh, dp) is None else " is not a directory"
            raise SandboxError(f"{name}: target '{dst}'{why}")
        recursive = name == "mv" or bool(flags & {"r", "R", "a", "recursive", "archive"})
        errors = []
        for src in srcs:
            try:
                self._transfer_one(name, src, dst, dh, dp, into, recursive)
            except SandboxError as e:
                errors.append(str(e))
        if errors:
            raise SandboxError("\n".join(errors))
        return ""

    def _transfer_one(
        self, name: str, src: str, dst: str, dh: str, dp: str, into: bool, recursive: bool
    ) -> None:
        move = name == "mv"
        try:
            sh, sp = self._at(src)
            kind = self._need(sh, sp)
        except _PathError as e:
            raise SandboxError(
                f"scp: {src}: {e}" if name == "scp" else f"{name}: cannot stat '{src}': {e}"
            ) from None
        if name != "scp" and sh != dh:
            what = "moves" if move else "copies"
            raise SandboxError(f"{name}: {what} stay on one host; use scp to copy between hosts")
        base = posixpath.basename(sp)
        fp, shown = dp, dst
        if into and base:
            fp = posixpath.join(dp, base) if dp else base
            shown = dst + ("" if dst.endswith("/") else "/") + base

        def dest_error(reason: str) -> SandboxError:
            return SandboxError(
                {
                    "cp": f"cp: cannot create regular file '{shown}': {reason}",
                    "mv": f"mv: cannot move '{src}' to '{shown}': {reason}",
                    "scp": f"scp: {shown}: {reason}",
                }[name]
            )

        if (sh, sp) == (dh, fp):
            raise SandboxError(f"{name}: '{src}' and '{shown}' are the same file")
        if kind == "file":
            if not into and dst.endswith("/"):
                raise dest_error("Not a directory")
            try:
                self._write(dh, fp, self.hosts[sh][sp])
            except _PathError as e:
                raise dest_error(str(e)) from None
            if move:
                del self.hosts[sh][sp]
            return
        if not recursive:
            raise SandboxError(f"{name}: -r not specified; omitting directory '{src}'")
        if move and not sp:
            raise dest_error("Device or resource busy")
        if sh == dh and (not sp or fp.startswith(sp + "/")):
            raise SandboxError(
                f"mv: cannot move '{src}' to a subdirectory of itself, '{shown}'"
                if move
                else f"{name}: cannot copy a directory, '{src}', into itself, '{shown}'"
            )
        there = self._kind(dh, fp)
        if there == "file":
            raise SandboxError(f"{name}: cannot overwrite non-directory '{shown}' with directory '{src}'")
        if move and there == "dir":
            raise dest_error("Directory not empty")
        entries = self._under(sh, sp)
        for rel, text in sorted(entries.items()):
            try:
                self._write(dh, f"{fp}/{rel}" if fp else rel, text)
            except _PathError as e:
                raise dest_error(str(e)) from None
        if move:
            for rel in entries:
                del self.hosts[sh][f"{sp}/{rel}"]

    def _cmd_rm(self, args: list[str]) -> str:
        flags, ops = _options(args)
        force = bool(flags & {"f", "force"})
        recursive = bool(flags & {"r", "R", "recursive"})
        if not ops:
            if force:
                return ""
            raise SandboxError("rm: missing operand\nTry 'rm --help' for more information.")
        errors = []
        for a in ops:
            try:
                host, path = self._at(a)
                kind = self._need(host, path)
            except _PathError as e:
                if not (force and str(e) == "No such file or directory"):
                    errors.append(f"rm: cannot remove '{a}': {e}")
                continue
            if kind == "file":
                del self.hosts[host][path]
            elif not recursive:
                errors.append(f"rm: cannot remove '{a}': Is a directory")
            elif posixpath.basename(a.split(":", 1)[-1].rstrip("/")) in (".", ".."):
                errors.append(f"rm: refusing to remove '.' or '..' directory: skipping '{a}'")
            elif not path and "no-preserve-root" not in flags:
                errors.append(
                    f"rm: it is dangerous to operate recursively on '{a}'\n"
                    "rm: use --no-preserve-root to override this failsafe"
                )
            else:
                for rel in self._under(host, path):
                    del self.hosts[host][f"{path}/{rel}" if path else rel]
        if errors:
            raise SandboxError("\n".join(errors))
        return ""

    # ---- for scorers --------------------------------------------------------------------------------

    def was_read(self, host: str, path: str) -> bool:
        """Whether some command showed the agent the text of ``path`` (normalised) on ``host`` — ``cat``, or
        ``sed`` printing it — resolved from the command's own words, so ``"p"``, ``'p'``, ``./p`` and ``/p``
        count alike, whether or not another operand of the command failed."""
        return any((host, path) in a.shown for a in self.log)

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


_ECHO = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}


def _echo_escapes(text: str) -> tuple[str, bool]:
    """bash's ``echo -e`` escapes expanded; (text, whether ``\\c`` stopped the output there)."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if c != "\\" or not nxt:
            out.append(c)
            i += 1
        elif nxt == "c":
            return "".join(out), True
        elif nxt in _ECHO:
            out.append(_ECHO[nxt])
            i += 2
        elif nxt in "0x":
            digits = re.match(r"[0-7]{0,3}" if nxt == "0" else r"[0-9A-Fa-f]{1,2}", text[i + 2 :]).group()
            if nxt == "x" and not digits:
                out.append(c)
                i += 1
                continue
            out.append(chr(int(digits or "0", 8 if nxt == "0" else 16)))
            i += 2 + len(digits)
        else:
            out.append(c)
            i += 1
    return "".join(out), False


# ---- sed ------------------------------------------------------------------------------------------------


@dataclass
class _SedCmd:
    op: str  # "s", "y", "d" or "p"
    addr: tuple  # () or (a1,) or (a1, a2): a line number, "$", or a compiled regular expression
    negate: bool = False
    rx: object = None  # s: the compiled regular expression
    repl: list = field(default_factory=list)  # s: literal strings and group numbers
    nth: int = 1  # s: the first occurrence replaced
    glob: bool = False  # s: and every later one
    show: bool = False  # s: print the line when it replaced something
    table: dict = field(default_factory=dict)  # y: the transliteration


def _sed_error(msg: str) -> SandboxError:
    return SandboxError(f"sed: -e expression #1: {msg}")


def _bracket_end(p: str, i: int) -> int:
    """The index after the POSIX bracket expression starting at ``p[i] == '['``; raises for an unterminated
    one."""
    j = i + 1
    j += j < len(p) and p[j] == "^"
    j += j < len(p) and p[j] == "]"
    while j < len(p):
        if p[j] == "[" and j + 1 < len(p) and p[j + 1] in ":=.":
            close = p.find(p[j + 1] + "]", j + 2)
            if close < 0:
                break
            j = close + 2
        elif p[j] == "]":
            return j + 1
        else:
            j += 1
    raise _sed_error("unterminated address regex or `s' command (unmatched [)")


def _sed_until(s: str, i: int, delim: str, regexp: bool) -> tuple[str, int]:
    """The text from ``s[i]`` up to the unescaped ``delim`` (``\\delim`` becomes ``delim``, as GNU sed reads
    it; in a regular expression a bracket expression is read whole), and the index after the delimiter."""
    buf = []
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            buf.append(delim if s[i + 1] == delim else s[i : i + 2])
            i += 2
        elif c == delim:
            return "".join(buf), i + 1
        elif c == "[" and regexp:
            j = _bracket_end(s, i)
            buf.append(s[i:j])
            i = j
        else:
            buf.append(c)
            i += 1
    raise _sed_error("unterminated `s' command" if regexp or delim != "/" else "unterminated address regex")


_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "0-9A-Za-z",
    "upper": "A-Z",
    "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v",
    "blank": " \\t",
    "xdigit": "0-9A-Fa-f",
    "cntrl": "\\x00-\\x1f\\x7f",
    "print": "\\x20-\\x7e",
    "graph": "\\x21-\\x7e",
    "punct": "".join("\\" + c for c in string.punctuation),
}


def _set_char(c: str) -> str:
    return "\\" + c if c in "\\]^-[&~|" else c


def _bracket(p: str, i: int) -> tuple[str, int]:
    """The POSIX bracket expression at ``p[i] == '['`` as a Python character set, and the index after it (GNU
    sed: a backslash is literal there, except in ``\\n`` and ``\\t``)."""
    end = _bracket_end(p, i)
    body = p[i + 1 : end - 1]
    negate = body.startswith("^")
    body = body[negate:]
    out: list[str] = []
    j = 0
    while j < len(body):
        c = body[j]
        if c == "[" and body[j + 1 : j + 2] in (":", "=", "."):
            close = body.find(body[j + 1] + "]", j + 2)
            name, kind = body[j + 2 : close], body[j + 1]
            j = close + 2
            if kind == ":" and name not in _POSIX_CLASSES:
                raise _sed_error("Invalid character class name")
            out.append(_POSIX_CLASSES[name] if kind == ":" else "".join(map(_set_char, name)))
            continue
        if c == "\\" and body[j + 1 : j + 2] in ("n", "t"):
            c = _CHAR_ESCAPES[body[j + 1]]
            j += 1
        j += 1
        if body[j : j + 1] == "-" and j + 1 < len(body):
            out.append(_set_char(c) + "-" + _set_char(body[j + 1]))
            j += 2
        else:
            out.append(_set_char(c))
    return "[" + "^" * negate + "".join(out) + "]", end


_SAME = {
    "w": r"\w",
    "W": r"\W",
    "s": r"\s",
    "S": r"\S",
    "b": r"\b",
    "B": r"\B",
    "<": r"\b(?=\w)",
    ">": r"\b(?<=\w)",
    "`": r"\A",
    "'": r"\Z",
}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "f": "\f", "v": "\v", "r": "\r", "a": "\a"}


def _translate(p: str, ere: bool) -> str:
    """A POSIX regular expression as GNU sed reads it — basic (with GNU's ``\\+ \\? \\|``), or extended when
    ``ere`` — in the Python ``regex`` module's syntax, meaning the same (compile it with ``regex.POSIX`` for
    the leftmost-longest match); raises for what GNU sed rejects."""
    out: list[str] = []
    opens: list[int] = []  # where each open group starts in ``out``
    closed = 0  # groups closed so far (what a back-reference may name)
    atom = -1  # where the last atom starts in ``out``; -1: nothing a quantifier could repeat
    repeated = False  # the last atom already has a quantifier (a second one repeats both, as POSIX reads it)

    def emit_atom(x: str) -> None:
        nonlocal atom, repeated
        atom, repeated = len(out), False
        out.append(x)

    def emit_other(x: str) -> None:  # an anchor, a group's start, an alternation
        nonlocal atom
        atom = -1
        out.append(x)

    def emit_quantifier(q: str) -> None:
        nonlocal repeated
        if atom < 0:
            raise _sed_error("Invalid preceding regular expression")
        if repeated:  # in Python a second quantifier would make the first lazy or possessive
            out[atom:] = ["(?:" + "".join(out[atom:]) + ")"]
        out.append(q)
        repeated = True

    def close_group() -> None:
        nonlocal atom, repeated, closed
        if not opens:
            raise _sed_error("Unmatched ) or \\)")
        out.append(")")
        atom, repeated, closed = opens.pop(), False, closed + 1

    i, n = 0, len(p)
    start = True  # at the start of the expression, a group or an alternative (BRE: where '^' is an anchor)
    while i < n:
        c = p[i]
        was_start, start = start, False
        i += 1
        if c == "\\":
            if i == n:
                raise _sed_error("Trailing backslash")
            e = p[i]
            i += 1
            if not ere and e in "(|":
                if e == "(":
                    opens.append(len(out))
                emit_other(e)
                start = True
            elif not ere and e == ")":
                close_group()
            elif not ere and e in "+?":  # GNU's BRE operators; with nothing before them, literal
                emit_quantifier(e) if atom >= 0 else emit_atom(regex.escape(e))
            elif not ere and e == "{":
                m = re.match(r"(\d+(,\d*)?|,\d+)\\\}", p[i:])
                if not m:
                    raise _sed_error("Unmatched \\{ or invalid content of \\{\\}")
                emit_quantifier("{" + m.group(1) + "}")
                i += m.end()
            elif e in "123456789":
                if int(e) > closed:
                    raise _sed_error("Invalid back reference")
                emit_atom(f"(?:\\{e})")
            elif e in "<>bB`'":
                emit_other(_SAME[e])
            elif e in _SAME:
                emit_atom(_SAME[e])
            elif e in _CHAR_ESCAPES:
                emit_atom(regex.escape(_CHAR_ESCAPES[e]))
            elif e in "dox" and re.match({"d": "[0-9]", "o": "[0-7]", "x": "[0-9A-Fa-f]"}[e], p[i : i + 1]):
                digits = re.match(
                    {"d": "[0-9]{1,3}", "o": "[0-7]{1,3}", "x": "[0-9A-Fa-f]{1,2}"}[e], p[i:]
                ).group()
                emit_atom(regex.escape(chr(int(digits, {"d": 10, "o": 8, "x": 16}[e]))))
                i += len(digits)
            elif e == "c" and i < n:
                emit_atom(regex.escape(chr(ord(p[i].upper()) ^ 0x40)))
                i += 1
            else:
                emit_atom(regex.escape(e))
        elif c == "[":
            x, i = _bracket(p, i - 1)
            emit_atom(x)
        elif c == ".":
            emit_atom(".")
        elif c == "*" or (ere and c in "+?"):
            if atom < 0 and not ere:  # BRE: '*' with nothing before it is literal
                emit_atom(r"\*")
            else:
                emit_quantifier(c)
        elif ere and c == "{" and (m := re.match(r"(\d+(,\d*)?|,\d+)\}", p[i:])):
            emit_quantifier("{" + m.group())
            i += m.end()
        elif c == "^":
            if ere or was_start:
                emit_other("^")
                start = True
            else:
                emit_atom(r"\^")
        elif c == "$":
            if ere or i == n or p.startswith(("\\)", "\\|"), i):
                emit_other(r"\Z")
            else:
                emit_atom(r"\$")
        elif ere and c in "(|":
            if c == "(":
                opens.append(len(out))
            emit_other(c)
        elif ere and c == ")":
            close_group()
        else:
            emit_atom(regex.escape(c))
    if opens:
        raise _sed_error("Unmatched ( or \\(")
    return "".join(out)


def _sed_regex(pattern: str, ere: bool, icase: bool, last: list) -> object:
    """The compiled regular expression (the empty one: the last one before it, as in GNU sed)."""
    if not pattern:
        if not last:
            raise SandboxError("sed: no previous regular expression")
        return last[0]
    if len(pattern) > MAX_PATTERN:
        raise SandboxError(f"sed: pattern too long (the sandbox's limit is {MAX_PATTERN} characters)")
    try:
        flags = (
            regex.V0 | regex.POSIX | regex.DOTALL | (regex.IGNORECASE if icase else 0)
        )  # POSIX: leftmost longest
        rx = regex.compile(_translate(pattern, ere), flags)
    except regex.error as e:
        raise _sed_error(str(e)) from None
    last[:] = [rx]
    return rx


def _sed_address(s: str, i: int, ere: bool, last: list) -> tuple[object, int]:
    """(an address at ``s[i]`` or None, the index after it)."""
    if i < len(s) and s[i].isdigit():
        m = re.match(r"\d+", s[i:])
        if s[i + m.end() : i + m.end() + 1] == "~":
            raise SandboxError("sed: `first~step' addresses are not available in this shell")
        return int(m.group()), i + m.end()
    if s[i : i + 1] == "$":
        return "$", i + 1
    if s[i : i + 1] in ("/", "\\"):
        delim = "/" if s[i] == "/" else s[i + 1 : i + 2]
        i += 1 if s[i] == "/" else 2
        pattern, i = _sed_until(s, i, delim, True)
        icase = s[i : i + 1] == "I"
        return _sed_regex(pattern, ere, icase, last), i + icase
    return None, i


def _sed_parse(script: str, ere: bool) -> list[_SedCmd]:
    """The commands of a sed script (``;`` or newline between them); raises, worded as GNU sed, for a
    malformed one, and says so for a real sed command this shell does not have."""
    cmds: list[_SedCmd] = []
    last: list = []
    i, n = 0, len(script)
    while True:
        while i < n and script[i] in " \t\n;":
            i += 1
        if i == n:
            return cmds
        a1, i = _sed_address(script, i, ere, last)
        addr: tuple = () if a1 is None else (a1,)
        if a1 is not None and script[i : i + 1] == ",":
            a2, i = _sed_address(script, i + 1, ere, last)
            if a2 is None:
                raise _sed_error("unexpected `,'")
            addr = (a1, a2)
        if a1 == 0 and (len(addr) == 1 or isinstance(addr[1], (int, str))):
            raise _sed_error("invalid usage of line address 0")
        while i < n and script[i] in " \t":
            i += 1
        negate = script[i : i + 1] == "!"
        i += negate
        while i < n and script[i] in " \t":
            i += 1
        if i == n:
            raise _sed_error("missing command")
        cmd = _SedCmd(script[i], addr, negate)
        i += 1
        if cmd.op == "s":
            if i == n or script[i] in "\n\\":
                raise _sed_error("unterminated `s' command")
            delim = script[i]
            pattern, i = _sed_until(script, i + 1, delim, True)
            raw, i = _sed_until(script, i, delim, False)
            icase = False
            while i < n and script[i] not in " \t\n;}":
                c = script[i]
                if c.isdigit():
                    m = re.match(r"\d+", script[i:])
                    cmd.nth = int(m.group())
                    if cmd.nth == 0:
                        raise _sed_error("number option to `s' command may not be zero")
                    i += m.end()
                    continue
                if c == "g":
                    cmd.glob = True
                elif c == "p":
                    cmd.show = True
                elif c in "iI":
                    icase = True
                elif c in "ewmM":
                    raise _sed_error(f"unsupported option to `s' in this shell: {c}")
                else:
                    raise _sed_error("unknown option to `s'")
                i += 1
            cmd.rx = _sed_regex(pattern, ere, icase, last)
            cmd.repl = _sed_replacement(raw, cmd.rx.groups)
        elif cmd.op == "y":
            if i == n or script[i] in "\n\\":
                raise _sed_error("unterminated `y' command")
            delim = script[i]
            src, i = _sed_until(script, i + 1, delim, False)
            dst, i = _sed_until(script, i, delim, False)
            src, dst = (
                re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), x) for x in (src, dst)
            )
            if len(src) != len(dst):
                raise _sed_error("strings for `y' command are different lengths")
            cmd.table = str.maketrans(src, dst)
        elif cmd.op not in "dp":
            raise SandboxError(
                f"sed: only the s, y, d and p commands are available in this shell, not `{cmd.op}'"
            )
        while i < n and script[i] in " \t":
            i += 1
        if i < n and script[i] not in ";\n":
            raise _sed_error(f"extra characters after command: {script[i : i + 10]!r}")
        cmds.append(cmd)


def _sed_replacement(raw: str, groups: int) -> list:
    """An ``s`` replacement as literal strings and group numbers (``&`` and ``\\0``: the match; ``\\1``…)."""
    out: list = []
    buf: list[str] = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            e = raw[i + 1]
            i += 2
            if e.isdigit():
                if int(e) > groups:
                    raise _sed_error(f"invalid reference \\{e} on `s' command's RHS")
                out += ["".join(buf), int(e)]
                buf = []
            elif e in "ULEul":
                out += ["".join(buf), _CaseOp(e)]
                buf = []
            else:
                buf.append(_CHAR_ESCAPES.get(e, e))
            continue
        if c == "&":
            out += ["".join(buf), 0]
            buf = []
        else:
            buf.append(c)
        i += 1
    return [*out, "".join(buf)]


class _CaseOp(str):
    """GNU sed's case conversion in a replacement: ``\\U``/``\\L`` until ``\\E``, ``\\u``/``\\l`` the next
    character."""


def _sed_expand(repl: list, m) -> str:
    """A parsed replacement filled in from a match, GNU's case conversions applied."""
    out: list[str] = []
    mode = once = ""
    for p in repl:
        if isinstance(p, _CaseOp):
            if p in "ul":
                once = p
            else:
                mode, once = ("" if p == "E" else p), ""
            continue
        text = p if isinstance(p, str) else m.group(p) or ""
        text = text.upper() if mode == "U" else text.lower() if mode == "L" else text
        if once and text:
            text, once = (text[0].upper() if once == "u" else text[0].lower()) + text[1:], ""
        out.append(text)
    return "".join(out)


def _left(deadline: float) -> float:
    left = deadline - time.process_time()
    if left <= 0:
        raise TimeoutError
    return left


def _sed_subst(cmd: _SedCmd, text: str, deadline: float) -> tuple[str, bool]:
    """One ``s`` on one line, as GNU sed does it (an empty match right after a match is not one); (text,
    whether anything was replaced)."""
    out, pos, k, prev_end, at, done, size = [], 0, 0, -1, 0, False, 0
    while at <= len(text):
        m = cmd.rx.search(text, at, timeout=_left(deadline))
        if m is None:
            break
        s, e = m.span()
        if s == e == prev_end:
            at = s + 1
            continue
        k += 1
        if k >= cmd.nth:
            out += [text[pos:s], _sed_expand(cmd.repl, m)]
            pos, done, size = e, True, size + s - pos + len(out[-1])
            if size > MAX_SED_OUTPUT:
                raise SandboxError(
                    f"sed: output too large (the sandbox's limit is {MAX_SED_OUTPUT} characters); "
                    "nothing was changed"
                )
            if not cmd.glob:
                break
        prev_end = e
        at = e if e > s else e + 1
    if not done:
        return text, False
    return "".join(out) + text[pos:], True


def _sed_hit(
    cmd: _SedCmd, active: list[bool], k: int, lineno: int, text: str, last: bool, deadline: float
) -> bool:
    """Whether command ``k`` applies to this line (``active[k]``: inside its range)."""

    def hit(a) -> bool:
        if isinstance(a, int):
            return lineno == a
        if a == "$":
            return last
        return a.search(text, timeout=_left(deadline)) is not None

    if not cmd.addr:
        on = True
    elif len(cmd.addr) == 1:
        on = hit(cmd.addr[0])
    elif active[k]:
        on, end = True, cmd.addr[1]
        active[k] = not (lineno >= end if isinstance(end, int) else hit(end))
    elif hit(cmd.addr[0]):
        on, end = True, cmd.addr[1]
        active[k] = end > lineno if isinstance(end, int) else (not last if end == "$" else True)
    else:
        on = False
    return on != cmd.negate


def _sed_apply(cmds: list[_SedCmd], texts: list[str], quiet: bool, deadline: float) -> str:
    """The output of a sed script over the files' texts as one stream (a file's missing final newline is kept
    only at the very end); raises TimeoutError past ``deadline``."""
    lines: list[tuple[str, bool]] = []
    for k, text in enumerate(texts):
        if text:
            parts = text.split("\n")
            ends = text.endswith("\n")
            if ends:
                parts.pop()
            lines += [(p, True) for p in parts[:-1]] + [(parts[-1], ends or k < len(texts) - 1)]
    active = [c.addr[:1] == (0,) for c in cmds]  # GNU's 0,/re/: the range is open before line 1
    out: list[str] = []
    size = 0

    def emit(x: str) -> None:
        nonlocal size
        size += len(x)
        if size > MAX_SED_OUTPUT:
            raise SandboxError(
                f"sed: output too large (the sandbox's limit is {MAX_SED_OUTPUT} characters); "
                "nothing was changed"
            )
        out.append(x)

    for idx, (text, newline) in enumerate(lines):
        _left(deadline)
        last = idx == len(lines) - 1
        for k, cmd in enumerate(cmds):
            if not _sed_hit(cmd, active, k, idx + 1, text, last, deadline):
                continue
            if cmd.op == "d":
                break
            if cmd.op == "p":
                emit(text + "\n")
            elif cmd.op == "y":
                text = text.translate(cmd.table)
            else:
                text, replaced = _sed_subst(cmd, text, deadline)
                if replaced and cmd.show:
                    emit(text + "\n")
        else:
            if not quiet:
                emit(text + "\n" * newline)
    return "".join(out)

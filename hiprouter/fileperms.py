"""Files only for the service: the modes of everything the server creates.

Spool, quarantine, outputs and the SQLite database hold patient images and headers, so
the server makes its files 0600 and its folders 0700 whatever umask it was started with
(a shell's usual 022 would make them world-readable). With `storage.group` set they are
0640 and 0750 instead, owned by that group, and folders carry the set-group-ID bit so new
files inherit the group (e.g. a backup or viewer account in that group may read them).

`apply()` is called once by the processes that write (`serve`, `worker`, the demo): it
sets the process umask to match (so files made by libraries, such as SQLite's -wal and
-shm files, follow too) and remembers the modes. Writers then create files with
`file_mode()` and folders with `make_dirs()`, and `tighten()` puts existing ones right at
start-up (files of an earlier run under another umask).
"""

from __future__ import annotations

import grp
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Modes:
    file: int
    dir: int
    gid: int | None = None
    group: str | None = None

    @property
    def umask(self) -> int:
        return 0o027 if self.gid is not None else 0o077


PRIVATE = Modes(file=0o600, dir=0o700)
_current = PRIVATE


class GroupError(ValueError):
    """`storage.group` names no group, or one this process may not hand files to."""


def modes_for(group: str | None) -> Modes:
    """The modes for `storage.group` (None: owner only)."""
    if not group:
        return PRIVATE
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise GroupError(f"storage.group: no group {group!r} on this host") from exc
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise GroupError(f"storage.group: this process (uid {os.geteuid()}) is not a "
                         f"member of group {group!r}, so it cannot give files to it")
    return Modes(file=0o640, dir=0o2750, gid=gid, group=group)


def apply(group: str | None = None) -> Modes:
    """Use the modes for `group` from now on and set the process umask to match."""
    global _current
    _current = modes_for(group)
    os.umask(_current.umask)
    return _current


def current() -> Modes:
    return _current


def file_mode() -> int:
    """Mode for `os.open(..., O_CREAT, file_mode())` (the umask cannot widen it)."""
    return _current.file


def secure(path: str | Path, *, folder: bool = False) -> None:
    """Give an existing file or folder the service's mode (and group)."""
    modes = _current
    os.chmod(path, modes.dir if folder else modes.file)
    if modes.gid is not None:
        os.chown(path, -1, modes.gid)


def secure_fd(fd: int) -> None:
    """The same for an open file (e.g. from `tempfile.mkstemp`, which makes 0600)."""
    modes = _current
    os.fchmod(fd, modes.file)
    if modes.gid is not None:
        os.fchown(fd, -1, modes.gid)


def make_dirs(path: str | Path) -> Path:
    """`mkdir -p` where every folder this call creates gets the service's mode; a folder
    that exists already is left as it is (it may be a shared parent such as /var/lib)."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        secure(folder, folder=True)
    return path


def tighten(root: str | Path, *, recursive: bool = False) -> int:
    """Give `root` (a folder the service owns: spool, outputs) and, with `recursive`,
    everything below it the service's modes; returns how many modes were changed."""
    root = Path(root)
    if not root.exists():
        return 0
    changed = 0
    entries = [root]
    if recursive:
        entries += list(root.rglob("*"))
    modes = _current
    for entry in entries:
        try:
            st = entry.lstat()
        except FileNotFoundError:
            continue
        if entry.is_symlink():
            continue
        folder = entry.is_dir()
        want = modes.dir if folder else modes.file
        if (st.st_mode & 0o7777) != want or (modes.gid is not None and st.st_gid != modes.gid):
            try:
                secure(entry, folder=folder)
                changed += 1
            except FileNotFoundError:
                continue
    return changed

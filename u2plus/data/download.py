"""Resumable, verified downloads and all-or-nothing archive extraction (``u2plus data prepare``).

A download writes ``NAME.part`` and continues it with an HTTP Range request when run again; only
a verified file gets its final name, so a file under its final name is complete. A checksum or
size that does not match removes the file and raises a DataError. An archive is unpacked into a
hidden folder beside its destination and moved into place once every expected file is there; a
folder the user extracted by hand (RAR) is moved into place only once its file counts hold.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional, Sequence
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from ..errors import DataError

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without data before a download counts as interrupted
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error)


@dataclass(frozen=True)
class Expected:
    """What a file must be: its size and/or a checksum its source publishes (MD5 of the file, or
    the git blob SHA-1 of a file in a git repository)."""

    size: Optional[int] = None
    md5: Optional[str] = None
    git_sha1: Optional[str] = None


def file_problem(path: Path, expected: Expected) -> Optional[str]:
    """Why ``path`` is not the expected file, or None."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"{size} bytes, expected {expected.size}"
    if expected.md5 or expected.git_sha1:
        digest = hashlib.md5() if expected.md5 else hashlib.sha1(b"blob %d\0" % size)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        want = expected.md5 or expected.git_sha1
        if digest.hexdigest() != want:
            kind = "MD5" if expected.md5 else "git SHA-1"
            return f"{kind} {digest.hexdigest()}, expected {want} (corrupt or truncated)"
    return None


def download(url: str, dest: Path, expected: Expected = Expected(), bar: Optional[tqdm] = None) -> Path:
    """``url`` -> ``dest``, resumable and verified; a present ``dest`` is verified, not fetched.

    ``bar``: a shared progress bar to advance (else one is shown for this file).
    """
    dest = Path(dest)
    if dest.is_file():
        return verified(dest, expected, f"rerun to download it again from {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "u2plus", **({"Range": f"bytes={start}-"} if start else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT)
    except HTTPError as e:
        if e.code != 416 or not start:  # 416: nothing left after the bytes already here
            raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        response = None
    except (URLError, OSError) as e:
        raise DataError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    if response is not None:
        with response:
            if start and response.status != 206:  # the server ignored the Range request
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length else None
            own_bar = bar is None
            if own_bar:
                bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=dest.name)
            try:
                with open(part, "ab" if start else "wb") as f:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise DataError(f"download of {url} interrupted after {part.stat().st_size} bytes "
                                f"({e.__class__.__name__}); run the command again to resume") from None
            finally:
                if own_bar:
                    bar.close()
        if total is not None and part.stat().st_size < total:
            raise DataError(f"download of {url} stopped after {part.stat().st_size} of {total} bytes; "
                            "run the command again to resume")
    verified(part, expected, "run the command again to download it again")
    part.rename(dest)
    return dest


def verified(path: Path, expected: Expected, retry: str) -> Path:
    """``path`` if it is the expected file; else it is removed and a DataError says why."""
    problem = file_problem(path, expected)
    if problem:
        path.unlink()
        raise DataError(f"{path}: {problem}; removed it, {retry}")
    return path


def corrupt_archive(archive: Path, error: Exception) -> DataError:
    archive.unlink(missing_ok=True)
    reason = " ".join(str(error).split()) or error.__class__.__name__
    return DataError(f"cannot read archive {archive} ({reason}): corrupt or truncated; removed it, "
                     "download it again")


def unpack(archive: Path, dest: Path, select: Callable[[str], Optional[str]],
           expect: dict[str, int], convert: Optional[Callable[[Path], None]] = None,
           parts: Sequence[Path] = ()) -> None:
    """Extract the members (of a .zip, else a possibly compressed .tar) ``select`` maps to a relative path (None: skipped) into ``dest``.

    Everything is written into a hidden staging folder first; ``expect`` (glob pattern ->
    number of files) is checked there, ``convert`` runs there, and only then do the top-level
    folders move into ``dest`` (replacing older copies). A corrupt archive, or one whose counts
    are off, is removed with a DataError; the staging folder never survives a failure.

    ``parts``: more archives of a dataset published in parts, extracted into the same staging
    folder; ``expect`` counts what they all yield together. Counts that are off then remove no
    archive (which one is short cannot be known): the error lists what each one yielded.
    """
    stage = dest / f".staging-{archive.name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yielded = {a.name: _extract(a, stage, select) for a in (archive, *parts)}
        counts = {pattern: sum(1 for _ in stage.glob(pattern)) for pattern in expect}
        wrong = [f"{counts[p]} files {p} (expected {n})" for p, n in expect.items() if counts[p] != n]
        if wrong and parts:
            each = ", ".join(f"{name} {n}" for name, n in yielded.items())
            raise DataError(f"archives {archive.name} .. {parts[-1].name} hold {', '.join(wrong)} together "
                            f"(files taken from each: {each}): one is incomplete or not the published "
                            "archive; download it again (nothing was removed or moved into place)")
        if wrong:
            archive.unlink()
            raise DataError(f"archive {archive} holds {', '.join(wrong)}: incomplete or not the published "
                            "archive; removed it, download it again")
        if convert is not None:
            convert(stage)
        for item in stage.iterdir():
            target = dest / item.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            item.rename(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _extract(archive: Path, stage: Path, select: Callable[[str], Optional[str]]) -> int:
    """The members ``select`` maps, written under ``stage``; returns how many."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                infos = [(i, select(i.filename)) for i in z.infolist() if not i.is_dir()]
                chosen = [x for x in infos if x[1]]
                for info, rel in tqdm(chosen, desc=f"unpacking {archive.name}", unit="file"):
                    target = stage / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
            return len(chosen)
        with tarfile.open(archive) as t:
            bar = tqdm(desc=f"unpacking {archive.name}", unit="file")
            for member in t:
                rel = select(member.name) if member.isfile() else None
                if rel:
                    member.name = rel
                    t.extract(member, stage, filter="data")
                    bar.update()
            bar.close()
            return bar.n
    except ARCHIVE_ERRORS as e:
        raise corrupt_archive(archive, e) from None


def _matches(rel: PurePosixPath, pattern: str) -> bool:
    """Whether ``dest.glob(pattern)`` would find the file at ``rel`` (relative to ``dest``)."""
    return len(rel.parts) == len(PurePosixPath(pattern).parts) and rel.match(pattern)


def move_extracted(dest: Path, folder: str, select: Callable[[str], Optional[str]],
                   expect: dict[str, int]) -> bool:
    """Move into ``dest`` the files of ``dest/folder``, an archive the user extracted by hand
    (a format the standard library cannot read, such as RAR), that ``select`` maps: it gets their
    path relative to ``dest`` as an archive member name. Returns False when nothing of ``folder``
    is there. Extractors that keep an archive's Windows separators leave files named
    ``folder\\A\\B.png`` in ``dest``: they count as ``folder/A/B.png``.

    Nothing moves unless ``expect`` (glob pattern -> number of files) holds for the result, the
    files already in place plus those to move; else a DataError, and nothing is removed. Each file
    moves by one rename (no copy), so an interrupted run leaves counts that do not hold (nothing
    half-moved looks complete) and the next run moves the rest. Folders the move empties go.
    """
    root = dest / folder
    found = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    found += [p for p in dest.iterdir() if p.name.startswith(folder + "\\") and p.is_file()]
    if not found:
        return False
    moves = {}
    for path in found:
        rel = select(path.relative_to(dest).as_posix().replace("\\", "/"))
        if rel:
            moves[PurePosixPath(rel)] = path
    counts = {p: len({q.relative_to(dest).as_posix() for q in dest.glob(p)}
                     | {r.as_posix() for r in moves if _matches(r, p)}) for p in expect}
    wrong = [f"{counts[p]} files {p} (expected {n})" for p, n in expect.items() if counts[p] != n]
    if wrong:
        raise DataError(f"{root} with what is already in {dest} gives {', '.join(wrong)}: not extracted "
                        "completely, or not the published archive; nothing was moved, extract it again")
    for rel, path in tqdm(sorted(moves.items()), desc=f"moving {folder}", unit="file"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        path.replace(dest / rel)
    if root.is_dir():
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
        if not any(root.iterdir()):
            root.rmdir()
    return True

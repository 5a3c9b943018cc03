"""`zguard-manifest.json`: every file of a model directory by relative path, size and SHA-256.

The manifest's `digest` is the SHA-256 of its canonical JSON (sorted keys, no spaces) without
the `digest` and `signature` fields; it names the model's exact content and is what the audit
trail records. It holds no timestamp, so the same files always give the same digest. An optional
Ed25519 `signature` signs the digest.

Checks, each reported as a `ManifestProblem` naming the file:
    manifest_missing / manifest_invalid   no manifest, or one that does not parse or whose digest is wrong
    bad_signature / unsigned              a public key was given and the signature is wrong or absent
    missing / extra                       a pinned file is gone, or a file is there that is not pinned
    size_changed / changed                a file's size or SHA-256 differs from the pinned one
    symlink_escapes                       a symlink resolves outside the directory (inside ones are followed)
    pickle_weights                        a pickle-format file (.bin .pt .pth .ckpt .pkl), pinned or not
    not_regular                           a FIFO, socket or device, or a dangling symlink
    unreadable                            a file or folder this account cannot read (permission denied)

`check_layout` does every check but the hashes (stat only, cheap); `verify` adds the hashes.
`VerifiedReader` reads a file once, hashing while reading, and returns the bytes only when they
match the pin: loading from those bytes is what makes the check and the load one and the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zguard.errors import EXIT_NO, OperatorError
from zguard.security.keys import key_id

MANIFEST_FILE = "zguard-manifest.json"
FORMAT = "zguard-model-manifest/1"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl"})
SIGNATURE_CONTEXT = b"zguard model manifest v1\n"
READ_CHUNK = 8 * 1024 * 1024  # large reads: hashlib releases the GIL, the kernel reads ahead
HASH_THREADS = 4  # files hashed at once by `verify`; one file is always read by one thread

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

FIX_REPIN = (
    "if the change was intended, re-pin with `zguard model pin DIR`; otherwise restore the file from a trusted copy"
)
FIXES = {
    "manifest_missing": "pin the model with `zguard model pin DIR` (or set model.manifest_required: false to serve it unpinned)",
    "manifest_invalid": "re-pin with `zguard model pin DIR` from a trusted copy of the model",
    "bad_signature": "re-pin and sign with `zguard model pin DIR --key FILE` using the key whose public half model.manifest_public_key names",
    "unsigned": "sign the manifest: `zguard model pin DIR --key FILE`",
    "missing": FIX_REPIN,
    "extra": "remove the file, or re-pin with `zguard model pin DIR` if it belongs to the model",
    "size_changed": FIX_REPIN,
    "changed": FIX_REPIN,
    "symlink_escapes": "replace the link with a copy of its target (e.g. `cp -rL`), so every file lives inside the model directory",
    "pickle_weights": "delete the file: zguard loads safetensors only (convert pickle weights to safetensors first)",
    "not_regular": "remove it: a model directory holds regular files and directories only",
    "unreadable": "let the service account read the model: chown -R root:SERVICE-GROUP DIR && chmod -R u=rwX,g=rX,o= DIR "
    "(zguard install does this)",
}


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, '/'-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class ManifestProblem:
    code: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"

    @property
    def fix(self) -> str:
        return FIXES.get(self.code, FIX_REPIN)


class ManifestError(OperatorError):
    """The model directory does not match its manifest; `problems` names each file and why."""

    code = "model_manifest_mismatch"
    exit_code = EXIT_NO
    fix = "restore the pinned files from the release, or after an approved change re-pin: `zguard model pin DIR --key KEY`"

    def __init__(
        self, model_dir: Path, problems: Iterable[ManifestProblem], headline: str = "does not match its manifest"
    ) -> None:
        self.model_dir = model_dir
        self.problems = tuple(problems)
        self.headline = headline
        super().__init__(self._describe())

    def _describe(self) -> str:
        shown = self.problems[:10]
        more = len(self.problems) - len(shown)
        fixes = dict.fromkeys(problem.fix for problem in shown)
        lines = [f"model directory {self.model_dir} {self.headline} ({MANIFEST_FILE}):"]
        lines += [f"  {problem.code}: {problem}" for problem in shown]
        if more:
            lines.append(f"  ... and {more} more")
        lines += [f"  fix: {fix}" for fix in fixes]
        return "\n".join(lines)


@dataclass(frozen=True)
class ModelManifest:
    files: tuple[FileEntry, ...]
    digest: str
    signature: dict[str, str] | None = None  # {"key_id", "ed25519"}

    @staticmethod
    def body(files: Iterable[FileEntry]) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "files": [
                {"path": f.path, "size": f.size, "sha256": f.sha256} for f in sorted(files, key=lambda f: f.path)
            ],
        }

    @classmethod
    def of(cls, files: Iterable[FileEntry], key: Ed25519PrivateKey | None = None) -> ModelManifest:
        entries = tuple(sorted(files, key=lambda f: f.path))
        digest = body_digest(cls.body(entries))
        signature = None
        if key is not None:
            signature = {
                "key_id": key_id(key.public_key()),
                "ed25519": key.sign(SIGNATURE_CONTEXT + digest.encode()).hex(),
            }
        return cls(files=entries, digest=digest, signature=signature)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def to_json(self) -> str:
        document: dict[str, Any] = {**self.body(self.files), "digest": self.digest}
        if self.signature is not None:
            document["signature"] = self.signature
        return json.dumps(document, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        """Parse a manifest; ValueError when it is malformed or its digest does not match its body."""
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        try:
            files = tuple(FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in document["files"])
            digest = str(document["digest"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed: {type(exc).__name__} {exc}") from None
        if body_digest(cls.body(files)) != digest:
            raise ValueError("its digest does not match its file list (edited after pinning)")
        signature = document.get("signature")
        if signature is not None and not (isinstance(signature, dict) and {"key_id", "ed25519"} <= signature.keys()):
            raise ValueError("malformed signature block")
        return cls(files=files, digest=digest, signature=signature)

    def signature_problem(self, public_key: Ed25519PublicKey) -> ManifestProblem | None:
        if self.signature is None:
            return ManifestProblem(
                "unsigned", MANIFEST_FILE, "the manifest is not signed, and a public key is configured"
            )
        try:
            public_key.verify(bytes.fromhex(self.signature["ed25519"]), SIGNATURE_CONTEXT + self.digest.encode())
        except (InvalidSignature, ValueError):
            return ManifestProblem(
                "bad_signature",
                MANIFEST_FILE,
                f"the signature does not verify with the public key {key_id(public_key)} "
                f"(signed by key {self.signature.get('key_id', '?')})",
            )
        return None


def body_digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- the directory ---------------------------------------------------------------------------


@dataclass
class ModelLayout:
    """What a model directory holds: regular files by relative path (symlinks inside resolved)."""

    files: dict[str, Path] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    problems: list[ManifestProblem] = field(default_factory=list)


def scan(model_dir: Path) -> ModelLayout:
    """Walk `model_dir` without following a link out of it; the manifest file itself is left out."""
    root = Path(model_dir).resolve(strict=True)
    layout = ModelLayout()
    seen_dirs = {root}
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError as exc:  # a finding, not a crash: the files below it are not "missing"
            layout.problems.append(
                ManifestProblem("unreadable", prefix.rstrip("/") or ".", f"cannot list it ({exc.strerror})")
            )
            continue
        for entry in listed:
            rel = prefix + entry.name
            if rel == MANIFEST_FILE:
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    layout.problems.append(
                        ManifestProblem("symlink_escapes", rel, f"a symlink to {target}, outside {root}")
                    )
                    continue
                path = target
            try:
                st = path.stat()
            except OSError:
                layout.problems.append(ManifestProblem("not_regular", rel, "a dangling symlink"))
                continue
            if stat.S_ISDIR(st.st_mode):
                if path.resolve() not in seen_dirs:  # a link back up would loop
                    seen_dirs.add(path.resolve())
                    stack.append((path, rel + "/"))
            elif not stat.S_ISREG(st.st_mode):
                layout.problems.append(ManifestProblem("not_regular", rel, "not a regular file"))
            else:
                layout.files[rel] = path
                layout.sizes[rel] = st.st_size
    for rel in layout.files:
        if Path(rel).suffix.lower() in PICKLE_SUFFIXES:
            layout.problems.append(
                ManifestProblem("pickle_weights", rel, "pickle-format weights, refused whether pinned or not")
            )
    return layout


def read_manifest(model_dir: Path) -> ModelManifest:
    """The manifest of `model_dir`; ManifestError (manifest_missing / manifest_invalid) otherwise."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(model_dir, [ManifestProblem("manifest_missing", MANIFEST_FILE, "no manifest")]) from None
    except PermissionError as exc:
        raise ManifestError(
            model_dir, [ManifestProblem("unreadable", MANIFEST_FILE, f"cannot read it ({exc.strerror})")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(
            model_dir, [ManifestProblem("manifest_invalid", MANIFEST_FILE, f"unreadable: {exc}")]
        ) from None
    try:
        return ModelManifest.from_json(text)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ManifestError(model_dir, [ManifestProblem("manifest_invalid", MANIFEST_FILE, str(exc))]) from None


def compare(manifest: ModelManifest, layout: ModelLayout) -> list[ManifestProblem]:
    """Missing, extra and resized files (stat only)."""
    pinned = manifest.by_path()
    reported = {problem.path for problem in layout.problems}  # a link leading out is not also "missing"
    unlisted = tuple(p.path + "/" for p in layout.problems if p.code == "unreadable" and p.path != ".")
    problems = []
    for rel, entry in pinned.items():
        if rel not in layout.files:
            if rel not in reported and not rel.startswith(unlisted) and "." not in reported:
                problems.append(ManifestProblem("missing", rel, "pinned in the manifest but not in the directory"))
        elif layout.sizes[rel] != entry.size:
            problems.append(ManifestProblem("size_changed", rel, f"{layout.sizes[rel]} bytes, pinned at {entry.size}"))
    problems += [
        ManifestProblem("extra", rel, "not in the manifest")
        for rel in layout.files
        if rel not in pinned and rel not in reported
    ]
    return problems


def check_layout(model_dir: Path, public_key: Ed25519PublicKey | None = None) -> tuple[ModelManifest, ModelLayout]:
    """Every check but the hashes. Raises ManifestError naming each problem."""
    manifest = read_manifest(model_dir)
    layout = scan(model_dir)
    problems = list(layout.problems)
    if public_key is not None and (bad := manifest.signature_problem(public_key)) is not None:
        problems.insert(0, bad)
    problems += compare(manifest, layout)
    if problems:
        raise ManifestError(model_dir, problems)
    return manifest, layout


# --- hashing -----------------------------------------------------------------------------------


class ProgressCounter:
    """Thread-safe running total passed on to a `Progress` callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done = total, 0
        self._progress = progress
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._progress is not None:
                self._progress(self.done, self.total)


def _chunks(path: Path, buffer: bytearray) -> Iterator[memoryview]:
    """The bytes of `path` in chunks read into `buffer` (re-used: consume each before the next)."""
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while n := handle.readinto(view):
            yield view[:n]


def hash_file(path: Path, counter: ProgressCounter | None = None, chunk: int = READ_CHUNK) -> tuple[str, int]:
    """(SHA-256 hex, size) of `path`, read once in large chunks."""
    digest = hashlib.sha256()
    size = 0
    for piece in _chunks(path, bytearray(chunk)):
        digest.update(piece)
        size += len(piece)
        if counter is not None:
            counter.add(len(piece))
    return digest.hexdigest(), size


def _hash_or_problem(rel: str, path: Path, counter: ProgressCounter) -> tuple[str, int] | ManifestProblem:
    try:
        return hash_file(path, counter)
    except OSError as exc:
        return ManifestProblem("unreadable", rel, f"cannot read it ({exc.strerror})")


def _hash_all(
    layout: ModelLayout, progress: Progress | None, threads: int
) -> tuple[dict[str, tuple[str, int]], list[ManifestProblem]]:
    """(SHA-256 and size by relative path, the files that could not be read)."""
    counter = ProgressCounter(sum(layout.sizes.values()), progress)
    # Largest first, so the last file to finish is a small one and no thread idles at the end.
    order = sorted(layout.files, key=lambda rel: -layout.sizes[rel])
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = dict(
            zip(order, pool.map(lambda rel: _hash_or_problem(rel, layout.files[rel], counter), order), strict=True)
        )
    hashes = {rel: result for rel, result in results.items() if not isinstance(result, ManifestProblem)}
    return hashes, sorted((r for r in results.values() if isinstance(r, ManifestProblem)), key=lambda p: p.path)


def pin(
    model_dir: Path,
    key: Ed25519PrivateKey | None = None,
    *,
    progress: Progress | None = None,
    threads: int = HASH_THREADS,
) -> ModelManifest:
    """Hash every file of `model_dir` and write its manifest (replacing any). Refuses (ManifestError)
    a directory with pickle weights, links leading out, or special files: those are never pinned."""
    model_dir = Path(model_dir)
    layout = scan(model_dir)
    if layout.problems:
        raise ManifestError(model_dir, layout.problems, "cannot be pinned")
    hashes, unreadable = _hash_all(layout, progress, threads)
    if unreadable:
        raise ManifestError(model_dir, unreadable, "cannot be pinned")
    manifest = ModelManifest.of((FileEntry(rel, size, sha) for rel, (sha, size) in hashes.items()), key)
    staging = model_dir / f".{MANIFEST_FILE}.tmp"
    staging.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(staging, model_dir / MANIFEST_FILE)
    return manifest


@dataclass(frozen=True)
class VerifyReport:
    model_dir: Path
    manifest: ModelManifest | None
    problems: tuple[ManifestProblem, ...]
    bytes_hashed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> ModelManifest:
        if self.problems or self.manifest is None:
            raise ManifestError(self.model_dir, self.problems)
        return self.manifest


def verify(
    model_dir: Path,
    public_key: Ed25519PublicKey | None = None,
    *,
    progress: Progress | None = None,
    threads: int = HASH_THREADS,
) -> VerifyReport:
    """Check `model_dir` against its manifest: layout, signature, then every file's SHA-256."""
    model_dir = Path(model_dir)
    try:
        manifest = read_manifest(model_dir)
    except ManifestError as exc:
        return VerifyReport(model_dir, None, exc.problems)
    layout = scan(model_dir)
    problems = list(layout.problems)
    if public_key is not None and (bad := manifest.signature_problem(public_key)) is not None:
        problems.insert(0, bad)
    problems += compare(manifest, layout)
    pinned = manifest.by_path()
    hashable = ModelLayout(
        files={rel: p for rel, p in layout.files.items() if rel in pinned and layout.sizes[rel] == pinned[rel].size},
        sizes=layout.sizes,
    )
    hashes, unreadable = _hash_all(hashable, progress, threads)
    problems += unreadable
    problems += [
        ManifestProblem("changed", rel, f"SHA-256 {sha[:16]}..., pinned {pinned[rel].sha256[:16]}...")
        for rel, (sha, _size) in sorted(hashes.items())
        if sha != pinned[rel].sha256
    ]
    return VerifyReport(model_dir, manifest, tuple(problems), sum(size for _sha, size in hashes.values()))


class VerifiedReader:
    """Reads the pinned files of a checked directory, each once, hashing while reading.

    `read(rel)` returns the file's bytes only when their size and SHA-256 match the pin, else
    raises ManifestError: what the caller loads is exactly what was hashed. `bytes_read` counts
    every byte read from the directory (the benchmark's read amplification).

    Memory: a file is read as a list of chunks and joined, so for a moment it is held twice;
    the chunks go as soon as the joined copy exists.
    """

    def __init__(
        self, model_dir: Path, manifest: ModelManifest | None, layout: ModelLayout, progress: Progress | None = None
    ) -> None:
        """`manifest` None: an unpinned model (model.manifest_required false); sizes from `layout`, no hashes compared."""
        self.model_dir = Path(model_dir)
        self._check_hash = manifest is not None
        self._pinned = (
            manifest.by_path()
            if manifest is not None
            else {rel: FileEntry(rel, size, "") for rel, size in layout.sizes.items()}
        )
        self._paths = layout.files
        self.paths = tuple(sorted(self._pinned))
        self._counter = ProgressCounter(sum(entry.size for entry in self._pinned.values()), progress)
        self.bytes_read = 0

    def read(self, rel: str) -> bytes:
        entry = self._pinned.get(rel)
        if entry is None or rel not in self._paths:
            raise ManifestError(self.model_dir, [ManifestProblem("extra", rel, "not in the manifest")])
        digest = hashlib.sha256()
        pieces: list[bytes] = []
        size = 0
        try:
            handle = self._paths[rel].open("rb", buffering=0)
        except OSError as exc:
            raise ManifestError(
                self.model_dir, [ManifestProblem("unreadable", rel, f"cannot read it ({exc.strerror})")]
            ) from None
        with handle:
            # One byte past the pinned size, so a file that grew is noticed without reading all of it.
            while size <= entry.size and (piece := handle.read(min(READ_CHUNK, entry.size + 1 - size))):
                digest.update(piece)
                pieces.append(piece)
                size += len(piece)
                self.bytes_read += len(piece)
                self._counter.add(len(piece))
        if size != entry.size:
            raise ManifestError(
                self.model_dir, [ManifestProblem("size_changed", rel, f"read {size} bytes, pinned at {entry.size}")]
            )
        if self._check_hash and digest.hexdigest() != entry.sha256:
            raise ManifestError(
                self.model_dir,
                [
                    ManifestProblem(
                        "changed", rel, f"SHA-256 {digest.hexdigest()[:16]}..., pinned {entry.sha256[:16]}..."
                    )
                ],
            )
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        return data

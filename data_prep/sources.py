"""Where the raw (image, caption[, identity]) pairs come from.

Three kinds of corpus, one interface. A source has a fixed, deterministic order of items; `len(source)`
is their number and `source.read(start, stop)` yields exactly `stop - start` RawSamples for items
start..stop-1 (an item that cannot even be read still yields a RawSample, with `error` set, so that
the counts of a run always add up). That is what lets shards be planned as item ranges, split across
ranks and redone one by one on a rerun.

* FolderSource: an image folder (searched recursively) with captions in `<stem>.txt` beside each
  image, or one JSONL file ({"file": relative path, "caption": ..., "identity": ...} per line).
  Identity labels: the JSONL field, or the image's parent folder (`identity_from_folder`).
* HFDiskSource: a Hugging Face `datasets` dataset saved with `save_to_disk`; image, caption and
  optional identity columns named by option.
* TarSource: img2dataset-style webdataset tars (`<key>.jpg` + `<key>.txt` + `<key>.json`), the format
  LAION-Face and FaceCaption-15M are distributed in. An index (samples per tar, read from the tar
  headers only) is built once and can be cached.
* FaceworldSource (data_prep/faceworld/source.py): rendered portraits of the identity world, with
  captions and identity labels (docs/faceworld.md).
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from encoder.photos import IMAGE_SUFFIXES
from models.atomic import write_json_atomic
from models.errors import UserError

TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


@dataclass
class RawSample:
    """One input item, not decoded yet.

    key: unique within the source (relative path, row number, tar name + sample key).
    image: the encoded image file's bytes (None when unavailable; then `error` says why).
    """

    key: str
    image: bytes | None
    caption: str | None
    identity: str | None = None
    error: str | None = None  # a reason known before decoding ("missing image", "unreadable file")


class SourceError(UserError, ValueError):
    """The source itself is unusable (missing folder, unknown column, no tars): fix the command."""


def _read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except OSError as e:
        return None, f"unreadable file ({e.strerror or type(e).__name__})"


# ------------------------------------------------------------------------------------------- folder
class FolderSource:
    """Images under `root` (recursive, sorted), captions from `<stem>.txt` or a JSONL file."""

    def __init__(self, root: str | os.PathLike, *, captions_jsonl: str | os.PathLike | None = None,
                 identity_from_folder: bool = False):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"image folder {self.root} does not exist or is not a folder")
        self.identity_from_folder = identity_from_folder
        self.jsonl = Path(captions_jsonl).expanduser() if captions_jsonl else None
        if self.jsonl is not None:
            if not self.jsonl.is_file():
                raise SourceError(f"captions file {self.jsonl} does not exist")
            self.entries = self.jsonl.read_text(encoding="utf-8").splitlines()
            self.entries = [line for line in self.entries if line.strip()]
            self._check_jsonl_paths()
        else:
            files = [p for p in self.root.rglob("*")
                     if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(self.root).parts)]
            self.entries = sorted(p.relative_to(self.root).as_posix() for p in files)
        if not self.entries:
            what = f"no lines in {self.jsonl}" if self.jsonl else f"no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            raise SourceError(f"image folder source {self.root}: {what}")

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self) -> dict:
        return {"kind": "folder", "root": str(self.root), "captions": str(self.jsonl) if self.jsonl else "txt",
                "identity_from_folder": self.identity_from_folder, "items": len(self)}

    def _folder_identity(self, rel: str) -> str | None:
        parent = Path(rel).parent.as_posix()
        return parent if self.identity_from_folder and parent != "." else None

    def _from_txt(self, rel: str) -> RawSample:
        path = self.root / rel
        caption = None
        txt = path.with_suffix(".txt")
        if txt.is_file():
            try:
                caption = txt.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                caption = None
        image, error = _read_bytes(path)
        return RawSample(rel, image, caption, self._folder_identity(rel), error)

    def _check_jsonl_paths(self) -> None:
        """SourceError when a line's file is absolute or climbs out of the folder with `..`: the captions
        file would make data_prep read files outside the image folder."""
        outside = []
        for index, line in enumerate(self.entries):
            try:
                rel = _jsonl_file(json.loads(line))
            except (json.JSONDecodeError, StopIteration, TypeError):
                continue  # a bad line; read() reports it as an item error
            if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).anchor or ".." in Path(rel).parts:
                outside.append(f"line {index + 1}: {rel!r}")
        if outside:
            raise SourceError(f"{self.jsonl}: {len(outside)} \"file\" entr{'y' if len(outside) == 1 else 'ies'} "
                              f"outside the image folder {self.root} ({'; '.join(outside[:3])}"
                              f"{', ...' if len(outside) > 3 else ''})",
                              hint="give paths relative to the image folder, without .. (move or link the "
                                   "images into it, or pass the folder that holds them all)")

    def _from_jsonl(self, index: int, line: str) -> RawSample:
        key = f"line{index + 1}"
        try:
            entry = json.loads(line)
            rel = _jsonl_file(entry)
        except (json.JSONDecodeError, StopIteration, TypeError):
            return RawSample(key, None, None, None, "bad jsonl line (needs a \"file\" field)")
        caption = entry.get("caption", entry.get("text"))
        identity = entry.get("identity")
        identity = str(identity) if identity is not None else self._folder_identity(rel)
        image, error = _read_bytes(self.root / rel)
        return RawSample(str(rel), image, caption if isinstance(caption, str) else None, identity, error)

    def read(self, start: int, stop: int) -> Iterator[RawSample]:
        for i in range(start, min(stop, len(self))):
            if self.jsonl is not None:
                yield self._from_jsonl(i, self.entries[i])
            else:
                yield self._from_txt(self.entries[i])


def _jsonl_file(entry) -> str:
    """The image path of a captions-JSONL entry (its "file", "image" or "path" field); StopIteration when
    it has none, TypeError when it is not a string."""
    rel = next(entry[k] for k in ("file", "image", "path") if k in entry)
    if not isinstance(rel, str):
        raise TypeError(f"the image path must be a string, got {rel!r}")
    return rel


# --------------------------------------------------------------------------------- HF datasets disk
class HFDiskSource:
    """A `datasets` dataset saved with `save_to_disk` (a Dataset, or a DatasetDict and a split)."""

    def __init__(self, path: str | os.PathLike, *, image_column: str = "image", caption_column: str = "text",
                 identity_column: str | None = None, split: str | None = None):
        import datasets

        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise SourceError(f"Hugging Face dataset folder {self.path} does not exist")
        try:
            ds = datasets.load_from_disk(str(self.path))
        except (FileNotFoundError, ValueError) as e:
            raise SourceError(f"{self.path} is not a dataset saved with save_to_disk: {e}") from e
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                if len(ds) != 1 and "train" not in ds:
                    raise SourceError(f"{self.path} holds splits {sorted(ds)}; choose one with --split")
                split = "train" if "train" in ds else next(iter(ds))
            if split not in ds:
                raise SourceError(f"{self.path} has no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
        columns = [image_column, caption_column] + ([identity_column] if identity_column else [])
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise SourceError(f"dataset {self.path} has no column(s) {missing}; its columns are "
                              f"{ds.column_names}. Name them with --image-column / --caption-column / "
                              f"--identity-column.")
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))  # bytes: we decode (and count)
        self.ds, self.split = ds, split
        self.image_column, self.caption_column, self.identity_column = image_column, caption_column, identity_column

    def __len__(self) -> int:
        return len(self.ds)

    def describe(self) -> dict:
        return {"kind": "hf_disk", "path": str(self.path), "split": self.split, "image_column": self.image_column,
                "caption_column": self.caption_column, "identity_column": self.identity_column, "items": len(self)}

    def _image_bytes(self, value) -> tuple[bytes | None, str | None]:
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"], None
            if value.get("path"):
                return _read_bytes(Path(value["path"]))
        elif isinstance(value, (bytes, bytearray)):
            return bytes(value), None
        elif isinstance(value, str):
            p = Path(value)
            return _read_bytes(p if p.is_absolute() else self.path / p)
        return None, "missing image"

    def read(self, start: int, stop: int) -> Iterator[RawSample]:
        stop = min(stop, len(self))
        if start >= stop:
            return
        rows = self.ds[start:stop]
        for j in range(stop - start):
            image, error = self._image_bytes(rows[self.image_column][j])
            caption = rows[self.caption_column][j]
            identity = rows[self.identity_column][j] if self.identity_column else None
            yield RawSample(f"row{start + j}", image, caption if isinstance(caption, str) else None,
                            None if identity is None else str(identity), error)


# ----------------------------------------------------------------------------- img2dataset webdataset
def expand_tars(spec: str | os.PathLike) -> list[Path]:
    """A folder (its *.tar), a glob, or a brace pattern ("laion/{00000..00099}.tar") -> sorted paths."""
    spec = str(spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        paths = sorted(p.glob("*.tar"))
    elif "{" in spec:
        from braceexpand import braceexpand

        paths = [Path(s).expanduser() for s in braceexpand(spec)]
        missing = [s for s in paths if not s.is_file()]
        if missing:
            raise SourceError(f"{len(missing)} tar(s) of {spec} do not exist, e.g. {missing[0]}")
    else:
        paths = sorted(Path(s) for s in glob.glob(os.path.expanduser(spec)))
    if not paths:
        raise SourceError(f"no .tar files found for {spec!r} (give a folder, a glob or a brace pattern)")
    return paths


def split_member(name: str) -> tuple[str, str]:
    """webdataset convention: 'dir/000123.jpg' -> ('dir/000123', 'jpg'); the key ends at the first dot
    of the file name."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def tar_samples(path: str | Path, first: int = 0, stop: int | None = None,
                members: Collection[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of the webdataset-style samples first..stop-1 of a tar, in order.

    Consecutive members sharing a key form one sample; members of samples before `first`, and
    members whose extension is not in `members` (when given), are skipped without being read.
    Damage raises tarfile.TarError / OSError / EOFError to the caller
    after the samples read so far.
    """
    wanted = None if members is None else frozenset(members)
    index, key, sample = -1, None, {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isreg():
                continue
            k, ext = split_member(info.name)
            if k != key:
                if key is not None and index >= first:
                    yield key, sample
                index += 1
                if stop is not None and index >= stop:
                    return
                key, sample = k, {}
            if index >= first and (wanted is None or ext in wanted):
                f = tar.extractfile(info)
                sample[ext] = f.read() if f is not None else b""
    if key is not None and index >= first:
        yield key, sample


def count_tar_samples(path: Path) -> tuple[int, str | None]:
    """Number of samples (distinct consecutive keys) in a tar, reading only headers; with an error
    string when the tar is damaged (unreadable, or cut off: Python's tarfile stops silently there)."""
    n, last, end = 0, None, 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                end = max(end, info.offset_data + info.size)
                if not info.isreg():
                    continue
                key, _ = split_member(info.name)
                if key != last:
                    n, last = n + 1, key
    except (tarfile.TarError, OSError, EOFError) as e:
        return n, f"{type(e).__name__}: {e}"
    size = path.stat().st_size
    if end > size or size < -(-end // 512) * 512 + 1024:
        return n, "truncated (the tar ends before its end-of-archive marker)"
    return n, None


class TarSource:
    """img2dataset-style tars: per sample an image member, `.txt` caption and/or `.json` metadata.

    Caption: the `.txt` member, else json[caption_key]. Identity: json[identity_key] when given.
    index_cache: a JSON file remembering each tar's sample count (keyed by path, size, mtime).
    """

    def __init__(self, tars: str | os.PathLike | list, *, caption_key: str = "caption",
                 identity_key: str | None = None, index_cache: str | os.PathLike | None = None):
        self.tars = expand_tars(tars) if not isinstance(tars, list) else [Path(t) for t in tars]
        self.caption_key, self.identity_key = caption_key, identity_key
        self.counts, self.damaged = self._index(Path(index_cache) if index_cache else None)
        self.offsets = [0]
        for c in self.counts:
            self.offsets.append(self.offsets[-1] + c)

    def _index(self, cache: Path | None) -> tuple[list[int], dict[str, str]]:
        known = {}
        if cache is not None and cache.is_file():
            try:
                known = json.loads(cache.read_text())
            except (json.JSONDecodeError, OSError):
                known = {}
        counts, damaged, fresh = [], {}, {}
        for path in self.tars:
            st = path.stat()
            entry = known.get(str(path))
            if entry and entry["size"] == st.st_size and entry["mtime"] == st.st_mtime:
                n, err = entry["count"], entry.get("error")
            else:
                n, err = count_tar_samples(path)
            fresh[str(path)] = {"size": st.st_size, "mtime": st.st_mtime, "count": n, "error": err}
            counts.append(n)
            if err:
                damaged[str(path)] = err
        if cache is not None and fresh != known:
            write_json_atomic(cache, fresh, indent=None)
        return counts, damaged

    def __len__(self) -> int:
        return self.offsets[-1]

    def describe(self) -> dict:
        return {"kind": "webdataset", "tars": len(self.tars), "first": str(self.tars[0]),
                "identity_key": self.identity_key, "items": len(self), "damaged_tars": self.damaged}

    def _sample(self, tar_name: str, key: str, members: dict[str, bytes]) -> RawSample:
        meta = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = {}
        caption = None
        if "txt" in members:
            caption = members["txt"].decode("utf-8", errors="replace").strip()
        elif isinstance(meta.get(self.caption_key), str):
            caption = meta[self.caption_key]
        identity = meta.get(self.identity_key) if self.identity_key else None
        image = next((members[e] for e in TAR_IMAGE_EXTS if e in members), None)
        return RawSample(f"{tar_name}/{key}", image, caption, None if identity is None else str(identity),
                         None if image is not None else "missing image member")

    def _read_tar(self, t: int, first: int, stop: int) -> Iterator[RawSample]:
        """Samples first..stop-1 (local numbering) of tar t; damage yields error samples for the rest."""
        path, name = self.tars[t], self.tars[t].name
        emitted = 0
        try:
            for key, members in tar_samples(path, first, stop):
                yield self._sample(name, key, members)
                emitted += 1
        except (tarfile.TarError, OSError, EOFError) as e:
            reason = f"damaged tar ({type(e).__name__})"
            for i in range(first + emitted, stop):
                yield RawSample(f"{name}/#{i}", None, None, None, reason)
            return
        for i in range(first + emitted, stop):  # fewer samples than the index said (file changed)
            yield RawSample(f"{name}/#{i}", None, None, None, "sample missing from tar")

    def read(self, start: int, stop: int) -> Iterator[RawSample]:
        stop = min(stop, len(self))
        for t, count in enumerate(self.counts):
            lo, hi = self.offsets[t], self.offsets[t] + count
            if hi <= start or lo >= stop or count == 0:
                continue
            yield from self._read_tar(t, max(start, lo) - lo, min(stop, hi) - lo)


Source = FolderSource | HFDiskSource | TarSource

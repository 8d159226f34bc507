"""`u2plus data prepare|check`, the downloads behind them and the data directory, offline: every
download comes from a local HTTP server serving tiny fixture files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from u2plus import paths
from u2plus.cli import main
from u2plus.config import DataConfig
from u2plus.data import build_dataset, prepare
from u2plus.data.download import Expected, download, unpack
from u2plus.data.prepare import SplitCheck, check
from u2plus.errors import DataError

from ..conftest import DEMO_ROOT


# -- a local HTTP server with Range support, truncation and cut connections -------------------
class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # path -> bytes sent before the connection drops (once)
        self.honour_range = True
        self.log: list[tuple[str, str]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range", "")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range") and server.honour_range:
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.cut.pop(self.path, None)
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rgb_png(w: int = 8, h: int = 6, seed: int = 0) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (h, w, 3)))


def label_png(values, w: int = 8, h: int = 6) -> bytes:
    arr = np.zeros((h, w))
    arr.flat[: len(values)] = values
    return png(arr)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# -- downloads ------------------------------------------------------------------------------
def test_download_verifies_and_a_rerun_fetches_nothing(server, tmp_path):
    body = b"x" * 5000
    url = server.serve("/a.bin", body)
    dest = download(url, tmp_path / "a.bin", Expected(size=5000, md5=md5(body)))
    assert dest.read_bytes() == body and not (tmp_path / "a.bin.part").exists()
    download(url, dest, Expected(size=5000, md5=md5(body)))
    assert len(server.log) == 1


def test_download_with_wrong_checksum_is_removed(server, tmp_path):
    url = server.serve("/a.bin", b"payload")
    with pytest.raises(DataError, match=r"a\.bin\.part: MD5 .* expected 0{32} \(corrupt or truncated\); removed"):
        download(url, tmp_path / "a.bin", Expected(md5="0" * 32))
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_is_removed(server, tmp_path):
    """A file served complete per HTTP but shorter than the source's: checked against its size."""
    url = server.serve("/a.bin", b"short")
    with pytest.raises(DataError, match="5 bytes, expected 9"):
        download(url, tmp_path / "a.bin", Expected(size=9))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    body = bytes(range(256)) * 40
    url = server.serve("/big.bin", body)
    server.cut["/big.bin"] = 3000
    with pytest.raises(DataError, match="after 3000 .*run the command again to resume"):
        download(url, tmp_path / "big.bin", Expected(md5=md5(body)))
    assert (tmp_path / "big.bin.part").stat().st_size == 3000 and not (tmp_path / "big.bin").exists()
    download(url, tmp_path / "big.bin", Expected(md5=md5(body)))
    assert (tmp_path / "big.bin").read_bytes() == body
    assert server.log[-1] == ("/big.bin", "bytes=3000-")


def test_resume_against_a_server_without_range_support_starts_over(server, tmp_path):
    body = b"abcdefghij" * 100
    url = server.serve("/a.bin", body)
    (tmp_path / "a.bin.part").write_bytes(b"zz")  # not even the right prefix
    server.honour_range = False
    download(url, tmp_path / "a.bin", Expected(md5=md5(body)))
    assert (tmp_path / "a.bin").read_bytes() == body


def test_http_error_names_the_url(server, tmp_path):
    with pytest.raises(DataError, match=f"cannot download {server.url}/nope: HTTP 404"):
        download(server.url + "/nope", tmp_path / "nope")


# -- archives -------------------------------------------------------------------------------
def keep_png(name: str):
    return name if name.endswith(".png") else None


def test_unpack_moves_complete_folders_into_place(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes({"x/1.png": b"1", "x/2.png": b"2", "x/readme.txt": b"r"}))
    unpack(archive, tmp_path, keep_png, {"x/*.png": 2})
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["1.png", "2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "x"]  # no staging folder left


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_truncated_archive_is_removed_and_nothing_half_written_is_left(tmp_path, kind):
    members = {f"x/{i}.png": bytes(np.random.default_rng(i).integers(0, 256, 4000, dtype=np.uint8))
               for i in range(4)}
    data = tar_bytes(members) if kind == "tar" else zip_bytes(members)
    archive = tmp_path / f"a.{kind}"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cannot read archive {archive} .*corrupt or truncated; removed it"):
        unpack(archive, tmp_path, keep_png, {"x/*.png": 4})
    assert list(tmp_path.iterdir()) == []


def test_archive_with_wrong_file_count_is_removed(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"x/1.png": b"1"}))
    with pytest.raises(DataError, match=r"holds 1 files x/\*\.png \(expected 2\).*removed it"):
        unpack(archive, tmp_path, keep_png, {"x/*.png": 2})
    assert list(tmp_path.iterdir()) == []


# -- prepare and check on tiny sources ------------------------------------------------------
CAMVID_SPLITS = (SplitCheck("train", "train", 2, "train"), SplitCheck("val", "val", 1, "val"),
                 SplitCheck("test", "test", 1, "test"))


def tiny_camvid_files(test: bool = True) -> dict[str, bytes]:
    files = {}
    for split, n in (("train", 2), ("val", 1)) + ((("test", 1),) if test else ()):
        for i in range(n):
            files[f"{split}/0001TP_{i:06d}.png"] = rgb_png(seed=i)
            files[f"{split}annot/0001TP_{i:06d}.png"] = label_png([i, 11])
    return files


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def tiny_sources(monkeypatch, server, tmp_path):
    """CamVid, VOC and Cityscapes sources of a few files, served by the local server."""
    files = tiny_camvid_files()
    manifest = tmp_path / "camvid.txt"
    manifest.write_text("# tiny\n" + "".join(f"{git_sha1(d)} {len(d)} {p}\n" for p, d in files.items()))
    for p, d in files.items():
        server.serve(f"/segnet/{p}", d)
    voc_tar = tar_bytes({"VOCdevkit/VOC2012/JPEGImages/2007_000001.jpg": b"", "VOCdevkit/VOC2012/README": b""})
    voc = prepare.SOURCES["voc"]
    sources = {
        "camvid": dataclasses.replace(prepare.SOURCES["camvid"], splits=CAMVID_SPLITS,
                                      files=(server.url + "/segnet/", manifest)),
        "voc": dataclasses.replace(voc, archives=(dataclasses.replace(
            voc.archives[0], url=server.serve("/voc.tar", voc_tar), expected=Expected(md5=md5(voc_tar)),
            expect={"JPEGImages/*.jpg": 1}),)),
        "cityscapes": dataclasses.replace(prepare.SOURCES["cityscapes"], archives=tuple(
            dataclasses.replace(a, expect={k: 1 for k in a.expect}, produces={k: 1 for k in a.produces})
            for a in prepare.SOURCES["cityscapes"].archives),
            splits=tuple(dataclasses.replace(s, pairs=1) for s in prepare.SOURCES["cityscapes"].splits)),
    }
    monkeypatch.setattr(prepare, "SOURCES", sources)
    return files


def test_prepare_camvid_downloads_verifies_and_reruns_as_a_check(tiny_sources, server, tmp_path):
    root = tmp_path / "data" / "camvid"
    summary = prepare.prepare("camvid", root)
    assert summary == (f"CamVid at {root}: ok: train 2, val 1, test 1 image/mask pairs; "
                       "label values of 4 masks read")
    assert all((root / p).read_bytes() == d for p, d in tiny_sources.items())
    requests = len(server.log)
    assert prepare.prepare("camvid", root) == summary and len(server.log) == requests
    # a corrupted file is found, removed, and fetched again on the next run
    (root / "train/0001TP_000000.png").write_bytes(b"not the original")
    with pytest.raises(DataError, match=r"0001TP_000000\.png: 16 bytes, expected \d+; removed it"):
        prepare.prepare("camvid", root)
    assert prepare.prepare("camvid", root) == summary and len(server.log) == requests + 1


def test_prepare_voc_unpacks_the_published_archive_once(tiny_sources, server, tmp_path):
    root = tmp_path / "voc"
    with pytest.raises(DataError, match=r"PASCAL VOC 2012 at .*: 2 problem\(s\).*data check voc` lists all"):
        prepare.prepare("voc", root)  # the tiny tar holds one image and no masks
    assert sorted(p.name for p in root.iterdir()) == ["JPEGImages", "VOCtrainval_11-May-2012.tar"]
    requests = len(server.log)
    with pytest.raises(DataError, match="2 problem"):
        prepare.prepare("voc", root)
    assert len(server.log) == requests  # unpacked files counted: neither downloaded nor unpacked again


def test_prepare_cityscapes_names_the_files_behind_the_login_then_converts_them(tiny_sources, tmp_path, capsys):
    root = tmp_path / "cityscapes"
    with pytest.raises(DataError, match=r"Cityscapes needs leftImg8bit_trainvaltest\.zip, gtFine_trainvaltest\.zip "
                       rf"in {root}: log in at https://www\.cityscapes-dataset\.com/downloads/"):
        prepare.prepare("cityscapes", root)
    images, labels = {}, {}
    for split in ("train", "val", "test"):
        stem = f"{split}/aachen/aachen_000000_000019"
        images[f"leftImg8bit/{stem}_leftImg8bit.png"] = rgb_png()
        labels[f"gtFine/{stem}_gtFine_labelIds.png"] = label_png([7, 26, 0, 33])
        labels[f"gtFine/{stem}_gtFine_color.png"] = rgb_png()
    (root / "leftImg8bit_trainvaltest.zip").write_bytes(zip_bytes({"license.txt": b"", **images}))
    (root / "gtFine_trainvaltest.zip").write_bytes(zip_bytes(labels))
    summary = prepare.prepare("cityscapes", root)
    assert summary.startswith(f"Cityscapes at {root}: ok: train 1, val 1, test 1 image/mask pairs")
    train_ids = np.asarray(Image.open(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"))
    assert train_ids.flat[:5].tolist() == [0, 13, 255, 18, 255]
    assert not list(root.glob("gtFine/*/*/*_color.png")) and not (root / "license.txt").exists()
    capsys.readouterr()
    assert prepare.prepare("cityscapes", root) == summary
    assert capsys.readouterr().out.count("already unpacked") == 2


def test_corrupt_manual_archive_is_removed_with_a_clear_error(tiny_sources, tmp_path):
    root = tmp_path / "cityscapes"
    root.mkdir()
    (root / "leftImg8bit_trainvaltest.zip").write_bytes(zip_bytes({"leftImg8bit/x_leftImg8bit.png": b"1"})[:30])
    with pytest.raises(DataError, match="leftImg8bit_trainvaltest.zip .*corrupt or truncated; removed it"):
        prepare.prepare("cityscapes", root)
    assert not (root / "leftImg8bit_trainvaltest.zip").exists()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_check_reports_an_absent_split_as_absent(tiny_sources, tmp_path):
    root = write_tree(tmp_path / "camvid", tiny_camvid_files(test=False))
    summary, problems = check("camvid", root)
    assert problems == []
    assert summary == (f"CamVid at {root}: ok: train 2, val 1 image/mask pairs; test absent; "
                       "label values of 3 masks read")


def test_check_lists_every_problem_with_its_file(tiny_sources, tmp_path):
    root = write_tree(tmp_path / "camvid", tiny_camvid_files())
    (root / "trainannot/0001TP_000001.png").write_bytes(label_png([3, 12]))  # 12: not a class
    (root / "valannot/0001TP_000000.png").write_bytes(label_png([1], w=9))  # another size
    (root / "testannot/0001TP_000000.png").unlink()  # unpaired image
    summary, problems = check("camvid", root)
    assert problems == [
        f"mask {root}/trainannot/0001TP_000001.png has label value(s) [12] outside 0..10 and ignore 255",
        f"mask {root}/valannot/0001TP_000000.png is 9x6 but its image {root}/val/0001TP_000000.png is 8x6",
        f"test: 0 image/mask pairs in {root}, the published split has 1",
        f"image {root}/test/0001TP_000000.png has no mask {root}/testannot/0001TP_000000.png",
    ]
    assert summary.startswith(f"CamVid at {root}: 4 problem(s): train 2, val 1, test")


def test_check_cli_one_summary_line_or_every_problem(tiny_sources, tmp_path, capsys):
    root = write_tree(tmp_path / "camvid", tiny_camvid_files(test=False))
    assert main(["data", "check", "camvid", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "ok: train 2, val 1 image/mask pairs; test absent" in out
    (root / "trainannot/0001TP_000001.png").write_bytes(label_png([3, 12]))
    assert main(["data", "check", "camvid", "--root", str(root), "--all"]) == 2
    captured = capsys.readouterr()
    assert captured.out == f"mask {root}/trainannot/0001TP_000001.png has label value(s) [12] outside 0..10 and ignore 255\n"
    assert captured.err.startswith(f"error: CamVid at {root}: 1 problem(s)")


# -- GTA5 and SYNTHIA: manual sources, counts made small --------------------------------------
def small_counts(monkeypatch, name: str, n: int) -> None:
    """SOURCES[name] with every archive count and published pair count set to ``n``."""
    src = prepare.SOURCES[name]
    monkeypatch.setitem(prepare.SOURCES, name, dataclasses.replace(
        src, archives=tuple(dataclasses.replace(a, expect={k: n for k in a.expect}) for a in src.archives),
        splits=tuple(dataclasses.replace(s, pairs=n) for s in src.splits)))


def gta5_parts(root: Path, skip: tuple = ()) -> None:
    """The 20 parts, frame NN in part NN; frame 3's label map is 9x7, its image 8x6 (as 60 published frames)."""
    for i in range(1, 11):
        if f"{i:02d}_images.zip" not in skip:
            (root / f"{i:02d}_images.zip").write_bytes(zip_bytes({f"images/{i:05d}.png": rgb_png(seed=i)}))
        if f"{i:02d}_labels.zip" not in skip:
            label = label_png([7, 26, 0, 33], *((9, 7) if i == 3 else (8, 6)))
            (root / f"{i:02d}_labels.zip").write_bytes(zip_bytes({f"labels/{i:05d}.png": label}))


def test_prepare_gta5_names_the_missing_parts_then_unpacks_all_twenty(monkeypatch, tmp_path, capsys):
    small_counts(monkeypatch, "gta5", 10)
    root = tmp_path / "gta5"
    with pytest.raises(DataError) as e:
        prepare.prepare("gta5", root)
    parts = ", ".join(f"{i:02d}_{k}.zip" for i in range(1, 11) for k in ("images", "labels"))
    assert str(e.value).startswith(f"GTA5 needs {parts} in {root}: download the 20 parts") and "\n" not in str(e.value)
    gta5_parts(root, skip=("07_labels.zip",))
    with pytest.raises(DataError, match=rf"^GTA5 needs 07_labels\.zip in {root}: download"):
        prepare.prepare("gta5", root)
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".zip")) == []  # nothing unpacked
    gta5_parts(root)
    summary = prepare.prepare("gta5", root)
    assert summary == f"GTA5 at {root}: ok: train 10 image/mask pairs; label values of 10 masks read"
    assert "1 label map(s) resized" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".zip")) == ["images", "labels"]
    with Image.open(root / "labels/00003.png") as im:
        assert im.size == (8, 6) and np.asarray(im).flat[:4].tolist() == [7, 26, 0, 33]
    assert check("gta5", root) == (summary, [])
    assert main(["data", "check", "gta5", "--root", str(root)]) == 0
    capsys.readouterr()
    assert prepare.prepare("gta5", root) == summary
    assert capsys.readouterr().out.startswith("01_images.zip .. 10_labels.zip: already unpacked")


def test_gta5_parts_with_a_wrong_total_are_a_clear_error_and_nothing_moves(monkeypatch, tmp_path):
    small_counts(monkeypatch, "gta5", 10)
    root = tmp_path / "gta5"
    root.mkdir()
    gta5_parts(root)
    (root / "02_images.zip").write_bytes((root / "01_images.zip").read_bytes())  # a part twice, one missing
    with pytest.raises(DataError, match=r"archives 01_images\.zip \.\. 10_labels\.zip hold 9 files images/\?{5}\.png "
                       r"\(expected 10\) together \(files taken from each: 01_images\.zip 1, 01_labels\.zip 1, "
                       r".*\): one is incomplete or not the published archive"):
        prepare.prepare("gta5", root)
    assert sorted(p.name for p in root.iterdir()) == sorted(prepare.GTA5_PARTS)  # no archive removed, none unpacked


def test_gta5_and_synthia_counts_are_the_published_ones():
    """GTA5: 24,966 frames in 20 parts, counted together; SYNTHIA-RAND-CITYSCAPES: 9,400 frames."""
    for name, pattern_counts, pairs in (("gta5", {"images/?????.png": 24966, "labels/?????.png": 24966}, 24966),
                                        ("synthia", {"RGB/???????.png": 9400, "GT/LABELS/???????.png": 9400}, 9400)):
        (archive,), (split,) = prepare.SOURCES[name].archives, prepare.SOURCES[name].splits
        assert archive.expect == pattern_counts and (split.split, split.pairs) == ("train", pairs)
    assert (prepare.SOURCES["gta5"].archives[0].file,) + prepare.SOURCES["gta5"].archives[0].parts == tuple(
        f"{i:02d}_{k}.zip" for i in range(1, 11) for k in ("images", "labels"))


def synthia_extracted(root: Path, n: int = 3, sep: str = "/") -> None:
    """What extracting SYNTHIA_RAND_CITYSCAPES.rar leaves (``sep`` "\\": files named with Windows separators)."""
    files = {}
    for i in range(n):
        files[f"RAND_CITYSCAPES/RGB/{i:07d}.png"] = rgb_png(seed=i)
        files[f"RAND_CITYSCAPES/GT/LABELS/{i:07d}.png"] = label_png([3, 8, 0])
        files[f"RAND_CITYSCAPES/GT/COLOR/{i:07d}.png"] = rgb_png(seed=i)
        files[f"RAND_CITYSCAPES/Depth/{i:07d}.png"] = label_png([1])
    if sep == "/":
        write_tree(root, files)
    else:
        root.mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            (root / rel.replace("/", sep)).write_bytes(data)


@pytest.mark.parametrize("sep", ["/", "\\"])
def test_prepare_synthia_says_how_to_extract_then_moves_the_extracted_files(monkeypatch, tmp_path, capsys, sep):
    small_counts(monkeypatch, "synthia", 3)
    root = tmp_path / "synthia"
    with pytest.raises(DataError) as e:
        prepare.prepare("synthia", root)
    assert str(e.value).startswith(f"SYNTHIA needs RAND_CITYSCAPES/ (extracted from SYNTHIA_RAND_CITYSCAPES.rar) in "
                                   f"{root}: download SYNTHIA_RAND_CITYSCAPES.rar") and "\n" not in str(e.value)
    assert "`unrar x SYNTHIA_RAND_CITYSCAPES.rar`" in str(e.value)
    (root / "SYNTHIA_RAND_CITYSCAPES.rar").write_bytes(b"Rar!")
    with pytest.raises(DataError, match=r"needs RAND_CITYSCAPES/ \(extract SYNTHIA_RAND_CITYSCAPES\.rar, "
                       r"which is there\)"):
        prepare.prepare("synthia", root)
    synthia_extracted(root, sep=sep)
    summary = prepare.prepare("synthia", root)
    assert summary == f"SYNTHIA at {root}: ok: train 3 image/mask pairs; label values of 3 masks read"
    frames = ["0000000.png", "0000001.png", "0000002.png"]
    assert [sorted(p.name for p in (root / d).iterdir()) for d in ("RGB", "GT/LABELS")] == [frames, frames]
    left = {p.relative_to(root).as_posix().replace("\\", "/") for p in root.rglob("*") if p.is_file()}
    # moved: RGB and GT/LABELS; left: the .rar (folder ""), the colour labels and depth
    assert {f.rpartition("/")[0] for f in left} == {"", "RGB", "GT/LABELS", "RAND_CITYSCAPES/GT/COLOR",
                                                    "RAND_CITYSCAPES/Depth"}
    assert not (root / "RAND_CITYSCAPES/RGB").exists()  # the folders the move emptied are gone
    assert check("synthia", root) == (summary, [])
    capsys.readouterr()
    assert prepare.prepare("synthia", root) == summary
    assert "SYNTHIA_RAND_CITYSCAPES.rar: already unpacked" in capsys.readouterr().out


def test_synthia_incomplete_extraction_moves_nothing_and_a_half_move_never_looks_complete(monkeypatch, tmp_path):
    small_counts(monkeypatch, "synthia", 3)
    root = tmp_path / "synthia"
    synthia_extracted(root)
    (root / "RAND_CITYSCAPES/GT/LABELS/0000002.png").unlink()
    with pytest.raises(DataError, match=r"RAND_CITYSCAPES with what is already in .* gives 2 files GT/LABELS/\?{7}\.png "
                       r"\(expected 3\): not extracted completely.*nothing was moved"):
        prepare.prepare("synthia", root)
    assert not (root / "RGB").exists() and len(list(root.glob("RAND_CITYSCAPES/RGB/*.png"))) == 3
    # a move interrupted half-way: counts do not hold, check does not pass, a rerun moves the rest
    synthia_extracted(root)
    (root / "RGB").mkdir()
    (root / "RAND_CITYSCAPES/RGB/0000000.png").replace(root / "RGB/0000000.png")
    (root / "GT/LABELS").mkdir(parents=True)
    (root / "RAND_CITYSCAPES/GT/LABELS/0000000.png").replace(root / "GT/LABELS/0000000.png")
    summary, problems = check("synthia", root)
    assert problems == [f"train: 1 image/mask pairs in {root}, the published split has 3"]
    assert prepare.prepare("synthia", root).startswith(f"SYNTHIA at {root}: ok: train 3 image/mask pairs")


def test_synthia_already_in_place_is_accepted_beside_a_converters_files(monkeypatch, tmp_path, capsys):
    """The layout DAFormer's instructions give, with its *_labelTrainIds.png beside the labels."""
    small_counts(monkeypatch, "synthia", 2)
    root = write_tree(tmp_path / "synthia", {**{f"RGB/000000{i}.png": rgb_png(seed=i) for i in range(2)},
                                             **{f"GT/LABELS/000000{i}.png": label_png([3]) for i in range(2)},
                                             "GT/LABELS/0000000_labelTrainIds.png": label_png([0])})
    assert prepare.prepare("synthia", root).startswith(f"SYNTHIA at {root}: ok: train 2 image/mask pairs")
    assert "already unpacked" in capsys.readouterr().out


# -- the data directory ---------------------------------------------------------------------
def test_missing_dataset_is_one_line_naming_dataset_path_and_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(paths.ENV, str(tmp_path / "nowhere"))
    assert main(["data", "check", "camvid"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: CamVid not found at {tmp_path}/nowhere/camvid: "
                          "prepare it with `u2plus data prepare camvid`")
    with pytest.raises(DataError, match=f"PASCAL VOC 2012 not found at {tmp_path}/nowhere/voc: prepare it with "
                       "`u2plus data prepare voc`"):
        build_dataset(OmegaConf.structured(DataConfig(dataset="voc", root="voc", num_classes=21)), "val")
    with pytest.raises(DataError, match=f"GTA5 not found at {tmp_path}/nowhere/gta5: prepare it with "
                       "`u2plus data prepare gta5`"):
        build_dataset(OmegaConf.structured(DataConfig(dataset="gta5", root="gta5", num_classes=19)), "train")
    assert "see docs/datasets.md" in str(paths.missing_dataset("folder", tmp_path / "x"))  # no prepare for it


def test_root_resolution_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(paths.ENV, raising=False)
    assert paths.data_dir() == Path("data") and paths.resolve_root("camvid") == Path("data/camvid")
    monkeypatch.setenv(paths.ENV, "/srv/datasets")
    assert paths.resolve_root("camvid") == Path("/srv/datasets/camvid")
    (tmp_path / "camvid").mkdir()  # a relative path that exists from the current directory wins
    assert paths.resolve_root("camvid") == Path("camvid")
    assert paths.resolve_root("/abs/camvid") == Path("/abs/camvid")
    # the embedded demo data from any current directory
    assert paths.resolve_root("u2plus/demo_data/camvid_half").resolve() == DEMO_ROOT.resolve()


def test_demo_config_trains_from_another_directory(tmp_path, monkeypatch):
    from u2plus.config import load_config
    from u2plus.data import build_train_sets

    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path(__file__).parents[2] / "configs/demo/u2pl_plus.yaml")
    labeled, unlabeled = build_train_sets(cfg.data, semi_supervised=True)
    assert (len(labeled), len(unlabeled)) == (31, 92)


def mat_bytes(**arrays) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, arrays)
    return buf.getvalue()


def test_prepare_ccp_fetches_the_repository_files_and_converts_them_once(server, tmp_path, monkeypatch):
    """The repository's photos and .mat annotations in, the layout of u2plus.data.ccp out: half-size
    images and masks, classes.txt, tags.json (from the mask where there is one); a rerun converts
    and fetches nothing."""
    names = np.empty((1, 59), dtype=object)
    names[0, :] = ["null"] + [f"class{i}" for i in range(1, 59)]
    masks = {i: np.kron(np.array([[0, k], [k + 1, 0]]), np.ones((4, 4))).astype(np.uint8)  # 8x8, 2x2 blocks
             for k, i in ((3, "0001"), (5, "0701"), (7, "0801"))}
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(jpg, "JPEG")
    files = {"label_list.mat": mat_bytes(label_list=names),
             **{f"photos/{i}.jpg": jpg.getvalue() for i in ("0001", "0701", "0801", "1005")},
             **{f"annotations/pixel-level/{i}.mat": mat_bytes(groundtruth=m) for i, m in masks.items()},
             "annotations/image-level/1005.mat": mat_bytes(tags=np.array([[0, 9, 2]], dtype=np.uint8))}
    manifest = tmp_path / "ccp.txt"
    manifest.write_text("".join(f"{git_sha1(d)} {len(d)} {p}\n" for p, d in files.items()))
    for p, d in files.items():
        server.serve(f"/ccp/{p}", d)
    src = prepare.SOURCES["ccp"]
    monkeypatch.setitem(prepare.SOURCES, "ccp", dataclasses.replace(
        src, files=(server.url + "/ccp/", manifest), splits=tuple(dataclasses.replace(s, pairs=1) for s in src.splits)))
    root = tmp_path / "data" / "ccp"
    summary = prepare.prepare("ccp", root)
    assert summary == (f"Clothing Co-Parsing at {root}: ok: train 1, val 1, test 1 image/mask pairs; "
                       "label values of 3 masks read")
    with Image.open(root / "images/0001.jpg") as im:
        assert im.size == (4, 4)
    for i, m in masks.items():  # nearest at half size: one pixel per 2x2 block
        assert np.array_equal(np.asarray(Image.open(root / f"masks/{i}.png")), m[::2, ::2])
    assert (root / "classes.txt").read_text().split("\n")[:3] == ["null", "class1", "class2"]
    assert json.loads((root / "tags.json").read_text()) == {"0001": [3, 4], "0701": [5, 6], "0801": [7, 8],
                                                           "1005": [2, 9]}
    assert not list(root.rglob(".*.part"))
    stamp, requests = (root / "images/0001.jpg").stat().st_mtime_ns, len(server.log)
    assert prepare.prepare("ccp", root) == summary and len(server.log) == requests
    assert (root / "images/0001.jpg").stat().st_mtime_ns == stamp
    # the dataset module reads it: 0801 is the test split only, 1005 the tags-only image
    cfg = OmegaConf.structured(DataConfig(dataset="ccp", root=str(root), num_classes=59))
    assert build_dataset(cfg, "test").ids() == ["0801"] and build_dataset(cfg, "unlabeled").ids() == ["1005"]


def test_every_prepared_dataset_is_listed_for_the_command_line():
    assert paths.PREPARABLE == tuple(prepare.SOURCES)


def test_real_camvid_checks_ok_with_test_absent(camvid_root):
    summary, problems = check("camvid")
    assert problems == [] and "ok: train 367, val 101 image/mask pairs" in summary
    if not (camvid_root / "test").exists():
        assert "test absent" in summary


def test_real_ccp_checks_ok_with_test_absent():
    if not (paths.data_dir() / "ccp").is_dir():
        pytest.skip(f"real CCP data not at {paths.data_dir() / 'ccp'}")
    summary, problems = check("ccp")
    assert problems == [] and "ok: train 700, val 100 image/mask pairs; test absent" in summary

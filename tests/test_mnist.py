"""The MNIST idx reader (real files, broken files) and the download helper against a real local HTTP server."""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from abmil.data.mnist import (
    MNIST_FILES,
    SPLITS,
    download_mnist,
    find_mnist_file,
    mnist_dir,
    parse_idx,
    read_mnist,
    read_mnist_file,
)
from abmil.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_MNIST = SHARED_DATA / "mnist"

# Official per-digit counts of the MNIST splits.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _need_shared() -> Path:
    if not all((SHARED_MNIST / f"{name}.gz").is_file() for name in MNIST_FILES):
        pytest.skip("shared MNIST files not available")
    return SHARED_MNIST


@functools.cache
def _gz_bytes(name: str) -> bytes:
    return (_need_shared() / f"{name}.gz").read_bytes()


@functools.cache
def _content(name: str) -> bytes:
    return gzip.decompress(_gz_bytes(name))


def _idx(values: np.ndarray, magic: int) -> bytes:
    """An idx file of uint8 ``values`` with the given magic number."""
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in values.shape)
    return header + values.astype(np.uint8).tobytes()


@contextlib.contextmanager
def _raises_naming(path: Path, match: str):
    """Expect a DataError matching ``match`` whose message and ``path`` name ``path``."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    assert str(path) in str(info.value) and info.value.path == str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Real files.


@pytest.mark.parametrize("split, counts", [("train", TRAIN_COUNTS), ("test", TEST_COUNTS)])
def test_read_real_split(split, counts):
    images, digits = read_mnist(_need_shared(), split)
    n = sum(counts)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert digits.shape == (n,) and digits.dtype == np.uint8
    assert np.bincount(digits, minlength=10).tolist() == counts
    assert images.max() == 255 and images.min() == 0
    images[0, 0, 0] = 1  # the arrays are the caller's own, not views of a cache


def test_checksum_table_matches_shared_files_and_their_readme():
    readme = (SHARED_DATA / "README.md").read_text(encoding="utf-8") if (SHARED_DATA / "README.md").is_file() else ""
    for name, spec in MNIST_FILES.items():
        content = _content(name)
        assert len(content) == spec.size
        assert int.from_bytes(content[:4], "big") == spec.magic
        assert hashlib.sha256(content).hexdigest() == spec.sha256
        assert hashlib.md5(content).hexdigest() == spec.md5
        assert spec.md5 in readme  # the README lists the official decompressed MD5s
    assert {n for pair in SPLITS.values() for n in pair} == set(MNIST_FILES)


def test_reads_uncompressed_files_and_prefers_gz(tmp_path):
    name = "t10k-labels-idx1-ubyte"
    (tmp_path / name).write_bytes(_content(name))
    assert find_mnist_file(tmp_path, name) == tmp_path / name
    digits = read_mnist_file(tmp_path / name, name)
    assert np.bincount(digits).tolist() == TEST_COUNTS
    (tmp_path / f"{name}.gz").write_bytes(_gz_bytes(name))
    assert find_mnist_file(tmp_path, name) == tmp_path / f"{name}.gz"


# ---------------------------------------------------------------------------------------------------------------------
# Broken files: every problem is a DataError naming the file.


def test_missing_file(tmp_path):
    with _raises_naming(tmp_path / "train-images-idx3-ubyte.gz", "missing"):
        read_mnist(tmp_path, "train")


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        read_mnist(tmp_path, "valid")


def test_wrong_magic(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx(np.zeros((10000, 28, 28)), 2051))  # an image file under a label file's name
    with _raises_naming(path, "wrong magic number 2051, expected 2049"):
        read_mnist_file(path, "t10k-labels-idx1-ubyte")
    path.write_bytes(b"\x1f\x00\x08\x01" + bytes(10004))
    with _raises_naming(path, "wrong magic"):
        read_mnist_file(path, "t10k-labels-idx1-ubyte")


def test_wrong_count(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(np.zeros(9999), 2049)))
    with _raises_naming(path, "holds 9999 items"):
        read_mnist_file(path, "t10k-labels-idx1-ubyte", verify=False)


@pytest.mark.parametrize("cut", [2, 6, 5000])
def test_truncated_uncompressed(tmp_path, cut):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx(np.zeros(10000), 2049)[:cut])
    with _raises_naming(path, "truncated"):
        read_mnist_file(path, "t10k-labels-idx1-ubyte", verify=False)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx(np.zeros(10000), 2049) + b"\0")
    with _raises_naming(path, "trailing bytes"):
        read_mnist_file(path, "t10k-labels-idx1-ubyte", verify=False)


def test_label_out_of_range(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx(np.full(10000, 10), 2049))
    with _raises_naming(path, "out of range"):
        read_mnist_file(path, "t10k-labels-idx1-ubyte", verify=False)


def test_same_format_other_data_reads_only_without_verify(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx(np.arange(10000) % 10, 2049))
    assert read_mnist_file(path, "t10k-labels-idx1-ubyte", verify=False).tolist()[:12] == [*range(10), 0, 1]
    with _raises_naming(path, "checksum mismatch"):
        read_mnist_file(path, "t10k-labels-idx1-ubyte")


def test_checksum_mismatch_on_real_file(tmp_path):
    name = "t10k-labels-idx1-ubyte"
    content = bytearray(_content(name))
    content[100] = (content[100] + 1) % 10  # one label changed: structure intact, content not official
    path = tmp_path / f"{name}.gz"
    path.write_bytes(gzip.compress(bytes(content)))
    with _raises_naming(path, "checksum mismatch"):
        read_mnist_file(path, name)


def test_truncated_and_corrupt_gzip(tmp_path):
    name = "t10k-labels-idx1-ubyte"
    gz = _gz_bytes(name)
    path = tmp_path / f"{name}.gz"
    path.write_bytes(gz[: len(gz) // 2])
    with _raises_naming(path, "corrupt or truncated gzip"):
        read_mnist_file(path, name)
    broken = bytearray(gz)
    broken[len(gz) // 2] ^= 0xFF
    path.write_bytes(bytes(broken))
    with _raises_naming(path, "corrupt or truncated gzip"):
        read_mnist_file(path, name)


def test_parse_idx_shapes():
    assert parse_idx(_idx(np.arange(6).reshape(2, 3), 0x0802), source="x").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DataError, match="wrong magic"):
        parse_idx(b"\0\0\x0d\x01" + bytes(8), source="x")  # float32 idx: not MNIST's unsigned bytes


# ---------------------------------------------------------------------------------------------------------------------
# Download helper against a real HTTP server on 127.0.0.1.


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/good/NAME`` serves the file; ``/missing/`` 404s; ``/corrupt/`` flips a byte mid-stream; ``/wrong/`` serves
    a well-formed gzip of other content; ``/truncated/`` promises the full length and sends half."""

    def do_GET(self):
        mode, _, name = self.path.strip("/").partition("/")
        self.server.requests.append(self.path)
        body = self.server.files.get(name)
        if mode == "missing" or body is None:
            self.send_error(404)
            return
        length = len(body)
        if mode == "corrupt":
            body = bytearray(body)
            body[len(body) // 2] ^= 0xFF
            body = bytes(body)
        elif mode == "wrong":
            body = gzip.compress(b"not mnist")
            length = len(body)
        elif mode == "truncated":
            body = body[: len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    _need_shared()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {f"{name}.gz": _gz_bytes(name) for name in MNIST_FILES}
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_falls_back_over_bad_mirrors(server, tmp_path):
    httpd, base = server
    httpd.requests.clear()
    dest = tmp_path / "mnist"
    mirrors = [f"{base}/missing/", f"{base}/corrupt/", f"{base}/wrong/", f"{base}/good"]
    paths = download_mnist(dest, mirrors, timeout=10)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)  # no temp files left
    assert paths == {n: dest / f"{n}.gz" for n in MNIST_FILES}
    for name in MNIST_FILES:
        assert (dest / f"{name}.gz").read_bytes() == _gz_bytes(name)
        assert [r.split("/")[1] for r in httpd.requests if r.endswith(f"/{name}.gz")] == [
            "missing", "corrupt", "wrong", "good"]
    _, digits = read_mnist(dest, "test")
    assert np.bincount(digits).tolist() == TEST_COUNTS

    # Present and valid: nothing fetched. One file broken: only it is fetched again.
    httpd.requests.clear()
    assert download_mnist(dest, [f"{base}/good/"], timeout=10) == paths
    assert httpd.requests == []
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    download_mnist(dest, [f"{base}/good/"], timeout=10)
    assert httpd.requests == ["/good/t10k-labels-idx1-ubyte.gz"]


def test_download_keeps_valid_uncompressed_file(server, tmp_path):
    httpd, base = server
    name = "t10k-labels-idx1-ubyte"
    for n in MNIST_FILES:
        if n != name:
            (tmp_path / f"{n}.gz").write_bytes(_gz_bytes(n))
    (tmp_path / name).write_bytes(_content(name))
    httpd.requests.clear()
    assert download_mnist(tmp_path, [f"{base}/good/"], timeout=10)[name] == tmp_path / name
    assert httpd.requests == []


def test_download_failure_leaves_no_partial_file(server, tmp_path):
    httpd, base = server
    httpd.requests.clear()
    dest = tmp_path / "mnist"
    target = dest / "train-images-idx3-ubyte.gz"
    mirrors = [f"{base}/truncated/", f"{base}/missing/", f"{base}/wrong/"]
    with _raises_naming(target, "could not download") as info:
        download_mnist(dest, mirrors, timeout=10)
    message = str(info.value)
    for mirror in mirrors:
        assert f"{mirror}train-images-idx3-ubyte.gz" in message
    assert "404" in message and "checksum mismatch" in message
    # The truncated mirror streamed half the file into a temporary file before failing; none of it remains.
    assert httpd.requests[0] == "/truncated/train-images-idx3-ubyte.gz"
    assert not dest.exists() or list(dest.iterdir()) == []


def test_download_needs_a_mirror(tmp_path):
    with pytest.raises(ValueError, match="no mirrors"):
        download_mnist(tmp_path, [])


def test_mnist_dir_defaults_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert mnist_dir() == tmp_path / ".cache" / "abmil" / "mnist"
    assert mnist_dir("elsewhere") == Path("elsewhere")
    assert not (tmp_path / ".cache").exists()  # nothing fetched or created without download=True

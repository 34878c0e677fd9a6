"""Checkpoint CRC-32s, written fast and checked fast (issue 21: the checksum must add under 5 % to save / load).

Saving: torch writes without its CRCs and the library fills them in (io/torch_zip.py): the same CRCs in the same
places. Loading (weights.integrity.load_torch_parallel_verified): torch.load(mmap=True), then every storage
copied out of the mapping in threads, its record's CRC-32 computed piece by piece as it is copied. It must give
exactly what torch.load gives (values, dtypes, shapes, strides, views sharing a storage), keep nothing pointing into
the file, refuse a damaged record naming it, and step aside (None) where it does not apply, so that the plain,
wording load handles those files."""
import zipfile

import pytest
import torch

from resbackbones.engine.checkpoint import save_atomic
from resbackbones.weights.integrity import CorruptFile, load_torch_parallel_verified


def _checkpoint():
    torch.manual_seed(0)
    base = torch.randn(300, 1000)  # 1.2 MB: more than one 1 MiB piece
    return {"model": {"w": base, "view": base[10:20, ::2], "t": base.t(), "half": torch.randn(7, 3).half(),
                      "empty": torch.zeros(0, 4), "count": torch.tensor(5, dtype=torch.int64)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.randn(64, 3, 3, 3)}}, "param_groups": [{"lr": 0.1}]},
            "rng": (torch.get_rng_state(), [1, 2, 3]), "global_iter": 7, "config": {"name": "x"}}


def _same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert a.stride() == b.stride() and a.storage_offset() == b.storage_offset() and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("workers", [1, 2])
def test_equals_torch_load_and_keeps_nothing_in_the_file(tmp_path, workers):
    path = save_atomic(_checkpoint(), tmp_path / "last.pt")
    got = load_torch_parallel_verified(path, workers=workers)
    _same(torch.load(path, weights_only=True), got)
    model = got["model"]
    assert model["view"].untyped_storage().data_ptr() == model["w"].untyped_storage().data_ptr()  # still shared
    model["view"].fill_(1.0)  # writes land in the loaded copy (not read-only, not copy-on-write of the file)
    assert (model["w"][10:20, ::2] == 1).all()
    path.write_bytes(b"")  # the file truncated under it: every tensor is in its own memory (no SIGBUS)
    assert float(model["t"].sum()) == float(model["w"].sum())


def test_a_damaged_record_is_named(tmp_path):
    path = save_atomic(_checkpoint(), tmp_path / "last.pt")
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda r: r.file_size)
    data = bytearray(path.read_bytes())
    # torch aligns records with padding in the local header's extra field: the start comes from that header
    name_len, extra_len = int.from_bytes(data[largest.header_offset + 26:largest.header_offset + 28], "little"), \
        int.from_bytes(data[largest.header_offset + 28:largest.header_offset + 30], "little")
    start = largest.header_offset + 30 + name_len + extra_len
    data[start + 600_000:start + 600_000 + 65536] = bytes(65536)  # 64 KB of zeros in the second MiB piece
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=rf"record {largest.filename} does not match the CRC-32"):
        load_torch_parallel_verified(path)


def test_steps_aside_where_it_does_not_apply(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    assert load_torch_parallel_verified(text) is None  # not a zip: the plain load says what it is
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert load_torch_parallel_verified(legacy) is None
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.ones(3)}, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert load_torch_parallel_verified(tmp_path / "nocrc.pt") is None  # nothing to check: the plain way notes it


def test_checkpoints_load_the_parallel_way(tmp_path, monkeypatch):
    """The reader every tool uses takes this way for a CPU load of our checkpoints (the plain way is not called)."""
    from resbackbones.engine.checkpoint import load_checkpoint

    path = save_atomic(_checkpoint(), tmp_path / "last.pt")

    def plain(*args, **kwargs):
        raise AssertionError("the plain load ran")

    monkeypatch.setattr("resbackbones.weights.io.load_torch_verified", plain)
    assert load_checkpoint(path)["global_iter"] == 7


def test_saved_records_carry_torchs_own_crcs_even_with_them_turned_off(tmp_path):
    """save_torch_atomic writes with torch's CRCs off and fills them in itself (io/torch_zip.py): every record's
    CRC-32 is the one torch.save would have written, in the data descriptor and the central directory alike."""
    obj = _checkpoint()
    torch.serialization.set_crc32_options(False)
    try:
        ours = save_atomic(obj, tmp_path / "ours.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    torch.save(obj, tmp_path / "torchs.pt")

    def crcs(path):
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None  # zipfile checks every record against its central directory CRC
            return {r.filename.split("/", 1)[1]: r.CRC for r in archive.infolist()
                    if r.filename.split("/", 1)[1] != ".data/serialization_id"}  # random per save

    assert crcs(ours) == crcs(tmp_path / "torchs.pt")
    data = ours.read_bytes()
    with zipfile.ZipFile(ours) as archive:
        for record in archive.infolist():
            header = data[record.header_offset:record.header_offset + 30]
            start = record.header_offset + 30 + int.from_bytes(header[26:28], "little") + \
                int.from_bytes(header[28:30], "little")
            descriptor = data[start + record.compress_size:start + record.compress_size + 8]
            if not record.file_size:  # torch writes an empty record without a descriptor
                assert record.CRC == 0
                continue
            assert descriptor[:4] == b"PK\x07\x08" and int.from_bytes(descriptor[4:], "little") == record.CRC


def test_fill_record_crcs_handles_torchs_layout_itself(tmp_path):
    """No fall-back to torch's own CRCs for torch's layout (empty storages included): fill_record_crcs fills a
    file torch wrote without CRCs, and zipfile then finds every record intact."""
    from resbackbones.io.torch_zip import fill_record_crcs

    path = tmp_path / "nocrc.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(_checkpoint(), path)
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(path) as archive:
        count = len(archive.infolist())
        assert archive.testzip() is not None  # CRC 0 where the data says otherwise
    with open(path, "r+b") as handle:
        assert fill_record_crcs(handle) == count
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None

"""The CRC-32 of every record of a torch zip file, filled in after torch.save wrote it without them.

torch.save computes each record's CRC-32 as it writes (miniz, one thread, about 2.6 GB/s here); the library's
checkpoint reader checks them on every load (weights/integrity.py). Saving with torch's CRCs turned off
(torch.serialization.set_crc32_options(False)) and filling them in here afterwards gives the same file, the same
CRCs in the same places, for a fraction of the cost: ISA-L's crc32 (about 11 GB/s) over the file just written
(still in the page cache), in threads, records in parallel (benchmarks/checkpoint_checksum.py). Any zip reader
(zipfile, unzip -t, torch) sees a normal archive.

Where a record's CRC lives: torch's writer sets bit 3 of every local header (sizes and CRC follow the data, in a
data descriptor) and leaves the local header's CRC field at 0, which zip readers then ignore; the descriptor after
the data ("PK\\x07\\x08", CRC-32, sizes) and the record's central directory entry (CRC-32 at byte 16) both carry it.
"""
import mmap
import os
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, List, Optional, Tuple

try:  # the same CRC-32 as zlib's, about 3x faster (Intel ISA-L); optional: zlib gives the same values
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency, but a missing wheel must not stop a save or load
    crc32 = zlib.crc32

_LOCAL_HEADER = 0x04034B50
_CENTRAL_HEADER = 0x02014B50
_DESCRIPTOR = 0x08074B50
_CHUNK = 1 << 22


def _record_crc(view, start: int, size: int) -> int:
    crc = 0
    for offset in range(start, start + size, _CHUNK):  # bounded pieces: a record can be gigabytes
        crc = crc32(view[offset:min(offset + _CHUNK, start + size)], crc)
    return crc


def record_data_start(handle: BinaryIO, record: zipfile.ZipInfo) -> Tuple[int, int]:
    """(offset of `record`'s data in the open zip file, its local header's flags), read from the local header (its
    extra field, torch's alignment padding, is not the central directory's). ValueError when no header is there."""
    handle.seek(record.header_offset)
    header = handle.read(30)
    if len(header) < 30 or struct.unpack_from("<I", header)[0] != _LOCAL_HEADER:
        raise ValueError(f"the header of its record {record.filename} is damaged")
    flags, = struct.unpack_from("<H", header, 6)
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    return record.header_offset + 30 + name_len + extra_len, flags


def fill_record_crcs(handle: BinaryIO, *, workers: Optional[int] = None) -> int:
    """Write the CRC-32 of every record of the torch zip file open in `handle` (read + write, binary; saved with
    torch's CRCs off) into its data descriptor and central directory entry; returns the number of records. Raises
    ValueError on a layout this does not know, before anything is written (the caller then saves with torch's own
    CRCs). The file is opened by resbackbones.io.outputs.save_torch_atomic, the writer of the file."""
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        records = archive.infolist()
        central = archive.start_dir
    size = os.fstat(handle.fileno()).st_size
    spans: List[Tuple[int, int, int]] = []  # (data start, size, descriptor CRC position or -1) per record
    for record in records:
        start, flags = record_data_start(handle, record)
        end = start + record.compress_size
        if not record.file_size:  # an empty storage: no data descriptor, and 0 is its CRC-32
            spans.append((start, 0, -1))
            continue
        if not flags & 0x8 or record.compress_type != zipfile.ZIP_STORED or end + 4 > size:
            raise ValueError(f"record {record.filename}: not a stored record with a data descriptor")
        handle.seek(end)
        signed = struct.unpack("<I", handle.read(4))[0] == _DESCRIPTOR
        spans.append((start, record.compress_size, end + 4 if signed else end))
    handle.seek(central)
    directory = bytearray(handle.read(size - central))
    entries, position = [], 0  # where each record's central directory entry starts
    for record in records:
        if struct.unpack_from("<I", directory, position)[0] != _CENTRAL_HEADER:
            raise ValueError(f"record {record.filename}: its central directory entry is not where expected")
        entries.append(position)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", directory, position + 28)
        position += 46 + name_len + extra_len + comment_len
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            workers = workers or max(1, min(4, os.cpu_count() or 1))
            with ThreadPoolExecutor(workers) as pool:  # ISA-L's crc32 releases the GIL
                crcs = list(pool.map(lambda span: _record_crc(view, span[0], span[1]), spans))
        finally:
            view.release()
    for (_, _, at), entry, crc in zip(spans, entries, crcs):
        if at >= 0:
            handle.seek(at)
            handle.write(struct.pack("<I", crc))
        struct.pack_into("<I", directory, entry + 16, crc)
    handle.seek(central)
    handle.write(directory)
    handle.flush()
    return len(records)

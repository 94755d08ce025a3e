//! The layout of a batch's zip, known before a byte of it is sent: every entry is stored (images
//! are compressed already) with the size recorded when its result was stored, so the zip's
//! length is known in advance (`Content-Length`) and it can be streamed straight from the
//! results as it is downloaded, never built or kept whole. Each entry's CRC-32 is computed as its
//! bytes go by and written in a data descriptor after them (and in the central directory at the
//! end), as streaming zip writers do. Zip64 fields are written where they are needed (more than
//! 65,535 entries, or sizes and offsets past 4 GiB), and only there, so that small zips stay
//! readable by every tool.
//!
//! [`ZipPlan::new`] lays the entries out; the caller then writes, in order, for each entry its
//! [`ZipPlan::local_header`], the entry's bytes and its [`ZipPlan::descriptor`], and at the end
//! [`ZipPlan::trailer`] (the central directory and the end records).

use chrono::{DateTime, Datelike, Timelike, Utc};

/// One file of the zip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Its name in the zip (already cleaned and unique: see `names`).
    pub name: String,
    pub size: u64,
}

/// Where each entry's header and bytes go, and how long the whole zip is.
#[derive(Debug, Clone)]
pub struct ZipPlan {
    entries: Vec<ZipEntry>,
    /// Offset of each entry's local header.
    offsets: Vec<u64>,
    /// DOS time and date of every entry.
    time: u16,
    date: u16,
    central_offset: u64,
    central_size: u64,
    len: u64,
}

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const END: u32 = 0x0605_4b50;
/// The CRC (and, per the format, the sizes) follow the data in a descriptor (bit 3), and the
/// name is UTF-8 (bit 11).
const FLAGS: u16 = (1 << 3) | (1 << 11);
/// Made by: Unix (3), spec version 4.5; so that the external attributes are Unix modes.
const MADE_BY: u16 = (3 << 8) | 45;
/// A regular file, readable by all (`-rw-r--r--`), in the high half of the external attributes.
const FILE_MODE: u32 = 0o100_644 << 16;
const U32_MAX: u64 = 0xFFFF_FFFF;

/// Whether a size or offset needs zip64.
fn big(n: u64) -> bool {
    n >= U32_MAX
}

impl ZipEntry {
    fn needs_zip64(&self, offset: u64) -> bool {
        big(self.size) || big(offset)
    }

    /// Bytes of its local header.
    fn local_len(&self, offset: u64) -> u64 {
        30 + self.name.len() as u64 + if self.needs_zip64(offset) { 20 } else { 0 }
    }

    /// Bytes of its data descriptor (signature, CRC, and both sizes, 8 bytes each with zip64).
    fn descriptor_len(&self, offset: u64) -> u64 {
        if self.needs_zip64(offset) {
            24
        } else {
            16
        }
    }

    /// Bytes of its central directory header.
    fn central_len(&self, offset: u64) -> u64 {
        let extra = match (big(self.size), big(offset)) {
            (false, false) => 0,
            (true, false) => 4 + 16,
            (false, true) => 4 + 8,
            (true, true) => 4 + 24,
        };
        46 + self.name.len() as u64 + extra
    }
}

impl ZipPlan {
    /// Lays out `entries` (in this order) with every entry's time `at`.
    pub fn new(entries: Vec<ZipEntry>, at: DateTime<Utc>) -> Self {
        let mut offsets = Vec::with_capacity(entries.len());
        let mut at_byte = 0u64;
        for entry in &entries {
            offsets.push(at_byte);
            at_byte += entry.local_len(at_byte) + entry.size + entry.descriptor_len(at_byte);
        }
        let central_offset = at_byte;
        let central_size: u64 = entries
            .iter()
            .zip(&offsets)
            .map(|(e, &o)| e.central_len(o))
            .sum();
        let (time, date) = dos_time(at);
        let mut plan = Self {
            entries,
            offsets,
            time,
            date,
            central_offset,
            central_size,
            len: 0,
        };
        plan.len = central_offset + central_size + plan.end_len();
        plan
    }

    /// The whole zip's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[ZipEntry] {
        &self.entries
    }

    /// Whether the end records need zip64: too many entries, or a directory past 4 GiB.
    fn zip64_end(&self) -> bool {
        self.entries.len() >= 0xFFFF
            || big(self.central_offset)
            || big(self.central_size)
            || big(self.central_offset + self.central_size)
    }

    fn end_len(&self) -> u64 {
        22 + if self.zip64_end() { 56 + 20 } else { 0 }
    }

    /// The local header of entry `i`, which its bytes follow. Its CRC and sizes are zero, as
    /// the format asks of an entry with a data descriptor; a zip64 entry says so with a zip64
    /// field (its sizes zero too), so that readers expect 8-byte sizes in its descriptor.
    pub fn local_header(&self, i: usize) -> Vec<u8> {
        let entry = &self.entries[i];
        let offset = self.offsets[i];
        let zip64 = entry.needs_zip64(offset);
        let mut h = Vec::with_capacity(entry.local_len(offset) as usize);
        put32(&mut h, LOCAL_HEADER);
        put16(&mut h, if zip64 { 45 } else { 20 });
        put16(&mut h, FLAGS);
        put16(&mut h, 0); // stored
        put16(&mut h, self.time);
        put16(&mut h, self.date);
        put32(&mut h, 0);
        let size = if zip64 { U32_MAX as u32 } else { 0 };
        put32(&mut h, size);
        put32(&mut h, size);
        put16(&mut h, entry.name.len() as u16);
        put16(&mut h, if zip64 { 20 } else { 0 });
        h.extend_from_slice(entry.name.as_bytes());
        if zip64 {
            put16(&mut h, 0x0001);
            put16(&mut h, 16);
            put64(&mut h, 0);
            put64(&mut h, 0);
        }
        h
    }

    /// The data descriptor that follows entry `i`'s bytes, with their CRC-32.
    pub fn descriptor(&self, i: usize, crc32: u32) -> Vec<u8> {
        let entry = &self.entries[i];
        let mut d = Vec::with_capacity(24);
        put32(&mut d, DESCRIPTOR);
        put32(&mut d, crc32);
        if entry.needs_zip64(self.offsets[i]) {
            put64(&mut d, entry.size);
            put64(&mut d, entry.size);
        } else {
            put32(&mut d, entry.size as u32);
            put32(&mut d, entry.size as u32);
        }
        d
    }

    /// The central directory and the end records, which close the zip: `crcs` holds every
    /// entry's CRC-32, in order.
    pub fn trailer(&self, crcs: &[u32]) -> Vec<u8> {
        assert_eq!(crcs.len(), self.entries.len(), "one CRC per entry");
        let mut t = Vec::with_capacity((self.central_size + self.end_len()) as usize);
        for ((entry, &offset), &crc32) in self.entries.iter().zip(&self.offsets).zip(crcs) {
            let (big_size, big_offset) = (big(entry.size), big(offset));
            let mut extra = Vec::new();
            if big_size {
                put64(&mut extra, entry.size);
                put64(&mut extra, entry.size);
            }
            if big_offset {
                put64(&mut extra, offset);
            }
            put32(&mut t, CENTRAL_HEADER);
            put16(&mut t, MADE_BY);
            put16(&mut t, if big_size || big_offset { 45 } else { 20 });
            put16(&mut t, FLAGS);
            put16(&mut t, 0);
            put16(&mut t, self.time);
            put16(&mut t, self.date);
            put32(&mut t, crc32);
            let size = if big_size { U32_MAX } else { entry.size };
            put32(&mut t, size as u32);
            put32(&mut t, size as u32);
            put16(&mut t, entry.name.len() as u16);
            put16(
                &mut t,
                if extra.is_empty() {
                    0
                } else {
                    4 + extra.len() as u16
                },
            );
            put16(&mut t, 0); // comment
            put16(&mut t, 0); // disk
            put16(&mut t, 0); // internal attributes
            put32(&mut t, FILE_MODE);
            put32(&mut t, if big_offset { U32_MAX } else { offset } as u32);
            t.extend_from_slice(entry.name.as_bytes());
            if !extra.is_empty() {
                put16(&mut t, 0x0001);
                put16(&mut t, extra.len() as u16);
                t.extend_from_slice(&extra);
            }
        }
        let count = self.entries.len() as u64;
        if self.zip64_end() {
            let record = self.central_offset + self.central_size;
            put32(&mut t, ZIP64_END);
            put64(&mut t, 44); // the record's size after this field
            put16(&mut t, MADE_BY);
            put16(&mut t, 45);
            put32(&mut t, 0);
            put32(&mut t, 0);
            put64(&mut t, count);
            put64(&mut t, count);
            put64(&mut t, self.central_size);
            put64(&mut t, self.central_offset);
            put32(&mut t, ZIP64_LOCATOR);
            put32(&mut t, 0);
            put64(&mut t, record);
            put32(&mut t, 1);
        }
        let clamp16 = |n: u64| if n >= 0xFFFF { 0xFFFF } else { n as u16 };
        let clamp32 = |n: u64| if big(n) { U32_MAX as u32 } else { n as u32 };
        put32(&mut t, END);
        put16(&mut t, 0);
        put16(&mut t, 0);
        put16(&mut t, clamp16(count));
        put16(&mut t, clamp16(count));
        put32(&mut t, clamp32(self.central_size));
        put32(&mut t, clamp32(self.central_offset));
        put16(&mut t, 0);
        t
    }
}

/// An MS-DOS time and date (2-second resolution, 1980–2107), as zip headers hold them.
fn dos_time(at: DateTime<Utc>) -> (u16, u16) {
    let year = at.year().clamp(1980, 2107) as u16;
    let time = ((at.hour() as u16) << 11) | ((at.minute() as u16) << 5) | (at.second() as u16 / 2);
    let date = ((year - 1980) << 9) | ((at.month() as u16) << 5) | at.day() as u16;
    (time, date)
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The zip of `files` as the download writes it: each local header, the bytes and the
    /// descriptor, then the directory.
    fn write(files: &[(&str, Vec<u8>)]) -> (ZipPlan, Vec<u8>) {
        let entries = files
            .iter()
            .map(|(name, bytes)| ZipEntry {
                name: (*name).to_owned(),
                size: bytes.len() as u64,
            })
            .collect();
        let at = DateTime::parse_from_rfc3339("2026-12-03T14:15:16Z")
            .unwrap()
            .with_timezone(&Utc);
        let plan = ZipPlan::new(entries, at);
        let mut out = Vec::new();
        let mut crcs = Vec::new();
        for (i, (_, bytes)) in files.iter().enumerate() {
            out.extend(plan.local_header(i));
            out.extend_from_slice(bytes);
            let crc = crc32fast::hash(bytes);
            out.extend(plan.descriptor(i, crc));
            crcs.push(crc);
        }
        out.extend(plan.trailer(&crcs));
        (plan, out)
    }

    #[test]
    fn a_zip_laid_out_ahead_reads_back_whole_and_is_as_long_as_planned() {
        let files = vec![
            ("photo.jpg", vec![1u8; 1000]),
            ("photo (2).jpg", (0..=255).collect()),
            ("été/ünïcode.png", b"png bytes".to_vec()),
            ("empty.txt", Vec::new()),
        ];
        let (plan, zip) = write(&files);
        assert_eq!(plan.len(), zip.len() as u64);
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip");
        assert_eq!(archive.len(), files.len());
        for (name, bytes) in &files {
            let mut entry = archive.by_name(name).expect("the entry");
            assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
            let mut back = Vec::new();
            entry
                .read_to_end(&mut back)
                .expect("reads, and its CRC checks");
            assert_eq!(&back, bytes, "{name}");
            let t = entry.last_modified().expect("a time");
            assert_eq!(
                (t.year(), t.month(), t.day(), t.hour(), t.minute()),
                (2026, 12, 3, 14, 15)
            );
            assert_eq!(entry.unix_mode(), Some(0o100_644));
        }
    }

    #[test]
    fn more_than_65535_entries_take_zip64_end_records_and_read_back() {
        let files: Vec<(String, Vec<u8>)> = (0..70_000)
            .map(|i| (format!("{i:05}.jpg"), vec![(i % 251) as u8; i % 3]))
            .collect();
        let borrowed: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        let (plan, zip) = write(&borrowed);
        assert!(plan.zip64_end());
        assert_eq!(plan.len(), zip.len() as u64);
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip64");
        assert_eq!(archive.len(), 70_000);
        for i in [0usize, 65_534, 65_535, 69_999] {
            let mut entry = archive.by_name(&format!("{i:05}.jpg")).expect("entry");
            let mut back = Vec::new();
            entry.read_to_end(&mut back).expect("reads");
            assert_eq!(back, vec![(i % 251) as u8; i % 3]);
        }
    }

    #[test]
    fn entries_and_offsets_past_4_gib_get_zip64_fields() {
        // Not written out (that would take 5 GiB): the plan's headers are checked field by field.
        let entries = vec![
            ZipEntry {
                name: "huge.tif".into(),
                size: 5 << 30,
            },
            ZipEntry {
                name: "after.jpg".into(),
                size: 10,
            },
        ];
        let plan = ZipPlan::new(entries, Utc::now());
        let first = plan.local_header(0);
        assert_eq!(u16::from_le_bytes([first[4], first[5]]), 45, "version 4.5");
        assert_eq!(&first[18..26], &[0xFF; 8], "sizes in the zip64 field");
        let descriptor = plan.descriptor(0, 7);
        assert_eq!(descriptor.len(), 24, "8-byte sizes");
        assert_eq!(
            u64::from_le_bytes(descriptor[8..16].try_into().unwrap()),
            5 << 30
        );
        assert_eq!(plan.descriptor(1, 9).len(), 24, "its offset is past 4 GiB");
        // The second entry starts past 4 GiB: its offset needs zip64 in the directory, and the
        // directory itself lies past 4 GiB, so the end records are zip64 too.
        let second_offset = plan.offsets[1];
        assert!(second_offset > U32_MAX);
        assert!(plan.zip64_end());
        let trailer = plan.trailer(&[7, 9]);
        let expected_len = plan.len() - plan.central_offset;
        assert_eq!(trailer.len() as u64, expected_len);
        let tail = &trailer[trailer.len() - 22..];
        assert_eq!(u32::from_le_bytes(tail[0..4].try_into().unwrap()), END);
        assert_eq!(
            &tail[16..20],
            &[0xFF; 4],
            "the directory offset is in the zip64 record"
        );
    }
}

//! Builds the zip of a batch as a stream, one entry at a time (never the whole archive in
//! memory): every processed image under its cleaned, unique original name, plus a report of the
//! files that failed and why. The caller takes the bytes written so far after each entry
//! ([`ArchiveWriter::take`]) and uploads them as parts, so the archive goes to storage while
//! the next results are fetched, with no temporary file. Entries carry data descriptors (the
//! writer cannot seek back), which every unzip tool reads.

use std::io::Write;
use std::sync::{Arc, Mutex};

use zip::write::{SimpleFileOptions, StreamWriter};
use zip::{CompressionMethod, ZipWriter};

use crate::names::REPORT_NAME;

/// The bytes written and not yet taken.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<Vec<u8>>>);

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A zip being written as a stream.
pub struct ArchiveWriter {
    zip: ZipWriter<StreamWriter<Pending>>,
    pending: Pending,
}

impl Default for ArchiveWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveWriter {
    pub fn new() -> Self {
        let pending = Pending::default();
        Self {
            zip: ZipWriter::new_stream(pending.clone()),
            pending,
        }
    }

    /// Adds one image; images are compressed already, so they are stored as they are.
    pub fn add_image(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(bytes.len() as u64 >= u32::MAX as u64);
        self.zip
            .start_file(name, options)
            .map_err(std::io::Error::other)?;
        self.zip.write_all(bytes)
    }

    /// Adds the report of failed files (name and reason, one per line).
    pub fn add_report(&mut self, failures: &[(String, String)]) -> std::io::Result<()> {
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        self.zip
            .start_file(REPORT_NAME, options)
            .map_err(std::io::Error::other)?;
        self.zip.write_all(report_text(failures).as_bytes())
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut *self.pending.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Ends the archive (the central directory); the last bytes.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        let Self { zip, pending } = self;
        zip.finish().map_err(std::io::Error::other)?;
        let rest = std::mem::take(&mut *pending.0.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(rest)
    }
}

/// The text of the report of failed files.
pub fn report_text(failures: &[(String, String)]) -> String {
    let mut text = format!(
        "{} file(s) of this batch could not be processed and are not in this archive:\r\n\r\n",
        failures.len()
    );
    for (name, reason) in failures {
        let name: String = name.chars().filter(|c| !c.is_control()).collect();
        text.push_str(&format!("- {name}: {reason}\r\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn entries_and_report_come_back_out() {
        let mut w = ArchiveWriter::new();
        let mut out = Vec::new();
        w.add_image("one.jpg", b"jpeg bytes").expect("add");
        out.extend(w.take());
        assert!(out.len() > 10, "an entry is out as soon as it is added");
        let big = vec![7u8; 3 << 20];
        w.add_image("two (2).png", &big).expect("add");
        out.extend(w.take());
        w.add_report(&[("bad.jpg".into(), "not an image".into())])
            .expect("report");
        out.extend(w.finish().expect("finish"));

        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(out)).expect("a zip");
        assert_eq!(zip.len(), 3);
        let mut s = String::new();
        zip.by_name(REPORT_NAME)
            .expect("report")
            .read_to_string(&mut s)
            .expect("read");
        assert!(s.contains("- bad.jpg: not an image"), "{s}");
        let mut b = Vec::new();
        zip.by_name("two (2).png")
            .expect("entry")
            .read_to_end(&mut b)
            .expect("read");
        assert_eq!(b, big);
    }
}

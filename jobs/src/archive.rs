//! Builds the zip of a batch on disk, one entry at a time (never the whole archive in memory):
//! every processed image under its cleaned, unique original name, plus a report of the files
//! that failed and why.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::names::REPORT_NAME;

/// A zip being written to a file.
pub struct ArchiveWriter {
    zip: ZipWriter<BufWriter<File>>,
}

impl ArchiveWriter {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            zip: ZipWriter::new(BufWriter::with_capacity(1 << 20, file)),
        })
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

    pub fn finish(self) -> std::io::Result<()> {
        let mut inner = self.zip.finish().map_err(std::io::Error::other)?;
        inner.flush()?;
        inner.into_inner().map_err(|e| e.into_error())?.sync_all()
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
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.zip");
        let mut w = ArchiveWriter::create(&path).expect("create");
        w.add_image("one.jpg", b"jpeg bytes").expect("add");
        w.add_image("two (2).png", b"png bytes").expect("add");
        w.add_report(&[("bad.jpg".into(), "not an image".into())])
            .expect("report");
        w.finish().expect("finish");

        let mut zip = zip::ZipArchive::new(File::open(&path).expect("open")).expect("a zip");
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
        assert_eq!(b, b"png bytes");
    }
}

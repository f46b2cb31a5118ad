//! Tar archives built in memory whose bytes depend on their contents alone: owner, mode
//! and mtime of every entry are given, never read from a file, so the same inputs make
//! the same archive on any machine (docker-build's context, a release's archives and
//! packages, an OCI image's layers); and gzip with a fixed header.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

/// Who owns an entry: (uid, gid).
pub(crate) type Owner = (u32, u32);
pub(crate) const ROOT: Owner = (0, 0);

/// An archive being written, every entry with the same `mtime`.
pub(crate) struct Tarball {
    builder: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl Tarball {
    /// An empty archive whose entries all carry `mtime` (seconds since the epoch: 0, or a
    /// release's SOURCE_DATE_EPOCH).
    pub(crate) fn new(mtime: u64) -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
            mtime,
        }
    }

    /// A directory; `name` ends with `/`.
    pub(crate) fn dir(&mut self, name: &str, mode: u32, owner: Owner) -> &mut Self {
        self.append(name, tar::EntryType::Directory, mode, owner, &[])
    }

    pub(crate) fn file(&mut self, name: &str, mode: u32, owner: Owner, data: &[u8]) -> &mut Self {
        self.append(name, tar::EntryType::Regular, mode, owner, data)
    }

    /// Appends one entry. The archive is in memory, so writing cannot fail; the tar crate
    /// refuses only an absolute name or one with `..`, and every name is the toolchain's
    /// own: a failure is a bug, reported with the name.
    fn append(&mut self, name: &str, kind: tar::EntryType, mode: u32, owner: Owner, data: &[u8]) -> &mut Self {
        let mut header = header(kind, mode, owner, self.mtime, data.len() as u64);
        self.builder
            .append_data(&mut header, name, data)
            .unwrap_or_else(|err| panic!("adding {name} to a tar archive: {err}"));
        self
    }

    /// The archive's bytes, after the two zero blocks that end it.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.builder
            .into_inner()
            .unwrap_or_else(|err| panic!("ending a tar archive: {err}"))
    }
}

/// The header of every entry. GNU rather than plain ustar: a size past ustar's 11 octal
/// digits (8 GiB) is then written in base-256 instead of losing its top digits, and
/// `append_data` puts a GNU long-name entry before a name over 100 bytes instead of
/// cutting it.
fn header(kind: tar::EntryType, mode: u32, (uid, gid): Owner, mtime: u64, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(u64::from(uid));
    header.set_gid(u64::from(gid));
    header.set_mtime(mtime);
    header.set_size(size);
    header
}

/// `bytes` gzipped at the default level (level 9 saves half a per cent for twice the time), with no name and a zero mtime in the header:
/// the same bytes in, the same bytes out.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new().mtime(0).write(Vec::new(), Compression::default());
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.try_finish())
        .unwrap_or_else(|err| panic!("gzipping in memory: {err}"));
    encoder
        .finish()
        .unwrap_or_else(|err| panic!("gzipping in memory: {err}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;
    use tar::EntryType::Regular;

    /// One entry as the tar crate reads it back.
    pub(crate) struct Entry {
        pub name: String,
        pub kind: tar::EntryType,
        pub mode: u32,
        pub owner: (u64, u64),
        pub mtime: u64,
        pub data: Vec<u8>,
    }

    /// Every entry of `archive`, read by an implementation other than the writer's own
    /// header code (it checks each header's checksum).
    pub(crate) fn entries(archive: &[u8]) -> Vec<Entry> {
        assert_eq!(archive.len() % 512, 0);
        assert!(archive.ends_with(&[0; 1024]), "two zero blocks end an archive");
        let mut reader = tar::Archive::new(archive);
        let entries = reader.entries().expect("a tar archive");
        entries
            .map(|entry| {
                let mut entry = entry.expect("an entry");
                let header = entry.header();
                let mut read = Entry {
                    name: String::from_utf8(entry.path_bytes().into_owned()).expect("a UTF-8 name"),
                    kind: header.entry_type(),
                    mode: header.mode().expect("a mode"),
                    owner: (header.uid().expect("a uid"), header.gid().expect("a gid")),
                    mtime: header.mtime().expect("an mtime"),
                    data: Vec::new(),
                };
                entry.read_to_end(&mut read.data).expect("the entry's data");
                read
            })
            .collect()
    }

    #[test]
    fn a_name_over_100_bytes_round_trips_whole() {
        // Its last component alone is over 100 bytes: no ustar prefix/name split fits it.
        let name = format!("usr/share/{}/{}.yaml", "d".repeat(150), "f".repeat(120));
        let mut archive = Tarball::new(7);
        archive
            .file(&name, 0o644, ROOT, b"long")
            .file("after", 0o600, (1, 2), b"next");
        let read = entries(&archive.finish());
        let names: Vec<&str> = read.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, [name.as_str(), "after"]);
        assert_eq!(
            (read[0].mode, read[0].owner, read[0].mtime, &read[0].data[..]),
            (0o644, (0, 0), 7, &b"long"[..])
        );
        assert_eq!(
            (read[1].mode, read[1].owner, &read[1].data[..]),
            (0o600, (1, 2), &b"next"[..])
        );
    }

    #[test]
    fn a_size_past_eleven_octal_digits_is_kept_in_base_256() {
        // One byte over ustar's largest size, 0o77777777777 (8 GiB - 1): eleven octal
        // digits cannot hold it, and cutting its leading digit would leave 0.
        let size = 0o77777777777 + 1;
        let header = header(Regular, 0o644, ROOT, 0, size);
        let read = tar::Header::from_byte_slice(header.as_bytes());
        assert_eq!(read.entry_size().expect("a size"), size);
        assert_eq!(header.as_bytes()[124] & 0x80, 0x80, "GNU's base-256 marker");
        assert!(header.as_gnu().is_some());
    }

    #[test]
    fn gzip_output_depends_on_the_input_alone() {
        let zipped = gzip(b"the same bytes");
        assert_eq!(zipped, gzip(b"the same bytes"));
        // No mtime (bytes 4..8) and no file name flag (bit 3 of byte 3) in the header.
        assert_eq!(&zipped[4..8], &[0, 0, 0, 0]);
        assert_eq!(zipped[3] & 0x08, 0);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"the same bytes");
    }
}

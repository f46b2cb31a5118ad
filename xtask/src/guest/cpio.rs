//! newc ("070701") cpio archives, the format Linux unpacks as an initramfs. Written by
//! hand because the format is tiny and the kernel's reader is strict about it: every
//! header and every body starts on a 4-byte boundary, names carry their NUL, and the
//! archive ends with a `TRAILER!!!` entry. Several archives may be concatenated (the
//! kernel unpacks them in turn, later entries overriding earlier ones), which is how a
//! per-VM overlay is appended to a shared image.

use std::io::{self, Write};

#[cfg(test)]
use anyhow::{bail, Context, Result};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes one archive. Entries are owned by root with mtime 0, so the same inputs make
/// the same bytes (images are cached by content).
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_inode: 1,
        }
    }

    /// A directory; its parents must have been added before it.
    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> io::Result<&mut Self> {
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> io::Result<&mut Self> {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), contents)
    }

    pub(crate) fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<&mut Self> {
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and pads the archive to a multiple of 512 bytes (as GNU cpio
    /// does); returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.next_inode = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[])?;
        let padding = (512 - self.written % 512) % 512;
        self.out.write_all(&vec![0; padding as usize])?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, links: u32, rdev: (u32, u32), body: &[u8]) -> io::Result<&mut Self> {
        // The kernel creates entries relative to the root it unpacks into; a leading
        // slash is tolerated there but not by every other reader.
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {path:?}"),
            ));
        }
        let size = u32::try_from(body.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{path} is over 4 GiB")))?;
        let inode = self.next_inode;
        self.next_inode += 1;
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            links,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check: unused by newc
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        pad_to_4(&mut header);
        self.write(&header)?;
        self.write(body)?;
        self.write(&vec![0; padding(body.len())])?;
        Ok(self)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn pad_to_4(bytes: &mut Vec<u8>) {
    bytes.resize(bytes.len() + padding(bytes.len()), 0);
}

/// One entry read back from an archive, by the tests.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

#[cfg(test)]
impl Entry {
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & 0o170_000 == S_IFDIR
    }

    pub(crate) fn is_file(&self) -> bool {
        self.mode & 0o170_000 == S_IFREG
    }

    pub(crate) fn is_char_device(&self) -> bool {
        self.mode & 0o170_000 == S_IFCHR
    }
}

/// The entries of one or more concatenated newc archives (without their trailers),
/// checked as strictly as the kernel reads them: the tests' reader.
#[cfg(test)]
pub(crate) fn read(bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        // Between archives: the zero padding of the one before.
        if bytes[at] == 0 {
            at += 1;
            continue;
        }
        if at % 4 != 0 {
            bail!("entry at offset {at} is not 4-byte aligned");
        }
        let header = bytes
            .get(at..at + HEADER_LEN)
            .with_context(|| format!("truncated header at offset {at}"))?;
        if &header[..6] != MAGIC {
            bail!("no newc magic at offset {at}");
        }
        let field = |index: usize| -> Result<u32> {
            let text = std::str::from_utf8(&header[6 + index * 8..14 + index * 8])?;
            u32::from_str_radix(text, 16).with_context(|| format!("bad header field at offset {at}"))
        };
        let (mode, size, rdev, name_len) = (
            field(1)?,
            field(6)? as usize,
            (field(9)?, field(10)?),
            field(11)? as usize,
        );
        let name_start = at + HEADER_LEN;
        let name_bytes = bytes.get(name_start..name_start + name_len).context("truncated name")?;
        let name = std::str::from_utf8(name_bytes.strip_suffix(&[0]).context("name without its NUL")?)?.to_string();
        let body_start = name_start + name_len + padding(HEADER_LEN + name_len);
        let data = bytes
            .get(body_start..body_start + size)
            .with_context(|| format!("truncated body of {name}"))?
            .to_vec();
        at = body_start + size + padding(size);
        if name != TRAILER {
            entries.push(Entry { name, mode, rdev, data });
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut writer = CpioWriter::new(Vec::new());
        writer.dir("/dev", 0o755).unwrap();
        writer.char_device("/dev/console", 0o600, 5, 1).unwrap();
        writer.file("/init", 0o755, b"#!binary").unwrap();
        writer.file("/etc/odd", 0o644, b"12345").unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn what_is_written_reads_back() {
        let bytes = archive();
        let entries = read(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "etc/odd"]);
        assert!(entries[0].is_dir() && entries[0].mode & 0o7777 == 0o755);
        assert!(entries[1].is_char_device());
        assert_eq!((entries[1].rdev, entries[1].mode & 0o7777), ((5, 1), 0o600));
        assert!(entries[2].is_file());
        assert_eq!(entries[2].data, b"#!binary");
        assert_eq!(entries[3].data, b"12345");
    }

    #[test]
    fn headers_bodies_and_the_archive_are_aligned_and_terminated() {
        let bytes = archive();
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(&bytes[..6], b"070701");
        // The first header: inode 1, a directory, two links, name "dev" plus its NUL.
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        assert_eq!(&header[6..14], "00000001");
        assert_eq!(&header[14..22], "000041ed");
        assert_eq!(&header[38..46], "00000002");
        assert_eq!(&header[94..102], "00000004");
        // 110 + 4 bytes of name → the next header starts at 116, a multiple of 4.
        assert_eq!(&bytes[116..122], b"070701");
        let trailer = bytes
            .windows(TRAILER.len())
            .position(|w| w == TRAILER.as_bytes())
            .expect("a trailer");
        assert_eq!((trailer - HEADER_LEN) % 4, 0);
        assert!(bytes[trailer + TRAILER.len()..].iter().all(|b| *b == 0));
    }

    #[test]
    fn concatenated_archives_read_as_one() {
        let mut bytes = archive();
        let mut overlay = CpioWriter::new(Vec::new());
        overlay.file("etc/node", 0o644, b"node-2").unwrap();
        bytes.extend(overlay.finish().unwrap());
        let entries = read(&bytes).unwrap();
        assert_eq!(entries.last().unwrap().name, "etc/node");
        assert_eq!(entries.len(), 5);
    }

    #[test]
    fn bad_names_and_broken_archives_are_refused() {
        let mut writer = CpioWriter::new(Vec::new());
        assert!(writer.file("/", 0o644, b"").is_err());
        assert!(writer.file("a\0b", 0o644, b"").is_err());
        let bytes = archive();
        assert!(read(&bytes[..200]).is_err());
        assert!(read(b"070702").is_err());
    }
}

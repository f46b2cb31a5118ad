//! The kernel QEMU boots, made from the one in Debian's package. x86_64's bzImage
//! carries an LZ4-compressed vmlinux that boots directly as a PVH kernel, which skips
//! the decompressor and is over a second faster to boot under TCG; arm64's and
//! riscv64's are uncompressed Images that boot as they are.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::system::elf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFormat {
    /// An x86_64 ELF vmlinux with the PVH entry note.
    PvhVmlinux,
    /// An x86_64 bzImage, used as it is when its payload cannot be unpacked.
    BzImage,
    /// The arm64 boot Image.
    Arm64Image,
    /// The RISC-V boot Image.
    RiscvImage,
}

/// The bootable kernel for `arch` made from `image` (the package's boot/vmlinu[xz]-*),
/// and why that form was chosen.
pub(crate) fn bootable(arch: &str, image: &[u8]) -> Result<(Vec<u8>, KernelFormat, String)> {
    let image = gunzipped(image)?;
    match arch {
        "x86_64" => x86_64(image),
        "aarch64" if magic_at(&image, 0x38, b"ARM\x64") => {
            Ok((image, KernelFormat::Arm64Image, "uncompressed Image".into()))
        }
        "riscv64" if magic_at(&image, 0x38, b"RSC\x05") => {
            Ok((image, KernelFormat::RiscvImage, "uncompressed Image".into()))
        }
        _ => bail!("not a boot image for {arch} (no Image magic at offset 0x38)"),
    }
}

fn x86_64(image: Vec<u8>) -> Result<(Vec<u8>, KernelFormat, String)> {
    if image.starts_with(b"\x7fELF") {
        return pvh(image, "the package ships a vmlinux");
    }
    let payload = bzimage_payload(&image)?;
    if !payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        let reason = "the bzImage payload is not LZ4: booted through its own decompressor";
        return Ok((image, KernelFormat::BzImage, reason.into()));
    }
    let vmlinux = lz4_legacy_decompress(payload).context("unpacking the bzImage's LZ4 payload")?;
    // The build appends the uncompressed size to the payload: a cheap integrity check.
    let expected = payload[payload.len() - 4..].try_into().map(u32::from_le_bytes)?;
    if vmlinux.len() as u64 != u64::from(expected) {
        bail!(
            "the bzImage's payload unpacked to {} bytes, but it says {expected}",
            vmlinux.len()
        );
    }
    pvh(vmlinux, "vmlinux unpacked from the bzImage's LZ4 payload")
}

fn pvh(vmlinux: Vec<u8>, origin: &str) -> Result<(Vec<u8>, KernelFormat, String)> {
    if !elf::has_pvh_entry(&vmlinux)? {
        bail!("{origin}, but it has no PVH entry note (CONFIG_PVH): QEMU cannot boot it directly");
    }
    Ok((vmlinux, KernelFormat::PvhVmlinux, origin.into()))
}

/// The compressed kernel inside a bzImage, located through its setup header.
fn bzimage_payload(image: &[u8]) -> Result<&[u8]> {
    if !magic_at(image, 0x202, b"HdrS") {
        bail!("not an x86 bzImage (no HdrS setup header)");
    }
    let u32_at = |at: usize| -> Result<usize> {
        let bytes = image.get(at..at + 4).context("truncated setup header")?;
        Ok(u32::from_le_bytes(bytes.try_into()?) as usize)
    };
    // The real-mode setup is `setup_sects` 512-byte sectors after the boot sector
    // (0 means the historical 4); the protected-mode kernel follows it.
    let setup_sectors = match image[0x1f1] {
        0 => 4,
        sectors => usize::from(sectors),
    };
    let start = (setup_sectors + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?;
    let payload = image
        .get(start..start + len)
        .context("the setup header's payload lies past the end of the bzImage")?;
    if payload.len() < 8 {
        bail!("the bzImage's payload is empty");
    }
    Ok(payload)
}

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Every chunk of the legacy format decompresses to at most 8 MiB.
const LZ4_LEGACY_CHUNK: usize = 8 << 20;

/// Decodes LZ4's legacy framing, the one Linux uses: the magic, then chunks each led by
/// its compressed size (u32 LE). It has no end marker; a size that cannot be a chunk
/// (past the end, or larger than any 8 MiB block compresses to) ends the stream, which
/// is also how the size Linux appends after it is passed over.
pub(crate) fn lz4_legacy_decompress(data: &[u8]) -> Result<Vec<u8>> {
    if !data.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        bail!("not an LZ4 legacy stream");
    }
    let max_chunk = LZ4_LEGACY_CHUNK + LZ4_LEGACY_CHUNK / 255 + 16;
    let mut out = Vec::new();
    let mut at = 4;
    while let Some(size) = data.get(at..at + 4) {
        let size = u32::from_le_bytes(size.try_into()?);
        // Concatenated streams each start with the magic again.
        if size == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        let size = size as usize;
        if size == 0 || size > max_chunk || size > data.len() - at - 4 {
            break;
        }
        let start = out.len();
        out.resize(start + LZ4_LEGACY_CHUNK, 0);
        let written = lz4_flex::block::decompress_into(&data[at + 4..at + 4 + size], &mut out[start..])
            .map_err(|err| anyhow::anyhow!("LZ4 chunk at offset {at}: {err}"))?;
        out.truncate(start + written);
        at += 4 + size;
    }
    if out.is_empty() {
        bail!("the LZ4 stream holds no data");
    }
    Ok(out)
}

/// Some distributions gzip their arm64 and riscv64 Images; Debian's are not today.
fn gunzipped(image: &[u8]) -> Result<Vec<u8>> {
    if !image.starts_with(&[0x1f, 0x8b]) {
        return Ok(image.to_vec());
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(image), &mut out).context("gunzipping the kernel")?;
    Ok(out)
}

fn magic_at(bytes: &[u8], at: usize, magic: &[u8]) -> bool {
    bytes.get(at..at + magic.len()) == Some(magic)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy stream as Linux builds it: magic, sized chunks, then the total size.
    fn legacy_stream(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stream = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        let mut total = 0u32;
        for chunk in chunks {
            let compressed = lz4_flex::block::compress(chunk);
            stream.extend((compressed.len() as u32).to_le_bytes());
            stream.extend(compressed);
            total += chunk.len() as u32;
        }
        stream.extend(total.to_le_bytes());
        stream
    }

    #[test]
    fn a_legacy_stream_decompresses_chunk_by_chunk_and_stops_at_the_size_trailer() {
        let first: Vec<u8> = (0..LZ4_LEGACY_CHUNK).map(|i| (i % 251) as u8).collect();
        let second = b"the last, short chunk".repeat(10);
        let stream = legacy_stream(&[&first, &second]);
        let out = lz4_legacy_decompress(&stream).unwrap();
        assert_eq!(out.len(), first.len() + second.len());
        assert_eq!(&out[..first.len()], &first[..]);
        assert_eq!(&out[first.len()..], &second[..]);
    }

    #[test]
    fn corrupt_or_foreign_streams_are_refused() {
        assert!(lz4_legacy_decompress(b"\x04\x22\x4d\x18 a frame, not legacy").is_err());
        assert!(lz4_legacy_decompress(&LZ4_LEGACY_MAGIC.to_le_bytes()).is_err());
        let mut stream = legacy_stream(&[b"some data that compresses some data that compresses"]);
        // A chunk cut short: its last literals are missing.
        let size = u32::from_le_bytes(stream[4..8].try_into().unwrap());
        stream[4..8].copy_from_slice(&(size - 1).to_le_bytes());
        assert!(lz4_legacy_decompress(&stream).is_err());
    }

    #[test]
    fn a_bzimage_payload_is_found_through_the_setup_header() {
        let payload = legacy_stream(&[b"not really a kernel"]);
        let mut image = vec![0u8; 5 * 512];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend([0; 16]);
        image.extend(&payload);
        assert_eq!(bzimage_payload(&image).unwrap(), &payload[..]);
        // The unpacked payload is not an ELF file with a PVH note: refused, not booted.
        let err = bootable("x86_64", &image).unwrap_err();
        assert!(format!("{err:#}").contains("ELF"), "{err:#}");
    }

    #[test]
    fn images_are_recognised_by_their_magic() {
        let mut arm = vec![0u8; 64];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(bootable("aarch64", &arm).unwrap().1, KernelFormat::Arm64Image);
        assert!(bootable("riscv64", &arm).is_err());
        let mut riscv = vec![0u8; 64];
        riscv[0x38..0x3c].copy_from_slice(b"RSC\x05");
        assert_eq!(bootable("riscv64", &riscv).unwrap().1, KernelFormat::RiscvImage);
    }
}

//! Just enough ELF to check an artefact: which machine it is for, and whether it is
//! static (no program interpreter, so it runs alone in a FROM-scratch image or a VM);
//! and to read guest kernels: a module's sections (`.modinfo`), a vmlinux's notes.

use anyhow::{bail, Context, Result};

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// Xen's note with the 32-bit entry point that QEMU uses to boot a vmlinux as PVH.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfInfo {
    pub machine: u16,
    pub is_static: bool,
}

pub fn inspect(bytes: &[u8]) -> Result<ElfInfo> {
    check_header(bytes)?;
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let machine = u16_at(18);
    let header_offset = u64::from_le_bytes(bytes[32..40].try_into()?) as usize;
    let header_size = usize::from(u16_at(54));
    let header_count = usize::from(u16_at(56));
    let mut is_static = true;
    for index in 0..header_count {
        let at = header_offset + index * header_size;
        let kind = bytes
            .get(at..at + 4)
            .context("program header past the end of the file")?;
        if u32::from_le_bytes(kind.try_into()?) == PT_INTERP {
            is_static = false;
        }
    }
    Ok(ElfInfo { machine, is_static })
}

/// The contents of the section called `name`, if the file has one.
pub fn section<'a>(bytes: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    check_header(bytes)?;
    let table_offset = usize::try_from(read_u64(bytes, 40)?)?;
    let entry_size = usize::from(read_u16(bytes, 58)?);
    let count = usize::from(read_u16(bytes, 60)?);
    let names_index = usize::from(read_u16(bytes, 62)?);
    // (offset, size, name offset) of section `index`.
    let header = |index: usize| -> Result<(usize, usize, usize)> {
        let at = table_offset + index * entry_size;
        Ok((
            usize::try_from(read_u64(bytes, at + 24)?)?,
            usize::try_from(read_u64(bytes, at + 32)?)?,
            read_u32(bytes, at)? as usize,
        ))
    };
    if count == 0 {
        return Ok(None);
    }
    let (names_offset, names_size, _) = header(names_index)?;
    let names = slice(bytes, names_offset, names_size)?;
    for index in 0..count {
        let (offset, size, name_at) = header(index)?;
        let found = names
            .get(name_at..)
            .and_then(|rest| rest.split(|b| *b == 0).next())
            .is_some_and(|candidate| candidate == name.as_bytes());
        if found {
            return Ok(Some(slice(bytes, offset, size)?));
        }
    }
    Ok(None)
}

/// Whether the file carries the PVH entry note, so QEMU can boot it with `-kernel`
/// directly (no bzImage decompressor).
pub fn has_pvh_entry(bytes: &[u8]) -> Result<bool> {
    check_header(bytes)?;
    let table_offset = usize::try_from(read_u64(bytes, 32)?)?;
    let entry_size = usize::from(read_u16(bytes, 54)?);
    let count = usize::from(read_u16(bytes, 56)?);
    for index in 0..count {
        let at = table_offset + index * entry_size;
        if read_u32(bytes, at)? != PT_NOTE {
            continue;
        }
        let notes = slice(
            bytes,
            usize::try_from(read_u64(bytes, at + 8)?)?,
            usize::try_from(read_u64(bytes, at + 32)?)?,
        )?;
        let mut offset = 0;
        while offset + 12 <= notes.len() {
            let name_size = read_u32(notes, offset)? as usize;
            let desc_size = read_u32(notes, offset + 4)? as usize;
            let kind = read_u32(notes, offset + 8)?;
            let name = slice(notes, offset + 12, name_size)?;
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                return Ok(true);
            }
            offset += 12 + name_size.next_multiple_of(4) + desc_size.next_multiple_of(4);
        }
    }
    Ok(false)
}

fn check_header(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    Ok(())
}

fn slice(bytes: &[u8], offset: usize, len: usize) -> Result<&[u8]> {
    offset
        .checked_add(len)
        .and_then(|end| bytes.get(offset..end))
        .with_context(|| format!("{len} bytes at offset {offset} lie past the end of the file"))
}

fn read_u16(bytes: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(slice(bytes, at, 2)?.try_into()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(slice(bytes, at, 4)?.try_into()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(slice(bytes, at, 8)?.try_into()?))
}

pub fn machine_name(machine: u16) -> &'static str {
    match machine {
        62 => "x86-64",
        183 => "AArch64",
        243 => "RISC-V",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_test_binary_is_a_dynamic_elf_of_this_machine() {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = inspect(&bytes).unwrap();
        let expected = match std::env::consts::ARCH {
            "x86_64" => 62,
            "aarch64" => 183,
            "riscv64" => 243,
            other => panic!("untested host {other}"),
        };
        assert_eq!(info.machine, expected);
        assert!(!info.is_static, "test binaries link glibc dynamically");
    }

    #[test]
    fn sections_are_found_by_name() {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let text = section(&bytes, ".text").unwrap().expect("a test binary has code");
        assert!(!text.is_empty());
        assert_eq!(section(&bytes, ".no-such-section").unwrap(), None);
        assert!(!has_pvh_entry(&bytes).unwrap());
        assert!(section(b"not elf", ".text").is_err());
    }

    #[test]
    fn other_files_are_refused() {
        assert!(inspect(b"#!/bin/sh\necho not elf\n").is_err());
        assert!(inspect(&[0x7f, b'E', b'L', b'F']).is_err());
    }
}

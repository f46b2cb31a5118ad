//! Just enough ELF to check an artefact: which machine it is for, and whether it is
//! static (no program interpreter, so it runs alone in a FROM-scratch image or a VM).

use anyhow::{bail, Context, Result};

const PT_INTERP: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfInfo {
    pub machine: u16,
    pub is_static: bool,
}

pub fn inspect(bytes: &[u8]) -> Result<ElfInfo> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
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
    fn other_files_are_refused() {
        assert!(inspect(b"#!/bin/sh\necho not elf\n").is_err());
        assert!(inspect(&[0x7f, b'E', b'L', b'F']).is_err());
    }
}

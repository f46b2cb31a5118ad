//! Whether KVM really works. /dev/kvm can exist on a host whose (nested,
//! para-virtual) KVM cannot boot a kernel, and QEMU's `query-kvm` then still says
//! "enabled": only the CPU's virtualisation flags and the device together count.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KvmProbe {
    pub usable: bool,
    pub reason: String,
}

pub fn probe() -> KvmProbe {
    let device = Path::new("/dev/kvm");
    if !device.exists() {
        return KvmProbe {
            usable: false,
            reason: "no /dev/kvm".into(),
        };
    }
    if std::fs::OpenOptions::new().read(true).write(true).open(device).is_err() {
        return KvmProbe {
            usable: false,
            reason: "/dev/kvm is not accessible to this user".into(),
        };
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !has_virtualisation_flag(&cpuinfo) {
        return KvmProbe {
            usable: false,
            reason: "/dev/kvm exists but the CPU shows no vmx/svm flag: KVM here cannot boot a stock kernel".into(),
        };
    }
    KvmProbe {
        usable: true,
        reason: "/dev/kvm is accessible and the CPU has hardware virtualisation".into(),
    }
}

fn has_virtualisation_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|flag| flag == "vmx" || flag == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_matched_as_whole_words() {
        assert!(has_virtualisation_flag("flags\t\t: fpu vme vmx sse\n"));
        assert!(has_virtualisation_flag("flags\t\t: fpu svm\n"));
        assert!(!has_virtualisation_flag("flags\t\t: fpu vmxx hypervisor\n"));
        assert!(!has_virtualisation_flag("model name : vmx in a name\n"));
    }
}

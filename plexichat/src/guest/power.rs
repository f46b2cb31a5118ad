//! The VM's power: QEMU's `system_powerdown` arrives as a KEY_POWER press on an input
//! device (the ACPI button on x86_64, gpio-keys on arm64), and the only clean way for PID 1
//! to end is to power the machine off; if it exits or panics, the kernel panics.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};

use super::console::say;

const INPUT_DIR: &str = "/dev/input";
/// Input devices register a little after their modules load; scan for this long.
const SCAN_FOR: Duration = Duration::from_secs(10);
const SCAN_EVERY: Duration = Duration::from_millis(250);

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `value` of a key event: 1 is a press (0 release, 2 autorepeat).
const KEY_PRESSED: i32 = 1;

/// `struct input_event`: a `struct timeval`, then u16 type, u16 code, i32 value; 24 bytes on
/// 64-bit targets.
pub(super) const EVENT_SIZE: usize = std::mem::size_of::<nix::libc::input_event>();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    /// Decodes one record as the kernel writes it (native byte order). The timestamp is
    /// not needed, so its width does not matter: the fields are the last 8 bytes.
    pub(super) fn decode(record: &[u8]) -> Option<Self> {
        if record.len() != EVENT_SIZE {
            return None;
        }
        let (_, &[k0, k1, c0, c1, v0, v1, v2, v3]) = record.split_last_chunk::<8>()?;
        Some(Self {
            kind: u16::from_ne_bytes([k0, k1]),
            code: u16::from_ne_bytes([c0, c1]),
            value: i32::from_ne_bytes([v0, v1, v2, v3]),
        })
    }

    pub(super) fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == KEY_PRESSED
    }
}

/// Calls `on_press` for every press of a power button on any input device, from
/// background threads. Devices are looked for during the first seconds, while their
/// drivers come up; a VM with none is told on the console.
pub(super) fn watch_power_button(on_press: impl Fn() + Send + Sync + 'static) {
    let on_press: Arc<dyn Fn() + Send + Sync> = Arc::new(on_press);
    let spawned = std::thread::Builder::new()
        .name("input-scan".into())
        .spawn(move || scan(Path::new(INPUT_DIR), &on_press));
    if let Err(err) = spawned {
        say(format_args!("cannot watch for the power button: {err}"));
    }
}

fn scan(dir: &Path, on_press: &Arc<dyn Fn() + Send + Sync>) {
    let deadline = Instant::now() + SCAN_FOR;
    let mut watched = HashSet::new();
    loop {
        for device in event_devices(dir) {
            if watched.contains(&device) {
                continue;
            }
            match File::open(&device) {
                Ok(file) => {
                    let name = device_name(&device);
                    let on_press = on_press.clone();
                    let path = device.clone();
                    let spawned = std::thread::Builder::new()
                        .name("input-watch".into())
                        .spawn(move || watch(&path, file, &*on_press));
                    match spawned {
                        Ok(_) => say(format_args!(
                            "watching {} ({name}) for the power button",
                            device.display()
                        )),
                        Err(err) => say(format_args!("cannot watch {}: {err}", device.display())),
                    }
                }
                Err(err) => say(format_args!("cannot open {}: {err}", device.display())),
            }
            watched.insert(device);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(SCAN_EVERY);
    }
    if watched.is_empty() {
        say(format_args!(
            "no input devices under {}: QMP system_powerdown cannot stop this VM \
             (the image should load evdev and button or gpio_keys)",
            dir.display()
        ));
    }
}

/// `/dev/input/event*`, in a stable order.
fn event_devices(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut devices: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("event"))
        .map(|entry| entry.path())
        .collect();
    devices.sort();
    devices
}

/// What the driver calls the device ("Power Button"), for the console.
fn device_name(device: &Path) -> String {
    let Some(node) = device.file_name() else {
        return "unknown".into();
    };
    let sys = Path::new("/sys/class/input").join(node).join("device/name");
    std::fs::read_to_string(sys)
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn watch(path: &Path, mut device: File, on_press: &(dyn Fn() + Send + Sync)) {
    let mut buffer = [0u8; EVENT_SIZE * 32];
    loop {
        // evdev returns whole events only, so every read splits into records.
        let read = match device.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                say(format_args!("stopped watching {}: {err}", path.display()));
                return;
            }
        };
        let presses = buffer[..read]
            .chunks_exact(EVENT_SIZE)
            .filter_map(InputEvent::decode)
            .filter(InputEvent::is_power_press)
            .count();
        for _ in 0..presses {
            on_press();
        }
    }
}

/// Flushes filesystems and powers the machine off. PID 1 has no other way out: should the
/// kernel refuse, the thread sleeps forever rather than return.
pub(super) fn power_off() -> ! {
    say("powering off");
    super::mounts::release_data();
    // As PID 1 the call does not return on success.
    let Err(err) = reboot(RebootMode::RB_POWER_OFF);
    say(format_args!("power-off failed: {}", io::Error::from(err)));
    loop {
        std::thread::park();
    }
}

/// Says what panicked, on the console. On init's own thread the panic would end PID 1,
/// which the kernel answers with a panic of its own, so the VM powers off instead. A
/// panic elsewhere (a request handler on a runtime worker) is contained as it is on any
/// host: powering off there would let one bad request take a node down.
pub(super) fn install_panic_hook() {
    let init_thread = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        say(format_args!("panic: {info}"));
        if std::thread::current().id() == init_thread {
            power_off()
        }
    }));
}

/// Powers off if shutdown takes longer than `grace`, so a hung drain cannot keep the VM up
/// after the user asked for it to stop.
pub(super) fn power_off_after(grace: Duration) {
    let spawned = std::thread::Builder::new()
        .name("power-off-timer".into())
        .spawn(move || {
            std::thread::sleep(grace);
            say(format_args!("shutdown took longer than {}s", grace.as_secs()));
            power_off()
        });
    if let Err(err) = spawned {
        say(format_args!("cannot start the shutdown timer: {err}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, code: u16, value: i32) -> Vec<u8> {
        // A timestamp that is not zero, so the decoder cannot get away with reading it.
        let mut record = vec![0xAB; EVENT_SIZE - 8];
        record.extend_from_slice(&kind.to_ne_bytes());
        record.extend_from_slice(&code.to_ne_bytes());
        record.extend_from_slice(&value.to_ne_bytes());
        record
    }

    #[test]
    fn input_event_is_24_bytes_on_64_bit() {
        if cfg!(target_pointer_width = "64") {
            assert_eq!(EVENT_SIZE, 24);
        }
    }

    #[test]
    fn a_power_key_press_is_recognised() {
        let event = InputEvent::decode(&record(EV_KEY, KEY_POWER, 1)).unwrap();
        assert_eq!(
            event,
            InputEvent {
                kind: 1,
                code: 116,
                value: 1
            }
        );
        assert!(event.is_power_press());
    }

    #[test]
    fn release_repeat_sync_and_other_keys_are_not_presses() {
        for (kind, code, value) in [
            (EV_KEY, KEY_POWER, 0),
            (EV_KEY, KEY_POWER, 2),
            (0, 0, 0),
            (EV_KEY, 28, 1),
        ] {
            let event = InputEvent::decode(&record(kind, code, value)).unwrap();
            assert!(!event.is_power_press(), "{event:?}");
        }
    }

    #[test]
    fn a_truncated_record_is_not_decoded() {
        let full = record(EV_KEY, KEY_POWER, 1);
        assert_eq!(InputEvent::decode(&full[..EVENT_SIZE - 1]), None);
        assert_eq!(InputEvent::decode(&[]), None);
    }

    #[test]
    fn event_devices_lists_only_event_nodes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["event1", "mice", "event0", "mouse0"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            event_devices(dir.path()),
            [dir.path().join("event0"), dir.path().join("event1")]
        );
        assert!(event_devices(&dir.path().join("absent")).is_empty());
    }
}

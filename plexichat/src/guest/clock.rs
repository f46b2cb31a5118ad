//! Keeps the guest's wall clock on the host's. Cluster membership compares heartbeat
//! timestamps across nodes, but a VM paused over QMP (`stop` … `cont`) resumes with its
//! system clock behind by the pause, because QEMU's virtual clock stopped too. QEMU's RTC
//! follows host time throughout, so the clock is set from it at boot and stepped back
//! onto it whenever the two drift apart.

use std::ffi::c_int;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::time::TimeSpec;
use nix::time::ClockId;

use super::console::say;

pub(super) const RTC_DEVICE: &str = "/dev/rtc0";

/// The RTC counts whole seconds, so a smaller difference is reading noise, not drift.
const MAX_DRIFT_NANOS: i128 = 2 * NANOS_PER_SEC;
const CHECK_EVERY: Duration = Duration::from_secs(1);
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// `struct rtc_time` from <linux/rtc.h>: broken-down UTC time, `struct tm`'s layout.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct RtcTime {
    pub tm_sec: c_int,
    pub tm_min: c_int,
    pub tm_hour: c_int,
    pub tm_mday: c_int,
    /// 0 = January.
    pub tm_mon: c_int,
    /// Years since 1900.
    pub tm_year: c_int,
    pub tm_wday: c_int,
    pub tm_yday: c_int,
    pub tm_isdst: c_int,
}

/// `RTC_RD_TIME` is `_IOR('p', 0x09, struct rtc_time)`; neither nix nor libc defines it.
const RTC_IOC_MAGIC: u8 = b'p';
const RTC_RD_TIME_NR: u8 = 0x09;

nix::ioctl_read!(
    /// `RTC_RD_TIME`: fills a `struct rtc_time` with the RTC's current time.
    rtc_rd_time,
    RTC_IOC_MAGIC,
    RTC_RD_TIME_NR,
    RtcTime
);

impl RtcTime {
    /// Seconds since the Unix epoch, or `None` for a field out of range.
    pub(super) fn unix_seconds(&self) -> Option<i64> {
        let in_range = (0..=60).contains(&self.tm_sec)
            && (0..=59).contains(&self.tm_min)
            && (0..=23).contains(&self.tm_hour)
            && (1..=31).contains(&self.tm_mday)
            && (0..=11).contains(&self.tm_mon);
        if !in_range {
            return None;
        }
        let days = days_from_civil(
            i64::from(self.tm_year) + 1900,
            i64::from(self.tm_mon) + 1,
            i64::from(self.tm_mday),
        );
        Some(days * 86_400 + i64::from(self.tm_hour) * 3600 + i64::from(self.tm_min) * 60 + i64::from(self.tm_sec))
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The real-time clock device.
pub(super) struct Rtc(File);

impl Rtc {
    pub(super) fn open() -> io::Result<Self> {
        File::open(RTC_DEVICE).map(Self)
    }

    /// The RTC's time in Unix seconds.
    pub(super) fn read(&self) -> io::Result<i64> {
        let mut time = RtcTime::default();
        // SAFETY: the declaration gives RTC_RD_TIME the struct rtc_time it fills, which
        // `time` is, and it is written during the call only; the descriptor is open.
        unsafe { rtc_rd_time(self.0.as_raw_fd(), &mut time) }?;
        time.unix_seconds()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("the RTC reads {time:?}")))
    }
}

/// Where the clock should be, given an RTC reading, if it is too far from `now`.
///
/// A reading of `s` means the time is somewhere in `[s, s + 1)`; aiming at the middle
/// halves the worst error a step leaves behind.
fn correction(rtc_seconds: i64, now_nanos: i128) -> Option<i128> {
    let target = i128::from(rtc_seconds) * NANOS_PER_SEC + NANOS_PER_SEC / 2;
    ((target - now_nanos).abs() >= MAX_DRIFT_NANOS).then_some(target)
}

fn now_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

fn set_clock(nanos: i128) -> io::Result<()> {
    let time = TimeSpec::new(
        nanos.div_euclid(NANOS_PER_SEC) as _,
        nanos.rem_euclid(NANOS_PER_SEC) as _,
    );
    nix::time::clock_settime(ClockId::CLOCK_REALTIME, time)?;
    Ok(())
}

/// Sets the clock from the RTC and keeps it there from a background thread. Without an
/// RTC the clock is left to the kernel, and that is said once.
pub(super) fn sync_with_rtc() {
    let rtc = match Rtc::open() {
        Ok(rtc) => rtc,
        Err(err) => {
            say(format_args!(
                "no clock source at {RTC_DEVICE} ({err}): this VM's clock will fall behind when it is paused"
            ));
            return;
        }
    };
    match rtc.read() {
        Ok(seconds) => {
            let target = i128::from(seconds) * NANOS_PER_SEC + NANOS_PER_SEC / 2;
            match set_clock(target) {
                Ok(()) => say(format_args!(
                    "clock set from {RTC_DEVICE}: {}",
                    humantime::format_rfc3339_seconds(SystemTime::now())
                )),
                Err(err) => say(format_args!("cannot set the clock: {err}")),
            }
        }
        Err(err) => say(format_args!("cannot read {RTC_DEVICE}: {err}")),
    }
    let spawned = std::thread::Builder::new()
        .name("rtc-clock".into())
        .spawn(move || track(&rtc));
    if let Err(err) = spawned {
        say(format_args!("cannot start the clock thread: {err}"));
    }
}

fn track(rtc: &Rtc) {
    // Reported once per run of failures, so a broken RTC does not flood the console.
    let mut failing = false;
    loop {
        std::thread::sleep(CHECK_EVERY);
        let step = rtc.read().and_then(|seconds| {
            let now = now_nanos();
            match correction(seconds, now) {
                Some(target) => set_clock(target).map(|()| Some(target - now)),
                None => Ok(None),
            }
        });
        match step {
            Ok(Some(by)) => {
                failing = false;
                say(format_args!(
                    "clock stepped by {:+.1}s to follow the host (was the VM paused?)",
                    by as f64 / NANOS_PER_SEC as f64
                ));
            }
            Ok(None) => failing = false,
            Err(err) if !failing => {
                failing = true;
                say(format_args!("cannot follow {RTC_DEVICE}: {err}"));
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtc(year: c_int, month: c_int, day: c_int, hour: c_int, min: c_int, sec: c_int) -> RtcTime {
        RtcTime {
            tm_sec: sec,
            tm_min: min,
            tm_hour: hour,
            tm_mday: day,
            tm_mon: month - 1,
            tm_year: year - 1900,
            ..RtcTime::default()
        }
    }

    #[test]
    fn rtc_time_converts_to_unix_seconds() {
        assert_eq!(rtc(1970, 1, 1, 0, 0, 0).unix_seconds(), Some(0));
        assert_eq!(rtc(2000, 2, 29, 12, 34, 56).unix_seconds(), Some(951_827_696));
        assert_eq!(rtc(2024, 12, 31, 23, 59, 59).unix_seconds(), Some(1_735_689_599));
        assert_eq!(rtc(2100, 3, 1, 0, 0, 0).unix_seconds(), Some(4_107_542_400));
        assert_eq!(rtc(1969, 12, 31, 23, 59, 59).unix_seconds(), Some(-1));
    }

    #[test]
    fn out_of_range_fields_are_rejected() {
        assert_eq!(rtc(2024, 13, 1, 0, 0, 0).unix_seconds(), None);
        assert_eq!(rtc(2024, 1, 0, 0, 0, 0).unix_seconds(), None);
        assert_eq!(rtc(2024, 1, 1, 24, 0, 0).unix_seconds(), None);
        assert_eq!(rtc(2024, 1, 1, 0, 60, 0).unix_seconds(), None);
    }

    #[test]
    fn rtc_rd_time_is_the_kernel_request_number() {
        assert_eq!(std::mem::size_of::<RtcTime>(), 36);
        // What the request number is on x86_64, aarch64 and riscv64 (asm-generic ioctls).
        let request = nix::request_code_read!(RTC_IOC_MAGIC, RTC_RD_TIME_NR, std::mem::size_of::<RtcTime>());
        assert_eq!(request as u64, 0x8024_7009);
    }

    #[test]
    fn the_clock_is_stepped_only_on_real_drift() {
        let second = NANOS_PER_SEC;
        let rtc = 1_700_000_000_i64;
        let at = |seconds: i64| i128::from(seconds) * second;
        // Reading noise: the RTC's second is anywhere in the system clock's.
        assert_eq!(correction(rtc, at(rtc)), None);
        assert_eq!(correction(rtc, at(rtc) + 999_999_999), None);
        assert_eq!(correction(rtc, at(rtc - 1)), None);
        // A paused VM: the system clock is behind by the pause.
        assert_eq!(correction(rtc, at(rtc - 30)), Some(at(rtc) + second / 2));
        assert_eq!(correction(rtc, at(rtc - 2)), Some(at(rtc) + second / 2));
        // Ahead of the host is as wrong as behind.
        assert_eq!(correction(rtc, at(rtc + 5)), Some(at(rtc) + second / 2));
    }
}

//! Network set-up without busybox or a shell: the same ioctls `ifconfig` and `route` use.
//! Distribution kernels lack CONFIG_IP_PNP, so the `ip=` kernel option does nothing and
//! init has to do it.

use std::ffi::{c_char, c_short, c_ulong, c_ushort, c_void, CString};
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc::{self, sockaddr};
use nix::sys::socket::{AddressFamily, SockFlag, SockType};

/// An IPv4 address with its prefix length, as in `10.0.2.15/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub(super) const LOOPBACK: Ipv4Net = Ipv4Net {
        addr: Ipv4Addr::LOCALHOST,
        prefix: 8,
    };

    pub(super) fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
        Ipv4Addr::from(bits)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` has no prefix length"))?;
        let addr = addr.parse().map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix = prefix
            .parse()
            .ok()
            .filter(|prefix| *prefix <= 32)
            .ok_or_else(|| format!("`{prefix}` is not a prefix length from 0 to 32"))?;
        Ok(Self { addr, prefix })
    }
}

/// Waits for a network interface to be registered: a NIC appears shortly after its
/// driver module loads, not when `finit_module` returns.
pub(super) fn wait_for_interface(name: &str, timeout: Duration) -> bool {
    let path = Path::new("/sys/class/net").join(name);
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Gives `iface` an address and brings it up.
pub(super) fn configure(iface: &str, net: Ipv4Net) -> io::Result<()> {
    let socket = control_socket()?;
    let fd = socket.as_raw_fd();
    let mut request = ifreq(iface)?;
    request.ifr_ifru.ifru_addr = sockaddr_in(net.addr);
    // SAFETY: SIOCSIFADDR is declared with the ifreq it takes, and `request` is one that
    // names the interface and holds the address; the kernel reads it during the call only.
    unsafe { ioctl::set_address(fd, &request) }.map_err(|err| context(err, "setting the address"))?;
    request.ifr_ifru.ifru_netmask = sockaddr_in(net.netmask());
    // SAFETY: as for SIOCSIFADDR, with the netmask just set.
    unsafe { ioctl::set_netmask(fd, &request) }.map_err(|err| context(err, "setting the netmask"))?;
    // SAFETY: SIOCGIFFLAGS is declared with the ifreq it reads the name from and writes the
    // flags into; `request` is borrowed mutably for the call only.
    unsafe { ioctl::get_flags(fd, &mut request) }.map_err(|err| context(err, "reading the flags"))?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as c_short;
    // SAFETY: as for SIOCSIFADDR, with the flags just set.
    unsafe { ioctl::set_flags(fd, &request) }.map_err(|err| context(err, "bringing it up"))?;
    Ok(())
}

/// Routes everything not on a local network through `gateway` on `iface`. An existing
/// default route is left alone.
pub(super) fn add_default_route(iface: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let socket = control_socket()?;
    let dev = CString::new(iface)?;
    let route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT is declared with the struct rtentry it takes, which `route` is;
    // `rt_dev` points into `dev`, which lives until after the call, and the kernel only
    // reads them.
    match unsafe { ioctl::add_route(socket.as_raw_fd(), &route) } {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Name resolution for a system with no resolver configuration: localhost and this host
/// from /etc/hosts, first, so nothing waits on a DNS server that is not there.
pub(super) fn write_hosts(hostname: &str, addr: Option<Ipv4Addr>) -> io::Result<()> {
    std::fs::create_dir_all("/etc")?;
    let own = addr.unwrap_or(Ipv4Addr::new(127, 0, 1, 1));
    std::fs::write(
        "/etc/hosts",
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n"),
    )?;
    std::fs::write("/etc/nsswitch.conf", "hosts: files dns\n")
}

/// The kernel's host name, which the server uses as its node id when none is given.
pub(super) fn set_hostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name)?;
    Ok(())
}

fn context(err: impl Into<io::Error>, doing: &str) -> io::Error {
    let err = err.into();
    io::Error::new(err.kind(), format!("{doing}: {err}"))
}

/// `struct rtentry` from <linux/route.h>; glibc's libc crate bindings do not have it.
#[repr(C)]
struct RtEntry {
    rt_pad1: c_ulong,
    rt_dst: sockaddr,
    rt_gateway: sockaddr,
    rt_genmask: sockaddr,
    rt_flags: c_ushort,
    rt_pad2: c_short,
    rt_pad3: c_ulong,
    rt_pad4: *mut c_void,
    rt_metric: c_short,
    rt_dev: *mut c_char,
    rt_mtu: c_ulong,
    rt_window: c_ulong,
    rt_irtt: c_ushort,
}

/// The interface and routing requests nix has no wrappers for, each declared with the
/// structure the kernel takes for it, so no call can pass the wrong one.
mod ioctl {
    use nix::libc::{self, ifreq};

    use super::RtEntry;

    nix::ioctl_write_ptr_bad!(set_address, libc::SIOCSIFADDR, ifreq);
    nix::ioctl_write_ptr_bad!(set_netmask, libc::SIOCSIFNETMASK, ifreq);
    nix::ioctl_readwrite_bad!(get_flags, libc::SIOCGIFFLAGS, ifreq);
    nix::ioctl_write_ptr_bad!(set_flags, libc::SIOCSIFFLAGS, ifreq);
    nix::ioctl_write_ptr_bad!(add_route, libc::SIOCADDRT, RtEntry);
}

/// The socket the interface and routing ioctls go through.
fn control_socket() -> io::Result<OwnedFd> {
    let socket = nix::sys::socket::socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    Ok(socket)
}

fn ifreq(iface: &str) -> io::Result<libc::ifreq> {
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{iface}` is not an interface name"),
        ));
    }
    // SAFETY: ifreq is plain data (a byte array and a union of integers, addresses and a
    // pointer the interface ioctls used here never follow); all zeroes is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in request.ifr_name.iter_mut().zip(name) {
        *dst = src as c_char;
    }
    Ok(request)
}

/// A `struct sockaddr_in` for `addr`, in the `struct sockaddr` the ioctls take: built as
/// the latter directly (its 14 data bytes are the port, 0, then the address in network
/// order, then zeroes), so no reinterpreting cast is needed.
fn sockaddr_in(addr: Ipv4Addr) -> sockaddr {
    let mut sa_data = [0 as c_char; 14];
    for (dst, src) in sa_data[2..6].iter_mut().zip(addr.octets()) {
        *dst = src as c_char;
    }
    sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_and_prefix_parse() {
        let net: Ipv4Net = "10.0.2.15/24".parse().unwrap();
        assert_eq!(net.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(net.prefix, 24);
        assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net.to_string(), "10.0.2.15/24");
    }

    #[test]
    fn netmask_covers_the_edges() {
        let mask = |text: &str| text.parse::<Ipv4Net>().unwrap().netmask();
        assert_eq!(mask("127.0.0.1/8"), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(mask("0.0.0.0/0"), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(mask("10.1.2.3/32"), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(mask("172.16.0.9/20"), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(Ipv4Net::LOOPBACK.netmask(), Ipv4Addr::new(255, 0, 0, 0));
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for bad in [
            "10.0.2.15",
            "10.0.2.15/33",
            "10.0.2/24",
            "10.0.2.15/",
            "/24",
            "x/8",
            "10.0.2.15/-1",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sockaddr_holds_the_address_in_network_order() {
        let addr = sockaddr_in(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(addr.sa_family, libc::AF_INET as libc::sa_family_t);
        // sa_data: two bytes of port, then the address as it goes on the wire.
        assert_eq!(&addr.sa_data[2..6], &[10, 0, 2, 15].map(|b: u8| b as c_char));
    }

    #[test]
    fn rtentry_matches_the_kernel_layout() {
        // sizeof(struct rtentry) on LP64 Linux (x86_64, aarch64, riscv64).
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        }
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("a-name-far-too-long").is_err());
        assert!(ifreq("et\0h").is_err());
    }
}

//! Network set-up without busybox or a shell: the same ioctls `ifconfig` and `route` use.
//! Distribution kernels lack CONFIG_IP_PNP, so the `ip=` kernel option does nothing and
//! init has to do it.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use libc::{c_char, c_short, c_ulong, c_ushort, c_void, sockaddr};

/// An IPv4 address with its prefix length, as in `10.0.2.15/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub const LOOPBACK: Ipv4Net = Ipv4Net {
        addr: Ipv4Addr::LOCALHOST,
        prefix: 8,
    };

    pub fn netmask(&self) -> Ipv4Addr {
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
pub fn wait_for_interface(name: &str, timeout: Duration) -> bool {
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
pub fn configure(iface: &str, net: Ipv4Net) -> io::Result<()> {
    let socket = ControlSocket::open()?;
    let mut request = ifreq(iface)?;
    request.ifr_ifru.ifru_addr = sockaddr_in(net.addr);
    // SAFETY: SIOCSIFADDR takes an ifreq, whose address field was just set.
    unsafe { socket.ioctl(libc::SIOCSIFADDR, &mut request) }.map_err(|err| context(err, "setting the address"))?;
    request.ifr_ifru.ifru_netmask = sockaddr_in(net.netmask());
    // SAFETY: SIOCSIFNETMASK takes an ifreq, whose netmask field was just set.
    unsafe { socket.ioctl(libc::SIOCSIFNETMASK, &mut request) }.map_err(|err| context(err, "setting the netmask"))?;
    // SAFETY: SIOCGIFFLAGS fills the flags field of an ifreq naming the interface.
    unsafe { socket.ioctl(libc::SIOCGIFFLAGS, &mut request) }.map_err(|err| context(err, "reading the flags"))?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as c_short;
    // SAFETY: SIOCSIFFLAGS takes an ifreq, whose flags field was just set.
    unsafe { socket.ioctl(libc::SIOCSIFFLAGS, &mut request) }.map_err(|err| context(err, "bringing it up"))?;
    Ok(())
}

/// Routes everything not on a local network through `gateway` on `iface`. An existing
/// default route is left alone.
pub fn add_default_route(iface: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let socket = ControlSocket::open()?;
    let dev = CString::new(iface)?;
    let mut route = RtEntry {
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
    // SAFETY: SIOCADDRT takes a struct rtentry; `rt_dev` points into `dev`, which lives
    // until after the call, and the kernel only reads it.
    match unsafe { socket.ioctl(libc::SIOCADDRT, &mut route) } {
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        result => result,
    }
}

/// Name resolution for a system with no resolver configuration: localhost and this host
/// from /etc/hosts, first, so nothing waits on a DNS server that is not there.
pub fn write_hosts(hostname: &str, addr: Option<Ipv4Addr>) -> io::Result<()> {
    std::fs::create_dir_all("/etc")?;
    let own = addr.unwrap_or(Ipv4Addr::new(127, 0, 1, 1));
    std::fs::write(
        "/etc/hosts",
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n"),
    )?;
    std::fs::write("/etc/nsswitch.conf", "hosts: files dns\n")
}

/// The kernel's host name, which the server uses as its node id when none is given.
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the kernel copies `len` bytes from the pointer, which `name` provides.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn context(err: io::Error, doing: &str) -> io::Error {
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

/// The socket the interface and routing ioctls go through.
struct ControlSocket(OwnedFd);

impl ControlSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: socket() takes no pointers; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// # Safety
    /// `T` must be the structure the kernel expects for `request`.
    unsafe fn ioctl<T>(&self, request: c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: the caller vouches for the argument type; `arg` is valid for the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, std::ptr::from_mut(arg)) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
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

fn sockaddr_in(addr: Ipv4Addr) -> sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: both are 16-byte plain C structs (transmute checks the size); the kernel
    // reads a sockaddr as sockaddr_in when its family is AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, sockaddr>(sin) }
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

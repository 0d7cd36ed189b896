//! Every libc call of the load generator: the open-file limit, `/proc`
//! samples, epoll, and non-blocking connects from a chosen source address.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for getrlimit, and a valid
    // in-pointer for setrlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// A process's resident set and CPU time, from `/proc/<pid>/{status,stat}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// User CPU time (all threads).
    pub user: Duration,
    /// System (kernel) CPU time (all threads).
    pub sys: Duration,
}

impl ProcSample {
    /// User + system time.
    pub fn cpu(&self) -> Duration {
        self.user + self.sys
    }
}

/// Samples `/proc/<who>/`: `who` is a pid or `"self"`.
pub fn proc_sample(who: &str) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // The command name is parenthesised and may hold spaces; utime and stime
    // are fields 14 and 15 overall (proc(5)), the 12th and 13th after it.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = |t: u64| Duration::from_micros(t * 1_000_000 / hz);
    Some(ProcSample {
        rss_kib,
        user: ticks(utime),
        sys: ticks(stime),
    })
}

/// Time the threads of `/proc/<who>/` spent waiting on a run queue (ready
/// but not running: another task had the core), summed over threads, from
/// `task/*/schedstat` (second field, ns).
pub fn run_queue_wait(who: &str) -> Option<Duration> {
    let mut ns: u64 = 0;
    for t in std::fs::read_dir(format!("/proc/{who}/task")).ok()? {
        let path = t.ok()?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(path) {
            ns += s
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    Some(Duration::from_nanos(ns))
}

/// An epoll instance (level-triggered); the token of each fd is its client index.
pub struct Epoll {
    fd: RawFd,
}

pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned by the returned value.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid epoll fd; `fd` is an open socket owned by the caller;
        // `ev` outlives the call.
        if unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms`; fills `events` and returns how many are ready.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is a live, writable buffer of at least `max` entries.
        let n = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), max, timeout_ms) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// An empty epoll event array entry.
pub fn event() -> libc::epoll_event {
    libc::epoll_event { events: 0, u64: 0 }
}

/// The token of an epoll entry (a packed struct on x86-64: copied, not borrowed).
pub fn event_token(ev: &libc::epoll_event) -> u64 {
    ev.u64
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Starts a non-blocking TCP connect to `dst`, from `src` if given (the port
/// is picked at connect time, `IP_BIND_ADDRESS_NO_PORT`, so each source
/// address has its own ephemeral port range toward `dst`). The connect
/// completes when the socket becomes writable; `TcpStream::take_error` says how.
pub fn connect_nonblocking(src: Option<Ipv4Addr>, dst: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain syscall; the fd is owned by the TcpStream made below (or
    // closed on the error paths).
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns; from here the
    // TcpStream closes it whatever happens.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    if let Some(ip) = src {
        let one: libc::c_int = 1;
        let from = sockaddr(SocketAddrV4::new(ip, 0));
        // SAFETY: valid fd, valid pointers and lengths for both calls.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let to = sockaddr(dst);
    // SAFETY: valid fd, valid address pointer and length.
    let rc = unsafe { libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

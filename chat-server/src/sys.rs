//! Every libc call of the chat server, each behind a safe function: epoll
//! (the reactors), `poll` (the acceptor and the flusher), `sendmsg` (the
//! vectored non-blocking send), the open-file limit, the stop signals,
//! SIGHUP (TLS certificate reload) and the priority of background threads.
//! Nothing outside this module writes `unsafe`.

use bytes::Bytes;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub(crate) use libc::{pollfd as PollFd, POLLIN, POLLOUT};

/// Most buffers handed to one `sendmsg` (Linux `IOV_MAX` is 1024): a burst
/// of small presence notices leaves in one call.
pub(crate) const MAX_IOV: usize = 1024;

/// An epoll instance (epoll(7)).
#[derive(Debug)]
pub(crate) struct Epoll(OwnedFd);

/// One readiness report: the `data` the descriptor was registered with.
pub(crate) type EpollEvent = libc::epoll_event;

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with a valid flag; the result is checked
        // before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input and peer hang-up, reporting `data`.
    pub(crate) fn add(&self, fd: RawFd, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, data)
    }

    /// Stops watching `fd`.
    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: data,
        };
        // SAFETY: both descriptors are open (the epoll fd is owned by self,
        // `fd` by the caller for the duration of the call) and `ev` is a
        // valid event (ignored by EPOLL_CTL_DEL).
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (at least 1 ms) and returns the ready events,
    /// a prefix of `events`.
    pub(crate) fn wait<'a>(
        &self,
        events: &'a mut [EpollEvent],
        timeout: Duration,
    ) -> &'a [EpollEvent] {
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        let cap = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: `events` is a live, writable buffer of at least `cap`
        // entries, and the kernel writes at most `cap` of them.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), cap, ms) };
        &events[..n.max(0) as usize]
    }
}

impl Epoll {
    /// The events ready now, without waiting (timeout 0): what arrived
    /// while the caller was busy.
    pub(crate) fn ready_now<'a>(&self, events: &'a mut [EpollEvent]) -> &'a [EpollEvent] {
        let cap = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: as in `wait`: a live, writable buffer of at least `cap`
        // entries, of which the kernel writes at most `cap`.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), cap, 0) };
        &events[..n.max(0) as usize]
    }
}

/// An empty event slot for [`Epoll::wait`]'s buffer.
pub(crate) fn epoll_event() -> EpollEvent {
    libc::epoll_event { events: 0, u64: 0 }
}

/// `poll(2)` over `fds`; returns false on error (EINTR included), when the
/// caller simply loops.
pub(crate) fn poll(fds: &mut [PollFd], timeout: Duration) -> bool {
    let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a live, correctly sized array of pollfd; the caller
    // keeps every descriptor in it open for the call.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) >= 0 }
}

/// A `pollfd` asking for `events` on `fd`.
pub(crate) fn pollfd(fd: RawFd, events: libc::c_short) -> PollFd {
    PollFd {
        fd,
        events,
        revents: 0,
    }
}

/// Writes the first [`MAX_IOV`] of `bufs` with one non-blocking `sendmsg`;
/// `Ok(n)` is the byte count taken (0 when the socket buffer is full).
pub(crate) fn send_iov<'a>(
    fd: &impl AsRawFd,
    bufs: impl IntoIterator<Item = &'a Bytes>,
) -> io::Result<usize> {
    send_raw(fd, bufs.into_iter().map(|b| &b[..]))
}

/// [`send_iov`] for `io::IoSlice`s (what rustls hands its writer: TLS
/// records to send).
pub(crate) fn send_slices(fd: &impl AsRawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    send_raw(fd, bufs.iter().map(|b| &b[..]))
}

fn send_raw<'a>(fd: &impl AsRawFd, bufs: impl Iterator<Item = &'a [u8]>) -> io::Result<usize> {
    // Only the slots used are written: zeroing all 1024 (16 KiB) on every
    // call cost more than a one-frame send's own user-space work.
    let mut iov = [std::mem::MaybeUninit::<libc::iovec>::uninit(); MAX_IOV];
    let mut count = 0;
    for (slot, buf) in iov.iter_mut().zip(bufs) {
        slot.write(libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        });
        count += 1;
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // The kernel reads only the first `count` slots, all written above.
    msg.msg_iov = iov.as_mut_ptr().cast::<libc::iovec>();
    msg.msg_iovlen = count as _;
    loop {
        // SAFETY: the fd is open for as long as `fd` is borrowed; every
        // iovec points into a live buffer borrowed for this call, and
        // sendmsg only reads them. MSG_DONTWAIT keeps the call from
        // blocking on a full buffer; MSG_NOSIGNAL turns a reset peer into
        // EPIPE instead of SIGPIPE.
        let n = unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

/// Sets the accept-queue length of a listening socket: calling `listen`
/// again on a listening socket only changes its backlog (listen(2)). The
/// kernel caps it at `net.core.somaxconn`.
pub(crate) fn set_backlog(listener: &impl AsRawFd, backlog: u32) -> io::Result<()> {
    let backlog = backlog.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: the fd is a listening socket open for as long as it is
    // borrowed; listen has no memory arguments.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The open-file limit as (soft, hard).
pub(crate) fn fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the open-file soft limit to the hard limit; returns (soft, hard)
/// after the change.
pub(crate) fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = fd_limit()?;
    if soft < hard {
        let want = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `want` is a valid rlimit; raising the soft limit up to the
        // hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((hard, hard))
}

static STOP_SIGNALED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe (signal-safety(7)).
    STOP_SIGNALED.store(true, Ordering::Release);
}

/// Catches SIGINT and SIGTERM; the returned flag turns true once either
/// arrives.
pub(crate) fn catch_stop_signals() -> &'static AtomicBool {
    // SAFETY: `on_stop_signal` only stores to an atomic, which is
    // async-signal-safe; installing a handler has no other precondition.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_stop_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_stop_signal as *const () as libc::sighandler_t,
        );
    }
    &STOP_SIGNALED
}

static RELOAD_SIGNALED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_reload_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe (signal-safety(7)).
    RELOAD_SIGNALED.store(true, Ordering::Release);
}

/// Catches SIGHUP (reload the TLS certificate); the returned flag turns
/// true when it arrives, for the caller to reset.
pub(crate) fn catch_reload_signal() -> &'static AtomicBool {
    // SAFETY: `on_reload_signal` only stores to an atomic, which is
    // async-signal-safe; installing a handler has no other precondition.
    unsafe {
        libc::signal(
            libc::SIGHUP,
            on_reload_signal as *const () as libc::sighandler_t,
        );
    }
    &RELOAD_SIGNALED
}

/// Lowers the calling thread's priority to `nice` (Linux keeps a nice
/// value per thread, setpriority(2) NOTES), so background work (the
/// store's writer, password hashing) yields the core to the reactors.
/// Best effort: on failure the thread keeps its priority.
pub(crate) fn lower_thread_priority(nice: i32) {
    // SAFETY: gettid and setpriority take no pointers; setpriority's
    // result only tells whether the priority changed.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, nice);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let (soft, hard) = super::raise_fd_limit().unwrap();
        assert_eq!(soft, hard);
        assert_eq!(super::fd_limit().unwrap(), (hard, hard));
    }
}

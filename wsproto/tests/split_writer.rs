//! The split [`Writer`](wsproto::blocking::Writer) sends a server's large
//! payload vectored (header + the caller's `Bytes`, never copied), and a
//! send cut short by the socket keeps the framing intact.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;
use wsproto::blocking::WebSocket;
use wsproto::{Bytes, Config, Error, Role};

mod live {
    //! Bytes allocated by the current thread: live and the peak since
    //! [`reset_peak`].
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        // `try_with`: nothing to count while the thread is being torn down.
        let _ = LIVE.try_with(|c| {
            let now = c.get() + n;
            c.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
    }

    // SAFETY: every method forwards to `System` with the caller's
    // arguments unchanged; the only addition is two thread-local counters
    // (const-initialised `Cell`s, which never allocate).
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: forwarded as received (the caller upholds `alloc`'s contract).
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            // SAFETY: as `dealloc`, and `new_size` is the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Live bytes of this thread.
    pub fn bytes() -> isize {
        LIVE.with(Cell::get)
    }

    /// Starts a new peak at the live count.
    pub fn reset_peak() {
        PEAK.with(|p| p.set(bytes()));
    }

    /// The most live bytes since [`reset_peak`].
    pub fn peak() -> isize {
        PEAK.with(Cell::get)
    }
}

#[global_allocator]
static ALLOC: live::Counting = live::Counting;

#[test]
fn split_writer_sends_large_payloads_vectored_and_keeps_framing_on_short_writes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let socket = server.try_clone().unwrap();
    let ws = WebSocket::from_raw(server, Role::Server, Config::default(), &[]);
    let (_reader, writer) = ws.split().unwrap();

    // The peer reads: a 2 MiB payload goes out from where it is.
    let small = Bytes::from((0..2 << 20).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    let mut want = vec![0x82, 127];
    want.extend_from_slice(&(small.len() as u64).to_be_bytes());
    want.extend_from_slice(&small);
    let mut reader_peer = peer.try_clone().unwrap();
    let total = want.len();
    let reading = thread::spawn(move || {
        let mut got = vec![0; total];
        reader_peer.read_exact(&mut got).map(|()| got)
    });
    live::reset_peak();
    let before = live::bytes();
    writer.send(small.clone()).unwrap();
    let allocated = live::peak() - before;
    assert!(
        allocated < 64 << 10,
        "sending 2 MiB allocated {allocated} bytes: the payload was copied"
    );
    assert!(reading.join().unwrap().expect("the frame") == want);

    // More than loopback's socket buffers hold (a few MiB each way), so
    // with the peer not reading the send stops part-way at the timeout.
    let len = 24 << 20;
    let big = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    socket
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    live::reset_peak();
    let before = live::bytes();
    let first = writer.send(big.clone());
    let copied = live::peak() - before;
    match first {
        Err(Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        other => panic!("expected a write timeout, got {other:?}"),
    }
    // The rest of the frame is queued (that copy is of what was left, up
    // to 24 MiB less what the socket took); before it, nothing was.
    assert!(
        copied <= (len as isize) - (256 << 10),
        "the send allocated {copied} bytes"
    );

    // Now the peer reads everything; the next send first finishes the
    // frame cut short, then adds its own.
    let mut want = vec![0x82, 127];
    want.extend_from_slice(&(len as u64).to_be_bytes());
    want.extend_from_slice(&big);
    want.extend_from_slice(b"\x81\x05after");
    let total = want.len();
    let reading = thread::spawn(move || {
        let mut got = vec![0; total];
        peer.read_exact(&mut got).map(|()| got)
    });
    socket.set_write_timeout(None).unwrap();
    writer.send("after").unwrap();
    let got = reading.join().unwrap().expect("the whole stream");
    assert!(got == want, "the framing was broken");
}

//! Process-level system calls the command line needs to daemonize (`fork`, `setsid`, `dup2`
//! onto the standard descriptors, `geteuid`) and the daemon needs to end its mount on a signal
//! (`pthread_sigmask`, `sigwait`).
//!
//! Each wrapper is safe to call: the one precondition that Rust cannot check by itself, that
//! `fork` happens while the process has a single thread, is checked at run time. The pipe the
//! daemon reports readiness through needs no wrapper: `std::io::pipe` already gives
//! close-on-exec descriptors.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Which side of a [`fork`] the caller is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkResult {
    /// The original process; `child` is the new process's pid.
    Parent { child: u32 },
    /// The new process.
    Child,
}

/// Forks the process.
///
/// Refuses with `EBUSY` unless the process has exactly one thread: a child forked from a
/// multi-threaded process inherits locks (the allocator's, for one) held by threads that do not
/// exist in it, and may deadlock or worse on its first allocation.
pub fn fork() -> io::Result<ForkResult> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("cannot fork a process that has {threads} threads"),
        ));
    }
    // SAFETY: the process is single-threaded (checked just above, and nothing in this function
    // starts a thread), so the child gets a consistent copy of all memory and locks.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(ForkResult::Child),
        // `fork` returns a positive pid in the parent.
        child => Ok(ForkResult::Parent {
            child: child.unsigned_abs(),
        }),
    }
}

/// The number of threads of this process, from `/proc/self/task`.
fn thread_count() -> io::Result<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot count this process's threads in /proc/self/task: {e}"),
        )
    })?;
    Ok(tasks.count())
}

/// Starts a new session with this process as its leader, detaching it from the controlling
/// terminal so that closing the terminal does not send it `SIGHUP`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: `setsid` takes no arguments and touches no memory of this process.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Points standard input, output and error at `fd` (normally `/dev/null`).
///
/// Replacing descriptors 0, 1 and 2 is sound even though `std` keeps handles to them: `std`
/// never caches anything about what they refer to, and `dup2` swaps each one atomically.
pub fn redirect_stdio(fd: BorrowedFd<'_>) -> io::Result<()> {
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: `fd` is a valid open descriptor for the duration of the borrow, and the
        // targets are the standard descriptors, which no Rust object owns exclusively.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: `geteuid` takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Signals blocked by [`block_signals`], to be taken one at a time with [`Signals::wait`].
#[derive(Clone, Copy)]
pub struct Signals {
    set: libc::sigset_t,
}

/// Blocks `signals` in the calling thread and every thread it starts from now on, so that they
/// are never delivered asynchronously and [`Signals::wait`] receives them instead.
///
/// Call it before any other thread exists: a process-directed signal goes to any one thread
/// that does not block it, and a thread started earlier would still take the default action
/// (for `SIGTERM`, death). Child processes do not inherit the mask: `std::process::Command`
/// resets it.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<Signals> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` only writes the set it is given, which is valid for writing.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sigemptyset` succeeded, so the set is initialized.
    let mut set = unsafe { set.assume_init() };
    for &signal in signals {
        // SAFETY: `set` is an initialized set; a bad signal number is answered with EINVAL.
        if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `set` is initialized and only read; the old mask is not asked for (null).
    let err = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(Signals { set })
}

impl Signals {
    /// Waits until one of the blocked signals is pending and takes it; returns its number.
    pub fn wait(&self) -> io::Result<libc::c_int> {
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `self.set` is an initialized set and `signal` a valid place to write.
            match unsafe { libc::sigwait(&self.set, &mut signal) } {
                0 => return Ok(signal),
                libc::EINTR => continue,
                err => return Err(io::Error::from_raw_os_error(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` while one extra thread is alive, so the process is certainly multi-threaded
    /// whichever way the test harness schedules tests.
    fn with_extra_thread(f: impl FnOnce()) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || rx.recv());
        f();
        drop(tx);
        handle.join().expect("join").expect_err("sender dropped");
    }

    #[test]
    fn fork_refuses_a_multithreaded_process() {
        with_extra_thread(|| {
            let err = fork().expect_err("fork with threads");
            assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
            assert!(
                err.to_string()
                    .starts_with("cannot fork a process that has")
            );
        });
    }

    #[test]
    fn thread_count_sees_threads() {
        with_extra_thread(|| assert!(thread_count().expect("count") >= 2));
    }
}

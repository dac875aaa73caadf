//! Shared by the benchmark binaries.

/// Waits for one child: (exit code, user + system CPU seconds, peak RSS MB) of that process alone.
pub fn wait_with_usage(pid: libc::pid_t) -> (i32, f64, f64) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes into the status and struct we own; the pid is our own child.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let exit = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (exit, seconds(usage.ru_utime) + seconds(usage.ru_stime), usage.ru_maxrss as f64 / 1024.0)
}

//! What the process holds at the end of a run (peak memory, open descriptors, children
//! not yet reaped), logged so that leaks show in every run's last line.

/// Peak resident set size of this process in KiB (`VmHWM`), when /proc tells.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open file descriptors of this process.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Child processes of this process still in the process table (running or zombie).
pub fn live_children() -> Option<usize> {
    let me = std::process::id().to_string();
    let count = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            // The command name may hold spaces and parentheses: fields start after the last `)`.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                == Some(me.as_str())
        })
        .count();
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_come_from_proc() {
        assert!(peak_rss_kib().is_some_and(|kib| kib > 0));
        assert!(open_fds().is_some_and(|fds| fds >= 3));
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .spawn()
            .expect("spawn");
        assert!(live_children().is_some_and(|n| n >= 1));
        child.kill().expect("kill");
        child.wait().expect("reap");
    }
}

//! CPU time and resident memory of a whole process tree, from `/proc`.
//!
//! A server is measured with all its processes and threads: node's cluster
//! workers, nginx's workers, vigil's loops, supervisor and abandoned threads.

use std::collections::HashMap;
use std::fs;

/// Every pid whose ancestry reaches `root`, `root` included.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(st) = stat_fields(pid) {
                if let Some(ppid) = st.get(1).and_then(|p| p.parse::<u32>().ok()) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend_from_slice(kids);
        }
        i += 1;
    }
    out
}

/// The fields of `/proc/<pid>/stat` after the command name, which may itself
/// hold spaces and parentheses: index 0 is the state, 1 the ppid, 11 utime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime + cutime + cstime summed over the tree, in microseconds.
///
/// The c* fields hold children that exited and were reaped (a node worker the
/// master killed), so their CPU is still counted once; a live process is only
/// in its own u/stime, so nothing is counted twice.
pub fn tree_cpu_us(root: u32) -> u64 {
    let ticks: u64 = tree(root)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| (11..=14).filter_map(|i| f.get(i)?.parse::<u64>().ok()).sum::<u64>())
        .sum();
    ticks * 1_000_000 / clk_tck()
}

/// VmRSS summed over the tree, in KiB. Shared pages (node's code in every
/// worker) are counted in each process, as `ps` would.
pub fn tree_rss_kib(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Clock ticks per second of the stat counters (100 on every Linux seen).
fn clk_tck() -> u64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// 1-minute load average, to warn when other work shares the machine.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_tree_has_cpu_and_memory() {
        let me = std::process::id();
        assert!(tree(me).contains(&me));
        assert!(tree_rss_kib(me) > 0);
        let _ = tree_cpu_us(me);
    }
}

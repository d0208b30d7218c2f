//! Readings of a process from `/proc`: CPU time (`stat`: utime + stime, all threads, in
//! clock ticks of 1/100 s, Linux's USER_HZ), write system calls (`io` syscw) and memory
//! (`status` VmRSS, `smaps_rollup` Pss); and of the machine: kernel slab memory, and time
//! stolen by the hypervisor.

use serde::{Deserialize, Serialize};

/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which is 100 on every architecture
/// Linux ships (the kernel converts from its internal HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds the process has used so far, all threads included.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    /// In user space (utime).
    pub user: f64,
    /// In the kernel on the process's behalf (stime): system calls, and on loopback the
    /// receiving socket's work of what it sends.
    pub system: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// What was used since `earlier`.
    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu { user: self.user - earlier.user, system: self.system - earlier.system }
    }
}

/// The CPU time `pid` has used so far; `None` if it is gone.
pub fn cpu(pid: u32) -> Option<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state(3) ... utime(14) stime(15); `rest` starts at field 3.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Cpu { user: utime as f64 / TICKS_PER_SECOND, system: stime as f64 / TICKS_PER_SECOND })
}

/// Sum of [`cpu`] over several processes; processes that are gone count 0.
pub fn cpu_all(pids: &[u32]) -> Cpu {
    pids.iter()
        .filter_map(|p| cpu(*p))
        .fold(Cpu::default(), |a, c| Cpu { user: a.user + c.user, system: a.system + c.system })
}

/// The write system calls `pid` has made so far (`syscw` of `/proc/<pid>/io`: `write`,
/// `writev` and their kin, not `send`/`sendto`), all threads; `None` if it is gone or not
/// ours to read.
pub fn writes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("syscw:")?.trim().parse().ok())
}

/// Sum of [`writes`] over several processes; `None` if none could be read.
pub fn writes_all(pids: &[u32]) -> Option<u64> {
    pids.iter().filter_map(|p| writes(*p)).reduce(|a, b| a + b)
}

/// Memory of a set of processes, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Resident set size (VmRSS), summed: pages shared between the processes count twice.
    pub rss_kb: u64,
    /// Proportional set size (Pss from smaps_rollup): shared pages split between sharers.
    pub pss_kb: u64,
}

fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok())
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = kb_field(&status, "VmRSS:")?;
    let pss_kb = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| kb_field(&t, "Pss:"))
        .unwrap_or(0);
    Some(Memory { rss_kb, pss_kb })
}

pub fn memory_all(pids: &[u32]) -> Memory {
    pids.iter()
        .filter_map(|p| memory(*p))
        .fold(Memory::default(), |a, m| Memory { rss_kb: a.rss_kb + m.rss_kb, pss_kb: a.pss_kb + m.pss_kb })
}

/// Kernel slab memory of the whole machine (`Slab:` of /proc/meminfo), in KiB: where the
/// kernel keeps sockets. Machine-wide, so other work moves it too.
pub fn kernel_slab_kb() -> Option<u64> {
    kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "Slab:")
}

/// CPU time the hypervisor has stolen from this machine so far, all CPUs together (`steal`
/// of the `cpu` line of /proc/stat), in seconds: time a virtual CPU had work but the host ran
/// something else. 0 on bare metal. A process's own CPU time leaves it out, but any latency
/// measured meanwhile includes it.
pub fn steal_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(steal as f64 / TICKS_PER_SECOND)
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_memory_and_files() {
        let me = std::process::id();
        // Spin until the tick counter moves past zero: on a loaded machine 30 ms of wall
        // time was not always one tick of this thread's CPU. A reading that never moves
        // fails after 10 s.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while !cpu(me).is_some_and(|c| c.total() > 0.0) {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "no CPU time read: {:?}", cpu(me));
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(1);
            }
        }
        assert!(x != 1);
        let m = memory(me).unwrap_or_else(|| panic!("no memory reading"));
        assert!(m.rss_kb > 100, "{m:?}");
        assert!(open_fds(me).is_some_and(|n| n >= 3));
        assert!(kernel_slab_kb().is_some_and(|kb| kb > 0));
        assert!(steal_s().is_some_and(|s| s >= 0.0));
        assert_eq!(cpu(u32::MAX), None);
    }
}

//! CPU time of the system under test over the measured window (`--sut-pid`).
//!
//! At the start and at the end of the measured window (after the warm-up, before the
//! drain) the run reads `utime + stime` of each SUT process from `/proc/PID/stat`
//! (`proc(5)`: fields 14 and 15, in clock ticks of `sysconf(_SC_CLK_TCK)`; they cover every
//! thread of the process, so a multi-threaded server is counted whole). The difference is
//! the CPU the SUT spent in the window; divided by the stanzas loadgen received in the same
//! window it gives CPU per 1,000 stanzas.
//!
//! "Stanzas" are loadgen's deliveries: every stanza its peers and clients received in the
//! window (tracked deliveries, replies and bounces alike; [`crate::world::World::stanzas_in`]).
//! Set-up, warm-up and drain are outside the window.

use std::io;

use procfs::process::Stat;
use procfs::FromRead as _;

/// CPU of one process at one instant: user and system time of all its threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// `utime` (field 14), clock ticks.
    pub utime: u64,
    /// `stime` (field 15), clock ticks.
    pub stime: u64,
}

impl CpuTicks {
    /// `utime + stime`, clock ticks.
    pub fn total(self) -> u64 {
        self.utime + self.stime
    }

    /// Parses one `/proc/PID/stat` line (`proc(5)`).
    ///
    /// Errors: `InvalidData` naming what is malformed.
    pub fn parse(line: &[u8]) -> io::Result<CpuTicks> {
        let stat = Stat::from_read(line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/PID/stat line: {e}"),
            )
        })?;
        Ok(CpuTicks {
            utime: stat.utime,
            stime: stat.stime,
        })
    }

    /// Reads `/proc/PID/stat` of `pid`.
    ///
    /// Errors: the process is gone or the file cannot be read or parsed (the message names
    /// the pid).
    pub fn read(pid: u32) -> io::Result<CpuTicks> {
        let path = format!("/proc/{pid}/stat");
        let bytes =
            std::fs::read(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        CpuTicks::parse(&bytes).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, usually 100).
pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second()
}

/// CPU a SUT process spent in the measured window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SutCpu {
    /// The process.
    pub pid: u32,
    /// `utime + stime` spent in the window, seconds (all threads).
    pub cpu_s: f64,
    /// Of which user time, seconds.
    pub user_s: f64,
    /// Of which system time, seconds.
    pub system_s: f64,
    /// Stanzas loadgen received in the window (see the module docs).
    pub stanzas: u64,
    /// `cpu_s` in milliseconds per 1,000 `stanzas` (`None` when no stanza arrived).
    pub cpu_ms_per_1000_stanzas: Option<f64>,
}

impl SutCpu {
    /// The CPU of `pid` between two readings, over `stanzas` received in between, with
    /// `tck` clock ticks per second.
    pub fn between(pid: u32, start: CpuTicks, end: CpuTicks, stanzas: u64, tck: u64) -> SutCpu {
        let tck = tck.max(1) as f64;
        let user_s = end.utime.saturating_sub(start.utime) as f64 / tck;
        let system_s = end.stime.saturating_sub(start.stime) as f64 / tck;
        let cpu_s = user_s + system_s;
        SutCpu {
            pid,
            cpu_s,
            user_s,
            system_s,
            stanzas,
            cpu_ms_per_1000_stanzas: (stanzas > 0).then(|| cpu_s * 1e3 * 1e3 / stanzas as f64),
        }
    }

    /// One line for the text report.
    pub fn line(&self) -> String {
        format!(
            "SUT pid {} CPU in the measured window: {:.2} s (user {:.2} s, system {:.2} s) for {} \
             stanzas received = {} ms per 1,000 stanzas",
            self.pid,
            self.cpu_s,
            self.user_s,
            self.system_s,
            self.stanzas,
            self.cpu_ms_per_1000_stanzas
                .map_or_else(|| "—".to_owned(), |v| format!("{v:.1}")),
        )
    }
}

/// Readings at the start of the window, to be closed by [`Window::end`].
#[derive(Debug)]
pub struct Window {
    start: Vec<(u32, io::Result<CpuTicks>)>,
    /// Final readings taken early ([`Window::freeze`]), by pid.
    frozen: Vec<(u32, CpuTicks)>,
    stanzas_start: u64,
}

impl Window {
    /// Reads every pid now; `stanzas` is loadgen's received-stanza count now.
    pub fn start(pids: &[u32], stanzas: u64) -> Window {
        Window {
            start: pids.iter().map(|&p| (p, CpuTicks::read(p))).collect(),
            frozen: Vec::new(),
            stanzas_start: stanzas,
        }
    }

    /// Reads `pid` now and keeps that as its end reading: for a process about to be
    /// killed during the window (a cluster node's death), whose CPU up to then still
    /// counts. A process that cannot be read is left to [`Window::end`].
    pub fn freeze(&mut self, pid: u32) {
        if let Ok(t) = CpuTicks::read(pid) {
            self.frozen.retain(|(p, _)| *p != pid);
            self.frozen.push((pid, t));
        }
    }

    /// Reads every pid again; one result per pid, in order.
    ///
    /// Errors (per pid): the process could not be read at the start or at the end.
    pub fn end(self, stanzas: u64) -> Vec<Result<SutCpu, String>> {
        let tck = ticks_per_second();
        let n = stanzas.saturating_sub(self.stanzas_start);
        self.start
            .into_iter()
            .map(|(pid, start)| {
                let start = start.map_err(|e| format!("--sut-pid {pid}: {e}"))?;
                let end = match self.frozen.iter().find(|(p, _)| *p == pid) {
                    Some((_, t)) => *t,
                    None => CpuTicks::read(pid).map_err(|e| format!("--sut-pid {pid}: {e}"))?,
                };
                Ok(SutCpu::between(pid, start, end, n, tck))
            })
            .collect()
    }
}

/// The CPU of several SUT processes (a cluster's nodes) together over the window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SutCpuTotal {
    /// The processes summed.
    pub pids: Vec<u32>,
    /// Their `utime + stime` in the window, seconds.
    pub cpu_s: f64,
    /// Of which user time, seconds.
    pub user_s: f64,
    /// Of which system time, seconds.
    pub system_s: f64,
    /// Stanzas loadgen received in the window.
    pub stanzas: u64,
    /// `cpu_s` in milliseconds per 1,000 `stanzas` (`None` when no stanza arrived).
    pub cpu_ms_per_1000_stanzas: Option<f64>,
}

impl SutCpuTotal {
    /// One line for the text report.
    pub fn line(&self) -> String {
        format!(
            "SUT CPU of {} processes together in the measured window: {:.2} s (user {:.2} s, \
             system {:.2} s) for {} stanzas received = {} ms per 1,000 stanzas",
            self.pids.len(),
            self.cpu_s,
            self.user_s,
            self.system_s,
            self.stanzas,
            self.cpu_ms_per_1000_stanzas
                .map_or_else(|| "—".to_owned(), |v| format!("{v:.1}")),
        )
    }
}

/// The sum of `each` (`None` when empty).
pub fn total(each: &[SutCpu]) -> Option<SutCpuTotal> {
    let first = each.first()?;
    let cpu_s: f64 = each.iter().map(|c| c.cpu_s).sum();
    let stanzas = first.stanzas;
    Some(SutCpuTotal {
        pids: each.iter().map(|c| c.pid).collect(),
        cpu_s,
        user_s: each.iter().map(|c| c.user_s).sum(),
        system_s: each.iter().map(|c| c.system_s).sum(),
        stanzas,
        cpu_ms_per_1000_stanzas: (stanzas > 0).then(|| cpu_s * 1e3 * 1e3 / stanzas as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line of a multi-threaded process (the name has a space and a parenthesis).
    const LINE: &str = "4242 (my (server) x) S 1 4242 4242 0 -1 4194560 1234 0 5 0 \
        1500 250 3 4 20 0 7 0 123456 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17003 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn parses_utime_and_stime() {
        let t = CpuTicks::parse(LINE.as_bytes()).unwrap();
        assert_eq!(
            t,
            CpuTicks {
                utime: 1500,
                stime: 250
            }
        );
        assert_eq!(t.total(), 1750);
    }

    #[test]
    fn malformed_line_is_an_error() {
        let e = CpuTicks::parse(b"4242 (x) S 1 2").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("/proc/PID/stat"), "{e}");
    }

    #[test]
    fn per_thousand_stanzas() {
        let a = CpuTicks {
            utime: 100,
            stime: 50,
        };
        let b = CpuTicks {
            utime: 300,
            stime: 100,
        };
        let c = SutCpu::between(1, a, b, 5_000, 100);
        assert_eq!(c.cpu_s, 2.5);
        assert_eq!(c.user_s, 2.0);
        assert_eq!(c.system_s, 0.5);
        assert_eq!(c.cpu_ms_per_1000_stanzas, Some(500.0));
        assert_eq!(
            SutCpu::between(1, a, b, 0, 100).cpu_ms_per_1000_stanzas,
            None
        );
    }

    #[test]
    fn several_processes_are_summed() {
        let a = CpuTicks { utime: 0, stime: 0 };
        let b = CpuTicks {
            utime: 100,
            stime: 100,
        };
        let each = [
            SutCpu::between(1, a, b, 4_000, 100),
            SutCpu::between(2, a, b, 4_000, 100),
        ];
        let t = total(&each).unwrap();
        assert_eq!(t.pids, vec![1, 2]);
        assert_eq!(t.cpu_s, 4.0);
        assert_eq!(t.cpu_ms_per_1000_stanzas, Some(1000.0));
        assert_eq!(total(&[]), None);
    }

    #[test]
    fn a_frozen_reading_outlives_the_process() {
        let me = std::process::id();
        let mut w = Window::start(&[me], 0);
        w.freeze(me);
        let r = w.end(10);
        assert!(r[0].is_ok(), "{r:?}");
    }

    #[test]
    fn reads_this_process() {
        let t = CpuTicks::read(std::process::id()).unwrap();
        assert!(t.total() < u64::MAX);
        let e = CpuTicks::read(u32::MAX).unwrap_err();
        assert!(e.to_string().contains("/proc/4294967295/stat"), "{e}");
    }
}

//! The `process_*` metrics every strait component exports, as Prometheus'
//! client libraries name them
//! (<https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics>):
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_threads` and `process_start_time_seconds`, read from
//! `/proc/self` (through the `procfs` crate) at each scrape. Where `/proc`
//! cannot be read the series are left out rather than made up.

use std::fmt;
use std::sync::OnceLock;

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// One reading of the process' figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// `None` when unlimited.
    pub max_fds: Option<u64>,
    pub threads: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl Sample {
    /// Reads `/proc/self/{stat,fd,limits}` and the boot time.
    pub fn read() -> procfs::ProcResult<Sample> {
        let process = Process::myself()?;
        let stat = process.stat()?;
        let ticks = procfs::ticks_per_second() as f64;
        let max_fds = match process.limits()?.max_open_files.soft_limit {
            LimitValue::Value(limit) => Some(limit),
            LimitValue::Unlimited => None,
        };
        Ok(Sample {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
            virtual_bytes: stat.vsize,
            open_fds: process.fd_count()? as u64,
            max_fds,
            threads: u64::try_from(stat.num_threads).unwrap_or(0),
            start_time_seconds: procfs::boot_time_secs()? as f64 + stat.starttime as f64 / ticks,
        })
    }
}

/// Encodes a fresh [`Sample`] at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, value: f64) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Ok(sample) = Sample::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let e = &mut encoder;
        gauge(
            e,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            sample.resident_bytes as f64,
        )?;
        gauge(
            e,
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            sample.virtual_bytes as f64,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            sample.open_fds as f64,
        )?;
        if let Some(max) = sample.max_fds {
            gauge(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                max as f64,
            )?;
        }
        gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            None,
            sample.threads as f64,
        )?;
        gauge(
            e,
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(&Unit::Seconds),
            sample.start_time_seconds,
        )
    }
}

/// An unprefixed registry holding only the [`ProcessCollector`], to encode
/// after a component's own (see [`crate::exposition::encode`]).
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        registry
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_and_encoded_with_the_conventional_names() {
        let sample = Sample::read().unwrap();
        assert!(
            sample.resident_bytes > 0 && sample.threads >= 1 && sample.open_fds >= 1,
            "{sample:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            sample.start_time_seconds > 1.0e9 && sample.start_time_seconds <= now + 1.0,
            "{sample:?}"
        );
        let text = crate::exposition::encode(&[registry()]).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_threads ",
            "process_start_time_seconds ",
        ] {
            assert!(
                text.lines().any(|line| line.starts_with(name)),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

//! The operator as a measured child process: start, stop, CPU and memory from /proc.

use super::*;

pub(crate) fn say(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

// -------------------------------------------------------------------------------------------------
// Machine and processes

pub(crate) fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub(crate) fn loadavg() -> String {
    read_proc("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn meminfo_kib(key: &str) -> u64 {
    read_proc("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub(crate) fn machine() -> Value {
    let cpu = read_proc("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "mem_total_mib": meminfo_kib("MemTotal:") / 1024,
        "mem_available_mib": meminfo_kib("MemAvailable:") / 1024,
        "kernel": read_proc("/proc/sys/kernel/osrelease").trim(),
    })
}

/// CPU seconds (user + system) of a process so far.
pub(crate) fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = read_proc(&format!("/proc/{pid}/stat"));
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / ticks
}

/// A `Vm*:` line of /proc/PID/status, in KiB.
pub(crate) fn vm_kib(pid: u32, key: &str) -> u64 {
    read_proc(&format!("/proc/{pid}/status"))
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The operator binary as a child process, logging to a file.
pub(crate) struct OperatorProcess {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) log_path: PathBuf,
    pub(crate) started: Instant,
    pub(crate) metrics_url: Option<String>,
    pub(crate) log_offset: u64,
    pub(crate) log_rest: String,
}

impl OperatorProcess {
    pub(crate) fn start(
        options: &Options,
        namespace: &str,
        log: &str,
        log_path: PathBuf,
        kubeconfig: Option<&Path>,
    ) -> Res<Self> {
        let file = std::fs::File::create(&log_path)?;
        let concurrency = options.concurrency.to_string();
        let args = [
            "run",
            "--watch-namespace",
            namespace,
            "--operator-namespace",
            namespace,
            "--metrics-address",
            "127.0.0.1:0",
            "--watch-cluster-servers",
            "false",
            "--concurrency",
            &concurrency,
            "--log",
            log,
        ];
        let started = Instant::now();
        let mut command = Command::new(&options.operator);
        command.args(args);
        if let Some(kubeconfig) = kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        let child = command
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", options.operator.display()))?;
        Ok(Self {
            pid: child.id(),
            child,
            log_path,
            started,
            metrics_url: None,
            log_offset: 0,
            log_rest: String::new(),
        })
    }

    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// New complete log lines since the last call.
    pub(crate) fn new_log_lines(&mut self) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.log_path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.log_offset)).is_err() {
            return Vec::new();
        }
        let mut buffer = Vec::new();
        let _ = file.read_to_end(&mut buffer);
        self.log_offset += buffer.len() as u64;
        self.log_rest.push_str(&String::from_utf8_lossy(&buffer));
        let mut lines: Vec<String> = self.log_rest.split('\n').map(str::to_owned).collect();
        self.log_rest = lines.pop().unwrap_or_default();
        lines
    }

    /// Waits for the "serving /metrics" line and remembers the address.
    pub(crate) async fn wait_for_metrics(&mut self) -> Res<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let text_of = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        loop {
            let log = text_of(&self.log_path);
            if let Some(address) = log
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|line| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                })
            {
                let url = format!("http://{address}/metrics");
                self.metrics_url = Some(url.clone());
                return Ok(url);
            }
            if !self.alive() {
                return bail(format!(
                    "the operator exited at start:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return bail(format!(
                    "the operator logged no metrics address within 30s:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn cpu(&self, ticks: f64) -> f64 {
        cpu_seconds(self.pid, ticks)
    }

    pub(crate) fn peak_rss_kib(&self) -> u64 {
        vm_kib(self.pid, "VmHWM:")
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        vm_kib(self.pid, "VmRSS:")
    }

    /// SIGTERM, then wait; SIGKILL after 20 s.
    pub(crate) async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        say(format!(
            "operator {} did not stop within 20s of SIGTERM; killing it",
            self.pid
        ));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
